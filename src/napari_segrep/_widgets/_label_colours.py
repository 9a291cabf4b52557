"""Colour a label image by a lookup table, for highlights and colourings of 100,000 segments.

napari's ``DirectLabelColormap`` checks every colour of its dict and, for (u)int32 labels,
re-maps every pixel through a typed dict whenever the colormap changes: measured in
``benchmarks/map_scale.py`` (102,400 segments in 3200 x 3200, Xvfb), a dict naming every
label takes 1.1 s to paint, one naming 50,000 selected labels 0.9 s, whereas a uint8 labels
layer painted through :func:`indexed_colours` takes 0.16-0.19 s whatever the selection.

Here a highlight is a lookup table built by numpy indexing and one gather over the pixels,
whatever the number of labels or selected labels, in two forms: an index image with a small
palette (:func:`indexed_colours` + :func:`paint_labels` + :func:`index_colormap`) for a
uint8/uint16 labels layer, which napari draws without re-mapping its pixels (the fast one),
and an RGBA image (:func:`label_lut` + :func:`paint_labels`) for an image layer (measured
slower: 0.35-0.47 s, napari uploads 4 bytes a pixel).  Numpy only, except
:func:`index_colormap` (napari, imported when called).
"""

from __future__ import annotations

import numpy as np

__all__ = ["index_colormap", "indexed_colours", "label_lut", "paint_labels"]


def _rgba8(colours) -> np.ndarray:
    """RGBA floats in [0, 1] (rows of 3 or 4) as uint8."""
    colours = np.atleast_2d(np.asarray(colours, np.float64))
    if colours.shape[-1] == 3:
        colours = np.concatenate([colours, np.ones((*colours.shape[:-1], 1))], axis=-1)
    if colours.shape[-1] != 4:
        raise ValueError(f"colours need 3 or 4 channels, got shape {colours.shape}")
    return np.round(np.clip(colours, 0.0, 1.0) * 255).astype(np.uint8)


def label_lut(
    labels: np.ndarray,
    colours: np.ndarray,
    *,
    selected=None,
    dimmed=(0.6, 0.6, 0.6, 0.15),
    default=(0.0, 0.0, 0.0, 0.0),
) -> np.ndarray:
    """A lookup table from label value to RGBA: ``labels`` in ``colours``; with ``selected``,
    only those, every other label ``dimmed``.

    Parameters
    ----------
    labels : (N,) int array
        The segments' label values (non-negative; 0 is background and stays transparent).
    colours : (N, 3 or 4) float array or (3 or 4,)
        Each label's colour in [0, 1] (one colour: all of them).
    selected : array of int, optional
        Label values to show in their colours; the other ``labels`` are drawn ``dimmed``.
        None: every label in its colour.
    dimmed : (4,) float
        RGBA of the labels not selected.
    default : (4,) float
        RGBA of label values not in ``labels`` (and of values beyond the table).

    Returns
    -------
    (max(labels) + 2, 4) uint8 ndarray
        Row ``v`` is the colour of label value ``v``; the last row is ``default``, which
        :func:`paint_labels` uses for values beyond the table.

    Examples
    --------
    >>> lut = label_lut(np.array([1, 2]), np.array([[1, 0, 0, 1], [0, 1, 0, 1]]), selected=[2])
    >>> lut[:3].tolist()
    [[0, 0, 0, 0], [153, 153, 153, 38], [0, 255, 0, 255]]
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {labels.shape}")
    if labels.size and labels.min() < 0:
        raise ValueError("label values must be non-negative")
    rgba = _rgba8(colours)
    if len(rgba) != 1 and len(rgba) != len(labels):
        raise ValueError(f"{len(labels)} labels but {len(rgba)} colours")
    top = int(labels.max()) if labels.size else 0
    lut = np.empty((top + 2, 4), np.uint8)
    lut[:] = _rgba8(default)[0]
    if selected is None:
        lut[labels] = rgba
    else:
        lut[labels] = _rgba8(dimmed)[0]
        selected = np.asarray(list(selected) if isinstance(selected, set) else selected)
        rows = np.flatnonzero(np.isin(labels, selected))
        lut[labels[rows]] = rgba if len(rgba) == 1 else rgba[rows]
    lut[0] = 0  # background
    return lut


def indexed_colours(
    labels: np.ndarray,
    colours: np.ndarray,
    *,
    selected=None,
    dimmed=(0.6, 0.6, 0.6, 0.15),
) -> tuple[np.ndarray, np.ndarray]:
    """The same colours as :func:`label_lut`, as a small index per label value and a palette:
    for a uint8 (or uint16) labels layer whose colormap names only the palette's colours.

    napari draws uint8 and uint16 labels as they are, and a ``DirectLabelColormap`` of a few
    hundred entries costs nothing to check, so a highlight of any number of segments is one
    gather of the pixels (:func:`paint_labels` with this table) and one small colormap
    (:func:`index_colormap`).

    Parameters
    ----------
    labels, colours, selected, dimmed
        As in :func:`label_lut` (label values not in ``labels``: transparent).

    Returns
    -------
    index : (max(labels) + 2,) uint8 or uint16 ndarray
        Row ``v``: the palette entry of label value ``v`` (0: transparent).  uint8 when the
        colours (with ``dimmed``) are at most 255, else uint16.
    palette : (K, 4) float ndarray
        RGBA in [0, 1] of each index (as uint8 levels / 255); ``palette[0]`` is transparent.

    Examples
    --------
    >>> index, palette = indexed_colours(np.array([1, 2, 3]), [(1, 0, 0)] * 3, selected=[3])
    >>> index[:4].tolist(), len(palette)
    ([0, 1, 1, 2], 3)
    """
    rgba = label_lut(labels, colours, selected=selected, dimmed=dimmed)
    packed = rgba.view(np.uint32).ravel()
    clear = np.zeros(1, np.uint8).repeat(4).view(np.uint32)[0]
    values, index = np.unique(packed, return_inverse=True)
    others = values != clear  # transparent colours are index 0
    order = np.concatenate([[clear], values[others]])
    if len(order) > 65536:
        raise ValueError(f"{len(order)} distinct colours: at most 65,535 fit uint16 labels")
    new_position = np.cumsum(others)  # position in ``order`` of each of ``values``
    new_position[~others] = 0
    dtype = np.uint8 if len(order) <= 256 else np.uint16
    palette = order.view(np.uint8).reshape(-1, 4).astype(np.float64) / 255
    return new_position[index].astype(dtype), palette


def index_colormap(palette: np.ndarray):
    """A napari ``DirectLabelColormap`` of :func:`indexed_colours`' palette (index ``i`` in
    ``palette[i]``; everything else transparent)."""
    from napari.utils.colormaps import DirectLabelColormap

    colour_dict = {None: np.zeros(4), 0: np.zeros(4)}
    colour_dict.update(enumerate(np.asarray(palette, float)[1:], start=1))
    return DirectLabelColormap(color_dict=colour_dict)


def paint_labels(label_image: np.ndarray, lut: np.ndarray, *, out=None) -> np.ndarray:
    """The RGBA image of ``label_image`` through ``lut`` (from :func:`label_lut`), or its
    index image through a 1-D table (from :func:`indexed_colours`).

    Parameters
    ----------
    label_image : (..., H, W) int ndarray
        Label values; values beyond the table (or negative) take its last row.
    lut : (M, 4) uint8 or (M,) ndarray
        Row ``v``: the colour (or palette index) of label value ``v``.
    out : ndarray, optional
        Where to write (a layer's data, to reuse its memory): (..., H, W, 4) uint8 for an
        RGBA table, (..., H, W) of the table's dtype for a 1-D one.

    Returns
    -------
    (..., H, W, 4) uint8 or (..., H, W) ndarray

    Examples
    --------
    >>> lut = label_lut(np.array([1]), np.array([1.0, 0.0, 0.0]))
    >>> paint_labels(np.array([[0, 1, 7]]), lut)[0].tolist()
    [[0, 0, 0, 0], [255, 0, 0, 255], [0, 0, 0, 0]]
    """
    lut = np.asarray(lut)
    flat_lut = lut.ndim == 1 and len(lut) > 0
    if not flat_lut and (lut.ndim != 2 or lut.shape[1] != 4 or len(lut) == 0):
        raise ValueError(f"lut must be (M, 4) uint8 or (M,), got shape {lut.shape}")
    if flat_lut:
        packed = lut
    else:  # one 4-byte gather per pixel
        packed = np.ascontiguousarray(lut, np.uint8).view(np.uint32).ravel()
    image = np.asarray(label_image)
    index = image.astype(np.int64, copy=False) if image.dtype.kind == "i" else image
    if index.dtype.kind == "i":
        index = np.where(index < 0, len(packed) - 1, index)
    if flat_lut:
        return np.take(packed, index, mode="clip", out=out)
    flat = out.view(np.uint32)[..., 0] if out is not None else None
    result = np.take(packed, index, mode="clip", out=flat)
    return result[..., None].view(np.uint8) if out is None else out
