"""Thumbnails of 3D objects: the three orthogonal planes through the object's middle, side by
side in one tile (:func:`napari_segrep.engine.thumbnails.segment_thumbnails` on a volume).

Left to right: the z-plane (rows y, columns x), the y-plane (rows z, columns x) and the
x-plane (rows z, columns y), each through the voxel of the object's centre of mass (or, where
that plane misses the object, e.g. through the hole of a ring, the nearest plane that holds
some of it: a panel is never empty).  The three panels show one cube of space centred on the
object's bounding box, sampled in physical units: with the voxel ``spacing`` given, the side
views are stretched by it, so a sphere imaged at ``dz = 2 dx`` is round in every panel.

numpy only.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ._thumb_draw import inner_boundary, to_rgb
from .segments import PERCENTILES, Normalization

__all__ = ["BBOX_COLUMNS_3D", "find_boxes", "orthogonal_panels", "panel_layout", "volume_thumbnail"]

#: The bounding-box columns of a 3D embedding table (scikit-image's order).
BBOX_COLUMNS_3D = ("bbox_z0", "bbox_y0", "bbox_x0", "bbox_z1", "bbox_y1", "bbox_x1")
#: Each panel's (row, column) axes, by the axis its plane is normal to.
_PANEL_AXES = ((1, 2), (0, 2), (0, 1))
# Above this many label ids, only the asked ids are searched (find_objects allocates per id).
_MAX_SPARSE_ID = 1 << 20


def panel_layout(size: int) -> tuple[int, int, tuple[int, int, int]]:
    """Where the three square panels go in a ``size`` x ``size`` tile: their side, their top
    row and their left columns (a 1-pixel gap between panels from 32 pixels up)."""
    gap = 1 if size >= 32 else 0
    side = (size - 2 * gap) // 3
    left = (size - 3 * side - 2 * gap) // 2
    top = (size - side) // 2
    return side, top, tuple(left + k * (side + gap) for k in range(3))


def find_boxes(labels: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The bounding boxes of those of ``ids`` in the n-D ``labels``: their ids, ascending, and
    ``(n, 2 * ndim)`` int64 boxes (starts then stops, scikit-image's order).  One pass."""
    ids = np.unique(np.asarray(ids, np.int64))
    ndim = labels.ndim
    max_id = int(labels.max()) if labels.size else 0
    if max_id > _MAX_SPARSE_ID:  # huge ids: number the asked ones 1..n
        wanted = np.isin(labels, ids)
        search = np.zeros(labels.shape, np.int32)
        search[wanted] = np.searchsorted(ids, labels[wanted]) + 1
        objects = ndimage.find_objects(search, max_label=len(ids))
        found = [(int(v), objects[k]) for k, v in enumerate(ids) if objects[k] is not None]
    else:
        objects = ndimage.find_objects(labels, max_label=max_id) if max_id else []
        found = [
            (int(v), objects[v - 1]) for v in ids if 0 < v <= max_id and objects[v - 1] is not None
        ]
    keys = np.array([v for v, _ in found], np.int64)
    bbox = np.array(
        [[s.start for s in sl] + [s.stop for s in sl] for _, sl in found], np.int64
    ).reshape(-1, 2 * ndim)
    return keys, bbox


def _middle_planes(obj: np.ndarray) -> tuple[int, int, int]:
    """Per axis, the plane (index in ``obj``) through the centre of mass of the boolean
    ``obj``, or the nearest one holding some of it (ties: the larger in-mask area)."""
    planes = []
    for axis in range(3):
        others = tuple(a for a in range(3) if a != axis)
        area = obj.sum(axis=others)
        centre = float((area * np.arange(len(area))).sum() / area.sum())
        k = int(np.clip(np.floor(centre + 0.5), 0, len(area) - 1))
        if area[k] == 0:
            held = np.flatnonzero(area)
            distance = np.abs(held - centre)
            k = int(held[np.lexsort((-area[held], distance))[0]])
        planes.append(k)
    return tuple(planes)


def _axis_weights(centre: float, half: float, n: int, out: int) -> tuple[int, np.ndarray]:
    """Resampling along one axis of ``n`` voxels: ``out`` pixels covering ``centre +- half``
    (voxel units, voxel ``i`` spanning ``[i, i + 1)``).  Area averages when shrinking, linear
    interpolation (pixel centres) when enlarging; voxels beyond the axis count as zeros.

    Returns the first voxel used and the ``(out, k)`` float32 weights of voxels ``first ..
    first + k`` (rows sum to 1 where the window lies inside the axis).
    """
    low, step = centre - half, 2.0 * half / out
    if step >= 1.0:
        edges = low + step * np.arange(out + 1)
        first = max(int(np.floor(edges[0])), 0)
        last = min(int(np.ceil(edges[-1])), n)
        i = np.arange(first, last)[None, :]
        overlap = np.minimum(edges[1:, None], i + 1) - np.maximum(edges[:-1, None], i)
        weights = np.clip(overlap, 0.0, None) / step
    else:
        pos = low + (np.arange(out) + 0.5) * step - 0.5  # in voxel-centre indices
        i0 = np.floor(pos).astype(np.int64)
        frac = pos - i0
        first = max(int(i0.min()), 0)
        last = min(int(i0.max()) + 2, n)
        weights = np.zeros((out, max(last - first, 0)))
        rows = np.arange(out)
        for index, w in ((i0, 1.0 - frac), (i0 + 1, frac)):  # one voxel per row each time
            inside = (index >= first) & (index < last)
            weights[rows[inside], index[inside] - first] += w[inside]
    return first, weights.astype(np.float32)


def orthogonal_panels(
    image_cf: np.ndarray,
    labels: np.ndarray,
    norm: Normalization,
    label: int,
    box: tuple[slice, slice, slice],
    *,
    side: int,
    masked: bool,
    context: float,
    spacing: tuple[float, float, float],
    min_window: float,
) -> tuple[np.ndarray, np.ndarray]:
    """The z-, y- and x-planes through one 3D object, each ``side`` x ``side`` pixels.

    Parameters
    ----------
    image_cf : (C, Z, Y, X) ndarray
        The volume, channels first.
    labels : (Z, Y, X) int ndarray
    norm : Normalization
        "image" or "fixed" (numbers), or "segment" (the object's own voxels' percentiles).
    label : int
    box : 3 slices
        The object's bounding box in ``labels``.
    side : int
        Pixels per panel side.
    masked : bool
        The object's voxels only (in-mask averages), zero outside.
    context : float
        Margin around the bounding box, in units of its longest physical side, on each side.
    spacing : (dz, dy, dx)
        Voxel size (any unit); every panel is sampled in these units, aspect true.
    min_window : float
        The smallest window side, in units of the smallest voxel side.

    Returns
    -------
    channels : (3, C, side, side) float32
        The display-normalised values (0-1 shown; not clipped).
    masks : (3, side, side) bool
        The object's pixels in each panel (never all False).
    """
    spacing_ = np.asarray(spacing, np.float64)
    start = np.array([s.start for s in box], np.float64)
    stop = np.array([s.stop for s in box], np.float64)
    obj = labels[box] == label
    planes = np.asarray(_middle_planes(obj)) + start.astype(np.int64)
    physical = float(((stop - start) * spacing_).max()) * (1.0 + 2.0 * context)
    window = max(physical, min_window * float(spacing_.min()))
    half = window / 2.0 / spacing_  # in voxels, per axis
    weights = [
        _axis_weights((a + b) / 2.0, h, n, side)
        for a, b, h, n in zip(start, stop, half, labels.shape, strict=True)
    ]
    if norm.mode == "segment":
        low, high = np.percentile(image_cf[(slice(None), *box)][:, obj], PERCENTILES, axis=1)
    else:
        low, high = norm.low, norm.high
    span = np.where(high > low, high - low, 1.0).astype(np.float32)
    low = np.asarray(low, np.float32)
    channels = np.zeros((3, len(image_cf), side, side), np.float32)
    masks = np.zeros((3, side, side), bool)
    for axis, (r, c) in enumerate(_PANEL_AXES):
        (r0, wr), (c0, wc) = weights[r], weights[c]
        index: list = [slice(None)] * 3
        index[axis] = int(planes[axis])
        index[r] = slice(r0, r0 + wr.shape[1])
        index[c] = slice(c0, c0 + wc.shape[1])
        raw = image_cf[(slice(None), *index)].astype(np.float32)
        m = (labels[tuple(index)] == label).astype(np.float32)
        # one product resamples the mask and the values: masked, in-mask averages (nothing
        # outside: the encoder's image-masked view); else plain averages
        small = wr @ np.concatenate([m[None], raw * m if masked else raw]) @ wc.T
        m_small, values = small[0], small[1:]
        small_mask = m_small >= 0.5
        if not small_mask.any():  # thin object: keep every pixel it touches
            small_mask = m_small > 0
        if masked:
            values /= np.maximum(m_small, 1e-6)
        values = (values - low[:, None, None]) / span[:, None, None]
        if masked:
            values[:, ~small_mask] = 0.0
        channels[axis], masks[axis] = values, small_mask
    return channels, masks


def volume_thumbnail(plane, label: int, box, spacing, *, size, masked, context, min_window):
    """One 3D object: its z-, y- and x-planes side by side, (size, size, 3) uint8, and the
    outline of the object in each panel (size, size) bool.  ``plane``: the volume's
    ``image_cf``, ``labels`` and ``norm`` (a ``thumbnails._Plane``)."""
    side, top, lefts = panel_layout(size)
    channels, masks = orthogonal_panels(
        plane.image_cf,
        plane.labels,
        plane.norm,
        label,
        box,
        side=side,
        masked=masked,
        context=context,
        spacing=spacing,
        min_window=min_window,
    )
    band = np.zeros((channels.shape[1], side, size), np.float32)  # the panels' rows
    edges = np.zeros((size, size), bool)
    outlines = inner_boundary(masks)
    for panel, left in enumerate(lefts):
        band[:, :, left : left + side] = channels[panel]
        edges[top : top + side, left : left + side] = outlines[panel]
    tile = np.zeros((size, size, 3), np.uint8)
    tile[top : top + side] = to_rgb(band)
    return tile, edges
