"""embed_segments(): one embedding per segment (a 2D segment or a 3D object), in streaming
batches; time-lapses frame by frame."""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import torch

from .._images import Layout, frame_channel_axis, layout_of
from ..errors import Cancelled
from .devices import resolve_device
from .encoder import SegmentEncoder
from .pipeline import (
    NO_SEGMENT,
    BatchEncoder,
    EmbeddingRows,
    check_spatial_dims,
    default_crop_size,
    embedding_columns,
    empty_result,
    on_device,
    prepare_segments,
    warn_messages,
)
from .segments import _MAX_SPARSE_ID, as_channels_first, validate_labels

__all__ = [
    "VOLUME_BACKBONE",
    "VOLUME_BACKBONE_CPU",
    "check_frames",
    "check_stack",
    "default_encoder",
    "resolve_layout",
    "embed_segments",
    "embed_stack",
    "embedding_columns",
    "encoder_for",
    "stack_messages",
    "stack_result",
    "volume_backbone",
]

#: The encoder ``embed_segments`` builds for a volume when none is given (untrained, seed 0),
#: on a GPU: the native 3D network.
VOLUME_BACKBONE = "resnet18_3d"
#: ... and on a CPU (or MPS): three orthogonal planes through the 2D network, a quarter of the
#: native network's CPU time per object at about its k-NN quality (benchmarks/volume_memory.py,
#: volume_quality.py, volume_spacing.py; README "Volumes").
VOLUME_BACKBONE_CPU = "resnet18_planes"


def volume_backbone(device=None) -> str:
    """The default backbone of 3D objects on ``device`` (a ``torch.device``, or what
    :func:`~napari_segrep.engine.devices.resolve_device` takes): :data:`VOLUME_BACKBONE` on
    CUDA, :data:`VOLUME_BACKBONE_CPU` elsewhere; None: :data:`VOLUME_BACKBONE` (training)."""
    if device is None:
        return VOLUME_BACKBONE
    cuda = resolve_device(device).type == "cuda"
    return VOLUME_BACKBONE if cuda else VOLUME_BACKBONE_CPU


def encoder_for(
    weights: SegmentEncoder | str | os.PathLike | None = None,
    *,
    in_channels: int,
    backbone: str = "resnet18",
    seed: int = 0,
) -> SegmentEncoder:
    """The encoder a user chose, by what they chose (shared by the widgets and the CLI).

    Parameters
    ----------
    weights : None, a weight set ("imagenet", "dinov2"), a checkpoint path, or a SegmentEncoder
        ``None``: untrained ``backbone`` from ``seed``; a weight set: the backbone's pretrained
        weights (:mod:`napari_segrep.catalogue`) from the local torch cache; a path: the encoder stored in that napari-segrep checkpoint
        (its own backbone and channels); an encoder: returned as it is.
    in_channels : int
        Channels of the images to embed (for ``None`` and a weight set).
    """
    if isinstance(weights, SegmentEncoder):
        return weights
    from ..catalogue import weight_set_names

    if weights is None or (isinstance(weights, str) and weights.lower() in weight_set_names()):
        return SegmentEncoder(backbone, in_channels=in_channels, weights=weights, seed=seed)
    from .encoder import load_encoder

    return load_encoder(weights)


def embed_segments(
    image: np.ndarray,
    labels: np.ndarray,
    encoder: SegmentEncoder | None = None,
    *,
    axes: str | Layout | None = None,
    spacing: Sequence[float] | None = None,
    crop_size: int | None = None,
    batch_size: int = 128,
    device: str | torch.device = "auto",
    channel_axis: int | None = None,
    normalize: str | Sequence[float] | None = "image",
    progress: Callable[[int, int], object] | None = None,
    should_stop: Callable[[], bool] | None = None,
    only: Sequence[int] | None = None,
) -> pd.DataFrame:
    """Embed every segment of a label image: a 2D image's segments, a volume's 3D objects, or
    those of every frame of a time-lapse.

    Parameters
    ----------
    image : ndarray
        The labels' grid, plus possibly channels: ``(Y, X)``, ``(Y, X, 3)`` (RGB) or
        multichannel with ``channel_axis``; a volume ``(Z, Y, X)`` (or with a channel axis); a
        time-lapse ``(T, ...)`` of either.  uint8/uint16/int/float.
    labels : (Y, X), (Z, Y, X), (T, Y, X) or (T, Z, Y, X) integer ndarray
        0 is background; every other value is one segment (per frame, in a time-lapse).
    encoder : SegmentEncoder, optional
        Default: an untrained ``SegmentEncoder(in_channels=C, seed=0)`` (resnet18) for 2D
        objects, ``SegmentEncoder(volume_backbone(device), in_channels=C)`` for 3D ones
        (``"resnet18_3d"`` on CUDA, the fast ``"resnet18_planes"`` on a CPU).  Its
        ``spatial_dims`` must be the objects' (a 2D encoder for a volume is refused, with the
        fix).  Put in eval mode for the call (its previous mode is restored) and moved to
        ``device``.
    axes : "yx", "zyx", "tyx", "tzyx", a Layout, or None
        What the labels' axes are (:func:`napari_segrep._images.layout_of`).  None: ``"yx"``
        for 2D labels, ``"tzyx"`` for 4D ones; **3D labels must say** whether they are a z-stack
        (``"zyx"``: one row per 3D object) or a time-lapse (``"tyx"``: one row per segment and
        frame, as :func:`embed_stack`), else :class:`~napari_segrep._images.AxesUnknown` (a
        ``ValueError``) before any work.  A ``Layout`` (from ``layout_of``) brings its spacing
        and where it came from.
    spacing : sequence of float, optional
        The physical size of a voxel along each spatial axis, ``(dz, dy, dx)`` for volumes
        (``(dy, dx)`` in 2D), any one unit.  Each object's window is resampled to
        near-isotropic voxels whose side is the finest spacing, so physical size and shape are
        what the encoder sees (a nucleus imaged at 0.5 or 2 um steps in z gives about the same
        crop).  None (or isotropic): voxels are cubes, an object that fits is its raw window.
        Recorded in ``attrs["layout"]``.
    crop_size : int, optional
        Side of the square (2D) or cubic (3D) crop each segment is seen in; None: 64 in 2D,
        32 for volumes (a 64^3 crop is 8x the work of 32^3).  Segments that fit keep their
        native scale; larger ones are downscaled to fit (factor in the ``scale`` column; for
        volumes relative to the isotropic grid, and an object that would shrink more than 64x
        is refused, named).  At most 4096 and at most twice the image's longest side (a larger
        crop would only add zero padding); sizes up to 256 are always accepted.
    batch_size : int
        Crops per forward pass; memory is bounded by the batch, not by the number of segments.
    device : str
        ``"auto"`` (CUDA, then MPS, then CPU), ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``.
    channel_axis : int, optional
        Channel axis of a multichannel image, counted in the whole image (a time-lapse's time
        axis included).
    normalize : "image", "segment", (low, high) or None
        ``"image"``: the image's 1st-99.8th percentiles per channel map to 0-1 (an embedding then
        depends weakly on the whole image; per frame in a time-lapse); ``"segment"``: the same
        from the segment's own pixels; a fixed pair; or None.  With "segment" or a fixed pair,
        no pixel outside a segment can change its embedding.
    progress : callable(done, total), optional
        Called after every batch.
    should_stop : callable() -> bool, optional
        Polled before every batch; when it returns True, :class:`Cancelled` is raised.
    only : sequence of int, optional
        Embed just these label ids (ids not in ``labels`` are ignored).  Each row is the one
        the full call gives (a segment is seen through its own mask alone), up to the float
        rounding that any other batch composition gives.

    Returns
    -------
    pandas.DataFrame
        One row per non-zero label, ascending: ``label`` (int64), ``centroid_y``, ``centroid_x``,
        ``area``, ``bbox_y0``, ``bbox_x0``, ``bbox_y1``, ``bbox_x1`` (half-open), ``scale``,
        ``emb_0 ... emb_{D-1}`` (float32).  Volumes: ``centroid_z, centroid_y, centroid_x, area``
        (voxels), ``bbox_z0, bbox_y0, bbox_x0, bbox_z1, bbox_y1, bbox_x1``, ``scale``, ``emb_*``
        (scikit-image's ``regionprops`` geometry, in voxels).  A time-lapse has a ``frame``
        column after ``label``.  ``attrs["normalization"]`` records the normalisation used (mode
        and values), ``attrs["encoder"]`` the encoder (its config and ``sha256``,
        :meth:`SegmentEncoder.fingerprint`), ``attrs["layout"]`` the axes and spacing.

    Raises
    ------
    ValueError
        Bad input (named with the fix): 3D labels without ``axes``, image and labels of other
        dimensions or shapes, spacing not positive or of the wrong length, a one-plane volume,
        an encoder of the other dimension...; or the encoder gave NaN/Inf embeddings (a diverged
        or corrupt model: no table of NaN is ever returned).

    Warns
    -----
    UserWarning
        Labels that look like an intensity image or a JPEG-saved label image
        (:func:`~napari_segrep.engine.segments.labels_warnings`); 100,000 objects or more in a
        volume (the cost); no segment at all.

    Examples
    --------
    >>> import numpy as np, napari_segrep as sr
    >>> image = np.random.default_rng(0).random((64, 64))
    >>> labels = np.zeros((64, 64), int); labels[5:20, 5:20] = 1; labels[30:50, 30:40] = 7
    >>> df = sr.embed_segments(image, labels, crop_size=32, device="cpu")
    >>> list(df["label"]), df.shape[1] - 9
    ([1, 7], 512)
    """
    if encoder is not None and not isinstance(encoder, SegmentEncoder):
        raise TypeError(f"encoder must be a SegmentEncoder, got {type(encoder).__name__}")
    layout = resolve_layout(labels, axes, spacing)
    if encoder is not None:
        check_spatial_dims(encoder, layout)
        if crop_size is None:
            crop_size = default_crop_size(layout, encoder.backbone_name)
    options = dict(
        crop_size=crop_size,
        batch_size=batch_size,
        device=device,
        normalize=normalize,
        progress=progress,
        should_stop=should_stop,
        only=only,
    )
    if layout.has_time:
        return _embed_time_lapse(image, labels, encoder, layout, channel_axis, options)
    prepared = prepare_segments(
        image,
        labels,
        layout=layout,
        in_channels=None if encoder is None else encoder.in_channels,
        crop_size=crop_size,
        batch_size=batch_size,
        channel_axis=channel_axis,
        normalize=normalize,
        only=only,
    )
    if encoder is None:
        encoder = default_encoder(layout, prepared.n_channels, device)
    dev = resolve_device(device)
    warn_messages(prepared.messages, stacklevel=2)
    total = len(prepared)
    if total == 0:
        if only is None:
            warnings.warn(NO_SEGMENT, stacklevel=2)
        empty = empty_result(encoder.embedding_dim, layout=layout)
        empty.attrs["encoder"] = encoder.record()
        return empty

    rows = EmbeddingRows(
        prepared.table.geometry,
        encoder.embedding_dim,
        normalization=prepared.norm.describe(),
        crop_size=prepared.crop_size,
        layout=layout,
    )
    if progress is not None:
        progress(0, total)
    with BatchEncoder(encoder, dev) as run:
        batches = prepared.batches(mask_image=encoder.image_masking)
        for batch, images, masks in on_device(_polled(batches, should_stop), dev):
            rows.add(batch.start, run(images, masks), batch.scales, encoder)
            if progress is not None:
                progress(rows.filled, total)
    return rows.frame(encoder)


def resolve_layout(labels, axes, spacing) -> Layout:
    """The labels' checked :class:`Layout` from ``axes`` (a string or a Layout) and
    ``spacing`` (which wins over a Layout's)."""
    if isinstance(axes, Layout):
        if spacing is None:
            return layout_of(
                labels, axes=axes.axes, spacing=axes.spacing, spacing_source=axes.spacing_source
            )
        axes = axes.axes
    return layout_of(labels, axes=axes, spacing=spacing)


def default_encoder(layout: Layout, in_channels: int, device="auto") -> SegmentEncoder:
    """The untrained encoder ``embed_segments`` uses when given none: resnet18 for 2D objects,
    :func:`volume_backbone` of ``device`` for 3D ones (seed 0)."""
    if layout.is_volume:
        return SegmentEncoder(volume_backbone(device), in_channels=in_channels)
    return SegmentEncoder(in_channels=in_channels)


def _embed_time_lapse(image, labels, encoder, layout: Layout, channel_axis, options: dict):
    """A ``"tyx"`` or ``"tzyx"`` time-lapse, frame by frame (``frame`` column, ``channel_axis``
    counted in the whole image); ``"tyx"`` is :func:`embed_stack`'s path."""
    image = np.asarray(image) if not hasattr(image, "ndim") else image
    frame_axis = frame_channel_axis(channel_axis, layout, np.ndim(image))
    frame = layout.frame_layout
    if layout.axes == "tyx":
        kwargs = {k: v for k, v in options.items() if k not in ("progress", "should_stop")}
        if layout.spacing is not None:
            kwargs["axes"] = frame
        out = embed_stack(
            image,
            labels,
            encoder,
            channel_axis=frame_axis,
            progress=options["progress"],
            should_stop=options["should_stop"],
            **kwargs,
        )
    else:
        image, labels = check_frames(image, labels, "frames")
        out = _embed_frames(
            image, labels, encoder, frame=frame, unit="frame", channel_axis=frame_axis, **options
        )
    out.attrs["layout"] = layout.describe()
    return out


def _polled(batches, should_stop: Callable[[], bool] | None):
    """``batches``, asking ``should_stop()`` before each (:class:`Cancelled` when it says
    stop): no crop is made after a stop."""
    for batch in batches:
        if should_stop is not None and should_stop():
            raise Cancelled("embedding cancelled")
        yield batch


def embed_stack(
    image: np.ndarray,
    labels: np.ndarray,
    encoder: SegmentEncoder | None = None,
    *,
    channel_axis: int | None = None,
    progress: Callable[[int, int], object] | None = None,
    should_stop: Callable[[], bool] | None = None,
    **kwargs,
) -> pd.DataFrame:
    """:func:`embed_segments` plane by plane along the leading axis of a ``(T, Y, X)`` stack
    (a time-lapse: ``embed_segments(..., axes="tyx")`` is this call).

    ``image`` is ``(T, Y, X)``, ``(T, Y, X, 3)`` or ``(T, ...)`` with ``channel_axis`` counted
    within a plane; ``labels`` is ``(T, Y, X)``.  The result has a ``frame`` column after
    ``label``; a label id present in several planes gives one row per plane.  ``progress`` counts
    segments over the whole stack.  A z-stack's objects are 3D: ``embed_segments(...,
    axes="zyx")`` gives one row per object.
    """
    image, labels = check_stack(image, labels)
    frame = kwargs.pop("axes", None)
    if isinstance(frame, Layout) and frame.axes == "tyx":
        frame = frame.frame_layout
    if frame in (None, "yx", "tyx"):
        frame = Layout("yx")
    if not (isinstance(frame, Layout) and frame.axes == "yx"):
        raise ValueError(
            f"embed_stack embeds (T, Y, X) stacks plane by plane, not axes={frame!r}: for a "
            "z-stack's 3D objects use embed_segments(..., axes='zyx')"
        )
    spacing = kwargs.pop("spacing", None)
    if spacing is not None:
        frame = layout_of(labels[0], axes="yx", spacing=spacing)
    out = _embed_frames(
        image,
        labels,
        encoder,
        frame=frame,
        unit="plane",
        channel_axis=channel_axis,
        progress=progress,
        should_stop=should_stop,
        **kwargs,
    )
    out.attrs["layout"] = Layout("tyx", frame.spacing, frame.spacing_source).describe()
    return out


def _embed_frames(
    image,
    labels,
    encoder,
    *,
    frame: Layout,
    unit: str,
    channel_axis,
    progress,
    should_stop,
    **kwargs,
) -> pd.DataFrame:
    """:func:`embed_segments` on each ``image[t]``, ``labels[t]`` (of layout ``frame``;
    ``channel_axis`` within a frame), their warnings gathered per kind (naming the ``unit`` s),
    one table with a ``frame`` column."""
    counts = [_count_ids(one) for one in labels]
    total = int(sum(counts))
    if encoder is None:
        channels = as_channels_first(
            image[0], channel_axis=channel_axis, spatial_ndim=frame.spatial_ndim
        ).shape[0]
        encoder = default_encoder(frame, channels, kwargs.get("device", "auto"))
    frames = []
    done = 0
    plane_messages: list[tuple[int, str]] = []
    for t in range(labels.shape[0]):
        if counts[t] == 0:
            continue

        def plane_progress(d, _total, _base=done):
            if progress is not None:
                progress(_base + d, total)

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            df = embed_segments(
                image[t],
                labels[t],
                encoder,
                axes=frame,
                channel_axis=channel_axis,
                progress=plane_progress,
                should_stop=should_stop,
                **kwargs,
            )
        for w in caught:
            if w.category is UserWarning:
                plane_messages.append((t, str(w.message)))
            else:  # not ours (a library's deprecation...): passed on as it came
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        frames.append(df)
        done += counts[t]
    warn_messages(stack_messages(plane_messages, unit=unit), stacklevel=3)
    if not frames:
        warnings.warn(NO_SEGMENT, stacklevel=3)
    return stack_result(frames, [t for t, n in enumerate(counts) if n], encoder, layout=frame)


def _count_ids(labels: np.ndarray) -> int:
    """How many distinct non-zero ids ``labels`` holds (one pass, no sort, for ids that
    ``find_objects`` can index)."""
    from scipy import ndimage

    top = int(labels.max()) if labels.size else 0
    if top == 0:
        return 0
    if top <= _MAX_SPARSE_ID:
        return sum(s is not None for s in ndimage.find_objects(labels))
    return len(np.unique(labels[labels > 0]))


def check_stack(image, labels) -> tuple[np.ndarray, np.ndarray]:
    """A ``(T, ...)`` image and ``(T, Y, X)`` labels as arrays, checked to pair plane by plane
    (``ValueError`` otherwise)."""
    image = np.asarray(image)
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise ValueError(f"a stack's labels must be (T, Y, X), got shape {labels.shape}")
    return check_frames(image, labels, "planes")


def check_frames(image, labels, unit: str) -> tuple[np.ndarray, np.ndarray]:
    """A time-lapse's image and labels as arrays, checked to have as many ``unit`` s
    ("frames", "planes") along their leading axis, and the labels to be labels."""
    image = np.asarray(image)
    labels = np.asarray(labels)
    if image.ndim == 0 or image.shape[0] != labels.shape[0]:
        got = "no axis" if image.ndim == 0 else f"{image.shape[0]} {unit}"
        raise ValueError(
            f"image has {got} but labels have {labels.shape[0]}: the leading (time"
            f"{' or z' if unit == 'planes' else ''}) axes must match"
        )
    validate_labels(labels, labels.shape)
    return image, labels


def stack_messages(plane_messages: Sequence[tuple[int, str]], *, unit: str = "plane") -> list[str]:
    """A stack's warnings from its planes' ``(plane, message)``: each kind once (numbers differ
    from plane to plane), naming its planes (``unit`` s: "plane" or "frame")."""
    planes_warned: dict[str, tuple[str, list[int]]] = {}
    for t, message in plane_messages:
        kind = re.sub(r"\d+", "#", message)
        planes_warned.setdefault(kind, (message, []))[1].append(t)
    out = []
    for first, planes in planes_warned.values():
        if len(planes) == 1:
            where = f"{unit} {planes[0]}"
        else:
            listed = ", ".join(map(str, planes[:5])) + (", ..." if len(planes) > 5 else "")
            where = f"{unit}s {listed} ({len(planes)}; {unit} {planes[0]} shown)"
        out.append(f"{where}: {first}")
    return out


def stack_result(
    frames: Sequence[pd.DataFrame],
    planes: Sequence[int],
    encoder,
    *,
    layout: Layout | None = None,
) -> pd.DataFrame:
    """A stack's table from its non-empty planes' tables (``frame`` inserted after ``label``;
    ``planes`` their plane numbers); with no plane, the empty table (the caller warns), with
    the columns of ``layout`` (one frame's; None: 2D)."""
    if not frames:
        empty = empty_result(encoder.embedding_dim, layout=layout)
        empty.insert(1, "frame", np.empty(0, np.int64))
        empty.attrs["encoder"] = encoder.record()
        return empty
    for df, t in zip(frames, planes, strict=True):
        df.insert(1, "frame", np.int64(t))
    out = pd.concat(frames, ignore_index=True)
    out.attrs["encoder"] = encoder.record()  # planes' normalisations differ: not kept here
    return out
