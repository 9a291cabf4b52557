"""TrainConfig: every setting of a training run (stored in training checkpoints)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

__all__ = ["TrainConfig"]


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

    def to_dict(self) -> dict:
        out = asdict(self)
        out["normalize"] = (
            list(self.normalize) if isinstance(self.normalize, tuple) else self.normalize
        )
        return out
