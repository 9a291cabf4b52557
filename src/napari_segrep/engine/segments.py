"""Segments: the one-pass segment table (and what it says about labels that are probably not
labels), normalisation, crop/mask windows and streaming batches, for 2D images and volumes
alike (the :class:`~napari_segrep._images.Layout` says which; nothing here decides it from
``ndim``).  Input validation is in :mod:`napari_segrep.engine.inputs` (re-exported here); the
resampling of volumes (and anisotropic pixels) to near-isotropic crops in
:mod:`napari_segrep.engine._resample`.

Numpy only (torch is used for area resampling of 2D segments larger than the crop).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import ndimage

from .._images import Layout, layout_of
from ._resample import isotropy_factors, resampled_crop, window
from .inputs import as_channels_first, validate_labels

__all__ = [
    "GEOMETRY_COLUMNS",
    "GEOMETRY_COLUMNS_3D",
    "CropBatch",
    "Normalization",
    "SegmentTable",
    "as_channels_first",
    "iter_crop_batches",
    "labels_warnings",
    "normalize_argument",
    "resolve_normalization",
    "bbox_side",
    "changed_segments",
    "geometry_columns",
    "segment_table",
    "segment_window",
    "validate_labels",
]

GEOMETRY_COLUMNS = (
    "centroid_y",
    "centroid_x",
    "area",
    "bbox_y0",
    "bbox_x0",
    "bbox_y1",
    "bbox_x1",
    "scale",
)
#: The geometry columns of a volume's objects, by axis as scikit-image orders them (``area`` is
#: the voxel count; ``bbox_*1`` half-open).
GEOMETRY_COLUMNS_3D = (
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
    "scale",
)
PERCENTILES = (1.0, 99.8)
# Above this many label ids, ids are compacted first (find_objects allocates one slot per id).
_MAX_SPARSE_ID = 1 << 20


# ----------------------------------------------------------------------------- segment table
def geometry_columns(spatial_ndim: int) -> tuple[str, ...]:
    """The geometry columns of objects with ``spatial_ndim`` (2 or 3) axes, after ``label``:
    :data:`GEOMETRY_COLUMNS` or :data:`GEOMETRY_COLUMNS_3D`."""
    if spatial_ndim == 2:
        return GEOMETRY_COLUMNS
    if spatial_ndim == 3:
        return GEOMETRY_COLUMNS_3D
    raise ValueError(f"objects have 2 or 3 spatial axes, not {spatial_ndim!r}")


@dataclass
class SegmentTable:
    """The segments of a label image (one frame: 2D or a volume), found in one pass.

    ``geometry`` has one row per non-zero label, ascending: ``label`` then
    :func:`geometry_columns` (``scale`` filled later); ``slices`` the bounding boxes;
    ``ids`` the values to compare against in ``search_labels`` (compacted ids when the original
    ids were huge); ``layout`` the frame's :class:`~napari_segrep._images.Layout` (its axes and
    spacing).
    """

    geometry: pd.DataFrame
    slices: list[tuple[slice, ...]]
    ids: np.ndarray
    search_labels: np.ndarray
    layout: Layout = Layout("yx")

    def __len__(self) -> int:
        return len(self.slices)


def frame_layout_of(labels: np.ndarray, layout: Layout | None) -> Layout:
    """``layout`` checked to describe one frame of ``labels`` (``"yx"`` or ``"zyx"``), or, when
    None, asked of :func:`~napari_segrep._images.layout_of` (2D labels; 3D labels must say)."""
    if layout is None:
        layout = layout_of(labels)
    if layout.has_time or layout.spatial_ndim != np.ndim(labels):
        raise ValueError(
            f"layout {layout.axes!r} does not describe one frame of labels "
            f"{np.shape(labels)}: give one frame ('yx' or 'zyx') at a time"
        )
    return layout


def segment_table(
    labels: np.ndarray, *, only: Sequence[int] | None = None, layout: Layout | None = None
) -> SegmentTable:
    """Find all segments of a label image in one pass (``scipy.ndimage.find_objects``).

    ``labels`` is one frame: 2D ``(Y, X)``, or a volume ``(Z, Y, X)`` whose ``layout`` says so
    (``layout_of(labels, axes="zyx")``; None: 2D).  ``only``: keep just these label ids (ids not
    present are ignored); geometry is computed for them alone.  Centroids, areas and bounding
    boxes are scikit-image's ``regionprops`` ones, in voxels.
    """
    layout = frame_layout_of(labels, layout)
    axes = layout.spatial_axes
    search = labels
    max_id = int(labels.max()) if labels.size else 0
    if max_id > _MAX_SPARSE_ID:
        uniq, inverse = np.unique(labels, return_inverse=True)
        offset = 0 if uniq[0] == 0 else 1  # search ids 1..K, background stays 0
        search = (inverse.reshape(labels.shape) + offset).astype(np.int64)
        original = uniq[uniq != 0]
    else:
        original = None
    objects = ndimage.find_objects(search)
    present = [i for i, sl in enumerate(objects) if sl is not None]
    ids = np.asarray(present, dtype=np.int64) + 1
    label_values = ids if original is None else original.astype(np.int64)
    if only is not None:
        keep = np.isin(label_values, np.asarray(only, dtype=np.int64))
        ids, label_values = ids[keep], label_values[keep]
    slices = [objects[i - 1] for i in ids]

    n, nd = len(slices), len(axes)
    area = np.empty(n, np.int64)
    centroid = np.empty((nd, n), np.float64)
    bbox = np.empty((2 * nd, n), np.int64)
    add = np.add.reduce
    for k, (sl, lab) in enumerate(zip(slices, ids, strict=True)):
        coords = np.nonzero(search[sl] == lab)
        count = area[k] = coords[0].size
        for a in range(nd):
            # what coords[a].mean() computes (float64 sum / count), bit for bit, without its
            # per-call overhead (it dominates for many small objects)
            centroid[a, k] = add(coords[a], dtype=np.float64) / count + sl[a].start
            bbox[a, k] = sl[a].start
            bbox[nd + a, k] = sl[a].stop
    data: dict = {"label": label_values}
    data.update({f"centroid_{a}": centroid[i] for i, a in enumerate(axes)})
    data["area"] = area
    data.update({f"bbox_{a}0": bbox[i] for i, a in enumerate(axes)})
    data.update({f"bbox_{a}1": bbox[nd + i] for i, a in enumerate(axes)})
    data["scale"] = np.ones(n, np.float64)
    geometry = pd.DataFrame(data)
    return SegmentTable(
        geometry=geometry, slices=slices, ids=ids, search_labels=search, layout=layout
    )


def labels_warnings(table: SegmentTable) -> list[str]:
    """What suggests that a label image is not a segmentation, from its full segment table
    (geometry only: no pass over the pixels).  At most one message, ``[]`` for normal labels.

    With at least 10 segments, the signs are: more distinct ids than a quarter of the pixels, or
    more than half of the segments having only 1-2 pixels (an intensity image given as labels:
    image and labels swapped?), or more than half of the ids scattered, their pixels filling
    less than 10% of their bounding box (a label image saved as JPEG: lossy compression repeats
    ids along other segments' edges; or an intensity image).  Real segments are compact: the
    sample data and the test scenes fill about 70-80% of their boxes.
    """
    geometry = table.geometry
    n = len(geometry)
    if n < 10:
        return []
    pixels = table.search_labels.size
    area = geometry["area"].to_numpy()
    box = np.ones(n, np.int64)
    for a in table.layout.spatial_axes:
        box = box * (geometry[f"bbox_{a}1"] - geometry[f"bbox_{a}0"]).to_numpy()
    px, image = ("voxels", "volume") if table.layout.is_volume else ("pixels", "image")
    swapped = f"an intensity {image} (are image and labels swapped?)"
    jpeg = "a label image saved as JPEG (lossy compression changes ids along edges)"
    lossless = "save label images losslessly, as PNG/TIFF"
    if n > 0.25 * pixels:
        return [f"{n} label ids in {pixels} {px}: these labels look like {swapped}"]
    tiny = int((area <= 2).sum())
    if tiny > 0.5 * n:
        return [
            f"{tiny} of {n} segments have only 1 or 2 {px}: these labels look like {swapped} "
            f"or {jpeg}; {lossless}"
        ]
    scattered = int((area < 0.1 * box).sum())
    if scattered > 0.5 * n:
        return [
            f"{scattered} of {n} label ids are scattered over the {image} (their {px} fill less "
            f"than 10% of their bounding box): these labels look like {jpeg} or {swapped}; "
            f"{lossless}"
        ]
    return []


# ----------------------------------------------------------------------------- normalisation
@dataclass(frozen=True)
class Normalization:
    """How crops are scaled: ``mode`` is "image", "segment", "fixed" or "none"; ``low``/``high``
    are per-channel arrays for "image"/"fixed"."""

    mode: str
    low: np.ndarray | None = None
    high: np.ndarray | None = None

    def describe(self) -> dict:
        out: dict = {"mode": self.mode, "percentiles": list(PERCENTILES)}
        if self.low is not None:
            out["low"] = [float(v) for v in self.low]
            out["high"] = [float(v) for v in self.high]
        if self.mode in ("fixed", "none"):
            out.pop("percentiles")
        return out


def normalize_argument(description: dict | None):
    """The ``normalize`` argument that reproduces a recorded normalisation (what
    ``embed_segments`` keeps in ``df.attrs["normalization"]``): the same numbers, without
    recomputing the image's percentiles (used to re-embed a few segments later)."""
    if not description or description.get("mode") == "none":
        return None
    if description["mode"] == "segment":
        return "segment"
    return np.asarray(description["low"], np.float64), np.asarray(description["high"], np.float64)


def resolve_normalization(
    image_cf: np.ndarray, normalize: str | Sequence[float] | None
) -> Normalization:
    """Turn the user's ``normalize`` argument into a :class:`Normalization`.

    ``"image"``: per channel, the 1st and 99.8th percentiles of the whole image map to 0 and 1.
    ``"segment"``: the same percentiles, of each segment's own pixels (computed per crop).
    ``(low, high)``: fixed values (scalars or one per channel).  ``None``: values as they are.
    """
    n_channels = image_cf.shape[0]
    if normalize is None or (isinstance(normalize, str) and normalize.lower() == "none"):
        return Normalization("none")
    if isinstance(normalize, str):
        mode = normalize.lower()
        if mode == "segment":
            return Normalization("segment")
        if mode == "image":
            flat = image_cf.reshape(n_channels, -1)
            # Subsample very large images: percentiles of 4M evenly spaced pixels are exact to
            # well below the quantisation of the data, at a fraction of the cost.
            step = max(1, flat.shape[1] // (1 << 22))
            low, high = np.percentile(flat[:, ::step], PERCENTILES, axis=1)
            return Normalization("image", low.astype(np.float64), high.astype(np.float64))
        raise ValueError(
            f"normalize={normalize!r} is not a mode: use 'image', 'segment', None or a "
            "(low, high) pair"
        )
    try:
        low, high = normalize
        low = np.broadcast_to(np.asarray(low, dtype=np.float64), (n_channels,)).copy()
        high = np.broadcast_to(np.asarray(high, dtype=np.float64), (n_channels,)).copy()
    except (TypeError, ValueError):
        raise ValueError(
            f"normalize={normalize!r} is not understood: a fixed normalisation is a (low, high) "
            f"pair of numbers, or of {n_channels} per-channel values each"
        ) from None
    if not (np.all(np.isfinite(low)) and np.all(np.isfinite(high)) and np.all(high > low)):
        raise ValueError(
            f"normalize=(low, high) needs finite values with high > low, got {normalize}"
        )
    return Normalization("fixed", low, high)


def _scale(values: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """``values`` (C, ...) mapped so that ``low`` -> 0 and ``high`` -> 1, per channel."""
    span = np.where(high > low, high - low, 1.0)
    per_channel = (-1,) + (1,) * (values.ndim - 1)
    return ((values - low.reshape(per_channel)) / span.reshape(per_channel)).astype(
        np.float32, copy=False
    )


def normalised(raw: np.ndarray, mask: np.ndarray, norm: Normalization) -> np.ndarray:
    """A raw window ``(C, ...)`` float32 scaled as ``norm`` says (``"segment"``: from the
    voxels under ``mask``, the segment's own)."""
    if norm.mode in ("image", "fixed"):
        return _scale(raw, norm.low, norm.high)
    if norm.mode == "segment":
        low, high = np.percentile(raw[:, mask], PERCENTILES, axis=1)
        return _scale(raw, low, high)
    return raw


# ----------------------------------------------------------------------------- crops
@dataclass
class CropBatch:
    """``images`` (B, C, S, S) float32 and ``masks`` (B, 1, S, S) bool for table rows
    ``start .. start + B`` (``(B, C, S, S, S)`` and ``(B, 1, S, S, S)`` for volumes);
    ``scales`` the resampling factor of each (1.0 = native scale)."""

    start: int
    images: np.ndarray
    masks: np.ndarray
    scales: np.ndarray


def segment_window(
    image_cf: np.ndarray,
    search_labels: np.ndarray,
    sl: tuple[slice, ...],
    lab: int,
    *,
    side: int,
    norm: Normalization,
) -> tuple[np.ndarray, np.ndarray]:
    """A window of ``side`` voxels along every axis, centred on a segment's bounding box ``sl``
    (2D or 3D): the scaled image ``(C, side, side[, side])`` float32 (zeros beyond the image)
    and the segment's own mask ``(side, side[, side])``."""
    starts = [s.start - (side - (s.stop - s.start)) // 2 for s in sl]
    sizes = (side,) * len(sl)
    mask = window(search_labels, starts, sizes) == lab
    raw = window(image_cf, starts, sizes).astype(np.float32)
    return normalised(raw, mask, norm), mask


def bbox_side(sl: tuple[slice, ...]) -> int:
    """The longest side of a bounding box (any number of axes)."""
    return max(s.stop - s.start for s in sl)


def _crop_one(
    image_cf: np.ndarray,
    search_labels: np.ndarray,
    sl: tuple[slice, slice],
    lab: int,
    *,
    crop_size: int,
    norm: Normalization,
    mask_image: bool,
) -> tuple[np.ndarray, np.ndarray, float]:
    """One 2D segment's crop on square pixels: image (C, S, S) float32, mask (S, S) bool,
    scale factor."""
    side = max(bbox_side(sl), crop_size)
    img, mask = segment_window(image_cf, search_labels, sl, lab, side=side, norm=norm)
    if side == crop_size:
        return img, mask, 1.0
    # Larger than the crop: area-downscale.  Mask first (when image masking is on), and divide by
    # the pooled mask, so boundary pixels are in-mask averages: no context leaks in.
    import torch
    import torch.nn.functional as F

    scale = crop_size / side
    m = torch.from_numpy(mask[None, None].astype(np.float32))
    t = torch.from_numpy(img[None])
    m_small = F.adaptive_avg_pool2d(m, crop_size)[0]
    if mask_image:
        t_small = F.adaptive_avg_pool2d(t * m, crop_size)[0] / m_small.clamp_min(1e-6)
    else:
        t_small = F.adaptive_avg_pool2d(t, crop_size)[0]
    small_mask = m_small[0] >= 0.5
    if not small_mask.any():  # thin segment: keep every cell it touches
        small_mask = m_small[0] > 0
    return t_small.numpy(), small_mask.numpy(), scale


def iter_crop_batches(
    image_cf: np.ndarray,
    table: SegmentTable,
    *,
    crop_size: int,
    batch_size: int,
    norm: Normalization,
    mask_image: bool = True,
) -> Iterator[CropBatch]:
    """Yield crops in batches of ``batch_size``: memory is bounded by the batch.

    2D, square pixels: a segment that fits in ``crop_size`` is centred in a ``crop_size``
    window at native scale; a larger one gets a square window around its bounding box,
    area-downscaled to ``crop_size``.  Volumes (``table.layout``), and anisotropic pixels: the
    same on near-isotropic voxels, a cube of ``crop_size`` voxels whose side is the finest
    spacing (:mod:`napari_segrep.engine._resample`); without spacing, or isotropic, an object
    that fits is its raw window.  Each mask holds the segment's own voxels only (touching
    neighbours are outside).
    """
    n_channels = image_cf.shape[0]
    layout = table.layout
    nd = layout.spatial_ndim
    factors = isotropy_factors(layout.spacing, nd)
    square = nd == 2 and (factors == 1.0).all()  # the 2D path, as it always was
    grid = (crop_size,) * nd
    n = len(table)
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        images = np.zeros((stop - start, n_channels, *grid), np.float32)
        masks = np.zeros((stop - start, 1, *grid), bool)
        scales = np.ones(stop - start, np.float64)
        for j, k in enumerate(range(start, stop)):
            sl, lab = table.slices[k], int(table.ids[k])
            if square:
                img, mask, scale = _crop_one(
                    image_cf,
                    table.search_labels,
                    sl,
                    lab,
                    crop_size=crop_size,
                    norm=norm,
                    mask_image=mask_image,
                )
            elif (factors == 1.0).all() and bbox_side(sl) <= crop_size:  # exact: the window
                img, mask = segment_window(
                    image_cf, table.search_labels, sl, lab, side=crop_size, norm=norm
                )
                scale = 1.0
            else:
                img, mask, scale = resampled_crop(
                    image_cf,
                    table.search_labels,
                    sl,
                    lab,
                    crop_size=crop_size,
                    factors=factors,
                    normalise=lambda raw, m: normalised(raw, m, norm),
                    mask_image=mask_image,
                )
            images[j] = img
            masks[j, 0] = mask
            scales[j] = scale
        yield CropBatch(start=start, images=images, masks=masks, scales=scales)


# ----------------------------------------------------------------------------- edits
def changed_segments(before: np.ndarray, after: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The segments an edit of a label image touched: ``(changed, removed)`` label ids.

    ``changed``: ids present in ``after`` whose pixels differ from ``before`` (new, grown, shrunk
    or repainted segments: re-embed these); ``removed``: ids that were touched and are gone from
    ``after``.  Both ascending, without 0.  ``before`` and ``after`` must have the same shape.
    """
    before, after = np.asarray(before), np.asarray(after)
    if before.shape != after.shape:
        raise ValueError(f"label images differ in shape: {before.shape} vs {after.shape}")
    diff = before != after
    if not diff.any():
        empty = np.empty(0, np.int64)
        return empty, empty
    touched = np.union1d(after[diff], before[diff]).astype(np.int64)
    touched = touched[touched > 0]
    present = np.intersect1d(touched, after[np.isin(after, touched)])
    return present, np.setdiff1d(touched, present)
