"""train_ssl(): masked self-supervised fine-tuning of a SegmentEncoder.

Underneath is :class:`~napari_segrep.engine.trainer.Trainer`, the loop, whose ``steps()`` is a
generator of step records (one per optimiser step); :func:`train_ssl` builds it with the
objective its config names (:mod:`napari_segrep.engine.objectives`) and the callbacks that write
checkpoints and report each record (:mod:`napari_segrep.engine.callbacks`), and runs it,
polling ``should_stop``.  Under ``torchrun`` it trains with
DistributedDataParallel (one process per GPU, or gloo on CPU).

Reproducibility, resume and the quality figures: see :mod:`napari_segrep.engine.trainer`.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .augment import AugmentConfig
from .dataset import SegmentDataset
from .encoder import SegmentEncoder
from .heads import ProjectionHead
from .run_folder import CHECKPOINT_NAME
from .train_config import TrainConfig, default
from .trainer import Trainer

__all__ = [
    "ProjectionHead",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "default_backbone",
    "train_ssl",
]


@dataclass
class TrainResult:
    """What :func:`train_ssl` returns: ``quality`` lists the quality records (see
    :func:`train_ssl`'s ``on_quality``), the start's first."""

    encoder: SegmentEncoder
    history: list[dict]
    checkpoint_path: Path | None
    stopped: bool = False
    head: ProjectionHead | None = None
    quality: list[dict] = field(default_factory=list)


def train_ssl(
    images: np.ndarray | Sequence[np.ndarray],
    labels: np.ndarray | Sequence[np.ndarray],
    *,
    encoder: SegmentEncoder | None = None,
    axes=None,
    spacing: Sequence[float] | None = None,
    epochs: int | None = default("epochs"),
    batch_size: int = default("batch_size"),
    crop_size: int | None = None,
    loss: str = default("loss"),
    optimizer: str = default("optimizer"),
    lr: float | None = default("lr"),
    image_masking: bool = default("image_masking"),
    feature_masking: bool = default("feature_masking"),
    device: str = "auto",
    checkpoint_dir: str | os.PathLike | None = None,
    resume: str | os.PathLike | None = None,
    run_config: str | Callable[[TrainConfig], str] | None = None,
    charts: bool = False,
    tensorboard: bool | None = False,
    seed: int = default("seed"),
    on_step: Callable[[dict], object] | None = None,
    should_stop: Callable[[], bool] | None = None,
    on_quality: Callable[[dict], object] | None = None,
    annotations: dict | None = None,
    **options,
) -> TrainResult:
    """Self-supervised fine-tuning of a :class:`SegmentEncoder` on the user's own segments.

    Each sample is one segment; two augmented views of it (with their masks) are embedded and
    projected, and the loss pulls the views together (NT-Xent, the default; TiCo, SegRep's;
    VICReg).  The defaults are the recipe measured to help on held-out data
    (``benchmarks/ssl_eval.py``; the README's "Why these defaults").

    Parameters
    ----------
    images, labels : ndarray or sequences of ndarrays
        (image, labels) pairs as for :func:`~napari_segrep.embed_segments`: 2D images, volumes
        or time-lapses, as ``axes`` says.
    encoder : SegmentEncoder, optional
        Starting point (copied, not modified); default an untrained ``backbone`` from ``seed``
        (resnet18 for 2D images, ``VOLUME_BACKBONE``, ``"resnet18_3d"``, for volumes).  Its
        ``spatial_dims`` must be the objects' (a 2D encoder for volumes is refused before any
        work, with the fix).
    axes : "yx", "zyx", "tyx", "tzyx", a Layout, None, or a sequence of them
        What every label image's axes are, as for :func:`~napari_segrep.embed_segments`: None
        is ``"yx"`` for 2D labels and ``"tzyx"`` for 4D ones; 3D labels must say (``"zyx"``: a
        z-stack, trained on as 3D objects with the 3D augmentation,
        :mod:`napari_segrep.engine.augment3d`; ``"tyx"``: a time-lapse, each frame a 2D image).
        A sequence gives each pair its own (``Layout`` s from
        :func:`~napari_segrep._images.layout_of` bring their spacing: volumes of several voxel
        sizes).
    spacing : (dz, dy, dx), optional
        The voxel size of volumes: each object's window is resampled to near-isotropic voxels,
        as ``embed_segments`` does, and no view rotates or flips z into y or x when z's spacing
        differs.  Recorded in the checkpoint's ``config``.
    epochs : int, optional
        Passes over the segments.  Default: 10, more when the segments are few, so that the run
        takes at least ``min_steps`` (160) optimiser steps; the number chosen is in the
        checkpoint's ``config`` and in every step record (``total_steps / steps_per_epoch``).
    batch_size : int
        Per process (per GPU under torchrun).
    crop_size : int, optional
        Side of the views; None: 64 for 2D images, 32 for volumes (as ``embed_segments``).
    loss : {"ntxent", "tico", "vicreg"}
    optimizer : {"adamw", "lars"}
        AdamW (the default) or LARS (SegRep's, for batches of thousands; biases and
        normalisation parameters are excluded from the trust ratio and weight decay).  Warm-up
        (10% of the steps) then cosine decay.  The projection head learns at ``head_lr_scale``
        (10) times the encoder's rate.
    lr : float, optional
        Default: AdamW 1e-4, LARS 0.3 x global batch / 256.
    image_masking, feature_masking : bool
        Both off is the plain SSL baseline (``--no-mask``).
    device : str
        ``"auto"``, ``"cpu"``, ``"cuda"``...; under torchrun each process takes its local GPU.
    checkpoint_dir : path, optional
        ``last.pt`` is written there (atomically) after every epoch and when stopped.
    resume : path, optional
        A training checkpoint to continue from exactly where it stopped.
    run_config : str or callable(TrainConfig) -> str, optional
        With ``checkpoint_dir``: the text of ``config.yaml`` (or a callable given the run's
        config, its epochs resolved), written there when training starts; a resumed run's
        folder keeps the one it has.
    charts : bool
        With ``checkpoint_dir``: ``charts/loss.png`` (loss, its terms and lr per step) and
        ``charts/quality.png`` (effective rank, view agreement per epoch), redrawn at every
        epoch end and when stopped.
    tensorboard : bool or None
        With ``checkpoint_dir``: TensorBoard logs in ``tensorboard/`` (scalars per step and
        epoch, the embedding projector of the monitor set at the start and the end).  None:
        when the tensorboard package is installed (else a warning, once); True: an
        ``ImportError`` with the fix when it is not, before any work.  Neither changes the
        training.  The run folder: the README's "The run folder".
    seed : int
    on_step : callable(dict), optional
        Called after every optimiser step with ``epoch``, ``step``, ``epoch_step``,
        ``steps_per_epoch``, ``total_steps``, ``loss``, the loss's terms (``loss_invariance``,
        ``loss_covariance`` for TiCo; ``loss_invariance``, ``loss_variance``,
        ``loss_covariance`` for VICReg, each already weighted, so they add up to ``loss``;
        none for NT-Xent), ``lr``, ``crops_per_s``.  With ``grad_accumulate`` > 1, ``loss``
        and its terms are means over the micro-batches.
    should_stop : callable() -> bool, optional
        Polled every step; when it returns True a checkpoint is written and the result returned
        (``stopped=True``).
    on_quality : callable(dict), optional
        Called with each quality record: before the first step (the start value; when
        resuming, the run's start record from the checkpoint) and after every epoch (after its
        checkpoint is written).  Keys: ``epoch`` (epochs completed), ``step``, ``loss`` (the
        mean loss of the epoch's steps; None for the start), ``effective_rank`` (RankMe of the
        encoder's embeddings of the monitor set: how many directions they use; a fall to a
        small fraction of the start is a collapse), ``view_agreement`` (the fraction of
        monitored segments whose two augmented views are each other's nearest neighbours, in
        [0, 1], chance 1 / n: the network recognises a segment under the augmentations),
        ``monitor`` (``"held-back"``: segments left out of training, or ``"training"``: a
        fixed subset of the training segments), ``n`` (segments monitored) and ``collapsed``
        (True when the effective rank fell below 30% of its start; a
        ``RepresentationCollapseWarning`` is issued the first time, saying what to try).
        See :mod:`napari_segrep.engine.quality`.
    annotations : dict, optional
        With ``objective="supervised"`` (and ``classes``): ``{(image, label): class index}``,
        ``image`` counted as :meth:`SegmentDataset.segment` counts them (a time-lapse's frames
        one by one); :func:`~napari_segrep.refine.refine_encoder` builds it from the
        user's table.
    **options
        Further :class:`TrainConfig` fields: ``grad_accumulate``, ``num_workers``,
        ``weight_decay``, ``warmup_fraction``, ``loss_kwargs``, ``min_size``, ``normalize``,
        ``channel_axis``, ``backbone``, ``projection_dim``, ``projection_hidden``, ``amp``,
        ``sync_batchnorm``, ``gather_distributed``, ``batchnorm_stats`` (``"frozen"``, the
        default: the encoder's BatchNorm statistics stay the starting point's; ``"update"``),
        ``head_lr_scale``, ``augment`` (a dict of
        :class:`~napari_segrep.engine.augment.AugmentConfig` fields), ``monitor_size`` (None:
        10% of the segments, at most 256, held back from training when at least 200 remain,
        otherwise up to 256 training segments are monitored; 0: no quality figures) and
        ``monitor_hold_out`` (None: that rule; True/False: hold the monitor set back or not).

    Returns
    -------
    TrainResult
        ``encoder`` (eval mode, ready for ``embed_segments``), ``history`` (list of step
        records), ``checkpoint_path``, ``stopped``, ``quality`` (the quality records).

    Raises
    ------
    TrainingDiverged
        The loss became NaN/Inf (the last good checkpoint is kept).
    ValueError
        Bad configuration, or no segment to train on.
    """
    from .callbacks import (
        CheckpointCallback,
        ProgressCallback,
        run_folder_callbacks,
        run_folder_entries,
    )
    from .dataset import pair_layouts, pair_lists, recorded_layout
    from .pipeline import check_spatial_dims, default_crop_size

    folder = {"config": run_config, "charts": charts, "tensorboard": tensorboard}
    # the run folder's files besides last.pt (TensorBoard asked for and missing: refused now)
    logs = [] if checkpoint_dir is None else run_folder_callbacks(checkpoint_dir, **folder)

    images, labels = pair_lists(images, labels)
    # What the axes are, and an encoder that fits them, before any work.
    layouts = pair_layouts(labels, axes=axes, spacing=spacing)
    layout = layouts[0]
    recorded_axes, recorded_spacing = recorded_layout(layouts)  # for the checkpoint
    if "backbone" not in options or options["backbone"] is None:
        options["backbone"] = (
            encoder.backbone_name if encoder is not None else default_backbone(layout)
        )
    if crop_size is None:
        crop_size = default_crop_size(layout, options["backbone"])
    if encoder is not None:
        check_spatial_dims(encoder, layout)
    else:
        _check_backbone_dims(options["backbone"], layout)
    try:
        config = TrainConfig(
            epochs=epochs,
            batch_size=batch_size,
            crop_size=crop_size,
            axes=recorded_axes,
            spacing=recorded_spacing,
            loss=loss,
            optimizer=optimizer,
            lr=lr,
            image_masking=image_masking,
            feature_masking=feature_masking,
            seed=seed,
            **options,
        )
    except TypeError as exc:
        raise TypeError(f"train_ssl: {exc}") from None
    from .objectives import objective_class

    objective = objective_class(config)
    objective.check_config(config)  # e.g. a backbone without one feature map: before any work
    augment = AugmentConfig(**{**config.augment, "crop_size": config.crop_size})
    dataset = SegmentDataset(
        images,
        labels,
        axes=layouts,
        crop_size=config.crop_size,
        channel_axis=config.channel_axis,
        normalize=config.normalize,
        min_size=config.min_size,
        augment=augment,
        seed=config.seed,
        image_masking=config.image_masking,
        views=objective.views,
    )
    if dataset.n_skipped:
        warnings.warn(
            f"{dataset.n_skipped} segment(s) smaller than min_size={config.min_size} pixels "
            "were skipped",
            stacklevel=2,
        )
    if objective.needs_targets:
        _annotate(dataset, annotations or {}, classes=config.classes)
    elif annotations:
        raise ValueError(
            f"annotations train the supervised objective, not {config.objective!r}: "
            "use refine_encoder(...)"
        )
    if len(dataset) < 2:
        raise ValueError(
            f"found {len(dataset)} segment(s) of at least {config.min_size} pixels: training "
            "needs at least 2 (check the labels, or lower min_size)"
        )
    from ..io import claim_run_dir

    ckpt_path = Path(checkpoint_dir) / CHECKPOINT_NAME if checkpoint_dir is not None else None
    callbacks = [] if ckpt_path is None else [CheckpointCallback(ckpt_path), *logs]
    callbacks.append(ProgressCallback(on_step, on_quality))  # after the checkpoint's
    trainer = Trainer(dataset, config, encoder=encoder, device=device, callbacks=callbacks)
    if resume is not None:
        trainer.load(resume)
    run_dir = contextlib.nullcontext()
    if ckpt_path is not None and trainer.dist.is_main:
        # Never another run's checkpoint (unless resuming it), never two trainings at once, room
        # for the weights and the optimiser state: checked, and the folder locked, before a step.
        size = sum(p.numel() * p.element_size() for p in trainer.model.parameters())
        run_dir = claim_run_dir(
            ckpt_path.parent,
            resume=resume,
            checkpoint_name=CHECKPOINT_NAME,
            needed_bytes=3 * size,
            others=run_folder_entries(**folder),
        )
    with run_dir:
        stopped = trainer.run(should_stop)
    encoder_out = trainer.model.encoder.eval()
    return TrainResult(
        encoder=encoder_out,
        history=list(trainer.history),
        checkpoint_path=ckpt_path if ckpt_path is not None and ckpt_path.exists() else None,
        stopped=stopped,
        head=trainer.model.head,
        quality=[dict(r) for r in trainer.quality],
    )


def _annotate(dataset: SegmentDataset, annotations: dict, *, classes) -> None:
    """Give ``dataset`` its targets; a ``ValueError`` naming what is missing when an annotated
    segment is not among its samples (absent, or smaller than ``min_size``) or a class has
    no annotated segment left."""
    found = dataset.annotate(annotations)
    if found < len(annotations):
        have = {dataset.segment(i) for i in range(len(dataset))}
        lost = sorted(k for k in annotations if k not in have)
        shown = ", ".join(f"image {u} label {lab}" for u, lab in lost[:5])
        more = f" and {len(lost) - 5} more" if len(lost) > 5 else ""
        raise ValueError(
            f"{len(lost)} annotated segment(s) are not among the training segments ({shown}"
            f"{more}): they are absent from the labels or smaller than min_size; remove their "
            "annotations or lower min_size"
        )
    counts = np.bincount(dataset.targets[dataset.targets >= 0], minlength=len(classes))
    empty = [c for c, n in zip(classes, counts, strict=True) if n == 0]
    if empty:
        raise ValueError(f"no annotated segment of class(es) {', '.join(map(repr, empty))}")


def default_backbone(layout) -> str:
    """The backbone a new run trains when neither an encoder nor a backbone is given: resnet18
    for 2D images, :data:`~napari_segrep.engine.embed.VOLUME_BACKBONE` for volumes (what
    ``embed_segments`` embeds them with by default)."""
    if layout.is_volume:
        from .embed import VOLUME_BACKBONE

        return VOLUME_BACKBONE
    return "resnet18"


def _check_backbone_dims(name: str, layout) -> None:
    """A ``ValueError`` with the fix when the backbone ``name`` embeds crops of another dimension
    than ``layout``'s objects (checked before any work)."""
    from .backbones import get_backbone

    dims = get_backbone(name).spatial_dims
    if dims == layout.spatial_ndim:
        return
    if layout.is_volume:
        raise ValueError(
            f"backbone={name!r} embeds 2D crops but the objects are 3D (axes {layout.axes!r}): "
            "train a 3D backbone, backbone='resnet18_3d' (native 3D) or "
            "backbone='resnet18_planes' (fast, three orthogonal planes); a stack of 2D images is "
            "a time-lapse, axes='tyx'"
        )
    raise ValueError(
        f"backbone={name!r} embeds 3D volumes but the objects are 2D (axes {layout.axes!r}): "
        "train a 2D backbone, e.g. backbone='resnet18'; a z-stack's labels are 3D, axes='zyx'"
    )
