"""embed_images(): many images, one table.

Each image is read when its turn comes (a file path) and embedded alone with
:func:`~napari_segrep.engine.embed.embed_segments` (a ``(T, Y, X)`` stack with
:func:`~napari_segrep.engine.embed.embed_stack`), with the same encoder and the same settings,
so its rows are exactly what embedding that image alone gives (the same normalisation rule,
applied to that image).  Memory: one image and one batch at a time, plus the table.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from inspect import signature
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import Cancelled

__all__ = ["check_inputs", "embed_images", "image_names", "iter_embed_images", "merge_parts"]


def image_names(images: Sequence, names: Sequence[str] | None = None) -> list[str]:
    """The ``image`` column's values: ``names`` when given, else each file's stem (arrays:
    ``image_0``, ``image_1``, ...).  ``ValueError`` when they repeat (rows could not be told
    apart) or do not match the images in number."""
    if names is None:
        names = [
            Path(item).stem if isinstance(item, str | os.PathLike) else f"image_{i}"
            for i, item in enumerate(images)
        ]
    names = [str(n) for n in names]
    if len(names) != len(images):
        raise ValueError(f"{len(names)} names for {len(images)} images: give one name per image")
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        if name in seen:
            raise ValueError(
                f"images {seen[name]} and {i} would both be called {name!r} in the image "
                "column: pass names=[...] (or rename the files)"
            )
        seen[name] = i
    return names


def embed_images(
    images: Sequence,
    labels: Sequence,
    *,
    names: Sequence[str] | None = None,
    encoder=None,
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    **kwargs,
) -> pd.DataFrame:
    """Embed the segments of several images into one table.

    Parameters
    ----------
    images, labels : sequences of arrays or file paths
        Paired by position; a path is read (``napari_segrep.io.read_image``) only when its
        turn comes.  2D labels with their image, or ``(T, Y, X)`` stacks.
    names : sequence of str, optional
        The ``image`` column's values; default: each image file's stem (``image_<i>`` for
        arrays).  Must be unique.
    encoder : SegmentEncoder, optional
        One encoder for every image (default: the untrained one for the first image's
        channels).
    progress : callable(done, total), optional
        Images done out of all, after each image.
    should_stop : callable() -> bool, optional
        Polled between batches; :class:`~napari_segrep.errors.Cancelled` when it says stop.
    **kwargs
        ``embed_segments``' options (``crop_size``, ``batch_size``, ``device``,
        ``channel_axis``, ``normalize``), the same for every image.

    Returns
    -------
    DataFrame
        ``image``, then what ``embed_segments`` gives for that image (``frame`` for stacks),
        images in the order given.  ``attrs``: ``encoder`` (with its ``sha256``),
        ``crop_size``, and ``normalization`` per image name.

    Raises
    ------
    ValueError
        Before any work: different numbers of images and labels, repeated names, a file that
        does not exist.  Then, naming the image: what ``embed_segments`` refuses (shapes,
        label values...).

    See Also
    --------
    iter_embed_images : the same, one image's table at a time (for writing parts as they come).
    """
    parts = list(
        iter_embed_images(
            images,
            labels,
            names=names,
            encoder=encoder,
            progress=progress,
            should_stop=should_stop,
            **kwargs,
        )
    )
    if not parts:
        raise ValueError("no images: give at least one image and its labels")
    return merge_parts([part for _, part in parts])


def merge_parts(parts: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """One table from per-image tables (as :func:`iter_embed_images` yields them, or read back
    from files), in the order given: ``attrs["normalization"]`` maps each image name to its
    normalisation; ``encoder`` and ``crop_size`` are the first part's (``ValueError`` if the
    parts were embedded by different encoders or crop sizes)."""
    if not parts:
        raise ValueError("no parts to merge")
    first = parts[0].attrs
    for part in parts[1:]:
        for key in ("encoder", "crop_size"):
            a, b = first.get(key), part.attrs.get(key)
            if isinstance(a, dict) and isinstance(b, dict):
                a, b = a.get("sha256"), b.get("sha256")
            if a != b:
                raise ValueError(
                    f"the parts differ in {key} ({a!r} vs {b!r}): they were not embedded alike, "
                    "so they cannot share one table"
                )
    normalizations = {}
    for part in parts:
        for name in dict.fromkeys(part["image"]) if len(part) else ():
            normalizations[str(name)] = part.attrs.get("normalization")
    out = pd.concat(list(parts), ignore_index=True)
    out.attrs = {
        "encoder": first.get("encoder"),
        "crop_size": first.get("crop_size"),
        "normalization": normalizations,
    }
    return out


def check_inputs(images: Sequence, labels: Sequence, names: Sequence[str] | None) -> list[str]:
    """Refuse, before any work, what :func:`embed_images` cannot do: unequal numbers of images
    and labels, repeated names, files that do not exist.  Returns the image names."""
    images, labels = list(images), list(labels)
    if len(images) != len(labels):
        raise ValueError(
            f"{len(images)} images but {len(labels)} label images: give one label image per "
            "image, in the same order"
        )
    names = image_names(images, names)
    missing = [
        str(p)
        for p in (*images, *labels)
        if isinstance(p, str | os.PathLike) and not Path(p).is_file()
    ]
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise ValueError(f"no such file: {', '.join(missing[:5])}{more}")
    return names


def iter_embed_images(
    images: Sequence,
    labels: Sequence,
    *,
    names: Sequence[str] | None = None,
    encoder=None,
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    **kwargs,
) -> Iterator[tuple[str, pd.DataFrame]]:
    """:func:`embed_images`, one image at a time: yields ``(name, table)`` per image, in the
    order given, as soon as that image is done.

    Each table has the ``image`` column first and is exactly what :func:`embed_images` gives
    for that image's rows; its ``attrs`` hold ``encoder``, ``crop_size`` and that image's
    ``normalization``.  Inputs are checked (:func:`check_inputs`) before the first image is
    read.
    """
    from ..io import read_image
    from .embed import embed_segments, embed_stack, encoder_for
    from .segments import as_channels_first

    images, labels = list(images), list(labels)
    names = check_inputs(images, labels, names)
    crop_size = kwargs.get("crop_size", signature(embed_segments).parameters["crop_size"].default)
    for i, (image, label_image, name) in enumerate(zip(images, labels, names, strict=True)):
        if should_stop is not None and should_stop():
            raise Cancelled("embedding cancelled")
        try:
            image = read_image(image) if isinstance(image, str | os.PathLike) else image
            if isinstance(label_image, str | os.PathLike):
                label_image = read_image(label_image)
            label_image = np.asarray(label_image)
            stack = label_image.ndim == 3
            if encoder is None:
                plane = np.asarray(image)[0] if stack else image
                axis = kwargs.get("channel_axis")
                encoder = encoder_for(
                    None, in_channels=as_channels_first(plane, channel_axis=axis).shape[0]
                )
            embed = embed_stack if stack else embed_segments
            part = embed(image, label_image, encoder, should_stop=should_stop, **kwargs)
        except (ValueError, OSError) as exc:
            raise type(exc)(f"image {name!r}: {exc}") from exc
        part.insert(0, "image", name)
        part.attrs = {
            "encoder": encoder.record(),
            "crop_size": int(crop_size),
            "normalization": part.attrs.get("normalization"),
        }
        yield name, part
        if progress is not None:
            progress(i + 1, len(images))
