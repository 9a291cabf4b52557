"""embed_segments(): one embedding per segment, in streaming batches."""

from __future__ import annotations

import contextlib
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
from .inputs import check_crop_size, check_image_values
from .segments import (
    GEOMETRY_COLUMNS,
    as_channels_first,
    iter_crop_batches,
    labels_warnings,
    resolve_normalization,
    segment_table,
    validate_labels,
)

__all__ = ["embed_segments", "embed_stack", "embedding_columns", "encoder_for"]


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


def embedding_columns(dim: int) -> list[str]:
    return [f"emb_{i}" for i in range(dim)]


def _empty_result(dim: int) -> pd.DataFrame:
    data: dict = {"label": np.empty(0, np.int64)}
    for col in GEOMETRY_COLUMNS:
        data[col] = np.empty(0, np.int64 if col.startswith(("bbox", "area")) else np.float64)
    for col in embedding_columns(dim):
        data[col] = np.empty(0, np.float32)
    return pd.DataFrame(data)


def _autocast(device: torch.device):
    if device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return contextlib.nullcontext()


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
    image_cf = as_channels_first(image, channel_axis=channel_axis)
    labels = validate_labels(labels, image_cf.shape[1:])
    check_image_values(image_cf)
    crop_size = check_crop_size(crop_size, image_cf.shape[1:])
    batch_size = _positive_int(batch_size, "batch_size")
    n_channels = image_cf.shape[0]
    if encoder is None:
        encoder = SegmentEncoder(in_channels=n_channels)
    elif not isinstance(encoder, SegmentEncoder):
        raise TypeError(f"encoder must be a SegmentEncoder, got {type(encoder).__name__}")
    if encoder.in_channels != n_channels:
        raise ValueError(
            f"the encoder takes {encoder.in_channels} channel(s) but the image has {n_channels}: "
            "pass channel_axis for multichannel images, or an encoder with in_channels="
            f"{n_channels}"
        )
    norm = resolve_normalization(image_cf, normalize)
    dev = resolve_device(device)

    table = segment_table(labels, only=only)
    if only is None:
        for message in labels_warnings(table):
            warnings.warn(message, UserWarning, stacklevel=2)
    total = len(table)
    if total == 0:
        if only is None:
            warnings.warn(
                "labels contain no segment (all zero): returning an empty table", stacklevel=2
            )
        empty = _empty_result(encoder.embedding_dim)
        empty.attrs["encoder"] = encoder.record()
        return empty

    # channels_last: 1.14x faster than contiguous for the masked encoder on CPU
    # (benchmarks/masking_overhead.py); the layout cuDNN prefers under autocast on CUDA.
    memory_format = torch.channels_last
    was_training = encoder.training
    encoder.eval().to(dev, memory_format=memory_format)
    out = np.empty((total, encoder.embedding_dim), np.float32)
    scales = np.ones(total, np.float64)
    if progress is not None:
        progress(0, total)
    try:
        with torch.inference_mode(), _autocast(dev):
            for batch in iter_crop_batches(
                image_cf,
                table,
                crop_size=crop_size,
                batch_size=batch_size,
                norm=norm,
                mask_image=encoder.image_masking,
            ):
                if should_stop is not None and should_stop():
                    raise Cancelled("embedding cancelled")
                images = torch.from_numpy(batch.images).to(dev, non_blocking=True)
                images = images.contiguous(memory_format=memory_format)
                masks = torch.from_numpy(batch.masks).to(dev, non_blocking=True)
                z = encoder(images, masks)
                stop = batch.start + len(batch.images)
                out[batch.start : stop] = z.float().cpu().numpy()
                if not np.isfinite(out[batch.start : stop]).all():  # (B, D): cheap
                    raise _nonfinite_embeddings(encoder, table, batch.start, stop, out)
                scales[batch.start : stop] = batch.scales
                if progress is not None:
                    progress(stop, total)
    finally:
        encoder.train(was_training)

    result = table.geometry
    result["scale"] = scales
    emb = pd.DataFrame(out, columns=embedding_columns(encoder.embedding_dim), index=result.index)
    out = pd.concat([result, emb], axis=1)
    out.attrs["normalization"] = norm.describe()  # what was used, for provenance
    out.attrs["encoder"] = encoder.record()  # config + sha256 of the weights (classifiers check)
    out.attrs["crop_size"] = int(crop_size)  # with the encoder: how to embed more segments alike
    return out


def _nonfinite_embeddings(encoder, table, start: int, stop: int, out: np.ndarray) -> ValueError:
    """The error for NaN/Inf embeddings, naming the model and the likely cause."""
    source = encoder.weights_source
    if source is None:
        model = f"an untrained {encoder.backbone_name} (seed {encoder.seed})"
    elif source == "imagenet":
        model = f"{encoder.backbone_name} with ImageNet weights"
    else:
        model = f"{encoder.backbone_name} from {source}"
    bad = ~np.isfinite(out[start:stop]).all(axis=1)
    labels = table.geometry["label"].to_numpy()[start:stop][bad]
    shown = ", ".join(map(str, labels[:5])) + (", ..." if len(labels) > 5 else "")
    return ValueError(
        f"the encoder ({model}) gave NaN or Inf embeddings (segments {shown}): the model is "
        "probably diverged or corrupt (e.g. trained with too high a learning rate), or the image "
        "values are extreme (try normalize='image'). Use another checkpoint, or train again "
        "with a lower learning rate."
    )


def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


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
    counts = [len(np.unique(plane[plane > 0])) for plane in labels]
    total = int(sum(counts))
    if encoder is None:
        encoder = SegmentEncoder(
            in_channels=as_channels_first(image[0], channel_axis=channel_axis).shape[0]
        )
    frames = []
    done = 0
    # each kind of warning once, naming its planes (numbers differ from plane to plane)
    planes_warned: dict[tuple[type, str], tuple[str, list[int]]] = {}
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
            kind = (w.category, re.sub(r"\d+", "#", str(w.message)))
            planes_warned.setdefault(kind, (str(w.message), []))[1].append(t)
        df.insert(1, "frame", np.int64(t))
        frames.append(df)
        done += counts[t]
    for (category, _), (first, planes) in planes_warned.items():
        if len(planes) == 1:
            where = f"plane {planes[0]}"
        else:
            listed = ", ".join(map(str, planes[:5])) + (", ..." if len(planes) > 5 else "")
            where = f"planes {listed} ({len(planes)}; plane {planes[0]} shown)"
        warnings.warn(f"{where}: {first}", category, stacklevel=2)
    if not frames:
        warnings.warn(
            "labels contain no segment (all zero): returning an empty table", stacklevel=2
        )
        empty = _empty_result(encoder.embedding_dim)
        empty.insert(1, "frame", np.empty(0, np.int64))
        empty.attrs["encoder"] = encoder.record()
        return empty
    out = pd.concat(frames, ignore_index=True)
    out.attrs["encoder"] = encoder.record()  # planes' normalisations differ: not kept here
    return out
