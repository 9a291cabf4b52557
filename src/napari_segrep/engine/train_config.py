"""TrainConfig: every setting of a training run (stored in training checkpoints)."""

from __future__ import annotations

import math
from dataclasses import MISSING, Field, asdict, dataclass, field, fields

from ..catalogue import backbone_choices

__all__ = [
    "DEFAULT_EPOCHS",
    "SUPERVISED",
    "ROTATIONS_HELP",
    "TrainConfig",
    "choices",
    "default",
    "help_text",
    "setting",
    "steps_per_epoch",
]

#: Epochs of a run when ``epochs`` is None and the segments are many (see ``min_steps``).
DEFAULT_EPOCHS = 10
#: The objective that refines an encoder from annotations (``classes`` set).
SUPERVISED = "supervised"
#: The default ``min_steps``.
_MIN_STEPS = 160

# Settings that make a resumed run differ from an uninterrupted one.
_RESUME_KEYS = (
    "backbone",
    "batch_size",
    "crop_size",
    "objective",
    "classes",
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


#: What ``rotations`` (the CLI's ``--rotations``, the widget's "rotations and flips") does:
#: ``augment={"rotate90": True, "flip": True}``.
ROTATIONS_HELP = (
    "also teach invariance to 90-degree rotations and flips (only for objects whose orientation "
    "carries no meaning: it merges a 6 and a 9)"
)


def _setting(default=None, help: str = "", *, factory=None, **meta):
    """A :class:`TrainConfig` field with its help text and, where they apply, ``choices``
    (the values allowed), ``metavar`` (the command line's name for the value), ``auto``
    (what None, or the command line's default, chooses) and ``off`` (the help of the command
    line's switch that turns a True default off)."""
    metadata = {"help": help, **meta}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class TrainConfig:
    """Every setting of a training run (stored in checkpoints), with its default and its help
    text: the one place the command line's ``train`` options and the Train SegRep widget's
    fields take them from (:func:`default`, :func:`help_text`, :func:`choices`)."""

    #: Passes over the segments.  None: :data:`DEFAULT_EPOCHS`, or more when the segments are
    #: few, so that the run takes at least ``min_steps`` optimiser steps
    #: (see :meth:`resolve_epochs`).
    epochs: int | None = _setting(
        None,
        "passes over all segments",
        metavar="N",
        auto=f"{DEFAULT_EPOCHS}, more when the segments are few, so that training takes at "
        f"least {_MIN_STEPS} steps",
    )
    #: With ``epochs=None``: the fewest optimiser steps a run takes.
    min_steps: int = _setting(
        _MIN_STEPS, "with automatic epochs: the fewest optimiser steps a run takes", metavar="N"
    )
    batch_size: int = _setting(64, "segments per batch, per process (per GPU)", metavar="N")
    crop_size: int = _setting(
        64,
        "crop side in pixels (voxels for volumes); larger segments are downscaled to fit",
        metavar="N",
        auto="64 for 2D images, 32 for volumes",
    )
    #: What training optimises (:mod:`napari_segrep.engine.objectives`): two augmented views
    #: pulled together by ``loss``, or one of BiaPy's pretext tasks (their own pixel loss).
    objective: str = _setting(
        "contrastive",
        "what training optimises: contrastive (two views of a segment pulled together by "
        "--loss), masking (reconstruct hidden patches inside the segment) or crappify "
        "(restore a degraded segment) or supervised (refine from annotations: "
        "--annotations)",
        choices=("contrastive", "masking", "crappify", SUPERVISED),
    )
    #: The annotated classes, in the order of the supervised objective's targets (its
    #: classifier has one output per class); None for the self-supervised objectives.  Set from
    #: the annotations (``refine_encoder``, ``train --annotations``).
    classes: tuple | None = _setting(None, "the annotated classes (set from the annotations)")
    loss: str = _setting(
        "ntxent",
        "self-supervised loss between the two views",
        choices=("ntxent", "tico", "vicreg"),
    )
    loss_kwargs: dict = _setting(help="the loss's hyper-parameters", factory=dict)
    optimizer: str = _setting(
        "adamw",
        "AdamW (short fine-tuning, small batches) or LARS (SegRep's, for batches of thousands); "
        "warm-up then cosine decay",
        choices=("adamw", "lars"),
    )
    lr: float | None = _setting(
        None, "learning rate", auto="AdamW 1e-4, LARS 0.3 x global batch / 256"
    )
    weight_decay: float | None = _setting(
        None, "weight decay", metavar="W", auto="AdamW 1e-4, LARS 1.5e-6"
    )
    warmup_fraction: float = _setting(
        0.1, "fraction of the steps spent warming the rate up", metavar="F"
    )
    #: "frozen": the encoder's BatchNorm statistics stay those it started with (its weights
    #: and biases still train); "update": re-estimated from the training views, as usual.
    batchnorm_stats: str = _setting(
        "frozen",
        "keep the encoder's BatchNorm statistics (frozen) or re-estimate them from the "
        "training views (update)",
        choices=("frozen", "update"),
    )
    #: The projection head's learning rate as a multiple of ``lr`` (the encoder's).
    head_lr_scale: float = _setting(
        10.0, "the projection head's learning rate over the encoder's", metavar="X"
    )
    grad_accumulate: int = _setting(1, "micro-batches per optimiser step", metavar="N")
    image_masking: bool = _setting(
        True,
        "the network sees only the segment's pixels",
        off="switch off image masking only",
    )
    feature_masking: bool = _setting(
        True,
        "features are masked to the segment after every block",
        off="switch off feature masking only",
    )
    backbone: str = _setting(
        "resnet18",
        "encoder of a new run, a registered backbone: "
        + ", ".join(backbone_choices(2))
        + " for 2D images; resnet18_3d (native 3D) or resnet18_planes (fast, three orthogonal "
        "planes) for volumes",
        metavar="NAME",
        auto="resnet18 for 2D images, resnet18_3d for volumes",
    )
    projection_hidden: int = _setting(
        1024, "width of the projection head's hidden layer", metavar="N"
    )
    projection_dim: int = _setting(256, "width of the projection head's output", metavar="N")
    min_size: int = _setting(16, "skip segments with fewer pixels (voxels)", metavar="N")
    normalize: str | tuple | None = _setting(
        "image", "image, segment, none or LOW,HIGH (as for embed)", metavar="MODE"
    )
    channel_axis: int | None = _setting(
        None,
        "channel axis of multichannel images (counted in the whole image: a time-lapse's "
        "time axis is axis 0)",
        metavar="K",
    )
    #: What the label images' axes are ("yx", "zyx", "tyx", "tzyx"; None: "yx" for 2D labels,
    #: "tzyx" for 4D ones): :func:`napari_segrep._images.layout_of`; a tuple of one per pair
    #: where they differ.
    axes: str | tuple | None = _setting(None, "what the label images' axes are")
    #: The voxel size of volumes, (dz, dy, dx); None: isotropic; a tuple of one per pair where
    #: they differ.
    spacing: tuple | None = _setting(None, "the voxel size of volumes, (dz, dy, dx)")
    num_workers: int = _setting(0, "data loader worker processes", metavar="N")
    seed: int = _setting(0, "seed of the model, data order and views", metavar="N")
    amp: bool = _setting(True, "mixed precision on CUDA", off="no mixed precision on CUDA")
    sync_batchnorm: bool = _setting(
        True,
        "BatchNorm statistics over all processes under DDP",
        off="per-process BatchNorm statistics under DDP",
    )
    gather_distributed: bool = _setting(
        True,
        "the loss compares the segments of all processes under DDP",
        off="compute the loss on each process's batch only under DDP",
    )
    augment: dict = _setting(help="AugmentConfig fields (rotate90, flip...)", factory=dict)
    #: Segments whose embeddings are followed during training (effective rank, view
    #: agreement; see :mod:`napari_segrep.engine.quality`): None = 10% (at most 256), held
    #: back from training when at least 200 remain, else up to 256 training segments; 0 = off.
    monitor_size: int | None = _setting(
        None,
        "segments whose embeddings are followed during training (0: none)",
        metavar="N",
        auto="a tenth of the segments, at most 256",
    )
    #: Leave the monitored segments out of training: None = when at least 200 remain.
    monitor_hold_out: bool | None = _setting(
        None,
        "leave the monitored segments out of training",
        auto="when at least 200 segments remain to train on",
    )

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
        for name in ("objective", "optimizer", "batchnorm_stats"):
            allowed = choices(name)
            if getattr(self, name) not in allowed:
                raise ValueError(
                    f"{name}={getattr(self, name)!r}: choose "
                    + " or ".join(repr(c) for c in allowed)
                )
        if self.classes is not None:
            if isinstance(self.classes, str) or not all(isinstance(c, str) for c in self.classes):
                raise ValueError(f"classes must be a sequence of class names, got {self.classes!r}")
            self.classes = tuple(self.classes)
            if self.objective != SUPERVISED:
                raise ValueError(
                    f"classes are the supervised objective's; objective={self.objective!r} "
                    "learns without annotations: leave classes out"
                )
        if self.objective != "contrastive" and self.loss != default("loss"):
            raise ValueError(
                f"loss={self.loss!r} is the contrastive objective's two-view loss; "
                f"objective={self.objective!r} has its own loss: leave loss out"
            )
        if not self.head_lr_scale > 0:
            raise ValueError(f"head_lr_scale must be > 0, got {self.head_lr_scale!r}")
        for name in ("projection_hidden", "projection_dim"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.weight_decay is not None and not 0 <= self.weight_decay < math.inf:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if not 0 <= self.warmup_fraction < 1:
            raise ValueError(
                f"warmup_fraction must be in [0, 1) (a fraction of the steps), got "
                f"{self.warmup_fraction!r}"
            )
        size = self.monitor_size
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 0):
            raise ValueError(f"monitor_size must be 0 (none) or more, got {size!r}")
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
            if key in ("axes", "spacing", "classes"):  # lists in the checkpoint
                theirs = _frozen(theirs)
            if key == "objective" and theirs is None:  # written before objectives were chosen
                theirs = default("objective")
            if theirs != ours:
                out.append((key, ours, theirs))
        return out

    def to_dict(self) -> dict:
        out = asdict(self)
        out["normalize"] = (
            list(self.normalize) if isinstance(self.normalize, tuple) else self.normalize
        )
        out["axes"], out["spacing"] = _listed(self.axes), _listed(self.spacing)
        out["classes"] = None if self.classes is None else [str(c) for c in self.classes]
        return out


def setting(name: str) -> Field:
    """The :class:`TrainConfig` field ``name`` (a ``KeyError`` naming the fields otherwise)."""
    try:
        return _FIELDS[name]
    except KeyError:
        raise KeyError(f"{name!r} is no TrainConfig field: {sorted(_FIELDS)}") from None


def default(name: str):
    """The default of the setting ``name`` (a fresh copy for a dict)."""
    spec = setting(name)
    if spec.default_factory is not MISSING:
        return spec.default_factory()
    return spec.default


def help_text(name: str, *, with_default: bool = False) -> str:
    """The help of the setting ``name``; ``with_default``: followed by ``(default: ...)``, what
    None chooses where the default is chosen from the data or the optimiser."""
    meta = setting(name).metadata
    text = meta["help"]
    if with_default and "auto" in meta:
        text = f"{text} (default: {meta['auto']})"
    return text


def choices(name: str) -> tuple | None:
    """The values the setting ``name`` allows (None: any of its type)."""
    return setting(name).metadata.get("choices")


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


_FIELDS: dict[str, Field] = {f.name: f for f in fields(TrainConfig)}
