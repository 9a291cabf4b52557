"""What BiaPy's pretext tasks share (``masking``, ``crappify``): one view of each segment, a
corruption of it drawn per item, a light decoder that restores the pixels from the encoder's
masked feature map, and a pixel loss inside the segment.

Dual masking holds: the corrupted view goes through the encoder's image masking (everything
outside the segment is zeroed) and feature masking, the decoder reads only the encoder's last
feature map (:meth:`~napari_segrep.engine.encoder.SegmentEncoder.feature_map`), the corruption
is applied to the view already zeroed outside the segment (a blur or a down-sampling never
mixes an outside pixel into an inside one), and the loss counts only pixels inside the
segment.  So nothing outside the segment changes the loss or its gradients (tested).

Randomness: each item's corruption is drawn from a generator seeded by the dataset's key of
that item (``SegmentDataset(views=1)``: seeded by ``(seed, epoch, index)`` as the views are),
so it does not depend on the batch, the number of loader workers or processes, and a resumed
run draws what the uninterrupted one would have drawn.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checkpoint import load_state_checked
from .base import Objective, StepLoss

__all__ = ["PixelDecoder", "PretextObjective", "decoder_stages"]

#: Crops of each micro-batch kept for the health check's eval-mode forward pass.
PROBE_CROPS = 8
#: Up-sampling stages of the decoder: a ResNet's last feature map is at stride 2**5.
DECODER_STAGES = 5
#: Channels of the decoder's first stage (halved at each stage, at least 16).
DECODER_WIDTH = 128


def decoder_stages(encoder: nn.Module) -> int:
    """Up-sampling stages that bring ``encoder``'s last feature map back to (at least) the
    crop's size: ``ceil(log2(stride))`` for a backbone with a ``feature_stride`` (a ViT's patch:
    4 for 14 or 16), :data:`DECODER_STAGES` (a ResNet's stride 32) otherwise."""
    stride = getattr(encoder.backbone, "feature_stride", None)
    if stride is None:
        return DECODER_STAGES
    return max(1, math.ceil(math.log2(int(stride))))


class PixelDecoder(nn.Module):
    """A light decoder from the encoder's last feature map back to the crop's pixels: a 1x1
    convolution to ``width`` channels, then ``stages`` x (nearest 2x up-sampling, 3x3
    convolution, ReLU), halving the channels down to 16, and a 1x1 convolution to
    ``out_channels``; interpolated to the crop's size when the stride does not divide it.
    No normalisation layer: each crop's output depends on its own feature map only."""

    def __init__(
        self,
        in_dim: int,
        out_channels: int,
        *,
        spatial_dims: int = 2,
        width: int = DECODER_WIDTH,
        stages: int = DECODER_STAGES,
    ) -> None:
        super().__init__()
        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
        self.spatial_dims = spatial_dims
        layers: list[nn.Module] = [conv(in_dim, width, 1)]
        channels = width
        for _ in range(stages):
            out = max(16, channels // 2)
            layers += [
                nn.Upsample(scale_factor=2, mode="nearest"),
                conv(channels, out, 3, padding=1),
            ]
            layers.append(nn.ReLU(inplace=True))
            channels = out
        layers.append(conv(channels, out_channels, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, features: Tensor, size: tuple[int, ...]) -> Tensor:
        out = self.net(features)
        if tuple(out.shape[2:]) != tuple(size):
            mode = "bilinear" if self.spatial_dims == 2 else "trilinear"
            out = F.interpolate(out, size=size, mode=mode, align_corners=False)
        return out


class _PretextModel(nn.Module):
    """``decoder(encoder.feature_map(images, masks))``: the one module DDP wraps."""

    def __init__(self, encoder: nn.Module, head: PixelDecoder) -> None:
        super().__init__()
        self.encoder, self.head = encoder, head

    def forward(self, images: Tensor, masks: Tensor) -> Tensor:
        features, _ = self.encoder.feature_map(images, masks)
        return self.head(features, tuple(images.shape[2:]))


class PretextObjective(Objective):
    """One view per segment, corrupted (:meth:`corrupt`), restored by a :class:`PixelDecoder`
    (the objective's ``head``); the loss is the mean squared error over the pixels
    :meth:`corrupt` weights, all inside the segment.

    Subclasses set :attr:`name`, :attr:`state_keys` (one key, holding :meth:`settings`) and
    implement :meth:`corrupt`.
    """

    views = 1

    def __init__(self, config, *, distributed: bool = False) -> None:
        self.config = config
        #: The pixel loss (no state; ``Trainer.loss`` is the objective's loss module).
        self.loss = nn.MSELoss(reduction="none")

    @classmethod
    def check_config(cls, config) -> None:
        from ..encoder import has_feature_map, no_feature_map_message

        if not has_feature_map(config.backbone):
            raise ValueError(no_feature_map_message(config.backbone, who=f"objective={cls.name!r}"))

    def settings(self) -> dict[str, float]:
        """The corruption's settings (checkpointed under :attr:`state_keys`, as tensors)."""
        return {}

    def corrupt(self, views: Tensor, masks: Tensor, generators: list) -> tuple[Tensor, Tensor]:
        """``(inputs, weights)``: the corrupted views the encoder sees and the pixels the loss
        counts ((B, 1, *S), 0/1, inside the segment).  ``views`` are zero outside ``masks``
        already; ``generators[i]`` (CPU) draws everything random of item ``i``."""
        raise NotImplementedError

    # ------------------------------------------------------------------ Objective
    def build_model(self, encoder: nn.Module) -> nn.Module:
        cfg = self.config
        with torch.random.fork_rng(devices=[]):  # the decoder from the seed, the state untouched
            torch.manual_seed(cfg.seed + 2)
            head = PixelDecoder(
                encoder.embedding_dim,
                encoder.in_channels,
                spatial_dims=encoder.spatial_dims,
                stages=decoder_stages(encoder),
            )
        return _PretextModel(encoder, head)

    def compute(
        self,
        model: nn.Module,
        batch,
        *,
        to_device: Callable[[Tensor], Tensor],
        autocast: Callable[[], contextlib.AbstractContextManager],
    ) -> StepLoss:
        views, masks, keys = batch
        generators = [torch.Generator().manual_seed(int(k)) for k in keys]
        inside = (masks > 0.5).to(views.dtype)
        inputs, weights = self.corrupt(views * inside, masks > 0.5, generators)
        target = views * inside
        inputs, masks, target, weights = (to_device(t) for t in (inputs, masks, target, weights))
        probe = (inputs[:PROBE_CROPS].detach().clone(), masks[:PROBE_CROPS].detach().clone())
        with autocast():
            restored = model(inputs, masks)
        error = self.loss(restored.float(), target.float()) * weights
        count = weights.sum() * target.shape[1]
        loss = error.sum() / count.clamp_min(1.0)
        return StepLoss(loss=loss, n_crops=len(inputs), probe=probe)

    def state(self) -> dict:
        (key,) = self.state_keys
        values = self.settings().items()
        return {key: {k: torch.tensor(float(v), dtype=torch.float64) for k, v in values}}

    def load_state(self, ckpt: dict, *, source: str) -> None:
        (key,) = self.state_keys
        holder = _Settings(self.settings())
        load_state_checked(holder, ckpt[key], what=key, source=source)
        for name, value in self.settings().items():
            saved = float(getattr(holder, name))
            if not math.isclose(saved, float(value)):
                raise ValueError(
                    f"checkpoint {source}: it was trained with {self.name} {name}={saved:g}, "
                    f"this run has {value:g}: resume with the settings it was trained with"
                )


class _Settings(nn.Module):
    """The corruption's settings as buffers (checked loading of a checkpoint's tensors)."""

    def __init__(self, values: dict[str, float]) -> None:
        super().__init__()
        for name, value in values.items():
            self.register_buffer(name, torch.tensor(float(value), dtype=torch.float64))
