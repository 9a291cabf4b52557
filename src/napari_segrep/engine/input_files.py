"""Image file headers: shapes and dtypes without reading pixels, to check a whole collection of
image/label pairs before any work (cheap for thousands of files).

Headless and torch-free (tifffile and Pillow, imported when needed).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = ["check_pair_headers", "image_header"]


def image_header(path: str | os.PathLike) -> tuple[tuple[int, ...], str]:
    """The shape and dtype of an image file, from its header only.

    Parameters
    ----------
    path : path-like
        TIFF (tifffile: the first series), or PNG/JPEG (Pillow).

    Returns
    -------
    shape : tuple of int
        As ``napari_segrep.io.read_image`` would return the array: ``(Y, X)``, ``(Y, X, C)``
        for colour images, ``(T, Y, X)`` for a TIFF stack.
    dtype : str
        NumPy dtype name (``"uint8"``, ``"uint16"``, ``"float32"`` ...).

    Raises
    ------
    ValueError
        The file cannot be read as an image (its message names the file and the reason).
    """
    path = Path(path)
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            with tifffile.TiffFile(path) as tif:
                series = tif.series[0]
                return tuple(int(n) for n in series.shape), str(series.dtype)
        from PIL import Image

        with Image.open(path) as im:
            width, height = im.size
            bands = len(im.getbands())
            shape = (height, width) if bands == 1 else (height, width, bands)
            return shape, _PIL_DTYPES.get(im.mode, "uint8")
    except Exception as exc:  # noqa: BLE001 - any reader failure is a user-facing error
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ValueError(f"cannot read {path} as an image: {reason}") from None


_PIL_DTYPES = {"1": "bool", "I;16": "uint16", "I;16B": "uint16", "I": "int32", "F": "float32"}


def check_pair_headers(
    pairs: Sequence[tuple[Path, Path]],
    *,
    channel_axis: int | None = None,
    shown: int = 5,
    check: Callable[[Path, Path, tuple, tuple], str | None] | None = None,
) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """Check every image/label pair from the file headers, and name every problem at once.

    Parameters
    ----------
    pairs : sequence of (image path, labels path)
        As ``napari_segrep.io.pair_files`` gives them.
    channel_axis : int, optional
        The images' channel axis (``--channel-axis``), for their ``(Y, X)`` shape.
    check : callable(image path, labels path, image shape, labels shape) -> str or None
        Whether the two shapes make a pair: the problem in words, or None.  Default: the same
        ``(Y, X)`` shape (a ``(T, Y, X)`` stack with as many frames), leniently where a header
        alone cannot tell.  The command line passes one that knows each pair's layout
        (z-stack, time-lapse...).
    shown : int
        Problems named in the message; the rest are counted.

    Returns
    -------
    list of (image shape, labels shape)
        One per pair, in order.

    Raises
    ------
    ValueError
        One line naming each unreadable file, each pair whose shapes do not match (``check``)
        and each label file that does not hold integers (bool, float).
    """
    problems, shapes = [], []
    for image_path, labels_path in pairs:
        try:
            image_shape, _ = image_header(image_path)
        except ValueError as exc:
            problems.append(str(exc))
            image_shape = None
        try:
            labels_shape, labels_dtype = image_header(labels_path)
        except ValueError as exc:
            problems.append(str(exc))
            labels_shape = None
        if labels_shape is not None and labels_dtype.startswith(("float", "bool")):
            problems.append(
                f"{labels_path.name} holds {labels_dtype} values: label images must hold "
                "integers (0 is background)"
            )
        if image_shape is not None and labels_shape is not None:
            if check is not None:
                problem = check(image_path, labels_path, image_shape, labels_shape)
                if problem is not None:
                    problems.append(problem)
            elif not _spatial_match(image_shape, labels_shape, channel_axis):
                problems.append(
                    f"{image_path.name} is {image_shape} but its labels {labels_path.name} are "
                    f"{labels_shape}: each pair must have the same (Y, X) shape"
                )
        shapes.append((image_shape, labels_shape))
    if problems:
        more = f"; and {len(problems) - shown} more" if len(problems) > shown else ""
        count = f"{len(problems)} problem{'s' if len(problems) > 1 else ''} in the inputs"
        raise ValueError(f"{count}, nothing done: {'; '.join(problems[:shown])}{more}")
    return shapes


def _spatial_match(image: tuple, labels: tuple, channel_axis: int | None) -> bool:
    """Whether ``labels`` (``(Y, X)`` or a ``(T, Y, X)`` stack) can be the labels of
    ``image``; lenient where the header alone cannot tell (the engine names the rest)."""
    if len(labels) not in (2, 3):
        return True  # not a label image the engine takes: it says so, naming the image
    candidates = {image[-2:]}
    if len(image) >= 3:
        candidates.add(image[-3:-1])  # channels last: RGB (Y, X, 3), (Y, X, C)
    if channel_axis is not None and -len(image) <= channel_axis < len(image):
        rest = list(image)
        del rest[channel_axis]
        candidates.add(tuple(rest[-2:]))
    if len(labels) == 3 and labels[-1] in (3, 4) and labels[:2] in candidates:
        return True  # a colour rendering of labels: the engine says so, naming the image
    if labels[-2:] not in candidates:
        return False
    return len(labels) == 2 or image[0] == labels[0]  # a stack: as many frames
