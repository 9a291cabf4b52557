"""Masked 3D ResNets: the resnet18_3d/resnet34_3d backbones, native 3D dual masking.

The 2D ResNet's architecture with every operation made 3D and isotropic (crops are resampled to
near-isotropic voxels before they reach the network, see :mod:`napari_segrep.engine.segments`)::

    stem:   conv 7x7x7 stride 2 -> MaskedBN3d(mask/2) -> ReLU -> max-pool 3x3x3 stride 2
    block:  conv 3x3x3 -> MaskedBN3d(mask of its grid) -> ReLU -> conv 3x3x3 -> MaskedBN3d
            -> (+ shortcut: conv 1x1x1 stride 2 + MaskedBN3d where the grid changes) -> ReLU
    pool:   mean over the in-mask voxels of the last feature map (stride 32)

The masks act exactly as in 2D (:mod:`napari_segrep.engine.backbones.resnet`; the forward pass
is the same function): every BatchNorm takes its statistics from the in-mask voxels of its grid
and zeroes everything outside, so no context voxel, BatchNorm bias or padding artefact reaches
the embedding.  The mask of each grid is the 3x3x3 stride-2 max-pool of the previous one
(:func:`napari_segrep.engine.masking.mask_pyramid`): a 1-voxel object keeps an active cell at
every level.  Without a mask, the forward pass is the plain 3D network (convolutions, BatchNorm,
global average pooling): the unmasked baseline.

ImageNet weights, inflated (I3D)
--------------------------------
No 3D network pretrained on natural images exists for microscopy, but a 2D one can be *inflated*
(Carreira & Zisserman 2017): each ``k x k`` kernel is repeated ``k`` times along depth and divided
by ``k``.  A volume constant along z then gives, in every plane far enough from the top and
bottom (where the padding is not seen), exactly the 2D network's response on that image: the 3D
network starts as the ImageNet one applied plane by plane, averaged over a ``k``-plane
neighbourhood, and sees z-structure from there.  BatchNorm parameters and statistics are copied;
the first convolution is adapted to the input channels as in 2D (summed for 1 channel, tiled for
N).  The file is torchvision's resnet18 (resnet34) ImageNet file, the same one in the torch cache.

References
----------
.. [1] J. Carreira, A. Zisserman, "Quo Vadis, Action Recognition? A New Model and the Kinetics
   Dataset", CVPR 2017 (section 2.4, "Inflating 2D ConvNets into 3D", "Bootstrapping 3D filters
   from 2D filters").
.. [2] K. He, X. Zhang, S. Ren, J. Sun, "Deep Residual Learning for Image Recognition", CVPR 2016.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import Tensor, nn

from ..masking import MaskedBatchNorm3d, mask_pyramid
from .resnet import _MASK_LEVELS, _feature_map, _forward_backbone, _mask_grids, conv_weight_from_rgb

__all__ = [
    "RESNETS_3D",
    "BasicBlock3d",
    "MaskedResNet3d",
    "imagenet_source",
    "inflate_kernel",
    "resnet3d_builder",
]

#: name -> (blocks per stage, the torchvision 2D ResNet whose ImageNet weights it inflates)
RESNETS_3D: dict[str, tuple[list[int], str]] = {
    "resnet18_3d": ([2, 2, 2, 2], "resnet18"),
    "resnet34_3d": ([3, 4, 6, 3], "resnet34"),
}


class BasicBlock3d(nn.Module):
    """torchvision's ``BasicBlock`` in 3D (3x3x3 convolutions, :class:`MaskedBatchNorm3d`), with
    its module names (``conv1``, ``bn1``, ``conv2``, ``bn2``, ``downsample``): the state-dict
    keys of a torchvision ResNet, so 2D weights map onto it key by key."""

    expansion = 1

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = MaskedBatchNorm3d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv3d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = MaskedBatchNorm3d(planes)
        self.downsample = downsample
        self.stride = stride


class MaskedResNet3d(nn.Module):
    """A 3D ResNet of :class:`BasicBlock3d` with :class:`MaskedBatchNorm3d`, no classifier,
    ``in_channels`` inputs and a masked forward pass.

    Parameters
    ----------
    layers : list of 4 int
        Residual blocks per stage (``[2, 2, 2, 2]``: resnet18_3d).
    in_channels : int
        Input channels; the first convolution is built for them.
    width : int
        Channels of the stem and the first stage (doubled at each next stage).  64 is the
        ResNet's (and what ImageNet weights need); narrower widths give small real models
        (tests).
    seed : int
        Random initialisation (torchvision's ResNet scheme: Kaiming-normal convolutions,
        BatchNorm weight 1 and bias 0), drawn from ``seed`` without touching the global random
        generator.

    Attributes
    ----------
    embedding_dim : int
        ``8 * width`` (512 for resnet18_3d/resnet34_3d).

    Examples
    --------
    >>> import torch
    >>> net = MaskedResNet3d([1, 1, 1, 1], in_channels=1, width=4).eval()
    >>> mask = torch.zeros(2, 1, 16, 16, 16)
    >>> mask[:, :, 4:12, 4:12, 4:12] = 1
    >>> net(torch.rand(2, 1, 16, 16, 16) * mask, mask).shape
    torch.Size([2, 32])
    """

    def __init__(
        self, layers: list[int], *, in_channels: int = 3, width: int = 64, seed: int = 0
    ) -> None:
        super().__init__()
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise ValueError(f"width must be a positive integer, got {width!r}")
        if len(layers) != 4 or not all(isinstance(n, int) and n >= 1 for n in layers):
            raise ValueError(f"layers must be 4 positive integers, got {layers!r}")
        self.in_channels = in_channels
        self.width = width
        self.embedding_dim: int = 8 * width * BasicBlock3d.expansion
        # Building a convolution draws its default initialisation from the random generator:
        # build and initialise under the seed, on a forked generator.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.conv1 = nn.Conv3d(in_channels, width, 7, stride=2, padding=3, bias=False)
            self.bn1 = MaskedBatchNorm3d(width)
            self.relu = nn.ReLU(inplace=True)
            self.maxpool = nn.MaxPool3d(kernel_size=3, stride=2, padding=1)
            self._inplanes = width
            self.layer1 = self._make_layer(width, layers[0])
            self.layer2 = self._make_layer(2 * width, layers[1], stride=2)
            self.layer3 = self._make_layer(4 * width, layers[2], stride=2)
            self.layer4 = self._make_layer(8 * width, layers[3], stride=2)
            self.avgpool = nn.AdaptiveAvgPool3d(1)
            for m in self.modules():
                if isinstance(m, nn.Conv3d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                elif isinstance(m, MaskedBatchNorm3d):
                    nn.init.constant_(m.weight, 1)
                    nn.init.constant_(m.bias, 0)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self._inplanes != planes:
            downsample = nn.Sequential(
                nn.Conv3d(self._inplanes, planes, 1, stride, bias=False), MaskedBatchNorm3d(planes)
            )
        stage = [BasicBlock3d(self._inplanes, planes, stride, downsample)]
        self._inplanes = planes
        stage += [BasicBlock3d(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*stage)

    # ------------------------------------------------------------------ weights
    def load_imagenet_state(self, state: dict[str, Tensor]) -> None:
        """Load a torchvision 2D ResNet state dict (ImageNet weights), inflated to 3D (I3D).

        Each 2D convolution kernel ``(O, I, k, k)`` becomes ``(O, I, k, k, k)``: repeated ``k``
        times along depth and divided by ``k`` (:func:`inflate_kernel`); the first convolution
        is first adapted to ``in_channels`` from the RGB one (summed for 1 channel, tiled and
        scaled by 3/N for N); BatchNorm parameters and running statistics are copied; the
        classifier (``fc.*``) is dropped.

        Raises
        ------
        ValueError
            ``state`` is not the matching 2D architecture's (other keys or shapes: another
            depth, or a width other than 64).
        """
        own = self.state_dict()
        new = {}
        for key, value in state.items():
            if key.startswith("fc."):
                continue
            target = own.get(key)
            if target is not None and target.ndim == 5 and value.ndim == 4:
                if key == "conv1.weight":
                    value = conv_weight_from_rgb(value, self.in_channels)
                value = inflate_kernel(value)
            if target is not None and tuple(value.shape) != tuple(target.shape):
                raise ValueError(
                    f"{key} has shape {tuple(value.shape)} where this network's is "
                    f"{tuple(target.shape)}"
                )
            new[key] = value
        missing, unexpected = self.load_state_dict(new, strict=False)
        if missing or unexpected:
            raise ValueError(f"missing {missing[:3]}, unexpected {unexpected[:3]}")

    # ------------------------------------------------------------------ forward
    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """Pooled features of a batch of 3D crops.

        Parameters
        ----------
        x : (B, in_channels, D, H, W) float Tensor
        mask : (B, 1, D, H, W) 0/1 Tensor of ``x``'s dtype, optional
            ``None``: no feature masking (the plain 3D network, average pooling).

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
        """The last feature map before pooling and its mask, ``(B, embedding_dim, D/32, H/32,
        W/32)`` and ``(B, 1, D/32, H/32, W/32)`` (None without a mask), as
        :meth:`~.resnet.MaskedResNet.feature_map`."""
        return _feature_map(self, x, _mask_grids(mask))


def inflate_kernel(weight: Tensor) -> Tensor:
    """Inflate a 2D convolution kernel to 3D (I3D): ``(O, I, k, k)`` -> ``(O, I, k, k, k)``,
    the ``k x k`` kernel repeated ``k`` times along depth and divided by ``k``.

    A volume whose planes are all the same image gives, in planes whose ``k``-plane window lies
    inside the volume, the 2D convolution of that image.
    """
    if weight.ndim != 4:
        raise ValueError(f"a 2D convolution kernel is (O, I, kH, kW), got {tuple(weight.shape)}")
    depth = weight.shape[-2]
    return weight.unsqueeze(2).repeat(1, 1, depth, 1, 1) / depth


def resnet3d_builder(name: str):
    """``build(*, in_channels, seed)`` for the 3D ResNet ``name`` ("resnet18_3d", "resnet34_3d")."""
    return partial(MaskedResNet3d, _entry(name)[0])


def imagenet_source(name: str) -> str:
    """The torchvision 2D ResNet whose ImageNet weights the 3D ResNet ``name`` inflates."""
    return _entry(name)[1]


def _entry(name: str):
    try:
        return RESNETS_3D[name]
    except KeyError:
        raise ValueError(
            f"unknown 3D ResNet {name!r}; choose one of {sorted(RESNETS_3D)}"
        ) from None
