"""A contact sheet of segment thumbnails (a gallery's "Export PNG montage"), headless.

Layout (exact; :func:`montage_layout` computes it, :func:`montage` uses it)::

    +--------------------------------------------+   p = padding, F = FRAME (2 px),
    | p                                          |   S = thumbnail size,
    | title (one line, optional)                 |   C = caption band (two text lines,
    | p                                          |       only when there are captions)
    | F [thumbnail 0] F  p  F [thumbnail 1] F  p |
    |   caption 0          caption 1             |   cell i: row i // columns,
    | p                                          |           column i % columns
    | F [thumbnail 2] F ...                      |
    +--------------------------------------------+

Each cell is ``S + 2F`` wide and ``S + 2F + C`` high; cells are ``p`` apart and ``p`` from the
edges.  Thumbnail ``i`` is pasted unscaled (pixel-exact) with its top-left pixel at
``origins[i]``; a frame of its colour (when given) fills the ``F`` pixels around it; its caption
is drawn inside ``caption_boxes(origins, S)[i]`` only (clipped and ellipsised there, so it never
reaches a neighbour).  Everything else is the background colour.

numpy and Pillow only (Pillow's built-in font: no font files needed).
"""

from __future__ import annotations

import io
import math
import operator
import os
import warnings
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont, PngImagePlugin

from .._version import __version__
from ..io import atomic_write

__all__ = ["FRAME", "caption_boxes", "montage", "montage_layout", "write_montage"]

#: Width (pixels) of the colour frame around each thumbnail; reserved even without colours.
FRAME = 2
#: The most columns a montage gets unless ``columns`` is given.
MAX_COLUMNS = 16
#: The largest montage (pixels): Pillow warns when it reads larger images (decompression bombs).
MAX_PIXELS = 89_478_485
_CAPTION_LINES = 2


def _font_size(size: int) -> int:
    return max(10, size // 6)


def _title_font_size(size: int) -> int:
    return _font_size(size) + 2


def _line_height(font_size: int) -> int:
    """Pixels per text line: a little more than the default font's ascent + descent."""
    return font_size + (font_size + 3) // 4


def _caption_height(size: int) -> int:
    return 2 + _CAPTION_LINES * _line_height(_font_size(size))


def _positive_int(value, name: str, *, minimum: int = 1) -> int:
    try:
        if isinstance(value, bool):
            raise TypeError
        number = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be a whole number, got {value!r}") from None
    if number < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {number}")
    return number


def montage_layout(
    n: int,
    size: int,
    *,
    columns: int | None = None,
    captions: bool = True,
    title: bool = False,
    padding: int = 4,
) -> tuple[int, int, np.ndarray]:
    """The geometry of a montage of ``n`` thumbnails of ``size x size`` pixels.

    Parameters
    ----------
    n : int
        Number of thumbnails, at least 1.
    size : int
        Thumbnail side ``S`` in pixels, at least 1.
    columns : int, optional
        Columns of the grid (at least 1; at most ``n`` are used).  Default
        ``ceil(sqrt(n))``, at most :data:`MAX_COLUMNS`.
    captions : bool
        Whether each cell has a caption band (two lines of text) under its thumbnail.
    title : bool
        Whether a title line sits above the grid.
    padding : int
        Pixels between cells and around the grid (at least 0).

    Returns
    -------
    height, width : int
        The montage's size in pixels.
    origins : numpy.ndarray, shape (n, 2), int64
        Top-left pixel ``(y, x)`` of each thumbnail; thumbnail ``i`` is in row
        ``i // columns``, column ``i % columns``.
    """
    n = _positive_int(n, "the number of thumbnails")
    size = _positive_int(size, "the thumbnail size")
    padding = _positive_int(padding, "padding", minimum=0)
    if columns is None:
        columns = min(math.isqrt(n - 1) + 1, MAX_COLUMNS)
    columns = min(_positive_int(columns, "columns"), n)
    rows = -(-n // columns)
    cell_w = size + 2 * FRAME
    cell_h = cell_w + (_caption_height(size) if captions else 0)
    top = padding + _line_height(_title_font_size(size)) if title else 0
    index = np.arange(n, dtype=np.int64)
    origins = np.empty((n, 2), np.int64)
    origins[:, 0] = top + padding + (index // columns) * (cell_h + padding) + FRAME
    origins[:, 1] = padding + (index % columns) * (cell_w + padding) + FRAME
    height = top + padding + rows * (cell_h + padding)
    width = padding + columns * (cell_w + padding)
    return int(height), int(width), origins


def caption_boxes(origins: np.ndarray, size: int) -> np.ndarray:
    """Where each caption is drawn: the band under each thumbnail's frame, as wide as the cell.

    Parameters
    ----------
    origins : numpy.ndarray, shape (N, 2), int
        Thumbnails' top-left pixels ``(y, x)`` from :func:`montage_layout` (with captions).
    size : int
        Thumbnail side ``S`` in pixels.

    Returns
    -------
    numpy.ndarray, shape (N, 4), int64
        ``(y0, x0, y1, x1)`` of each caption box, end-exclusive.
    """
    size = _positive_int(size, "the thumbnail size")
    origins = np.asarray(origins, np.int64).reshape(-1, 2)
    y0 = origins[:, 0] + size + FRAME
    x0 = origins[:, 1] - FRAME
    return np.stack(
        [y0, x0, y0 + _caption_height(size), origins[:, 1] + size + FRAME], axis=1
    ).astype(np.int64)


def _as_thumbnails(thumbnails) -> np.ndarray:
    """(N, S, S, 3) uint8 from (N, S, S, 3), (N, S, S, 1) or grey (N, S, S) uint8."""
    arr = np.asarray(thumbnails)
    if arr.dtype != np.uint8:
        raise ValueError(
            f"thumbnails must be uint8 (0..255), got {arr.dtype}: convert 0..1 floats with "
            "(np.clip(x, 0, 1) * 255).round().astype(np.uint8)"
        )
    if arr.ndim == 4 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim == 3:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    if arr.ndim != 4 or arr.shape[-1] != 3:
        hint = ": drop the alpha with thumbnails[..., :3]" if arr.shape[-1:] == (4,) else ""
        raise ValueError(
            f"thumbnails must have shape (N, S, S, 3) (RGB) or (N, S, S) (grey), got "
            f"{np.shape(thumbnails)}{hint}"
        )
    if arr.shape[0] == 0:
        raise ValueError(f"nothing to put in a montage: no thumbnails (shape {arr.shape})")
    if arr.shape[1] != arr.shape[2] or arr.shape[1] == 0:
        raise ValueError(f"thumbnails must be square and not empty (N, S, S, 3), got {arr.shape}")
    return arr


def _as_colours(colours, n: int) -> list[np.ndarray | None]:
    """Per-thumbnail RGBA (alpha 1 for RGB) in 0..1, or None."""
    if colours is None:
        return [None] * n
    if isinstance(colours, np.ndarray) and colours.ndim != 2:
        raise ValueError(f"colours must have shape (N, 3) or (N, 4), got {colours.shape}")
    if len(colours) != n:
        raise ValueError(f"{len(colours)} colours for {n} thumbnails: give one per thumbnail")
    parsed: list[np.ndarray | None] = []
    for i, colour in enumerate(colours):
        if colour is None:
            parsed.append(None)
            continue
        try:
            rgba = np.asarray(colour, dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"colour {i} ({colour!r}) is not RGB or RGBA numbers") from None
        if rgba.shape not in ((3,), (4,)):
            raise ValueError(f"colour {i} must be RGB or RGBA (3 or 4 numbers), got {colour!r}")
        if not np.all(np.isfinite(rgba)) or rgba.min() < 0 or rgba.max() > 1:
            raise ValueError(
                f"colour {i} ({colour!r}) must be floats in 0..1 (divide 0..255 values by "
                "255; None for no frame)"
            )
        parsed.append(np.append(rgba, 1.0)[:4])
    return parsed


def _as_captions(captions, n: int) -> list[str] | None:
    if captions is None:
        return None
    if isinstance(captions, str):
        raise ValueError("captions must be a list of strings (one per thumbnail), not one string")
    captions = list(captions)
    if len(captions) != n:
        raise ValueError(f"{len(captions)} captions for {n} thumbnails: give one per thumbnail")
    return ["" if c is None else str(c) for c in captions]


def _as_background(background) -> tuple[int, int, int]:
    values = np.asarray(background)
    if (
        values.shape != (3,)
        or not np.issubdtype(values.dtype, np.integer)
        or values.min() < 0
        or values.max() > 255
    ):
        raise ValueError(f"background must be three integers 0..255 (RGB), got {background!r}")
    return tuple(int(v) for v in values)


@lru_cache(maxsize=16)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's built-in font at ``size`` (scalable since Pillow 10.1), else its bitmap font."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # old Pillow, or one built without FreeType
        return ImageFont.load_default()


def _clean(text: str, font) -> str:
    """``text`` without tabs or carriage returns; latin-1 only for the bitmap font."""
    text = text.replace("\t", " ").replace("\r", "")
    if not isinstance(font, ImageFont.FreeTypeFont):
        text = text.encode("latin-1", "replace").decode("latin-1")
    return text


def _fit(text: str, font, width: float, *, cut: bool = False) -> str:
    """``text``, or its longest start with an ellipsis that fits in ``width`` pixels (an
    ellipsis also when ``cut``: text was dropped after it)."""
    if not cut and font.getlength(text) <= width:
        return text
    ellipsis = "\u2026" if isinstance(font, ImageFont.FreeTypeFont) else "..."
    lo, hi = 0, len(text)  # the longest prefix that fits is in [lo, hi]
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if font.getlength(text[:mid].rstrip() + ellipsis) <= width:
            lo = mid
        else:
            hi = mid - 1
    fitted = text[:lo].rstrip() + ellipsis
    return fitted if font.getlength(fitted) <= width else ""


def _text_box(
    lines: Sequence[str],
    font,
    shape: tuple[int, int],
    *,
    background: tuple[int, int, int],
    line_height: int,
    max_lines: int,
    left: int = 0,
    top: int = 0,
) -> np.ndarray | None:
    """``lines`` drawn into a ``shape`` (height, width) RGB box, ``line_height`` pixels
    apart from ``(top, left)``, clipped to the box; None when there is nothing to draw."""
    lines = [_clean(line, font) for line in lines]
    cut = len(lines) > max_lines
    lines = lines[:max_lines]
    if not any(line.strip() for line in lines):
        return None
    height, width = shape
    dark = sum(background) >= 3 * 128
    fill = (25, 25, 25) if dark else (235, 235, 235)
    box = Image.new("RGB", (width, height), background)
    draw = ImageDraw.Draw(box)
    for k, line in enumerate(lines):
        text = _fit(line, font, width - left, cut=cut and k == len(lines) - 1)
        if text:
            draw.text((left, top + k * line_height), text, font=font, fill=fill)
    return np.asarray(box, dtype=np.uint8)


def montage(
    thumbnails,
    captions: Sequence[str | None] | None = None,
    *,
    columns: int | None = None,
    colours=None,
    title: str | None = None,
    padding: int = 4,
    background: tuple[int, int, int] = (255, 255, 255),
) -> np.ndarray:
    """A contact sheet of ``thumbnails`` (see the module docstring for the exact layout).

    Parameters
    ----------
    thumbnails : array-like, shape (N, S, S, 3) or (N, S, S), uint8
        RGB (or grey) thumbnails, as ``segment_thumbnails`` returns; pasted unscaled.
    captions : sequence of str, length N, optional
        Text under each thumbnail, up to two lines (``"\\n"``); longer lines are ellipsised to
        the cell's width, a third line and more are dropped (the second line then ends in an
        ellipsis).  ``""`` or None: no caption.  Without ``captions`` the cells have no caption
        band.
    columns : int, optional
        Grid columns (see :func:`montage_layout`).
    colours : sequence, length N, optional
        Per thumbnail an RGB or RGBA colour of floats in 0..1 (e.g. its class colour), or
        None: a :data:`FRAME`-pixel frame of that colour (alpha blended over the background)
        around the thumbnail.
    title : str, optional
        One line above the grid (ellipsised to the montage's width).
    padding : int
        Pixels between cells and around the grid.
    background : tuple of 3 int
        RGB background (0..255); text is dark on light backgrounds, light on dark ones.

    Returns
    -------
    numpy.ndarray, shape (H, W, 3), uint8
        The montage; ``(H, W)`` and each thumbnail's position come from
        :func:`montage_layout` ``(N, S, columns=columns, captions=captions is not None,
        title=bool(title), padding=padding)``.

    Raises
    ------
    ValueError
        Bad shapes, dtypes or lengths (the message names the problem), no thumbnails, or a
        montage larger than :data:`MAX_PIXELS`.
    """
    thumbs = _as_thumbnails(thumbnails)
    n, size = thumbs.shape[0], thumbs.shape[1]
    texts = _as_captions(captions, n)
    frames = _as_colours(colours, n)
    bg = _as_background(background)
    title = None if title is None else " ".join(str(title).splitlines())
    height, width, origins = montage_layout(
        n, size, columns=columns, captions=texts is not None, title=bool(title), padding=padding
    )
    if height * width > MAX_PIXELS:
        raise ValueError(
            f"a montage of {n} thumbnails of {size} px would be {width} x {height} pixels, more "
            f"than {MAX_PIXELS:,}: export fewer or smaller thumbnails (or more columns)"
        )
    canvas = np.empty((height, width, 3), np.uint8)
    canvas[...] = bg
    bg_arr = np.asarray(bg, np.float64)
    for i, (y, x) in enumerate(origins):
        if frames[i] is not None:
            rgb, alpha = frames[i][:3], frames[i][3]
            colour = np.rint((alpha * rgb * 255 + (1 - alpha) * bg_arr).clip(0, 255))
            colour = colour.astype(np.uint8)
            canvas[y - FRAME : y + size + FRAME, x - FRAME : x + size + FRAME] = colour
        canvas[y : y + size, x : x + size] = thumbs[i]
    if texts is not None:
        font = _font(_font_size(size))
        for text, (y0, x0, y1, x1) in zip(texts, caption_boxes(origins, size), strict=True):
            box = _text_box(
                text.split("\n"),
                font,
                (int(y1 - y0), int(x1 - x0)),
                background=bg,
                line_height=_line_height(_font_size(size)),
                max_lines=_CAPTION_LINES,
                left=FRAME,
                top=1,
            )
            if box is not None:
                canvas[y0:y1, x0:x1] = box
    if title:
        font_size = _title_font_size(size)
        line_height = _line_height(font_size)
        shape = (line_height, width - 2 * padding)  # width >= 2 * padding + 5
        box = _text_box(
            [title], _font(font_size), shape, background=bg, line_height=line_height, max_lines=1
        )
        if box is not None:
            canvas[padding : padding + shape[0], padding : padding + shape[1]] = box
    return canvas


def write_montage(
    path: str | os.PathLike,
    thumbnails,
    captions: Sequence[str | None] | None = None,
    *,
    columns: int | None = None,
    colours=None,
    title: str | None = None,
    overwrite: bool = False,
    padding: int = 4,
    background: tuple[int, int, int] = (255, 255, 255),
) -> Path:
    """Write :func:`montage` ``(thumbnails, captions, ...)`` to the PNG file ``path``.

    The PNG is encoded in memory and decoded back (it must give the montage exactly), then
    written atomically (:func:`napari_segrep.io.atomic_write`): on any error an existing file
    is untouched and no temporary file is left.

    Parameters
    ----------
    path : str or os.PathLike
        The output file; its name must end in ``.png``.
    thumbnails, captions, columns, colours, title, padding, background
        As for :func:`montage`.
    overwrite : bool
        Replace an existing file (default: refuse).

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    ValueError
        ``path`` is a directory, does not end in ``.png``, or its folder is missing or not
        writable; or the montage's inputs are wrong (see :func:`montage`).
    FileExistsError
        ``path`` exists and ``overwrite`` is False.
    OSError
        Writing failed (disk full...); the previous file is kept.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a directory: give a file name (e.g. {path}/montage.png)")
    if path.suffix.lower() != ".png":
        raise ValueError(
            f"a montage is written as PNG: name the file {path.with_suffix('.png').name!r} "
            f"(got {path.name!r})"
        )
    if os.path.lexists(path) and not overwrite:
        raise FileExistsError(
            f"{path} exists: choose another name, or pass overwrite=True to replace it"
        )
    array = montage(
        thumbnails,
        captions,
        columns=columns,
        colours=colours,
        title=title,
        padding=padding,
        background=background,
    )
    info = PngImagePlugin.PngInfo()
    info.add_text("Software", f"napari-segrep {__version__}")
    if title:
        info.add_text("Title", " ".join(str(title).splitlines()))
    buffer = io.BytesIO()
    Image.fromarray(array, "RGB").save(buffer, format="PNG", pnginfo=info)
    data = buffer.getvalue()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(io.BytesIO(data)) as decoded:
            back = np.asarray(decoded.convert("RGB"))
    if back.shape != array.shape or not np.array_equal(back, array):
        raise RuntimeError(f"the PNG encoding of the montage did not read back; {path} not written")
    return atomic_write(path, lambda fh: fh.write(data))
