"""Masked torchvision ResNets: the resnet18/34/50 backbones of the dual-masking encoder.

Where the mask acts (``forward(x, mask)`` with a mask)::

    stem:   conv1 -> MaskedBN(mask/2) -> ReLU -> maxpool (zero outside mask/4 by construction)
    block:  conv -> MaskedBN(mask of its grid) -> ReLU -> conv -> MaskedBN -> (+ shortcut, whose
            BatchNorm is masked too) -> ReLU
    pool:   mean over the in-mask cells of the last feature map (stride 32)

Every BatchNorm zeroes its output outside the mask of its feature grid, so after the stem and after
every residual block (and inside each block too) nothing outside the segment is non-zero: no
context pixel, no BatchNorm bias, no padding artefact reaches the embedding.  See
:mod:`napari_segrep.engine.masking` for how masks are brought to each grid.

Without a mask, the forward pass is the torchvision backbone's, call for call.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import Tensor, nn
from torchvision.models import resnet as tv_resnet

from ..masking import MaskedBatchNorm2d, mask_pyramid, masked_mean_pool

__all__ = [
    "RESNETS",
    "MaskedResNet",
    "build_resnet",
    "conv_weight_from_rgb",
    "imagenet_url",
    "resnet_builder",
]

# name -> (block, blocks per stage, torchvision's ImageNet weights)
RESNETS: dict[str, tuple[type[nn.Module], list[int], tv_resnet.WeightsEnum]] = {
    "resnet18": (tv_resnet.BasicBlock, [2, 2, 2, 2], tv_resnet.ResNet18_Weights.IMAGENET1K_V1),
    "resnet34": (tv_resnet.BasicBlock, [3, 4, 6, 3], tv_resnet.ResNet34_Weights.IMAGENET1K_V1),
    "resnet50": (tv_resnet.Bottleneck, [3, 4, 6, 3], tv_resnet.ResNet50_Weights.IMAGENET1K_V1),
}

# Stride-2 steps from the input to the last feature map: stem conv, max-pool, stages 2-4.
_MASK_LEVELS = 5


class MaskedResNet(tv_resnet.ResNet):
    """torchvision's ResNet with :class:`MaskedBatchNorm2d`, no classifier, ``in_channels``
    inputs and a masked forward pass.

    Subclassing keeps torchvision's module names, hence its state-dict keys (``conv1.weight``,
    ``layer1.0.bn1.running_mean``...): torchvision weights load unchanged.

    Parameters
    ----------
    block : BasicBlock or Bottleneck
    layers : list of 4 int
        Residual blocks per stage.
    in_channels : int
        Input channels; the first convolution is built for them.
    width : int
        Channels of the stem and the first stage (doubled at each next stage).  64 is
        torchvision's ResNet; narrower widths give small real models (tests).
    seed : int
        Random initialisation: with ``width=64`` the weights are exactly those of
        ``torchvision.models.ResNet(block, layers)`` under ``torch.manual_seed(seed)``; for
        ``in_channels != 3`` the first convolution is drawn from ``seed + 1``.  The global
        random generator is left untouched.

    Attributes
    ----------
    embedding_dim : int
        ``8 * width * block.expansion`` (512 for resnet18/34, 2048 for resnet50).
    """

    def __init__(
        self,
        block: type[nn.Module],
        layers: list[int],
        *,
        in_channels: int = 3,
        width: int = 64,
        seed: int = 0,
    ) -> None:
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise ValueError(f"width must be a positive integer, got {width!r}")
        self.width = width  # read by _make_layer while ResNet.__init__ builds the stages
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            super().__init__(block, layers, norm_layer=MaskedBatchNorm2d)
            if width != 64:  # torchvision's stem is 64 wide
                self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
                nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")
                self.bn1 = MaskedBatchNorm2d(width)
        self.fc = nn.Identity()
        self.in_channels = 3
        self.embedding_dim: int = 8 * width * block.expansion
        if in_channels != 3:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed + 1)
                new = nn.Conv2d(in_channels, width, 7, 2, 3, bias=False)
                nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")
            self.conv1 = new
            self.in_channels = in_channels

    def _make_layer(self, block, planes, blocks, stride=1, dilate=False):  # noqa: D102
        if planes == 64:  # the first stage: its input is the stem's output
            self.inplanes = self.width
        return super()._make_layer(block, planes * self.width // 64, blocks, stride, dilate)

    # ------------------------------------------------------------------ weights
    def load_imagenet_state(self, state: dict[str, Tensor]) -> None:
        """Load a torchvision ResNet state dict (ImageNet weights), classifier dropped.

        The first convolution is adapted to ``in_channels`` from the RGB one: summed for 1
        channel (a grey image seen as R=G=B gives the same response), tiled and scaled by 3/N
        for N channels.

        Raises
        ------
        ValueError
            ``state`` is not this architecture's.
        """
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        rgb_conv = state.pop("conv1.weight")
        missing, unexpected = self.load_state_dict(state, strict=False)
        missing = [k for k in missing if k != "conv1.weight"]
        if missing or unexpected:
            raise ValueError(f"missing {missing[:3]}, unexpected {unexpected[:3]}")
        self._conv1_from_rgb(rgb_conv)

    def _conv1_from_rgb(self, rgb_weight: Tensor) -> None:
        weight = conv_weight_from_rgb(rgb_weight, self.in_channels)
        new = nn.Conv2d(self.in_channels, self.conv1.out_channels, 7, 2, 3, bias=False)
        with torch.no_grad():
            new.weight.copy_(weight)
        self.conv1 = new

    # ------------------------------------------------------------------ forward
    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """Pooled features of a batch of crops.

        Parameters
        ----------
        x : (B, in_channels, H, W) float Tensor
        mask : (B, 1, H, W) 0/1 Tensor of ``x``'s dtype, optional
            ``None``: no feature masking (torchvision's forward pass, average pooling).

        Returns
        -------
        (B, embedding_dim) Tensor
        """
        if mask is None:
            grids: list[Tensor | None] = [None] * (_MASK_LEVELS + 1)
        else:
            grids = mask_pyramid(mask, levels=_MASK_LEVELS)
        return _forward_backbone(self, x, grids)

    def feature_map(self, x: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """The last feature map before pooling and its mask: ``(B, embedding_dim, H/32, W/32)``
        (zero outside the mask with feature masking) and ``(B, 1, H/32, W/32)`` (None without
        a mask).  :meth:`forward` is its masked mean."""
        return _feature_map(self, x, _mask_grids(mask))


def _mask_grids(mask: Tensor | None) -> list[Tensor | None]:
    """The mask at every stride ``2**k`` of the network (Nones without a mask)."""
    if mask is None:
        return [None] * (_MASK_LEVELS + 1)
    return mask_pyramid(mask, levels=_MASK_LEVELS)


def _forward_backbone(net: MaskedResNet, x: Tensor, grids: list[Tensor | None]) -> Tensor:
    """The masked forward pass, ``grids[k]`` being the mask at stride ``2**k`` (or None)."""
    x, grid = _feature_map(net, x, grids)
    if grid is None:
        return torch.flatten(net.avgpool(x), 1)
    return masked_mean_pool(x, mask=grid)


def _feature_map(
    net: MaskedResNet, x: Tensor, grids: list[Tensor | None]
) -> tuple[Tensor, Tensor | None]:
    """The masked forward pass up to the last feature map, and that map's mask grid."""
    x = net.conv1(x)
    x = net.relu(net.bn1(x, grids[1]))
    # Zero outside grids[2] without a multiply: a max over a window of zeros is zero, and
    # grids[2] is the max-pool of grids[1] over the same windows.
    x = net.maxpool(x)
    level = 2
    for stage in (net.layer1, net.layer2, net.layer3, net.layer4):
        for block in stage:
            out_level = level + (1 if block.stride == 2 else 0)
            x = _block_forward(block, x, grids[level], grids[out_level])
            level = out_level
    return x, grids[level]


def _block_forward(
    block: nn.Module, x: Tensor, m_in: Tensor | None, m_out: Tensor | None
) -> Tensor:
    """torchvision's BasicBlock/Bottleneck forward with the mask of each feature grid passed to
    its BatchNorm layers (``None``: plain BatchNorm, identical to torchvision)."""
    identity = x
    if isinstance(block, tv_resnet.Bottleneck):
        out = block.relu(block.bn1(block.conv1(x), m_in))  # 1x1, input grid
        out = block.relu(block.bn2(block.conv2(out), m_out))  # 3x3, carries the stride
        out = block.bn3(block.conv3(out), m_out)
    else:
        out = block.relu(block.bn1(block.conv1(x), m_out))  # 3x3, carries the stride
        out = block.bn2(block.conv2(out), m_out)
    if block.downsample is not None:
        conv, bn = block.downsample
        identity = bn(conv(x), m_out)
    out = out + identity
    return block.relu(out)


def conv_weight_from_rgb(rgb_weight: Tensor, in_channels: int) -> Tensor:
    """The weight of a first convolution for ``in_channels`` inputs made from an RGB one.

    Parameters
    ----------
    rgb_weight : (O, 3, *K) Tensor
        The ImageNet first convolution's weight (``K`` its kernel: 2D or 3D).
    in_channels : int
        3: unchanged; 1: summed over RGB (a grey image seen as R=G=B gives the same response);
        N: RGB tiled over the N channels and scaled by 3/N.

    Returns
    -------
    (O, in_channels, *K) Tensor
    """
    if in_channels == 3:
        return rgb_weight
    if in_channels == 1:
        return rgb_weight.sum(dim=1, keepdim=True)
    reps = -(-in_channels // 3)
    tiles = (1, reps) + (1,) * (rgb_weight.ndim - 2)
    return rgb_weight.repeat(*tiles)[:, :in_channels] * (3.0 / in_channels)


def build_resnet(name: str, *, in_channels: int = 3, seed: int = 0) -> MaskedResNet:
    """The :class:`MaskedResNet` ``name`` ("resnet18", "resnet34" or "resnet50")."""
    return resnet_builder(name)(in_channels=in_channels, seed=seed)


def resnet_builder(name: str):
    """``build(*, in_channels, seed)`` for the torchvision ResNet ``name``."""
    block, layers, _ = _entry(name)
    return partial(MaskedResNet, block, layers)


def imagenet_url(name: str) -> str:
    """torchvision's download URL of ResNet ``name``'s ImageNet (IMAGENET1K_V1) weights."""
    return _entry(name)[2].url


def _entry(name: str):
    try:
        return RESNETS[name]
    except KeyError:
        raise ValueError(f"unknown ResNet {name!r}; choose one of {sorted(RESNETS)}") from None
