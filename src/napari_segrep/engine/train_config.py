"""TrainConfig: every setting of a training run (stored in training checkpoints)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

__all__ = ["TrainConfig", "steps_per_epoch"]

# Settings that make a resumed run differ from an uninterrupted one.
_RESUME_KEYS = (
    "backbone",
    "batch_size",
    "crop_size",
    "loss",
    "optimizer",
    "projection_dim",
    "projection_hidden",
    "grad_accumulate",
    "seed",
)


@dataclass
class TrainConfig:
    """Every setting of a training run (stored in checkpoints)."""

    epochs: int = 20
    batch_size: int = 64
    crop_size: int = 64
    loss: str = "tico"
    loss_kwargs: dict = field(default_factory=dict)
    optimizer: str = "lars"
    lr: float | None = None
    weight_decay: float | None = None
    warmup_fraction: float = 0.1
    grad_accumulate: int = 1
    image_masking: bool = True
    feature_masking: bool = True
    backbone: str = "resnet18"
    projection_hidden: int = 1024
    projection_dim: int = 256
    min_size: int = 16
    normalize: str | tuple | None = "image"
    channel_axis: int | None = None
    num_workers: int = 0
    seed: int = 0
    amp: bool = True
    sync_batchnorm: bool = True
    gather_distributed: bool = True
    augment: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "crop_size", "grad_accumulate"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        from .inputs import MAX_CROP_SIZE

        if self.crop_size > MAX_CROP_SIZE:
            raise ValueError(f"crop_size={self.crop_size} is too large: at most {MAX_CROP_SIZE}")
        if self.batch_size < 2:
            raise ValueError("batch_size must be at least 2 (contrastive losses compare samples)")
        if self.optimizer not in ("lars", "adamw"):
            raise ValueError(f"optimizer={self.optimizer!r}: choose 'lars' or 'adamw'")
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if isinstance(self.normalize, list):
            self.normalize = tuple(self.normalize)

    def effective_lr(self, world_size: int = 1) -> float:
        """``lr``, or the default: LARS 0.3 x global batch / 256 (SimCLR/TiCo's linear scaling
        rule), AdamW 1e-3."""
        if self.lr is not None:
            return float(self.lr)
        if self.optimizer == "lars":
            return 0.3 * self.batch_size * self.grad_accumulate * world_size / 256
        return 1e-3

    def effective_weight_decay(self) -> float:
        if self.weight_decay is not None:
            return float(self.weight_decay)
        return 1.5e-6 if self.optimizer == "lars" else 1e-4

    def resume_differences(self, saved: dict) -> list[tuple[str, object, object]]:
        """``(key, ours, saved)`` for each setting that differs from a checkpoint's ``config``
        and makes the resumed run differ from an uninterrupted one."""
        return [
            (key, getattr(self, key), saved.get(key))
            for key in _RESUME_KEYS
            if saved.get(key) != getattr(self, key)
        ]

    def to_dict(self) -> dict:
        out = asdict(self)
        out["normalize"] = (
            list(self.normalize) if isinstance(self.normalize, tuple) else self.normalize
        )
        return out


def steps_per_epoch(n_segments: int, *, batch: int, grad_accumulate: int, world_size: int) -> int:
    """Optimiser steps per epoch: ``grad_accumulate`` micro-batches of ``batch`` segments per
    step on each of ``world_size`` processes (leftover segments wait for the next epoch).

    Raises
    ------
    ValueError
        Fewer than 2 segments per process, or too few for one step, naming the numbers.
    """
    on = f" on {world_size} processes" if world_size > 1 else ""
    if batch < 2:
        raise ValueError(
            f"{n_segments} segment(s) are too few to train{on}: at least 2 per process are needed"
        )
    micro = (n_segments // world_size) // batch
    if micro < grad_accumulate:
        raise ValueError(
            f"grad_accumulate={grad_accumulate} needs {grad_accumulate} micro-batches of {batch} "
            f"segments per step, but {n_segments} segment(s){on} make {micro} micro-batch(es): "
            f"use grad_accumulate={micro} or less, or a smaller batch_size"
        )
    return micro // grad_accumulate
