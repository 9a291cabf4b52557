"""TrainConfig: every setting of a training run (stored in training checkpoints)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

__all__ = ["DEFAULT_EPOCHS", "TrainConfig", "steps_per_epoch"]

#: Epochs of a run when ``epochs`` is None and the segments are many (see ``min_steps``).
DEFAULT_EPOCHS = 10

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
    "batchnorm_stats",
    "head_lr_scale",
    "axes",
    "spacing",
)


@dataclass
class TrainConfig:
    """Every setting of a training run (stored in checkpoints)."""

    #: Passes over the segments.  None: :data:`DEFAULT_EPOCHS`, or more when the segments are
    #: few, so that the run takes at least ``min_steps`` optimiser steps
    #: (see :meth:`resolve_epochs`).
    epochs: int | None = None
    #: With ``epochs=None``: the fewest optimiser steps a run takes.
    min_steps: int = 160
    batch_size: int = 64
    crop_size: int = 64
    loss: str = "ntxent"
    loss_kwargs: dict = field(default_factory=dict)
    optimizer: str = "adamw"
    lr: float | None = None
    weight_decay: float | None = None
    warmup_fraction: float = 0.1
    #: "frozen": the encoder's BatchNorm statistics stay those it started with (its weights
    #: and biases still train); "update": re-estimated from the training views, as usual.
    batchnorm_stats: str = "frozen"
    #: The projection head's learning rate as a multiple of ``lr`` (the encoder's).
    head_lr_scale: float = 10.0
    grad_accumulate: int = 1
    image_masking: bool = True
    feature_masking: bool = True
    backbone: str = "resnet18"
    projection_hidden: int = 1024
    projection_dim: int = 256
    min_size: int = 16
    normalize: str | tuple | None = "image"
    channel_axis: int | None = None
    #: What the label images' axes are ("yx", "zyx", "tyx", "tzyx"; None: "yx" for 2D labels,
    #: "tzyx" for 4D ones): :func:`napari_segrep._images.layout_of`; a tuple of one per pair
    #: where they differ.
    axes: str | tuple | None = None
    #: The voxel size of volumes, (dz, dy, dx); None: isotropic; a tuple of one per pair where
    #: they differ.
    spacing: tuple | None = None
    num_workers: int = 0
    seed: int = 0
    amp: bool = True
    sync_batchnorm: bool = True
    gather_distributed: bool = True
    augment: dict = field(default_factory=dict)
    #: Segments whose embeddings are followed during training (effective rank, view
    #: agreement; see :mod:`napari_segrep.engine.quality`): None = 10% (at most 256), held
    #: back from training when at least 200 remain, else up to 256 training segments; 0 = off.
    monitor_size: int | None = None
    #: Leave the monitored segments out of training: None = when at least 200 remain.
    monitor_hold_out: bool | None = None

    def __post_init__(self) -> None:
        for name in ("epochs", "min_steps", "batch_size", "crop_size", "grad_accumulate"):
            value = getattr(self, name)
            if name == "epochs" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        from .inputs import MAX_CROP_SIZE

        if self.crop_size > MAX_CROP_SIZE:
            raise ValueError(f"crop_size={self.crop_size} is too large: at most {MAX_CROP_SIZE}")
        if self.batch_size < 2:
            raise ValueError("batch_size must be at least 2 (contrastive losses compare samples)")
        if self.optimizer not in ("lars", "adamw"):
            raise ValueError(f"optimizer={self.optimizer!r}: choose 'lars' or 'adamw'")
        if self.batchnorm_stats not in ("frozen", "update"):
            raise ValueError(
                f"batchnorm_stats={self.batchnorm_stats!r}: choose 'frozen' or 'update'"
            )
        if not self.head_lr_scale > 0:
            raise ValueError(f"head_lr_scale must be > 0, got {self.head_lr_scale!r}")
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if isinstance(self.normalize, list):
            self.normalize = tuple(self.normalize)
        self.axes, self.spacing = _frozen(self.axes), _frozen(self.spacing)

    def resolve_epochs(self, steps_per_epoch: int) -> int:
        """``epochs``, or the default: 10 epochs, more when an epoch is short, so that a run
        takes at least ``min_steps`` steps.  Measured in ``benchmarks/ssl_eval.py``: 320
        textured cells, 10 epochs (40 steps) made a linear probe worse (-0.020), 40 epochs
        (160 steps) better (+0.035, and k-NN +0.169); 1,200 digits (16 steps an epoch) gain
        with 10."""
        if self.epochs is not None:
            return self.epochs
        return max(DEFAULT_EPOCHS, -(-self.min_steps // max(1, steps_per_epoch)))

    def effective_lr(self, world_size: int = 1) -> float:
        """``lr``, or the default: AdamW 1e-4 (fine-tuning: a step moves a weight by about
        ``lr``, so 1e-3 rewrites a convolution of weights ~0.06 within ~100 steps; measured in
        ``benchmarks/ssl_eval.py``), LARS 0.3 x global batch / 256 (SimCLR/TiCo's linear
        scaling rule, meant for batches of thousands: at batch 64 a LARS step changes a weight
        tensor by ~1e-4 of its norm and a few hundred steps learn nothing)."""
        if self.lr is not None:
            return float(self.lr)
        if self.optimizer == "lars":
            return 0.3 * self.batch_size * self.grad_accumulate * world_size / 256
        return 1e-4

    def effective_weight_decay(self) -> float:
        if self.weight_decay is not None:
            return float(self.weight_decay)
        return 1.5e-6 if self.optimizer == "lars" else 1e-4

    def resume_differences(self, saved: dict) -> list[tuple[str, object, object]]:
        """``(key, ours, saved)`` for each setting that differs from a checkpoint's ``config``
        and makes the resumed run differ from an uninterrupted one."""
        out = []
        for key in _RESUME_KEYS:
            theirs, ours = saved.get(key), getattr(self, key)
            if key in ("axes", "spacing"):  # lists in the checkpoint
                theirs = _frozen(theirs)
            if theirs != ours:
                out.append((key, ours, theirs))
        return out

    def to_dict(self) -> dict:
        out = asdict(self)
        out["normalize"] = (
            list(self.normalize) if isinstance(self.normalize, tuple) else self.normalize
        )
        out["axes"], out["spacing"] = _listed(self.axes), _listed(self.spacing)
        return out


def _frozen(value):
    """Lists as tuples, numbers as floats, all the way down (strings and None as they are)."""
    if isinstance(value, (list, tuple)):
        return tuple(_frozen(v) for v in value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return value


def _listed(value):
    """Tuples as lists, all the way down (a checkpoint's JSON-like config)."""
    if isinstance(value, tuple):
        return [_listed(v) for v in value]
    return value


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
