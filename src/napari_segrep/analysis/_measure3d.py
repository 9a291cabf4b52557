"""Measurements of 3D objects (one row per label of a ``(Z, Y, X)`` label image), in physical
units from the voxel spacing, as scikit-image's ``regionprops(..., spacing=)`` computes them.

:func:`measure_volume` is what :func:`napari_segrep.analysis.measure.measure_segments` calls for
a z-stack (``axes="zyx"``) and for each frame of a time-lapse of volumes (``axes="tzyx"``).
Each object is measured inside its bounding box (memory follows the largest object, not the
volume): voxel count, centroid and bounding box in voxel indices (as the embedding tables give
them, so rows link to napari's data coordinates), then with the spacing ``(dz, dy, dx)``: the
volume, the surface area (marching cubes), the axis lengths (inertia tensor of the physical
voxel centres), the solidity and extent (voxel ratios), the equivalent diameter, and the
intensity mean and standard deviation per channel.

Numpy, scipy and scikit-image only (no torch, no napari).
"""

from __future__ import annotations

import numpy as np

__all__ = ["SHAPE_COLUMNS_3D", "VOLUME_COLUMNS", "measure_volume"]

#: Where a 3D object is, in voxel indices, as the engine's 3D tables name them (scikit-image's
#: bbox order: the lower corner, then the upper corner, exclusive).
VOLUME_COLUMNS = (
    "centroid_z",
    "centroid_y",
    "centroid_x",
    "area",
    "bbox_z0",
    "bbox_y0",
    "bbox_x0",
    "bbox_z1",
    "bbox_y1",
    "bbox_x1",
)
#: Shape columns of a 3D object, in physical units of the spacing (``solidity`` and ``extent``
#: are voxel ratios, without unit).
SHAPE_COLUMNS_3D = (
    "volume",
    "surface_area",
    "equivalent_diameter",
    "axis_major_length",
    "axis_minor_length",
    "solidity",
    "extent",
)
#: skimage.morphology.convex_hull_image's: a voxel is in the hull when every facet's
#: ``normal . p + offset`` is below it.
_HULL_TOLERANCE = 1e-10
#: Above this many label ids, ids are numbered 1..K first (find_objects allocates one slot per id).
_MAX_SPARSE_ID = 1 << 20
#: How many (row, facet) pairs the hull's voxel count computes at once (floats in memory).
_HULL_FLOATS = 1 << 21
#: A voxel as its hull sees it: the middles of its six faces (convex_hull_image's offsets).
_DIAMOND = np.array(
    [[-0.5, 0, 0], [0.5, 0, 0], [0, -0.5, 0], [0, 0.5, 0], [0, 0, -0.5], [0, 0, 0.5]]
)


def measure_volume(image_cf: np.ndarray, labels: np.ndarray, *, spacing, intensity_names):
    """The measurements of every object of one volume.

    Parameters
    ----------
    image_cf : (C, Z, Y, X) ndarray
        The image, channels first (``napari_segrep._images.as_channels_first``).
    labels : (Z, Y, X) int ndarray
        Checked (``validate_labels``); 0 is background.
    spacing : (dz, dy, dx) tuple of float
        The voxel's size along each axis (ones for unit voxels).
    intensity_names : list of str
        The intensity columns, ``intensity_mean_<c>`` for every channel then ``intensity_std_<c>``.

    Returns
    -------
    DataFrame
        ``label``, :data:`VOLUME_COLUMNS`, :data:`SHAPE_COLUMNS_3D`, then ``intensity_names``;
        one row per label, ascending.
    """
    import pandas as pd

    values, idents, slices = _objects(labels)
    n = len(values)
    spacing = np.asarray(spacing, np.float64)
    n_channels = image_cf.shape[0]
    ints = np.zeros((7, n), np.int64)  # area, then the bbox
    floats = np.zeros((3 + len(SHAPE_COLUMNS_3D), n), np.float64)
    intensity = np.zeros((2 * n_channels, n), np.float64)
    for k, (ident, window) in enumerate(zip(idents, slices, strict=True)):
        mask = labels[window] == ident
        coords = np.argwhere(mask)
        corner = np.array([s.start for s in window])
        shape = np.array([s.stop - s.start for s in window])
        count = len(coords)
        ints[0, k] = count
        ints[1:4, k] = corner
        ints[4:7, k] = corner + shape
        floats[0:3, k] = coords.mean(axis=0) + corner
        floats[3:, k] = _shape(mask, coords, spacing, count, int(np.prod(shape)))
        for c in range(n_channels):
            inside = image_cf[(c, *window)][mask].astype(np.float64)
            mean = inside.mean()
            intensity[c, k] = mean
            intensity[n_channels + c, k] = np.sqrt(np.mean((inside - mean) ** 2))
    data = {"label": values}
    data.update(
        {
            "centroid_z": floats[0],
            "centroid_y": floats[1],
            "centroid_x": floats[2],
            "area": ints[0],
            **{name: ints[1 + i] for i, name in enumerate(VOLUME_COLUMNS[4:])},
        }
    )
    data.update({name: floats[3 + i] for i, name in enumerate(SHAPE_COLUMNS_3D)})
    data.update(dict(zip(intensity_names, intensity, strict=True)))
    return pd.DataFrame(data)


def _objects(labels: np.ndarray):
    """``(values, idents, windows)``: the label ids present (ascending, int64), the same ids
    as ``labels`` holds them, and each one's bounding box (``scipy.ndimage.find_objects``, which
    keeps one slot per id up to the largest: very large ids are numbered 1..K first)."""
    from scipy import ndimage

    max_id = int(labels.max()) if labels.size else 0
    if max_id > _MAX_SPARSE_ID:
        values = np.unique(labels)
        values = values[values != 0]
        search = np.zeros(labels.shape, np.int64)
        nonzero = labels != 0
        search[nonzero] = np.searchsorted(values, labels[nonzero]) + 1
        windows = ndimage.find_objects(search)
        return values.astype(np.int64), values, windows
    windows = ndimage.find_objects(labels) if max_id else []
    present = [i for i, window in enumerate(windows) if window is not None]
    values = np.asarray(present, np.int64) + 1
    return values, values.astype(labels.dtype), [windows[i] for i in present]


def _shape(mask: np.ndarray, coords: np.ndarray, spacing: np.ndarray, count: int, box: int):
    """:data:`SHAPE_COLUMNS_3D` of one object: ``mask`` its bounding box, ``coords`` its voxels
    (indices in the box)."""
    volume = count * float(np.prod(spacing))
    centred = (coords - coords.mean(axis=0)) * spacing
    covariance = centred.T @ centred / count
    eigenvalues = np.clip(np.linalg.eigvalsh(covariance), 0.0, None)  # ascending
    # skimage: sqrt(10 (ev0 + ev1 - ev2)) of the inertia tensor's eigenvalues = sqrt(20 l_max)
    major, minor = np.sqrt(20.0 * eigenvalues[-1]), np.sqrt(20.0 * eigenvalues[0])
    return (
        volume,
        surface_area(mask, spacing),
        (6.0 * volume / np.pi) ** (1.0 / 3.0),
        major,
        minor,
        count / convex_voxel_count(mask),
        count / box,
    )


def _rest(equations: np.ndarray, z: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``tolerance - (normal_z z + normal_y y + offset)``, rows x facets."""
    return _HULL_TOLERANCE - (equations[:, 0] * z + equations[:, 1] * y + equations[:, 3])


def surface_area(mask: np.ndarray, spacing) -> float:
    """The area of the iso-surface (level 0.5) of a 3D ``mask`` padded by one voxel of
    background, with voxels of size ``spacing``: ``skimage.measure.marching_cubes`` then
    ``mesh_surface_area``.  A single voxel of unit spacing gives sqrt(3) (its octahedron)."""
    from skimage.measure import marching_cubes, mesh_surface_area

    padded = np.pad(mask, 1).astype(np.float32)
    verts, faces, _, _ = marching_cubes(padded, 0.5, spacing=tuple(float(s) for s in spacing))
    return float(mesh_surface_area(verts, faces))


def convex_voxel_count(mask: np.ndarray) -> int:
    """How many voxels of ``mask``'s grid lie in the convex hull of its voxels (a 3D bool
    array, the object's bounding box), each voxel represented by the middles of its six faces.

    The same hull and the same inclusion test as ``skimage.morphology.convex_hull_image``, so
    solidity equals ``regionprops``'; but also for flat or linear objects (one plane thick, a
    line of voxels), where scikit-image's first hull of the voxel centres fails and it returns
    an empty hull (an infinite solidity): their hull is that of the face middles, which always
    spans 3D.  Only the first and last voxel of each ``(z, y)`` row can be hull vertices (the
    others' face middles lie between theirs), and each row meets the hull in one interval of
    ``x``: a large object costs its rows times the hull's facets, not its voxels.
    """
    from scipy.spatial import ConvexHull, QhullError

    rows_z, rows_y = np.nonzero(mask.any(axis=2))
    rows = mask[rows_z, rows_y]
    width = mask.shape[2]
    ends = np.concatenate(
        [
            np.stack([rows_z, rows_y, np.argmax(rows, axis=1)], 1),
            np.stack([rows_z, rows_y, width - 1 - np.argmax(rows[:, ::-1], axis=1)], 1),
        ]
    )
    points = np.unique(ends, axis=0).astype(np.float64)
    try:
        points = points[ConvexHull(points).vertices]  # only the hull's vertices matter
    except (QhullError, ValueError):  # flat, linear or fewer than 4 voxels: keep them all
        pass
    points = np.unique((points[:, None, :] + _DIAMOND).reshape(-1, 3), axis=0)
    equations = ConvexHull(points).equations  # (F, 4): inside, normal . p + offset < tol
    along_x = equations[:, 2]
    # per facet: normal_x * x < tolerance - (normal_z z + normal_y y + offset) =: rest
    rising = equations[along_x > 1e-12]  # x < rest / normal_x
    falling = equations[along_x < -1e-12]  # x > rest / normal_x
    level = equations[np.abs(along_x) <= 1e-12]  # parallel to x: the row is inside or not
    zz, yy = np.indices(mask.shape[:2]).reshape(2, -1).astype(np.float64)
    chunk = max(1, _HULL_FLOATS // len(equations))
    total = 0
    for start in range(0, len(zz), chunk):
        z, y = zz[start : start + chunk, None], yy[start : start + chunk, None]
        first, last = np.zeros(len(z)), np.full(len(z), width - 1.0)
        if len(rising):  # the last x below every rising facet's bound
            high = np.min(_rest(rising, z, y) / rising[:, 2], axis=1)
            last = np.minimum(np.ceil(high) - 1, last)
        if len(falling):  # the first x above every falling facet's bound
            low = np.max(_rest(falling, z, y) / falling[:, 2], axis=1)
            first = np.maximum(np.floor(low) + 1, first)
        count = np.clip(last - first + 1, 0, None)
        if len(level):
            count[~np.all(_rest(level, z, y) > 0, axis=1)] = 0
        total += int(count.sum())
    return total
