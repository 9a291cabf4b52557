"""SegmentEncoder: a registered backbone (a torchvision ResNet by default) seen through the
segment's mask: image masking, then feature masking, masked BatchNorm and masked pooling.

What the encoder does itself::

    x = standardise(images) * mask                      image masking (if image_masking)
    z = backbone(x, mask if feature_masking else None)  feature masking, masked pooling

The backbone (``backbone="resnet18"``, chosen by name from
:mod:`napari_segrep.engine.backbones`) applies the mask at every feature grid: see
:mod:`napari_segrep.engine.backbones.resnet` for where the masks act in a ResNet.

With both masks off, the forward pass is the torchvision backbone's, call for call.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..catalogue import weight_set_names
from .backbones import (
    BACKBONES,
    build_backbone,
    get_backbone,
    imagenet_cache_path,
    load_pretrained_weights,
)
from .checkpoint import (
    encoder_state_from_checkpoint,
    save_checkpoint,
    state_mismatches,
    validate_encoder_config,
)
from .masking import MaskedBatchNorm2d, binarize_mask

__all__ = ["BACKBONES", "SegmentEncoder", "imagenet_cache_path", "load_encoder", "save_encoder"]


class SegmentEncoder(nn.Module):
    """Embed segments, each seen only through its mask.

    Parameters
    ----------
    backbone : str
        Name of a registered backbone (:mod:`napari_segrep.engine.backbones`): "resnet18",
        "resnet34" or "resnet50", torchvision's ResNets; "resnet18_3d" or "resnet34_3d",
        their native 3D counterparts for volumes; "vit_tiny_patch16_224",
        "vit_small_patch16_224" or "vit_small_patch14_reg4_dinov2", timm's Vision
        Transformers (:mod:`napari_segrep.engine.backbones.vit`).
    in_channels : int
        Image channels (1 grayscale, 3 RGB, N multichannel).  The first convolution is adapted.
    image_masking : bool
        Zero input pixels outside the mask (after standardisation).
    feature_masking : bool
        Masked BatchNorm statistics, zeroed activations outside the mask at every feature grid,
        mean pooling over in-mask cells.
    weights : None, "imagenet", "dinov2" or path
        ``None``: random initialisation from ``seed`` (deterministic).  The name of one of the
        backbone's weight sets (:mod:`napari_segrep.catalogue`): ``"imagenet"``,
        torchvision's ImageNet weights of a ResNet; ``"dinov2"``, Meta's DINOv2 weights of
        ``vit_small_patch14_reg4_dinov2``; read **only** from the local torch hub cache (see
        :func:`imagenet_cache_path`; nothing is downloaded here: ``napari-segrep weights
        download imagenet|dinov2`` or :func:`napari_segrep.weights.download_weights` fetches
        them, when asked).  A path: a napari-segrep checkpoint
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
        #: Keep the BatchNorm statistics fixed in training mode (see :meth:`train`).
        self.freeze_batchnorm_stats = False

        self.backbone = build_backbone(backbone, in_channels=in_channels, seed=seed)
        #: 2: the encoder embeds 2D crops (B, C, H, W); 3: volumes (B, C, D, H, W).
        self.spatial_dims: int = get_backbone(backbone).spatial_dims
        self.embedding_dim: int = int(self.backbone.embedding_dim)
        self.register_buffer("input_mean", torch.zeros(in_channels))
        self.register_buffer("input_std", torch.ones(in_channels))

        if weights is None:
            return
        if isinstance(weights, str) and weights.lower() in weight_set_names():
            self._load_pretrained(weights.lower())
        elif isinstance(weights, (str, os.PathLike)):
            self._load_checkpoint(Path(weights))
        else:
            raise TypeError(
                "weights must be None, a weight set ('imagenet', 'dinov2') or a checkpoint "
                "path, got "
                f"{type(weights).__name__}"
            )

    # ------------------------------------------------------------------ construction helpers
    def _load_pretrained(self, weights: str) -> None:
        """The backbone's weight set ``weights``, and their input statistics brought to
        ``in_channels`` as the first layer is (averaged for 1 channel, tiled for N)."""
        mean, std = load_pretrained_weights(self.backbone, self.backbone_name, weights)
        if self.in_channels == 1:
            mean, std = mean.mean(0, keepdim=True), std.mean(0, keepdim=True)
        else:
            reps = -(-self.in_channels // 3)
            mean, std = mean.repeat(reps)[: self.in_channels], std.repeat(reps)[: self.in_channels]
        self.input_mean.copy_(mean)
        self.input_std.copy_(std)
        self.weights_source = weights

    def _load_checkpoint(self, path: Path) -> None:
        config, state = encoder_state_from_checkpoint(path)
        self.load_checkpoint_state(config, state, source=str(path))

    def load_checkpoint_state(self, config: dict, state: dict, *, source: str) -> None:
        """Load an encoder state read from a checkpoint whose ``encoder_config`` is ``config``.

        ``ValueError`` (naming ``source``) when the config is not valid, or the weights do not
        fit this encoder (other backbone or channels, missing keys, other shapes).
        """
        path = source
        validate_encoder_config(config, state, source=source)
        for key in ("backbone", "in_channels"):
            mine = self.backbone_name if key == "backbone" else self.in_channels
            if config.get(key) != mine:
                raise ValueError(
                    f"checkpoint {path} was trained with {key}={config.get(key)!r}, but this "
                    f"encoder has {key}={mine!r}; use napari_segrep.load_encoder({path!r}) "
                    "to build the matching encoder"
                )
        problems = state_mismatches(self.state_dict(), state)
        dim = config.get("embedding_dim", self.embedding_dim)
        if dim != self.embedding_dim:
            problems.append(
                f"embedding_dim={dim} but its {self.backbone_name} gives {self.embedding_dim}"
            )
        if problems:
            raise ValueError(
                f"checkpoint {path}: its weights do not fit a {self.backbone_name} encoder with "
                f"in_channels={self.in_channels} ({'; '.join(problems)}): the file is corrupt or "
                "was not written for this backbone"
            )
        self.load_state_dict(state)
        self.weights_source = source

    # ------------------------------------------------------------------ training mode
    def train(self, mode: bool = True) -> SegmentEncoder:
        """Training mode, as ``nn.Module.train``; with ``freeze_batchnorm_stats`` set, the
        BatchNorm layers stay in eval mode: they normalise with their running statistics and
        do not update them (their weight and bias still train).

        Fine-tuning uses this by default (``TrainConfig.batchnorm_stats="frozen"``): the
        statistics the encoder starts with, ImageNet's or the identity of a new network, are
        kept.  Re-estimating them from a few small batches of augmented views changes what
        every layer computes before the weights have learnt anything (measured: it alone
        lowers the k-NN accuracy of an untrained encoder's embeddings of digits from 0.90 to
        0.72-0.74, see ``benchmarks/ssl_eval.py``).
        """
        super().train(mode)
        if mode and self.freeze_batchnorm_stats:
            for module in self.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm | MaskedBatchNorm2d):
                    module.eval()
        return self

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

    def fingerprint(self) -> str:
        """sha256 of the encoder's state (every parameter and buffer, in order): two encoders
        with the same fingerprint compute the same embeddings.  Tables record it
        (``df.attrs["encoder"]["sha256"]``), so a classifier can tell another encoder's table.

        Hashing a resnet18's state takes about 40 ms on CPU; the result is kept until a tensor
        changes (every in-place update, an optimiser step included, bumps its version counter),
        so embedding again with the same encoder costs nothing.
        """
        state = self.state_dict(keep_vars=True)
        key = tuple((name, t.data_ptr(), t._version) for name, t in state.items())
        cached = getattr(self, "_fingerprint_cache", None)
        if cached is not None and cached[0] == key:
            return cached[1]
        digest = hashlib.sha256()
        for name, tensor in state.items():
            value = tensor.detach().cpu().contiguous()
            digest.update(f"{name}:{value.dtype}:{tuple(value.shape)};".encode())
            digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes())
        self._fingerprint_cache = (key, digest.hexdigest())
        return self._fingerprint_cache[1]

    def record(self) -> dict:
        """:meth:`config` plus the :meth:`fingerprint` (``sha256``): what tables and
        classifiers record about the encoder that made an embedding."""
        return {**self.config(), "sha256": self.fingerprint()}

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
        images : (B, C, H, W) float Tensor, or (B, C, D, H, W) for a 3D backbone
            Scaled crops, ``C == in_channels``.
        masks : (B, 1, H, W) or (B, 1, D, H, W) bool or float Tensor
            The segment of each crop (float masks: ``> 0.5`` is inside).  Optional only when
            both maskings are off.

        Returns
        -------
        (B, embedding_dim) Tensor
        """
        x, mask = self._masked_input(images, masks)
        return self.backbone(x, mask if self.feature_masking else None)

    def feature_map(self, images: Tensor, masks: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The backbone's last feature map before pooling, seen through the masks as
        :meth:`forward` sees it (the embedding is its masked mean): what the decoder of a
        pretext objective (:mod:`napari_segrep.engine.objectives`) reads.

        Returns
        -------
        features : (B, embedding_dim, *G) Tensor
            ``G`` the crop's grid at the backbone's last stride (``H/32, W/32`` for a ResNet).
        grid_mask : (B, 1, *G) Tensor
            The segment on that grid (ones without feature masking).

        Raises
        ------
        ValueError
            The backbone has no single feature map (``resnet18_planes``, ``resnet18_slices``:
            their embedding pools several 2D maps), naming the fix.
        """
        if not has_feature_map(self.backbone_name):
            raise ValueError(no_feature_map_message(self.backbone_name))
        x, mask = self._masked_input(images, masks)
        features, grid = self.backbone.feature_map(x, mask if self.feature_masking else None)
        if grid is None:
            grid = features.new_ones((features.shape[0], 1, *features.shape[2:]))
        return features, grid

    def _masked_input(self, images: Tensor, masks: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """The checked, standardised, image-masked input and the 0/1 mask (None unmasked)."""
        grid = "H, W" if self.spatial_dims == 2 else "D, H, W"
        if images.ndim != 2 + self.spatial_dims or images.shape[1] != self.in_channels:
            raise ValueError(
                f"images must be (B, {self.in_channels}, {grid}), got {tuple(images.shape)}"
            )
        masked = self.image_masking or self.feature_masking
        if masked:
            if masks is None:
                raise ValueError("masks are required when image or feature masking is on")
            if (
                masks.ndim != images.ndim
                or masks.shape[1] != 1
                or masks.shape[0] != images.shape[0]
                or (masks.shape[2:] != images.shape[2:])
            ):
                raise ValueError(
                    f"masks must be (B, 1, {grid}) matching images {tuple(images.shape)}, "
                    f"got {tuple(masks.shape)}"
                )
        # Identity (bitwise) for random init and our checkpoints unless they say otherwise.
        per_channel = (1, self.in_channels) + (1,) * self.spatial_dims
        x = (images - self.input_mean.view(per_channel)) / self.input_std.view(per_channel)
        mask = binarize_mask(masks, dtype=x.dtype) if masked else None
        if self.image_masking:
            x = x * mask
        return x, mask


def has_feature_map(backbone: str) -> bool:
    """Whether the registered ``backbone`` has one last feature map before pooling
    (:meth:`SegmentEncoder.feature_map`)."""
    return get_backbone(backbone).feature_map


def no_feature_map_message(backbone: str, *, who: str = "a pretext objective") -> str:
    """Why ``who`` cannot train ``backbone`` (it has no single last feature map), and the fix,
    in one line."""
    spec = get_backbone(backbone)
    fix = "backbone='resnet18_3d' (native 3D)" if spec.spatial_dims == 3 else "backbone='resnet18'"
    return (
        f"{who} reconstructs pixels from the encoder's last feature map, but "
        f"backbone={backbone!r} has no single one (it pools several 2D maps): train "
        f"{fix}, or objective='contrastive'"
    )


def save_encoder(encoder: SegmentEncoder, path: str | os.PathLike, **extra: Any) -> Path:
    """Save a :class:`~napari_segrep.SegmentEncoder` so :func:`load_encoder` can rebuild it."""
    state = {k: v.detach().cpu() for k, v in encoder.state_dict().items()}
    return save_checkpoint(
        {"kind": "encoder", "encoder_config": encoder.config(), "encoder": state, **extra}, path
    )


def load_encoder(
    path: str | os.PathLike, *, map_location: str | torch.device = "cpu"
) -> SegmentEncoder:
    """Rebuild the :class:`~napari_segrep.SegmentEncoder` stored in a checkpoint, in eval mode.

    Examples
    --------
    >>> import napari_segrep as sr, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "enc.pt")
    >>> _ = sr.save_encoder(sr.SegmentEncoder(), path)
    >>> sr.load_encoder(path).embedding_dim
    512
    """
    config, state = encoder_state_from_checkpoint(path)
    encoder = SegmentEncoder(
        backbone=config["backbone"],
        in_channels=config["in_channels"],
        image_masking=config.get("image_masking", True),
        feature_masking=config.get("feature_masking", True),
        seed=config.get("seed", 0),
    )
    encoder.load_checkpoint_state(config, state, source=str(path))
    return encoder.to(map_location).eval()
