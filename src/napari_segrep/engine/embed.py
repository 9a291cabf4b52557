"""embed_segments(): one embedding per segment, in streaming batches."""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import torch

from ..errors import Cancelled
from .devices import resolve_device
from .encoder import SegmentEncoder
from .pipeline import (
    NO_SEGMENT,
    BatchEncoder,
    EmbeddingRows,
    embedding_columns,
    empty_result,
    on_device,
    prepare_segments,
    warn_messages,
)
from .segments import as_channels_first, validate_labels

__all__ = [
    "check_stack",
    "embed_segments",
    "embed_stack",
    "embedding_columns",
    "encoder_for",
    "stack_messages",
    "stack_result",
]


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
    weights : None, "imagenet", a checkpoint path, or a SegmentEncoder
        ``None``: untrained ``backbone`` from ``seed``; ``"imagenet"``: torchvision's weights
        from the local torch cache; a path: the encoder stored in that napari-segrep checkpoint
        (its own backbone and channels); an encoder: returned as it is.
    in_channels : int
        Channels of the images to embed (for ``None`` and ``"imagenet"``).
    """
    if isinstance(weights, SegmentEncoder):
        return weights
    if weights is None or (isinstance(weights, str) and weights.lower() == "imagenet"):
        return SegmentEncoder(backbone, in_channels=in_channels, weights=weights, seed=seed)
    from .encoder import load_encoder

    return load_encoder(weights)


def embed_segments(
    image: np.ndarray,
    labels: np.ndarray,
    encoder: SegmentEncoder | None = None,
    *,
    crop_size: int = 64,
    batch_size: int = 128,
    device: str | torch.device = "auto",
    channel_axis: int | None = None,
    normalize: str | Sequence[float] | None = "image",
    progress: Callable[[int, int], object] | None = None,
    should_stop: Callable[[], bool] | None = None,
    only: Sequence[int] | None = None,
) -> pd.DataFrame:
    """Embed every segment of a label image.

    Parameters
    ----------
    image : (Y, X), (Y, X, 3) or multichannel ndarray
        uint8/uint16/int/float; with ``channel_axis`` for multichannel images.
    labels : (Y, X) integer ndarray
        0 is background; every other value is one segment.
    encoder : SegmentEncoder, optional
        Default: an untrained ``SegmentEncoder(in_channels=C, seed=0)``.  Put in eval mode for
        the call (its previous mode is restored) and moved to ``device``.
    crop_size : int
        Side of the square crop each segment is seen in.  Segments that fit keep their native
        scale; larger ones are downscaled to fit (factor in the ``scale`` column).  At most 4096
        and at most twice the image's longer side (a larger crop would only add zero padding);
        sizes up to 256 are always accepted.
    batch_size : int
        Crops per forward pass; memory is bounded by the batch, not by the number of segments.
    device : str
        ``"auto"`` (CUDA, then MPS, then CPU), ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``.
    channel_axis : int, optional
        Channel axis of a multichannel image.
    normalize : "image", "segment", (low, high) or None
        ``"image"``: the image's 1st-99.8th percentiles per channel map to 0-1 (an embedding then
        depends weakly on the whole image); ``"segment"``: the same from the segment's own pixels;
        a fixed pair; or None.  With "segment" or a fixed pair, no pixel outside a segment can
        change its embedding.
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
        ``emb_0 ... emb_{D-1}`` (float32).  ``attrs["normalization"]`` records the
        normalisation used (mode and values), ``attrs["encoder"]`` the encoder (its config and
        ``sha256``, :meth:`SegmentEncoder.fingerprint`).

    Raises
    ------
    ValueError
        Bad input (named with the fix), or the encoder gave NaN/Inf embeddings (a diverged or
        corrupt model: no table of NaN is ever returned).

    Warns
    -----
    UserWarning
        Labels that look like an intensity image or a JPEG-saved label image
        (:func:`~napari_segrep.engine.segments.labels_warnings`); no segment at all.

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
    prepared = prepare_segments(
        image,
        labels,
        in_channels=None if encoder is None else encoder.in_channels,
        crop_size=crop_size,
        batch_size=batch_size,
        channel_axis=channel_axis,
        normalize=normalize,
        only=only,
    )
    if encoder is None:
        encoder = SegmentEncoder(in_channels=prepared.n_channels)
    dev = resolve_device(device)
    warn_messages(prepared.messages, stacklevel=2)
    total = len(prepared)
    if total == 0:
        if only is None:
            warnings.warn(NO_SEGMENT, stacklevel=2)
        empty = empty_result(encoder.embedding_dim)
        empty.attrs["encoder"] = encoder.record()
        return empty

    rows = EmbeddingRows(
        prepared.table.geometry,
        encoder.embedding_dim,
        normalization=prepared.norm.describe(),
        crop_size=prepared.crop_size,
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
    (time or z).

    ``image`` is ``(T, Y, X)``, ``(T, Y, X, 3)`` or ``(T, ...)`` with ``channel_axis`` counted
    within a plane; ``labels`` is ``(T, Y, X)``.  The result has a ``frame`` column after
    ``label``; a label id present in several planes gives one row per plane.  ``progress`` counts
    segments over the whole stack.
    """
    image, labels = check_stack(image, labels)
    counts = [len(np.unique(plane[plane > 0])) for plane in labels]
    total = int(sum(counts))
    if encoder is None:
        encoder = SegmentEncoder(
            in_channels=as_channels_first(image[0], channel_axis=channel_axis).shape[0]
        )
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
    warn_messages(stack_messages(plane_messages), stacklevel=2)
    if not frames:
        warnings.warn(NO_SEGMENT, stacklevel=2)
    return stack_result(frames, [t for t, n in enumerate(counts) if n], encoder)


def check_stack(image, labels) -> tuple[np.ndarray, np.ndarray]:
    """A ``(T, ...)`` image and ``(T, Y, X)`` labels as arrays, checked to pair plane by plane
    (``ValueError`` otherwise)."""
    image = np.asarray(image)
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise ValueError(f"a stack's labels must be (T, Y, X), got shape {labels.shape}")
    if image.shape[0] != labels.shape[0]:
        raise ValueError(
            f"image has {image.shape[0]} planes but labels have {labels.shape[0]}: the leading "
            "(time or z) axes must match"
        )
    validate_labels(labels, labels.shape)
    return image, labels


def stack_messages(plane_messages: Sequence[tuple[int, str]]) -> list[str]:
    """A stack's warnings from its planes' ``(plane, message)``: each kind once (numbers differ
    from plane to plane), naming its planes."""
    planes_warned: dict[str, tuple[str, list[int]]] = {}
    for t, message in plane_messages:
        kind = re.sub(r"\d+", "#", message)
        planes_warned.setdefault(kind, (message, []))[1].append(t)
    out = []
    for first, planes in planes_warned.values():
        if len(planes) == 1:
            where = f"plane {planes[0]}"
        else:
            listed = ", ".join(map(str, planes[:5])) + (", ..." if len(planes) > 5 else "")
            where = f"planes {listed} ({len(planes)}; plane {planes[0]} shown)"
        out.append(f"{where}: {first}")
    return out


def stack_result(frames: Sequence[pd.DataFrame], planes: Sequence[int], encoder) -> pd.DataFrame:
    """A stack's table from its non-empty planes' tables (``frame`` inserted after ``label``;
    ``planes`` their plane numbers); with no plane, the empty table (the caller warns)."""
    if not frames:
        empty = empty_result(encoder.embedding_dim)
        empty.insert(1, "frame", np.empty(0, np.int64))
        empty.attrs["encoder"] = encoder.record()
        return empty
    for df, t in zip(frames, planes, strict=True):
        df.insert(1, "frame", np.int64(t))
    out = pd.concat(frames, ignore_index=True)
    out.attrs["encoder"] = encoder.record()  # planes' normalisations differ: not kept here
    return out
