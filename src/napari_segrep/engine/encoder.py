"""SegmentEncoder: a torchvision ResNet with image masking, feature masking, masked BatchNorm and
masked pooling.

Where the masks act (``feature_masking=True``)::

    x = standardise(images) * mask                      image masking (if image_masking)
    stem:   conv1 -> MaskedBN(mask/2) -> ReLU -> maxpool (zero outside mask/4 by construction)
    block:  conv -> MaskedBN(mask of its grid) -> ReLU -> conv -> MaskedBN -> (+ shortcut, whose
            BatchNorm is masked too) -> ReLU
    pool:   mean over the in-mask cells of the last feature map (stride 32)

Every BatchNorm zeroes its output outside the mask of its feature grid, so after the stem and after
every residual block (and inside each block too) nothing outside the segment is non-zero: no
context pixel, no BatchNorm bias, no padding artefact reaches the embedding.  See
:mod:`napari_segrep.engine.masking` for how masks are brought to each grid.

With both masks off, the forward pass is the torchvision backbone's, call for call.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn
from torchvision.models import resnet as tv_resnet

from .masking import MaskedBatchNorm2d, binarize_mask, mask_pyramid, masked_mean_pool

__all__ = ["BACKBONES", "SegmentEncoder", "imagenet_cache_path"]

# name -> (torchvision builder, ImageNet weights enum)
BACKBONES: dict[str, tuple[Callable[..., tv_resnet.ResNet], object]] = {
    "resnet18": (tv_resnet.resnet18, tv_resnet.ResNet18_Weights.IMAGENET1K_V1),
    "resnet34": (tv_resnet.resnet34, tv_resnet.ResNet34_Weights.IMAGENET1K_V1),
    "resnet50": (tv_resnet.resnet50, tv_resnet.ResNet50_Weights.IMAGENET1K_V1),
}

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def imagenet_cache_path(backbone: str) -> Path:
    """Where torchvision's ImageNet weights for ``backbone`` must lie (the torch hub cache)."""
    _, weights = _backbone_entry(backbone)
    filename = os.path.basename(weights.url)
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def _backbone_entry(backbone: str):
    try:
        return BACKBONES[backbone]
    except KeyError:
        raise ValueError(
            f"unknown backbone {backbone!r}; choose one of {sorted(BACKBONES)}"
        ) from None


def build_resnet(backbone: str, *, seed: int) -> tv_resnet.ResNet:
    """The torchvision ResNet ``backbone`` with :class:`MaskedBatchNorm2d` layers, randomly
    initialised from ``seed`` exactly as ``torchvision.models.<backbone>()`` is under
    ``torch.manual_seed(seed)``; the classifier is replaced by ``Identity``."""
    builder, _ = _backbone_entry(backbone)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = builder(weights=None, norm_layer=MaskedBatchNorm2d)
    net.fc = nn.Identity()
    return net


class SegmentEncoder(nn.Module):
    """Embed segments, each seen only through its mask.

    Parameters
    ----------
    backbone : {"resnet18", "resnet34", "resnet50"}
        torchvision ResNet to build on.
    in_channels : int
        Image channels (1 grayscale, 3 RGB, N multichannel).  The first convolution is adapted.
    image_masking : bool
        Zero input pixels outside the mask (after standardisation).
    feature_masking : bool
        Masked BatchNorm statistics, zeroed activations outside the mask at every feature grid,
        mean pooling over in-mask cells.
    weights : None, "imagenet" or path
        ``None``: random initialisation from ``seed`` (deterministic).  ``"imagenet"``:
        torchvision's ImageNet weights, read **only** from the local torch hub cache (see
        :func:`imagenet_cache_path`; nothing is downloaded).  A path: a napari-segrep checkpoint
        (written by :func:`napari_segrep.save_encoder` or by training).
    seed : int
        Seed of the random initialisation.

    Notes
    -----
    The encoder expects images already scaled (``embed_segments`` maps the 1st-99.8th percentile
    to 0-1).  With ImageNet weights it standardises them with ImageNet's mean/std first.

    Examples
    --------
    >>> import torch
    >>> enc = SegmentEncoder(in_channels=1).eval()
    >>> images = torch.rand(2, 1, 64, 64)
    >>> masks = torch.zeros(2, 1, 64, 64, dtype=torch.bool)
    >>> masks[:, :, 20:40, 20:40] = True
    >>> enc(images, masks).shape
    torch.Size([2, 512])
    """

    def __init__(
        self,
        backbone: str = "resnet18",
        in_channels: int = 1,
        *,
        image_masking: bool = True,
        feature_masking: bool = True,
        weights: str | os.PathLike | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if not isinstance(in_channels, int) or isinstance(in_channels, bool) or in_channels < 1:
            raise ValueError(f"in_channels must be a positive integer, got {in_channels!r}")
        self.backbone_name = backbone
        self.in_channels = in_channels
        self.image_masking = bool(image_masking)
        self.feature_masking = bool(feature_masking)
        self.seed = int(seed)
        self.weights_source: str | None = None

        net = build_resnet(backbone, seed=seed)
        self.embedding_dim: int = 512 * net.layer4[-1].expansion
        self.backbone = net
        self.register_buffer("input_mean", torch.zeros(in_channels))
        self.register_buffer("input_std", torch.ones(in_channels))

        if weights is None:
            self._adapt_first_conv(None)
        elif isinstance(weights, str) and weights.lower() == "imagenet":
            self._load_imagenet()
        elif isinstance(weights, (str, os.PathLike)):
            self._adapt_first_conv(None)
            self._load_checkpoint(Path(weights))
        else:
            raise TypeError(
                f"weights must be None, 'imagenet' or a checkpoint path, got {type(weights).__name__}"
            )

    # ------------------------------------------------------------------ construction helpers
    def _adapt_first_conv(self, rgb_weight: Tensor | None) -> None:
        """Give conv1 ``in_channels`` inputs.  From RGB weights: summed for 1 channel (a grey
        image seen as R=G=B gives the same response), tiled and scaled by 3/N for N channels."""
        old = self.backbone.conv1
        if self.in_channels == 3 and rgb_weight is None:
            return
        if rgb_weight is None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed + 1)
                new = nn.Conv2d(self.in_channels, old.out_channels, 7, 2, 3, bias=False)
                nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")
            self.backbone.conv1 = new
            return
        if self.in_channels == 3:
            weight = rgb_weight
        elif self.in_channels == 1:
            weight = rgb_weight.sum(dim=1, keepdim=True)
        else:
            reps = -(-self.in_channels // 3)
            weight = rgb_weight.repeat(1, reps, 1, 1)[:, : self.in_channels] * (
                3.0 / self.in_channels
            )
        new = nn.Conv2d(self.in_channels, old.out_channels, 7, 2, 3, bias=False)
        with torch.no_grad():
            new.weight.copy_(weight)
        self.backbone.conv1 = new

    def _load_imagenet(self) -> None:
        path = imagenet_cache_path(self.backbone_name)
        if not path.is_file():
            raise FileNotFoundError(
                f"ImageNet weights for {self.backbone_name} are not in the local torch cache. "
                f"napari-segrep never downloads weights: place the file {path.name} at {path} "
                f"(torchvision's {self.backbone_name} IMAGENET1K_V1 weights, e.g. copied from a "
                "machine with internet where torchvision downloaded them), or use weights=None."
            )
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        rgb_conv = state.pop("conv1.weight")
        missing, unexpected = self.backbone.load_state_dict(state, strict=False)
        missing = [k for k in missing if k != "conv1.weight"]
        if missing or unexpected:
            raise ValueError(
                f"{path} does not hold {self.backbone_name} weights "
                f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
            )
        self._adapt_first_conv(rgb_conv)
        mean = torch.tensor(_IMAGENET_MEAN)
        std = torch.tensor(_IMAGENET_STD)
        if self.in_channels == 1:
            mean, std = mean.mean(0, keepdim=True), std.mean(0, keepdim=True)
        else:
            reps = -(-self.in_channels // 3)
            mean, std = mean.repeat(reps)[: self.in_channels], std.repeat(reps)[: self.in_channels]
        self.input_mean.copy_(mean)
        self.input_std.copy_(std)
        self.weights_source = "imagenet"

    def _load_checkpoint(self, path: Path) -> None:
        from .checkpoint import encoder_state_from_checkpoint

        config, state = encoder_state_from_checkpoint(path)
        self.load_checkpoint_state(config, state, source=str(path))

    def load_checkpoint_state(self, config: dict, state: dict, *, source: str) -> None:
        """Load an encoder state read from a checkpoint whose ``encoder_config`` is ``config``."""
        path = source
        for key in ("backbone", "in_channels"):
            mine = self.backbone_name if key == "backbone" else self.in_channels
            if config.get(key) != mine:
                raise ValueError(
                    f"checkpoint {path} was trained with {key}={config.get(key)!r}, but this "
                    f"encoder has {key}={mine!r}; use napari_segrep.load_encoder({path!r}) "
                    "to build the matching encoder"
                )
        self.load_state_dict(state)
        self.weights_source = source

    # ------------------------------------------------------------------ description
    def config(self) -> dict:
        """Everything needed to rebuild this encoder (stored in checkpoints and provenance)."""
        return {
            "backbone": self.backbone_name,
            "in_channels": self.in_channels,
            "image_masking": self.image_masking,
            "feature_masking": self.feature_masking,
            "seed": self.seed,
            "embedding_dim": self.embedding_dim,
            "weights": self.weights_source,
        }

    def extra_repr(self) -> str:
        return (
            f"backbone={self.backbone_name!r}, in_channels={self.in_channels}, "
            f"image_masking={self.image_masking}, feature_masking={self.feature_masking}"
        )

    # ------------------------------------------------------------------ forward
    def forward(self, images: Tensor, masks: Tensor | None = None) -> Tensor:
        """Embed a batch of segment crops.

        Parameters
        ----------
        images : (B, C, H, W) float Tensor
            Scaled crops, ``C == in_channels``.
        masks : (B, 1, H, W) bool or float Tensor
            The segment of each crop (float masks: ``> 0.5`` is inside).  Optional only when
            both maskings are off.

        Returns
        -------
        (B, embedding_dim) Tensor
        """
        if images.ndim != 4 or images.shape[1] != self.in_channels:
            raise ValueError(
                f"images must be (B, {self.in_channels}, H, W), got {tuple(images.shape)}"
            )
        masked = self.image_masking or self.feature_masking
        if masked:
            if masks is None:
                raise ValueError("masks are required when image or feature masking is on")
            if (
                masks.ndim != 4
                or masks.shape[1] != 1
                or masks.shape[0] != images.shape[0]
                or (masks.shape[2:] != images.shape[2:])
            ):
                raise ValueError(
                    f"masks must be (B, 1, H, W) matching images {tuple(images.shape)}, "
                    f"got {tuple(masks.shape)}"
                )
        # Identity (bitwise) for random init and our checkpoints unless they say otherwise.
        x = (images - self.input_mean[None, :, None, None]) / self.input_std[None, :, None, None]
        mask = binarize_mask(masks, dtype=x.dtype) if masked else None
        if self.image_masking:
            x = x * mask
        grids = mask_pyramid(mask, levels=5) if self.feature_masking else [None] * 6
        return self._forward_backbone(x, grids)

    def _forward_backbone(self, x: Tensor, grids: list[Tensor | None]) -> Tensor:
        net = self.backbone
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
        if grids[level] is None:
            return torch.flatten(net.avgpool(x), 1)
        return masked_mean_pool(x, mask=grids[level])


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
