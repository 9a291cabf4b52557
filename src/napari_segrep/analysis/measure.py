"""Measurements of segments: area, shape, and intensity inside the mask, per channel.

:func:`measure_segments` measures every segment of a label image (a table of its own, like
scikit-image's ``regionprops_table``); :func:`add_measurements` adds those columns to an
embedding table, before ``emb_0``, matched by label, for ``train_classifier(...,
features="embedding+geometry")``.  Images are read the way ``embed_segments`` reads them
(:func:`napari_segrep._images.as_channels_first`): 2D, RGB(A) ``(Y, X, 3|4)`` (alpha dropped), or
multichannel with ``channel_axis``.

Numpy, pandas and scikit-image only (no torch, no napari).
"""

from __future__ import annotations

import numpy as np

from .._images import as_channels_first, validate_labels

__all__ = [
    "SHAPE_COLUMNS",
    "add_measurements",
    "geometry_columns",
    "intensity_columns",
    "measure_segments",
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


def geometry_columns(table) -> list[str]:
    """The measurement columns ``table`` has, in :func:`measure_segments`' order: ``area``,
    :data:`SHAPE_COLUMNS`, then every ``intensity_mean_<c>`` and ``intensity_std_<c>``."""
    names = [c for c in ("area", *SHAPE_COLUMNS) if c in table.columns]
    for prefix in _INTENSITY_PREFIXES:
        found = [
            c
            for c in table.columns
            if isinstance(c, str) and c.startswith(prefix) and c[len(prefix) :].isdigit()
        ]
        names += sorted(found, key=lambda c: int(c[len(prefix) :]))
    return names


def measure_segments(image, labels, *, channel_axis: int | None = None):
    """Area, shape and in-mask intensity of every segment of ``labels``.

    Parameters
    ----------
    image : (Y, X), (Y, X, 3|4) or multichannel ndarray
        Read as ``embed_segments`` reads it: RGB(A) needs no ``channel_axis`` (alpha is
        dropped); other 3D images need ``channel_axis``.  Intensities are in the image's own
        units (not normalised).  A stack: ``(T, Y, X)``, ``(T, Y, X, 3)`` or ``(T, ...)`` with
        ``channel_axis`` counted within a plane, with ``(T, Y, X)`` labels.
    labels : (Y, X) or (T, Y, X) int ndarray
        0 is background.  A 3D label image is a stack of planes (time or z), measured plane by
        plane like ``embed_stack`` embeds it (segments are 2D: a label in several planes
        gives one row per plane).
    channel_axis : int, optional

    Returns
    -------
    DataFrame
        One row per non-zero label, ascending (per plane for a stack): ``label`` (then
        ``frame`` for a stack), ``area`` (pixels), the :data:`SHAPE_COLUMNS` as
        ``skimage.measure.regionprops_table`` computes them (``perimeter``, ``eccentricity``,
        ``solidity``, ``extent``, ``axis_major_length``, ``axis_minor_length``), then
        ``intensity_mean_<c>`` and ``intensity_std_<c>`` (population standard deviation) for
        every channel ``c`` (0 for a grayscale image).  No segment: no rows, the same columns.

    Examples
    --------
    >>> import numpy as np, napari_segrep as sr
    >>> labels = np.zeros((32, 32), int); labels[4:10, 4:20] = 3
    >>> image = np.full((32, 32), 5.0)
    >>> sr.measure_segments(image, labels)[["label", "area", "extent", "intensity_mean_0"]]
       label  area  extent  intensity_mean_0
    0      3    96     1.0               5.0
    """
    import pandas as pd

    image = np.asarray(image)
    labels = np.asarray(labels)
    if labels.ndim == 2:
        image_cf = as_channels_first(image, channel_axis=channel_axis)
        return _measure_plane(image_cf, validate_labels(labels, image_cf.shape[1:]))
    if labels.ndim != 3 or labels.shape[0] == 0:
        raise ValueError(
            f"labels must be 2D (Y, X), or a (T, Y, X) stack of planes; got shape "
            f"{labels.shape}: measure other arrays one 2D plane at a time"
        )
    if image.ndim < 3 or image.shape[0] != labels.shape[0]:
        raise ValueError(
            f"labels are a stack of {labels.shape[0]} planes {labels.shape} but the image has "
            f"shape {image.shape}: pass the stack's image, (T, Y, X) or (T, Y, X, C), with the "
            "same planes (or 2D labels with a 2D, RGB or multichannel image)"
        )
    frames = []
    for t in range(labels.shape[0]):
        image_cf = as_channels_first(image[t], channel_axis=channel_axis)
        plane = _measure_plane(image_cf, validate_labels(labels[t], image_cf.shape[1:]))
        plane.insert(1, "frame", np.full(len(plane), t, np.int64))
        frames.append(plane)
    return pd.concat(frames, ignore_index=True)


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


def add_measurements(table, image, labels, *, channel_axis: int | None = None):
    """``table`` with :func:`measure_segments`' columns inserted before ``emb_0``.

    Parameters
    ----------
    table : DataFrame
        From ``embed_segments`` (``label``, geometry, ``emb_*``) or ``embed_stack`` (with
        ``frame``); a table of several images (an ``image`` column naming more than one) is
        refused: add each image's measurements to its own table, then concatenate.
    image, labels, channel_axis
        As :func:`measure_segments`: the image and labels the table was made from.

    Returns
    -------
    DataFrame
        The same rows in the same order, its ``attrs`` kept; rows matched by ``label`` (and
        ``frame``).  ``area``, which embedding tables already have, is checked and kept once;
        measurement columns the table already has are replaced.

    Raises
    ------
    ValueError
        Segments of the table that ``labels`` lacks, an ``area`` that differs (other labels
        than the table's), several images, or a stack table with 2D labels (and vice versa).
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
    if stacked != (labels.ndim == 3):
        if stacked:
            raise ValueError(
                f"the table has a 'frame' column (a stack's table) but the labels are "
                f"{labels.shape}: pass the stack's (T, Y, X) labels and its image"
            )
        raise ValueError(
            f"the labels are a stack {labels.shape} but the table has no 'frame' column: pass "
            "the 2D labels the table was made from (or a table from embed_stack)"
        )
    measured = measure_segments(image, labels, channel_axis=channel_axis)
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
    new = [c for c in measured.columns if c not in (*keys, "area")]
    if "area" not in table.columns:
        new.insert(0, "area")
    kept = table.drop(columns=[c for c in geometry_columns(table) if c != "area"])
    emb = [i for i, c in enumerate(kept.columns) if isinstance(c, str) and c.startswith("emb_")]
    at = emb[0] if emb else len(kept.columns)
    block = rows[new].set_axis(kept.index)
    out = pd.concat([kept.iloc[:, :at], block, kept.iloc[:, at:]], axis=1)
    out.attrs = dict(table.attrs)
    return out


def _describe(keys) -> str:
    """``label 3, label 7, ...`` (``frame 0 label 3`` for a stack) for the first few rows."""
    names = [
        " ".join(f"{k} {v}" for k, v in zip(keys.columns, row, strict=True))
        for row in keys.head(_MAX_LISTED).itertuples(index=False)
    ]
    more = f" and {len(keys) - _MAX_LISTED} more" if len(keys) > _MAX_LISTED else ""
    return ", ".join(names) + more
