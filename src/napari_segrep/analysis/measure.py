"""Measurements of segments: size, shape, and intensity inside the mask, per channel; for 2D
segments and for 3D objects (in physical units of the voxel spacing).

:func:`measure_segments` measures every segment of a label image (a table of its own, like
scikit-image's ``regionprops_table``); :func:`add_measurements` adds those columns to an
embedding table, before ``emb_0``, matched by label, for ``train_classifier(...,
features="embedding+geometry")``.  Images are read the way ``embed_segments`` reads them
(:func:`napari_segrep._images.as_channels_first`): grey, RGB(A) (alpha dropped), or
multichannel with ``channel_axis``; the labels' axes are what
:func:`napari_segrep._images.layout_of` says (3D labels must say z-stack or time-lapse).  3D
objects are measured by :mod:`napari_segrep.analysis._measure3d`.

Numpy, pandas and scikit-image only (no torch, no napari).
"""

from __future__ import annotations

import numpy as np

from .._images import Layout, as_channels_first, frame_channel_axis, layout_of, validate_labels
from ._measure3d import SHAPE_COLUMNS_3D, measure_volume

__all__ = [
    "SHAPE_COLUMNS",
    "SHAPE_COLUMNS_3D",
    "add_measurements",
    "geometry_columns",
    "has_measurements",
    "intensity_columns",
    "measure_segments",
    "missing_measurements",
]

#: Shape columns, as scikit-image's ``regionprops_table`` names and computes them.
SHAPE_COLUMNS = (
    "perimeter",
    "eccentricity",
    "solidity",
    "extent",
    "axis_major_length",
    "axis_minor_length",
)
#: Above this many label ids, ids are compacted first (find_objects allocates one slot per id).
_MAX_SPARSE_ID = 1 << 20
_INTENSITY_PREFIXES = ("intensity_mean_", "intensity_std_")
_MAX_LISTED = 5


def intensity_columns(n_channels: int) -> list[str]:
    """``intensity_mean_0 ... intensity_mean_{C-1}``, then ``intensity_std_0 ...``."""
    return [f"{p}{c}" for p in _INTENSITY_PREFIXES for c in range(n_channels)]


def _shape_columns(table) -> tuple[str, ...]:
    """:data:`SHAPE_COLUMNS_3D` for a table of 3D objects (``volume``, ``centroid_z`` or
    ``bbox_z0`` among its columns, or a recorded layout with z), else :data:`SHAPE_COLUMNS`."""
    if "perimeter" in table.columns:
        return SHAPE_COLUMNS
    layout = table.attrs.get("layout")
    in_z = isinstance(layout, dict) and "z" in str(layout.get("axes", ""))
    in_z = in_z or any(c in table.columns for c in ("volume", "centroid_z", "bbox_z0"))
    return SHAPE_COLUMNS_3D if in_z else SHAPE_COLUMNS


def geometry_columns(table) -> list[str]:
    """The measurement columns ``table`` has, in :func:`measure_segments`' order: ``area``,
    :data:`SHAPE_COLUMNS` (:data:`SHAPE_COLUMNS_3D` for 3D objects), then every
    ``intensity_mean_<c>`` and ``intensity_std_<c>``."""
    names = [c for c in ("area", *_shape_columns(table)) if c in table.columns]
    for prefix in _INTENSITY_PREFIXES:
        found = [
            c
            for c in table.columns
            if isinstance(c, str) and c.startswith(prefix) and c[len(prefix) :].isdigit()
        ]
        names += sorted(found, key=lambda c: int(c[len(prefix) :]))
    return names


def missing_measurements(table) -> list[str]:
    """The size and shape columns of :func:`measure_segments` that ``table`` lacks (those of 2D
    segments, or of 3D objects for a table of them); ``[]`` when it is measured."""
    return [c for c in ("area", *_shape_columns(table)) if c not in table.columns]


def has_measurements(table) -> bool:
    """Whether ``table`` has :func:`measure_segments`' size and shape columns (2D or 3D), as
    ``train_classifier(..., features="embedding+geometry")`` needs."""
    return not missing_measurements(table)


def measure_segments(
    image, labels, *, channel_axis: int | None = None, axes: str | None = None, spacing=None
):
    """Size, shape and in-mask intensity of every segment of ``labels``: 2D segments, or 3D
    objects in physical units.

    Parameters
    ----------
    image : ndarray
        The labels' grid, plus possibly channels, read as ``embed_segments`` reads it: RGB(A)
        (colour last, alpha dropped) needs no ``channel_axis``; other multichannel images need
        it.  ``(Y, X[, C])`` for 2D labels, ``(Z, Y, X[, C])`` for a z-stack, ``(T, Y, X[, C])``
        or ``(T, Z, Y, X[, C])`` for a time-lapse.  Intensities are in the image's own units
        (not normalised).
    labels : (Y, X), (Z, Y, X), (T, Y, X) or (T, Z, Y, X) int ndarray
        0 is background.
    channel_axis : int, optional
        The image's channel axis, counted in the whole image (for a time-lapse too: 0 is time).
    axes : "yx", "zyx", "tyx", "tzyx" or None
        What the labels' axes are (``napari_segrep._images.layout_of``): None for 2D (``"yx"``)
        and 4D (``"tzyx"``) labels; 3D labels must say whether they are a z-stack (``"zyx"``:
        one row per 3D object) or a time-lapse (``"tyx"``: one row per 2D segment and frame,
        like ``embed_stack``), or :class:`~napari_segrep._images.AxesUnknown` is raised.
    spacing : (dz, dy, dx) sequence of float, optional
        The voxel's physical size (any one unit) for 3D objects; None: unit voxels (cubes of
        side 1, so ``volume`` equals ``area`` and lengths are in voxels).  2D measurements are
        in pixels and take no spacing.

    Returns
    -------
    DataFrame
        One row per non-zero label, ascending (per frame for a time-lapse): ``label`` (then
        ``frame`` for a time-lapse), then

        * 2D: ``area`` (pixels), the :data:`SHAPE_COLUMNS` as
          ``skimage.measure.regionprops_table`` computes them (``perimeter``,
          ``eccentricity``, ``solidity``, ``extent``, ``axis_major_length``,
          ``axis_minor_length``);
        * 3D: ``centroid_z, centroid_y, centroid_x``, ``area`` (voxels), ``bbox_z0, bbox_y0,
          bbox_x0, bbox_z1, bbox_y1, bbox_x1`` (voxel indices, as the embedding tables give
          them), then the :data:`SHAPE_COLUMNS_3D` in the spacing's unit: ``volume`` (voxels x
          the voxel's volume), ``surface_area`` (marching cubes of the object, padded),
          ``equivalent_diameter`` (of the ball of that volume), ``axis_major_length`` and
          ``axis_minor_length`` (``regionprops`` with ``spacing``), ``solidity`` (voxels over
          the voxels of its convex hull) and ``extent`` (over its bounding box);

        then ``intensity_mean_<c>`` and ``intensity_std_<c>`` (population standard deviation)
        for every channel ``c`` (0 for a grayscale image).  ``attrs["layout"]`` records the axes
        and spacing.  No segment: no rows, the same columns.

    Raises
    ------
    AxesUnknown
        3D labels without ``axes``.
    ValueError
        Shapes that disagree, a spacing of the wrong length or not positive, a spacing for 2D
        segments.

    Examples
    --------
    >>> import numpy as np, napari_segrep as sr
    >>> labels = np.zeros((32, 32), int); labels[4:10, 4:20] = 3
    >>> image = np.full((32, 32), 5.0)
    >>> sr.measure_segments(image, labels)[["label", "area", "extent", "intensity_mean_0"]]
       label  area  extent  intensity_mean_0
    0      3    96     1.0               5.0
    >>> volume = np.zeros((8, 32, 32), int); volume[2:6, 4:10, 4:20] = 3
    >>> m = sr.measure_segments(volume * 1.0, volume, axes="zyx", spacing=(2, 0.5, 0.5))
    >>> m[["label", "centroid_z", "area", "volume", "extent"]]
       label  centroid_z  area  volume  extent
    0      3         3.5   384   192.0     1.0
    """
    import pandas as pd

    image = np.asarray(image)
    labels = np.asarray(labels)
    layout = layout_of(labels, axes=axes, spacing=spacing)
    if layout.spacing is not None and not layout.is_volume:
        raise ValueError(
            f"spacing={layout.spacing} given for 2D segments (axes={layout.axes!r}): 2D "
            "measurements are in pixels; leave spacing out (multiply by the pixel's size "
            "yourself), or say axes='zyx' for a z-stack"
        )
    if image.ndim < labels.ndim:
        raise ValueError(
            f"the labels are {_LAYOUT_NAMES[layout.axes]} {labels.shape} but the image is "
            f"{image.ndim}D {image.shape}: pass the image the labels were drawn on, with the "
            "same axes"
        )
    if not layout.has_time:
        measured = _measure_frame(image, labels, channel_axis, layout)
    else:
        if image.shape[0] != labels.shape[0]:
            raise ValueError(
                f"the labels are a time-lapse of {labels.shape[0]} frames {labels.shape} but "
                f"the image has shape {image.shape}: pass the time-lapse's image, with the same "
                "frames first"
            )
        axis = frame_channel_axis(channel_axis, layout, image.ndim)
        frames = []
        for t in range(labels.shape[0]):
            one = _measure_frame(image[t], labels[t], axis, layout.frame_layout)
            one.insert(1, "frame", np.full(len(one), t, np.int64))
            frames.append(one)
        measured = pd.concat(frames, ignore_index=True)
    measured.attrs["layout"] = layout.describe()
    return measured


_LAYOUT_NAMES = {
    "yx": "2D",
    "zyx": "a volume (Z, Y, X)",
    "tyx": "a time-lapse (T, Y, X)",
    "tzyx": "a time-lapse of volumes (T, Z, Y, X)",
}


def _measure_frame(image: np.ndarray, labels: np.ndarray, channel_axis, layout: Layout):
    """:func:`measure_segments` of one 2D image or volume (no time axis)."""
    image_cf = as_channels_first(image, channel_axis=channel_axis, spatial_ndim=layout.spatial_ndim)
    labels = validate_labels(labels, image_cf.shape[1:])
    if not layout.is_volume:
        return _measure_plane(image_cf, labels)
    names = intensity_columns(len(image_cf))
    return measure_volume(image_cf, labels, spacing=layout.voxel_spacing, intensity_names=names)


def _measure_plane(image_cf: np.ndarray, labels: np.ndarray):
    """:func:`measure_segments` of one ``(C, Y, X)`` image and its ``(Y, X)`` labels.

    Area, extent, axis lengths, eccentricity and intensities are computed for all segments at
    once from per-label sums (``np.bincount``, two passes for centred moments); perimeter and
    solidity, which need each segment's outline and convex hull, by ``regionprops_table``.
    """
    import pandas as pd
    from skimage.measure import regionprops_table

    rr, cc = np.nonzero(labels)
    pixel_labels = labels[rr, cc].astype(np.int64)
    max_id = int(pixel_labels.max()) if len(pixel_labels) else 0
    if max_id > _MAX_SPARSE_ID:  # huge ids: number them 1..K
        values, ids = np.unique(pixel_labels, return_inverse=True)
        search = np.zeros(labels.shape, np.int64)
        search[rr, cc] = ids + 1
    else:
        present = np.bincount(pixel_labels, minlength=max_id + 1) > 0
        present[0] = False
        values = np.flatnonzero(present).astype(np.int64)
        index = np.zeros(max_id + 1, np.int64)
        index[values] = np.arange(len(values))
        ids = index[pixel_labels]
        search = labels
    n = len(values)

    area = np.bincount(ids, minlength=n)
    safe = np.maximum(area, 1).astype(np.float64)
    cy = np.bincount(ids, rr, minlength=n) / safe
    cx = np.bincount(ids, cc, minlength=n) / safe
    dy = rr - cy[ids]
    dx = cc - cx[ids]
    # the inertia tensor's eigenvalues, as skimage's inertia_tensor_eigvals
    a = np.bincount(ids, dx * dx, minlength=n) / safe
    c = np.bincount(ids, dy * dy, minlength=n) / safe
    b = -np.bincount(ids, dy * dx, minlength=n) / safe
    root = np.sqrt(((a - c) / 2) ** 2 + b**2)
    major = np.maximum((a + c) / 2 + root, 0.0)
    minor = np.maximum((a + c) / 2 - root, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        eccentricity = np.where(major == 0, 0.0, np.sqrt(np.clip(1 - minor / major, 0, None)))

    if n:
        props = regionprops_table(
            search, properties=("perimeter", "solidity", "bbox"), separator="_"
        )
        box = (props["bbox_2"] - props["bbox_0"]) * (props["bbox_3"] - props["bbox_1"])
        perimeter, solidity = props["perimeter"], props["solidity"]
        extent = area / box
    else:
        perimeter = solidity = extent = np.zeros(0)
    data = {
        "label": values,
        "area": area.astype(np.int64),
        "perimeter": np.asarray(perimeter, np.float64),
        "eccentricity": eccentricity,
        "solidity": np.asarray(solidity, np.float64),
        "extent": np.asarray(extent, np.float64),
        "axis_major_length": 4 * np.sqrt(major),
        "axis_minor_length": 4 * np.sqrt(minor),
    }
    means, stds = [], []
    for channel in image_cf:
        v = channel[rr, cc].astype(np.float64)
        mean = np.bincount(ids, v, minlength=n) / safe
        means.append(mean)
        stds.append(np.sqrt(np.bincount(ids, (v - mean[ids]) ** 2, minlength=n) / safe))
    for name, column in zip(intensity_columns(len(image_cf)), means + stds, strict=True):
        data[name] = column
    return pd.DataFrame(data)


def add_measurements(
    table,
    image,
    labels,
    *,
    channel_axis: int | None = None,
    axes: str | None = None,
    spacing=None,
):
    """``table`` with :func:`measure_segments`' columns inserted before ``emb_0``.

    Parameters
    ----------
    table : DataFrame
        From ``embed_segments`` (``label``, geometry, ``emb_*``) or ``embed_stack`` (with
        ``frame``); a table of several images (an ``image`` column naming more than one) is
        refused: add each image's measurements to its own table, then concatenate.
    image, labels, channel_axis
        As :func:`measure_segments`: the image and labels the table was made from.
    axes, spacing
        As :func:`measure_segments`; by default the table's own: the layout its
        ``attrs["layout"]`` records (the embedding's axes and, for 3D objects, spacing), else
        what its columns show for 3D labels (a ``frame`` column: a time-lapse ``"tyx"``;
        ``centroid_z`` or ``bbox_z0``: a z-stack ``"zyx"``).  2D measurements take no spacing:
        a recorded one is not used for them.

    Returns
    -------
    DataFrame
        The same rows in the same order, its ``attrs`` kept; rows matched by ``label`` (and
        ``frame``).  ``area``, which embedding tables already have, is checked and kept once;
        measurement columns the table already has are replaced.  The position columns of 3D
        measurements (centroid, bbox), which embedding tables have, are not added.

    Raises
    ------
    ValueError
        Segments of the table that ``labels`` lacks, an ``area`` that differs (other labels
        than the table's), several images, a time-lapse table (``frame``) with labels that are
        not a time-lapse (and vice versa), 3D labels whose axes neither the table nor ``axes``
        tell.
    """
    import pandas as pd

    if "label" not in table.columns:
        raise ValueError("the table has no 'label' column: pass a table from embed_segments")
    if "image" in table.columns and table["image"].nunique(dropna=False) > 1:
        raise ValueError(
            f"the table holds {table['image'].nunique(dropna=False)} images (its 'image' "
            "column): add measurements to each image's table with its own image and labels, "
            "then concatenate them"
        )
    labels = np.asarray(labels)
    stacked = "frame" in table.columns
    axes, spacing = _table_layout(table, labels, axes, spacing)
    layout = layout_of(labels, axes=axes)
    if stacked != layout.has_time:
        if stacked:
            raise ValueError(
                f"the table has a 'frame' column (a time-lapse's table) but the labels are "
                f"{_LAYOUT_NAMES[layout.axes]} {labels.shape}: pass the time-lapse's (T, Z, Y, X) "
                "or (T, Y, X) labels and its image"
            )
        raise ValueError(
            f"the labels are {_LAYOUT_NAMES[layout.axes]} {labels.shape} but the table has no "
            "'frame' column: pass the labels the table was made from (or a table from "
            "embed_stack)"
        )
    measured = measure_segments(
        image, labels, channel_axis=channel_axis, axes=layout.axes, spacing=spacing
    )
    keys = ["frame", "label"] if stacked else ["label"]
    index = pd.MultiIndex.from_frame(measured[keys])
    wanted = pd.MultiIndex.from_frame(table[keys].astype(np.int64))
    position = index.get_indexer(wanted)
    missing = position < 0
    if missing.any():
        raise ValueError(
            f"{int(missing.sum())} segment(s) of the table are not in the labels "
            f"({_describe(table[keys][missing])}): pass the labels the table was made from"
        )
    rows = measured.iloc[position].reset_index(drop=True)
    if "area" in table.columns:
        differs = table["area"].to_numpy() != rows["area"].to_numpy()
        if differs.any():
            raise ValueError(
                f"{int(differs.sum())} segment(s) have another area in these labels than in the "
                f"table ({_describe(table[keys][differs])}): pass the labels the table was "
                "made from"
            )
    new = [c for c in geometry_columns(measured) if c != "area"]
    if "area" not in table.columns:
        new.insert(0, "area")
    kept = table.drop(columns=[c for c in geometry_columns(table) if c != "area"])
    emb = [i for i, c in enumerate(kept.columns) if isinstance(c, str) and c.startswith("emb_")]
    at = emb[0] if emb else len(kept.columns)
    block = rows[new].set_axis(kept.index)
    out = pd.concat([kept.iloc[:, :at], block, kept.iloc[:, at:]], axis=1)
    out.attrs = dict(table.attrs)
    return out


def _table_layout(table, labels: np.ndarray, axes, spacing):
    """``(axes, spacing)`` for :func:`add_measurements`: those given, else the table's."""
    recorded = table.attrs.get("layout")
    recorded = recorded if isinstance(recorded, dict) else {}
    if axes is None:
        axes = recorded.get("axes")
    if axes is None and labels.ndim == 3:
        in_time = "frame" in table.columns
        in_z = "centroid_z" in table.columns or "bbox_z0" in table.columns
        if in_time and not in_z:
            axes = "tyx"
        elif in_z and not in_time:
            axes = "zyx"
        else:
            raise ValueError(
                f"the labels are 3D {labels.shape}, a z-stack or a time-lapse stack, but the "
                "table has no 'frame' column (a time-lapse's table) nor 'centroid_z' (a "
                "z-stack's): pass axes='zyx' for a z-stack's objects, axes='tyx' for a "
                "time-lapse, or the 2D labels the table was made from"
            )
    if spacing is None and recorded.get("spacing") is not None and str(axes).endswith("zyx"):
        spacing = recorded["spacing"]
    return axes, spacing


def _describe(keys) -> str:
    """``label 3, label 7, ...`` (``frame 0 label 3`` for a stack) for the first few rows."""
    names = [
        " ".join(f"{k} {v}" for k, v in zip(keys.columns, row, strict=True))
        for row in keys.head(_MAX_LISTED).itertuples(index=False)
    ]
    more = f" and {len(keys) - _MAX_LISTED} more" if len(keys) > _MAX_LISTED else ""
    return ", ".join(names) + more
