"""refine_encoder(): teach the encoder the classes a user annotated, never worse silently.

The annotations are split (per class, seeded) into the segments the refinement learns from and
a third held out; the encoder is refined with the supervised objective
(:mod:`napari_segrep.engine.objectives.supervised`: SupCon on every segment, weighted
cross-entropy on the annotated ones) in the same training loop as ``train_ssl`` (checkpoints,
run folder, resume, progress, stop); then a classifier trained on the learning annotations'
embeddings is scored on the held-out ones, with the starting encoder and with the refined one.
The refined encoder is kept only when it classifies the held-out annotations at least as well
(or when the caller insists, ``keep_if_worse=True``).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .engine.train_config import SUPERVISED
from .errors import Cancelled

if TYPE_CHECKING:  # numpy is imported where it is used: `napari-segrep --help` stays light
    import numpy as np

__all__ = ["HELD_OUT_FRACTION", "MIN_PER_CLASS", "RefineResult", "refine_encoder"]

#: The share of each class's annotations held out to compare the encoders.
HELD_OUT_FRACTION = 1 / 3
#: Annotations a class needs: 2 to learn from (a classifier needs 2 per class) and 1 held out.
MIN_PER_CLASS = 3
#: Segments whose embeddings a refinement follows (effective rank, view agreement), unless
#: ``monitor_size`` says otherwise: fewer than ``train_ssl``'s 256, a refinement is short.
MONITOR_SIZE = 64
#: Optimiser steps of a refinement with ``epochs="auto"``, of :data:`BATCH_SIZE` segments (two
#: views each): about 1.5 minutes for ~500 segments on a 2-core CPU (resnet18, crop 64).
#: Measured on the generated nuclei, 20 clicks per class: 36 steps of 64 gained +0.05, 96
#: steps of 64 or of 32 +0.06 (the same), so 96 of 32 (``benchmarks/classify_clicks.py``).
AUTO_STEPS = 96
#: Segments per step (``train_ssl``'s 64 cost twice the time for the same gain).
BATCH_SIZE = 32
#: AdamW's learning rate (``train_ssl``'s 1e-4 is for long self-supervised runs; a refinement is
#: short, and its cross-entropy head starts from nothing).
LR = 3e-4


@dataclass
class RefineResult:
    """What :func:`refine_encoder` returns: the fields of ``train_ssl``'s
    :class:`~napari_segrep.engine.training.TrainResult` (``encoder`` is the encoder to use from
    now on: the refined one, or the starting one when refining did not help) and the
    comparison.

    Attributes
    ----------
    encoder : SegmentEncoder
    history, quality : list of dict
    checkpoint_path : Path or None
    stopped : bool
    head : nn.Module or None
        The objective's head (projection and classifier), as trained.
    refined_encoder : SegmentEncoder or None
        The refined encoder, kept or not (None when the run was stopped before it ended).
    accepted : bool
        ``encoder`` is the refined one.
    accuracy_before, accuracy_after : float or None
        The held-out annotations' accuracy, a logistic classifier trained on the other
        annotations' embeddings by the starting / refined encoder (None when stopped).
    n_learned, n_held_out : int
        Annotations the refinement learned from / held out to compare.
    classes : tuple of str
    message : str
        One line for the user: what happened and what was kept.
    """

    encoder: object
    history: list
    checkpoint_path: object
    stopped: bool = False
    head: object = None
    quality: list = field(default_factory=list)
    refined_encoder: object = None
    accepted: bool = False
    accuracy_before: float | None = None
    accuracy_after: float | None = None
    n_learned: int = 0
    n_held_out: int = 0
    classes: tuple = ()
    message: str = ""


def refine_encoder(
    images: np.ndarray | Sequence[np.ndarray],
    labels: np.ndarray | Sequence[np.ndarray],
    annotations,
    *,
    encoder=None,
    axes=None,
    spacing: Sequence[float] | None = None,
    epochs: int | str | None = "auto",
    batch_size: int | None = None,
    lr: float | None = None,
    crop_size: int | None = None,
    seed: int = 0,
    device: str = "auto",
    progress: Callable[[int, int], object] | None = None,
    should_stop: Callable[[], bool] | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    keep_if_worse: bool = False,
    **options,
) -> RefineResult:
    """Refine an encoder from annotated segments (a few clicks per class), and keep it only
    where it helps.

    Parameters
    ----------
    images, labels : ndarray or sequences of ndarrays
        As for :func:`~napari_segrep.engine.training.train_ssl` (every segment is trained on:
        the unannotated ones through the self-supervised term).
    annotations : mapping or DataFrame
        ``{label: class}`` for one image, or a DataFrame with ``label`` and ``class`` (plus
        ``image``, the position in ``images``, when there are several, and ``frame`` for
        time-lapses), as :func:`~napari_segrep.train_classifier` takes them.  At least 2
        classes and :data:`MIN_PER_CLASS` (3) segments of each.
    encoder : SegmentEncoder, optional
        The starting point (not modified): the encoder the user's table was embedded with.
        Default: ``embed_segments``' (an untrained resnet18 of seed 0 for 2D images).
    epochs : int or "auto"
        ``"auto"``: :data:`AUTO_STEPS` (96) optimiser steps (at least 1 epoch).
    batch_size : int, optional
        Segments per step; default :data:`BATCH_SIZE` (32).
    lr : float, optional
        AdamW's learning rate; default :data:`LR` (3e-4; the head learns at 10x).
    progress : callable(done, total), optional
        Called after every optimiser step.
    should_stop : callable() -> bool, optional
        Polled every step: stopping keeps the starting encoder (``stopped=True``).
    checkpoint_dir : path, optional
        The run folder (``last.pt``, ``config.yaml`` via ``run_config``, charts...).
    keep_if_worse : bool
        Use the refined encoder even when it classifies the held-out annotations worse.
    **options
        Further ``train_ssl`` arguments (``resume``, ``run_config``, ``charts``,
        ``tensorboard``, ``on_step``, ``min_size``, ``normalize``, ``monitor_size`` (default
        :data:`MONITOR_SIZE`)...).

    Returns
    -------
    RefineResult

    Raises
    ------
    Cancelled
        ``should_stop`` returned True while the starting encoder was being measured (nothing
        was trained yet).
    ValueError
        Before any training: annotations naming segments that are not in the labels, one
        class, a class with fewer than 3 annotations, a segment with two classes.
    """
    import numpy as np

    from .engine.dataset import pair_layouts, pair_lists
    from .engine.pipeline import default_crop_size
    from .engine.training import train_ssl

    images, labels = pair_lists(images, labels)
    layouts = pair_layouts(labels, axes=axes, spacing=spacing)
    keys, names, n_segments = _annotated_segments(labels, layouts, annotations)
    classes = tuple(sorted(set(names)))
    if len(classes) < 2:
        only = f" (only {classes[0]!r})" if classes else ""
        raise ValueError(f"annotations need at least 2 classes{only}: annotate another class")
    target = np.searchsorted(classes, names)
    counts = np.bincount(target, minlength=len(classes))
    few = [f"{c!r} ({n})" for c, n in zip(classes, counts, strict=True) if n < MIN_PER_CLASS]
    if few:
        raise ValueError(
            f"refining needs at least {MIN_PER_CLASS} annotated segments of every class (2 to "
            f"learn from, 1 held out to check the refined encoder is better); {', '.join(few)} "
            "have fewer: annotate more"
        )
    held = _held_out(target, seed)
    if encoder is None:
        encoder = _starting_encoder(images[0], layouts[0], options.get("channel_axis"), device)
    if crop_size is None:
        crop_size = default_crop_size(layouts[0], encoder.backbone_name)
    start = copy.deepcopy(encoder).eval()
    embed_kw = {
        "should_stop": should_stop,
        "crop_size": crop_size,
        "device": device,
        "normalize": options.get("normalize", "image"),
        "channel_axis": options.get("channel_axis"),
    }
    before = _held_out_accuracy(start, images, labels, layouts, keys, target, held, **embed_kw)

    units = _unit_offsets(labels, layouts)
    learn = {
        (units[i] + f, lab): int(t)
        for (i, f, lab), t, h in zip(keys, target, held, strict=True)
        if not h
    }
    on_step = options.pop("on_step", None)

    def step(record: dict) -> None:
        if on_step is not None:
            on_step(record)
        if progress is not None:
            progress(int(record["step"]), int(record["total_steps"]))

    if options.get("monitor_hold_out") is None:  # annotated segments are never held back
        options["monitor_hold_out"] = False
    if options.get("monitor_size") is None:  # a few, quickly (each epoch embeds them twice)
        options["monitor_size"] = MONITOR_SIZE
    batch_size = BATCH_SIZE if batch_size is None else batch_size
    lr = LR if lr is None else lr
    if epochs == "auto":
        epochs = _auto_epochs(n_segments, batch_size)
    run = train_ssl(
        images,
        labels,
        encoder=start,
        axes=layouts,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        crop_size=crop_size,
        seed=seed,
        device=device,
        checkpoint_dir=checkpoint_dir,
        on_step=step,
        should_stop=should_stop,
        objective=SUPERVISED,
        classes=classes,
        annotations=learn,
        **options,
    )
    fields = {
        "history": run.history,
        "checkpoint_path": run.checkpoint_path,
        "stopped": run.stopped,
        "head": run.head,
        "quality": run.quality,
        "classes": classes,
        "n_learned": int((~held).sum()),
        "n_held_out": int(held.sum()),
        "accuracy_before": before,
    }
    if run.stopped:
        return RefineResult(
            encoder=start,
            **fields,
            message="refining was stopped: the encoder is unchanged",
        )
    refined = run.encoder.eval()
    try:
        after = _held_out_accuracy(refined, images, labels, layouts, keys, target, held, **embed_kw)
    except Cancelled:
        fields["stopped"] = True
        return RefineResult(
            encoder=start, **fields, message="refining was stopped: the encoder is unchanged"
        )
    accepted, message = decide(before, after, int(held.sum()), keep_if_worse=keep_if_worse)
    return RefineResult(
        encoder=refined if accepted else start,
        refined_encoder=refined,
        accepted=accepted,
        accuracy_after=after,
        message=message,
        **fields,
    )


def decide(
    before: float, after: float, n_held_out: int, *, keep_if_worse: bool = False
) -> tuple[bool, str]:
    """Whether the refined encoder is kept (it classifies the ``n_held_out`` held-out
    annotations at least as well, or the user insists), and the line that says so."""
    figures = f"accuracy on {n_held_out} held-out annotations {before:.3f} -> {after:.3f}"
    if after >= before:
        return True, f"refined: {figures}"
    if keep_if_worse:
        return True, f"refined, and kept as asked although worse: {figures}"
    return False, f"refining did not help ({figures}): kept the old encoder"


def _annotated_segments(labels, layouts, annotations) -> tuple[list, list[str], int]:
    """``[(pair, frame, label)]`` of the annotated segments (frame 0 outside time-lapses),
    their class names, and how many segments (frames counted one by one) there are, the
    annotations checked against the label images (the classifier's rules and messages:
    :func:`~napari_segrep.analysis._annotations.annotated_rows`)."""
    import numpy as np
    import pandas as pd

    from .analysis._annotations import annotated_rows

    parts = []
    for i, (lab, layout) in enumerate(zip(labels, layouts, strict=True)):
        lab = np.asarray(lab)
        if layout.has_time:
            for f in range(lab.shape[0]):
                ids = np.unique(lab[f])
                ids = ids[ids > 0]
                parts.append(pd.DataFrame({"image": i, "frame": f, "label": ids}))
        else:
            ids = np.unique(lab)
            ids = ids[ids > 0]
            parts.append(pd.DataFrame({"image": i, "frame": 0, "label": ids}))
    table = pd.concat(parts, ignore_index=True)
    if not any(lay.has_time for lay in layouts):
        table = table.drop(columns="frame")
    if len(labels) == 1:
        table = table.drop(columns="image")
    try:
        rows, names = annotated_rows(table, annotations)
    except ValueError as exc:  # the classifier's words for a table; here there are labels
        text = str(exc).replace("are not in the table", "are not in the labels")
        raise ValueError(text.replace("embed them first, or remove", "remove")) from None
    keys = [
        (
            int(table["image"].iat[r]) if "image" in table else 0,
            int(table["frame"].iat[r]) if "frame" in table else 0,
            int(table["label"].iat[r]),
        )
        for r in rows
    ]
    return keys, [str(n) for n in names], len(table)


def _held_out(target: np.ndarray, seed: int) -> np.ndarray:
    """A seeded third of every class's annotations (at least 1, at most all but 2)."""
    import numpy as np

    rng = np.random.default_rng([seed, 25])
    held = np.zeros(len(target), bool)
    for c in np.unique(target):
        members = rng.permutation(np.flatnonzero(target == c))
        k = min(len(members) - 2, max(1, round(len(members) * HELD_OUT_FRACTION)))
        held[members[:k]] = True
    return held


def _unit_offsets(labels, layouts) -> list[int]:
    """The dataset's image index of each pair's first image (a time-lapse's frames count one
    by one, as :meth:`SegmentDataset.segment` counts them)."""
    import numpy as np

    out, at = [], 0
    for lab, layout in zip(labels, layouts, strict=True):
        out.append(at)
        at += int(np.shape(lab)[0]) if layout.has_time else 1
    return out


def _auto_epochs(n_segments: int, batch_size: int) -> int:
    """Epochs of about :data:`AUTO_STEPS` optimiser steps (at least 1), from the number of
    segments an epoch draws (``n_segments``, an estimate: before ``min_size``; the annotated
    ones repeated, as the objective draws them)."""
    from .engine.objectives.supervised import ANNOTATED_SHARE

    per_epoch = n_segments / (1 - ANNOTATED_SHARE)
    steps = max(1.0, per_epoch // batch_size)
    return max(1, round(AUTO_STEPS / steps))


def _starting_encoder(image, layout, channel_axis, device):
    """``embed_segments``' default encoder for ``image`` (what a table embedded without an
    encoder was embedded with)."""
    import numpy as np

    from ._images import as_channels_first, frame_channel_axis
    from .engine.embed import default_encoder

    image = np.asarray(image)
    axis = frame_channel_axis(channel_axis, layout, image.ndim)
    frame = image[0] if layout.has_time else image
    channels = as_channels_first(frame, channel_axis=axis, spatial_ndim=layout.spatial_ndim)
    return default_encoder(layout, channels.shape[0], device)


def _held_out_accuracy(encoder, images, labels, layouts, keys, target, held, **embed_kw):
    """A logistic classifier on the learning annotations' embeddings (by ``encoder``), scored
    on the held-out ones."""
    import numpy as np
    import pandas as pd

    from .analysis.classify import train_classifier
    from .engine.embed import embed_segments

    tables = []
    for i, (image, lab, layout) in enumerate(zip(images, labels, layouts, strict=True)):
        wanted = sorted({label for (p, _f, label) in keys if p == i})
        if wanted:
            table = embed_segments(image, lab, encoder, axes=layout, only=wanted, **embed_kw)
            tables.append(table.assign(image=i, frame=table["frame"] if "frame" in table else 0))
    table = pd.concat(tables, ignore_index=True)
    rows = pd.MultiIndex.from_frame(table[["image", "frame", "label"]].astype(np.int64))
    at = rows.get_indexer(pd.MultiIndex.from_tuples(keys))
    classes = np.asarray([str(t) for t in target], dtype=object)
    learn = table.iloc[at[~held]][["image", "frame", "label"]].assign(**{"class": classes[~held]})
    model = train_classifier(table, learn, seed=0)
    predicted = model.predict(table.iloc[at[held]])["class"].to_numpy()
    return float(np.mean(predicted.astype(str) == classes[held]))
