"""Display thumbnails of segments: each segment's window (its bounding box and some context),
scaled to a square thumbnail, display-normalised, its outline drawn.  A 3D object (labels of
axes ``"zyx"``, or ``"tzyx"`` per frame) is shown as its three orthogonal mid-planes side by
side in a tile of the same size (:mod:`napari_segrep.engine._thumbs3d`).

The windows and the normalisation are the embedding's own (:func:`segment_window`,
:func:`resolve_normalization`, :func:`segment_table` in :mod:`napari_segrep.engine.segments`),
so ``masked=True`` shows what the encoder sees.  Only the requested segments' windows are read;
the bounding boxes come from a table the caller already has (``embed_segments``' ``bbox_*``
columns) or from one ``find_objects`` pass, cached with the normalisation in a
:class:`ThumbnailSource` so a gallery can ask for page after page quickly.

numpy only (no torch is called here; :mod:`~napari_segrep.engine.segments` imports it).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .._images import Layout, frame_channel_axis, layout_of
from ._thumb_draw import inner_boundary, resample_matrix, to_rgb
from ._thumbs3d import BBOX_COLUMNS_3D, find_boxes, volume_thumbnail
from .inputs import as_channels_first, check_image_values, validate_labels
from .segments import (
    Normalization,
    bbox_side,
    resolve_normalization,
    segment_table,
    segment_window,
)

__all__ = ["BBOX_COLUMNS", "BBOX_COLUMNS_3D", "ThumbnailSource", "segment_thumbnails"]

#: The bounding-box columns of a 2D embedding table (``embed_segments``' ``bbox_*``); a 3D
#: table has :data:`BBOX_COLUMNS_3D` (these and ``bbox_z0``, ``bbox_z1``).
BBOX_COLUMNS = ("bbox_y0", "bbox_x0", "bbox_y1", "bbox_x1")
#: The smallest window (pixels of the image) a thumbnail shows: tiny segments keep context.
MIN_WINDOW = 16
_MAX_SIZE = 1024
#: The smallest thumbnail of a 3D object (three panels of at least 3 pixels).
_MIN_SIZE_3D = 9


@dataclass
class _Lookup:
    """Sorted label ids -> bounding boxes (starts then stops: y0, x0, y1, x1 or z0 ... x1)."""

    keys: np.ndarray
    bbox: np.ndarray
    from_table: bool

    def find(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Positions of ``ids`` in the lookup and whether each was found."""
        pos = np.searchsorted(self.keys, ids).clip(0, max(len(self.keys) - 1, 0))
        found = (self.keys[pos] == ids) if len(self.keys) else np.zeros(len(ids), bool)
        return pos, found


@dataclass
class _Plane:
    image_cf: np.ndarray
    labels: np.ndarray
    norm: Normalization
    table: _Lookup | None
    segments: _Lookup | None = None  # boxes found in the labels so far (grows on demand)

    def from_labels(self, ids: np.ndarray) -> _Lookup:
        """The lookup of boxes found in the labels, holding ``ids`` if they are there: one
        ``find_objects`` pass per call that asks for ids not looked up before."""
        known = self.segments
        new = ids if known is None else ids[~known.find(ids)[1]]
        if known is None or new.size:
            if self.labels.ndim == 3:  # a volume (or one frame of one): the layout said so
                keys, bbox = find_boxes(self.labels, new)
            else:
                st = segment_table(self.labels, only=np.unique(new))
                bbox = np.array([(s[0].start, s[1].start, s[0].stop, s[1].stop) for s in st.slices])
                keys = st.geometry["label"].to_numpy(np.int64)
                bbox = bbox.reshape(-1, 4).astype(np.int64)
            if known is not None:
                keys = np.concatenate([known.keys, keys])
                bbox = np.concatenate([known.bbox, bbox])
            order = np.argsort(keys, kind="stable")
            self.segments = _Lookup(keys[order], bbox[order], from_table=False)
        return self.segments


class ThumbnailSource:
    """One image and its labels, ready to give thumbnails of any of its segments quickly.

    Nothing is read or computed until the first :meth:`thumbnails` call (the axes of arrays
    are checked at once); then the files (if paths were given) are read, and per frame the
    normalisation and the bounding boxes are computed once and kept.

    Parameters
    ----------
    image : (Y, X[, C]), (Z, Y, X[, C]), (T, Y, X[, C]) or (T, Z, Y, X[, C]) array_like, or path
        The image (RGB, or multichannel with ``channel_axis``), the labels' shape plus possibly
        a channel axis.  A path is read (``napari_segrep.io.read_image``) when needed.
    labels : (Y, X), (Z, Y, X), (T, Y, X) or (T, Z, Y, X) int array_like, or path
        The label image (0 is background).
    axes : "yx", "zyx", "tyx", "tzyx" or None
        What the labels' axes are (:func:`napari_segrep._images.layout_of`): None for 2D and
        4D labels; 3D labels must say whether they are a z-stack (``"zyx"``: 3D objects) or a
        time-lapse (``"tyx"``), :class:`~napari_segrep._images.AxesUnknown` otherwise.
    spacing : (dz, dy, dx), optional
        A volume's voxel size (any one unit): its objects' side views are drawn to scale.
        None: cubic voxels.  (Checked for 2D labels, where thumbnails are in pixels.)
    channel_axis : int, optional
        As in :func:`napari_segrep.embed_segments`: counted in the whole image (with a time
        axis too, which comes first).
    normalize : "image", "segment", None or (low, high)
        As in :func:`napari_segrep.embed_segments` (per frame for time-lapses): ``"image"``
        maps each channel's 1st-99.8th percentiles to black-white.  ``None``: integer images
        by their dtype's range, float images as they are (0-1 shown).
    table : DataFrame, optional
        ``label`` and ``bbox_y0, bbox_x0, bbox_y1, bbox_x1`` columns (``bbox_z0, bbox_z1`` too
        for 3D objects, ``frame`` for a time-lapse), e.g. ``embed_segments``' table: its
        bounding boxes are used instead of a pass over the labels.  Segments it lacks, or whose
        box holds none of their pixels (labels edited since), are found in the labels.

    Examples
    --------
    >>> from napari_segrep._sample_data import make_cells
    >>> from napari_segrep.engine.thumbnails import ThumbnailSource
    >>> image, labels, _ = make_cells((128, 128), n_cells=8)
    >>> source = ThumbnailSource(image, labels)
    >>> source.thumbnails([3, 1], size=32).shape
    (2, 32, 32, 3)
    """

    def __init__(
        self,
        image,
        labels,
        *,
        axes: str | None = None,
        spacing: Sequence[float] | None = None,
        channel_axis: int | None = None,
        normalize: str | Sequence[float] | None = "image",
        table=None,
    ):
        if table is not None:
            missing = [c for c in ("label", *BBOX_COLUMNS) if c not in table.columns]
            if missing:
                raise ValueError(f"table lacks the columns {missing} (bounding boxes by label)")
        self._image, self._labels = image, labels
        self._loaded = False
        self.axes, self.spacing = axes, spacing
        self.channel_axis = channel_axis
        self.normalize = normalize
        self._table = table
        self._planes: dict[int | None, _Plane] = {}
        self._layout: Layout | None = None
        if not isinstance(image, (str, os.PathLike)) and not isinstance(labels, (str, os.PathLike)):
            self._layout = self._layout_of(image, labels)  # bad axes: said before any work

    # ------------------------------------------------------------------ loading
    @property
    def layout(self) -> Layout:
        """The labels' :class:`~napari_segrep._images.Layout` (reads the files if not read
        yet)."""
        if self._layout is None:
            self._load()
        return self._layout

    @property
    def is_stack(self) -> bool:
        """Whether the labels have a time axis (``"tyx"`` or ``"tzyx"``): thumbnails need
        ``frame=``."""
        return self.layout.has_time

    def _layout_of(self, image, labels) -> Layout:
        axes = self.axes.lower() if isinstance(self.axes, str) else self.axes
        shape, image_shape = np.shape(labels), np.shape(image)
        if axes in (None, "tyx") and len(shape) == 3 and shape[-1] in (3, 4):
            if image_shape[:2] == shape[:2]:
                validate_labels(np.asarray(labels), shape[:2])  # an RGB rendering: says so
        return layout_of(shape, axes=self.axes, spacing=self.spacing)

    def _load(self) -> None:
        if self._loaded:
            return
        from ..io import read_image

        image, labels = self._image, self._labels
        if isinstance(image, (str, os.PathLike)):
            image = read_image(image)
        if isinstance(labels, (str, os.PathLike)):
            labels = read_image(labels)
        image, labels = np.asarray(image), np.asarray(labels)
        layout = self._layout_of(image, labels)
        ndim = layout.spatial_ndim
        self._frame_axis = frame_channel_axis(self.channel_axis, layout, image.ndim)
        if layout.has_time:
            if image.shape[0] != labels.shape[0]:
                raise ValueError(
                    f"image has {image.shape[0]} frames but labels have {labels.shape[0]}: the "
                    "leading (time) axes must match"
                )
            frame = as_channels_first(image[0], channel_axis=self._frame_axis, spatial_ndim=ndim)
            if frame.shape[1:] != labels.shape[1:]:
                grid = "(Y, X)" if ndim == 2 else "(Z, Y, X)"
                raise ValueError(
                    f"image frames {frame.shape[1:]} and label frames {labels.shape[1:]} "
                    f"differ: they must be the same {grid} grid"
                )
            validate_labels(labels, labels.shape)
        else:
            image_cf = as_channels_first(image, channel_axis=self._frame_axis, spatial_ndim=ndim)
            validate_labels(labels, image_cf.shape[1:])
        self._image, self._labels, self._layout, self._loaded = image, labels, layout, True

    def _plane(self, frame: int | None) -> _Plane:
        plane = self._planes.get(frame)
        if plane is not None:
            return plane
        image, labels = self._image, self._labels
        if frame is not None:
            image, labels = image[frame], labels[frame]
        ndim = self._layout.spatial_ndim
        image_cf = as_channels_first(image, channel_axis=self._frame_axis, spatial_ndim=ndim)
        check_image_values(image_cf)
        norm = resolve_normalization(image_cf, self.normalize)
        if norm.mode == "none":
            span = np.iinfo(image_cf.dtype).max if image_cf.dtype.kind in "iu" else 1.0
            norm = Normalization("fixed", np.zeros(len(image_cf)), np.full(len(image_cf), span))
        plane = _Plane(image_cf, labels, norm, self._table_lookup(frame))
        self._planes[frame] = plane
        return plane

    def _table_lookup(self, frame: int | None) -> _Lookup | None:
        table = self._table
        if table is None:
            return None
        columns = BBOX_COLUMNS_3D if self._layout.is_volume else BBOX_COLUMNS
        missing = [c for c in columns if c not in table.columns]
        if missing:
            raise ValueError(
                f"the table lacks the columns {missing}: the bounding boxes of 3D objects "
                "(the table of embedding the volume with its axes)"
            )
        if frame is not None:
            if "frame" not in table.columns:
                raise ValueError(
                    "a time-lapse's table needs a 'frame' column (the table of embedding it)"
                )
            table = table[table["frame"].to_numpy() == frame]
        keys = table["label"].to_numpy(np.int64)
        order = np.argsort(keys, kind="stable")
        bbox = table[list(columns)].to_numpy(np.int64)[order]
        return _Lookup(keys[order], bbox, from_table=True)

    # ------------------------------------------------------------------ thumbnails
    def thumbnails(
        self,
        ids: Sequence[int],
        *,
        frame: int | Sequence[int] | None = None,
        size: int = 64,
        outline: bool = True,
        masked: bool = False,
        context: float = 0.25,
        outline_color: tuple[int, int, int] = (255, 255, 0),
    ) -> np.ndarray:
        """Thumbnails of the segments ``ids``, in that order.

        Parameters are those of :func:`segment_thumbnails`.

        Returns
        -------
        (N, size, size, 3) uint8 ndarray
        """
        ids = np.asarray(ids).reshape(-1)
        if ids.size and not np.issubdtype(ids.dtype, np.integer):
            raise TypeError(f"ids must be integer label ids, got dtype {ids.dtype}")
        ids = ids.astype(np.int64)
        size = _check_size(size)
        if not 0 <= context <= 10:
            raise ValueError(f"context must be between 0 and 10 (bbox sides), got {context}")
        colour = np.asarray(outline_color, np.uint8).reshape(3)
        self._load()
        volume = self._layout.is_volume
        if volume and size < _MIN_SIZE_3D:
            raise ValueError(
                f"size={size} is too small for a 3D object's three panels: at least "
                f"{_MIN_SIZE_3D} pixels"
            )
        frames = self._frames(frame, len(ids))
        out = np.zeros((len(ids), size, size, 3), np.uint8)
        masks = np.zeros((len(ids), size, size), bool)  # 3D: the outline itself
        for f in dict.fromkeys(frames.tolist() if frames is not None else [None]):
            rows = np.arange(len(ids)) if frames is None else np.flatnonzero(frames == f)
            plane = self._plane(f)
            for row, (label, box) in zip(rows, self._boxes(plane, ids[rows], f), strict=True):
                options = {"size": size, "masked": masked, "context": context}
                if volume:
                    spacing = self._layout.voxel_spacing
                    out[row], masks[row] = volume_thumbnail(
                        plane, label, box, spacing, min_window=MIN_WINDOW, **options
                    )
                else:
                    out[row], masks[row] = _thumbnail(plane, label, box, **options)
        if outline and len(ids):
            out[masks if volume else inner_boundary(masks)] = colour
        return out

    def _frames(self, frame, n: int) -> np.ndarray | None:
        if not self._layout.has_time:
            if frame is not None:
                what = "2D (Y, X)" if self._layout.axes == "yx" else "a volume (Z, Y, X)"
                raise ValueError(f"frame= was given, but the labels are {what}: no frames")
            return None
        if frame is None:
            raise ValueError(f"the labels are a stack {self._labels.shape}: pass frame=")
        frames = np.asarray(frame).reshape(-1)
        if frames.size == 1:
            frames = np.repeat(frames, n)
        if frames.size != n or (frames.size and not np.issubdtype(frames.dtype, np.integer)):
            raise ValueError(f"frame must be one integer or one per id ({n}), got {frame!r}")
        t = self._labels.shape[0]
        bad = frames[(frames < 0) | (frames >= t)]
        if bad.size:
            raise ValueError(f"frame {int(bad[0])} is not in the stack (frames 0..{t - 1})")
        return frames.astype(np.int64)

    def _boxes(self, plane: _Plane, ids: np.ndarray, frame: int | None):
        """(label, bounding box slices) per id; a ValueError names the ids not there."""
        result: list = [None] * len(ids)
        todo = np.arange(len(ids))
        for source in ("table", "labels"):  # the table's boxes first, then the labels' own
            lookup = plane.table if source == "table" else plane.from_labels(ids[todo])
            if lookup is None:
                continue
            pos, found = lookup.find(ids[todo])
            for i, p in zip(todo[found], pos[found], strict=True):
                bounds = lookup.bbox[p]
                nd = len(bounds) // 2
                box = tuple(slice(int(bounds[a]), int(bounds[a + nd])) for a in range(nd))
                label = int(lookup.keys[p])
                if lookup.from_table and not (plane.labels[box] == label).any():
                    continue  # the table is older than the labels: find it there
                result[i] = (label, box)
            todo = np.array([i for i in todo if result[i] is None], np.int64)
            if todo.size == 0:
                break
        if todo.size:
            where = "" if frame is None else f" of frame {frame}"
            names = ", ".join(str(int(v)) for v in dict.fromkeys(ids[todo].tolist()))
            raise ValueError(f"label {names} not in the labels{where}: no segment to show")
        return result


def _check_size(size) -> int:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)):
        raise ValueError(f"size must be an integer (pixels), got {size!r}")
    if not 4 <= size <= _MAX_SIZE:
        raise ValueError(f"size={size} is out of range: 4 to {_MAX_SIZE} pixels")
    return int(size)


def _thumbnail(plane: _Plane, label: int, box, *, size: int, masked: bool, context: float):
    """One segment: (size, size, 3) uint8 and its mask (size, size) bool."""
    side = max(int(np.ceil(bbox_side(box) * (1.0 + 2.0 * context))), MIN_WINDOW)
    img, mask = segment_window(plane.image_cf, plane.labels, box, label, side=side, norm=plane.norm)
    r = resample_matrix(side, size)
    m = mask.astype(np.float32)
    m_small = r @ m @ r.T
    small_mask = m_small >= 0.5
    if not small_mask.any():  # thin segment: keep every pixel it touches
        small_mask = m_small > 0
    if masked:  # in-mask averages, nothing outside: the encoder's image-masked view
        small = (r @ (img * m) @ r.T) / np.maximum(m_small, 1e-6)
        small[:, ~small_mask] = 0.0
    else:
        small = r @ img @ r.T
    return to_rgb(small), small_mask


def segment_thumbnails(
    image,
    labels,
    ids: Sequence[int],
    *,
    axes: str | None = None,
    spacing: Sequence[float] | None = None,
    size: int = 64,
    outline: bool = True,
    masked: bool = False,
    channel_axis: int | None = None,
    normalize: str | Sequence[float] | None = "image",
    frame: int | Sequence[int] | None = None,
    context: float = 0.25,
    table=None,
    outline_color: tuple[int, int, int] = (255, 255, 0),
) -> np.ndarray:
    """RGB display thumbnails of segments, one per id, in the order given.

    Each thumbnail shows a square window centred on the segment's bounding box, its longer
    side plus ``context`` of it on each side (at least :data:`MIN_WINDOW` pixels; zeros beyond
    the image), area-scaled (or linearly enlarged) to ``size`` pixels: aspect kept.

    A 3D object (``axes="zyx"``, or ``"tzyx"`` per frame) is shown as three square panels side
    by side in the same ``size`` x ``size`` tile: its z-plane (rows y, columns x), y-plane
    (rows z, columns x) and x-plane (rows z, columns y), each through the object's centre of
    mass (or the nearest plane holding some of it), each outlined; the panels show one cube of
    space around the object, drawn to scale with ``spacing``.  For many calls on one image,
    keep a :class:`ThumbnailSource` (this function makes one per call).

    Parameters
    ----------
    image : (Y, X[, C]), (Z, Y, X[, C]), (T, Y, X[, C]) or (T, Z, Y, X[, C]) array_like, or path
        The image: the labels' shape, plus possibly a channel axis.  Paths are read when called.
    labels : (Y, X), (Z, Y, X), (T, Y, X) or (T, Z, Y, X) int array_like, or path
        The label image (0 is background).
    ids : sequence of int
        Label ids; an id not in the labels is a ValueError naming it.
    axes : "yx", "zyx", "tyx", "tzyx" or None
        What the labels' axes are, as in :func:`napari_segrep.embed_segments`: 3D labels must
        say, ``"zyx"`` (a z-stack: 3D objects) or ``"tyx"`` (a time-lapse), else
        :class:`~napari_segrep._images.AxesUnknown` (a ValueError) says so.
    spacing : (dz, dy, dx), optional
        A volume's voxel size (any one unit): the side views are stretched by it, so shapes
        are true.  None: cubic voxels.  2D thumbnails are in pixels.
    size : int
        Thumbnail side in pixels (4-1024; at least 9 for 3D objects).
    outline : bool
        Draw the segment's outline (its pixels with a 4-neighbour outside) in ``outline_color``.
    masked : bool
        Show what the encoder sees with image masking: the segment's pixels only, zero outside.
    channel_axis : int, optional
        As in :func:`napari_segrep.embed_segments` (counted in the whole image).  1 channel is
        shown grey, 2 as magenta/green, 3 or more as RGB (the first three).
    normalize : "image", "segment", None or (low, high)
        As in :func:`napari_segrep.embed_segments` (``None``: integer images by their dtype's
        range, floats as they are).
    frame : int or sequence of int, optional
        For time-lapses: the frame of every id, or of each id.
    context : float
        Margin around the bounding box, in units of its longer side, on each side.
    table : DataFrame, optional
        Bounding boxes by ``label`` (``bbox_*`` columns, ``frame`` for time-lapses), e.g.
        ``embed_segments``' table, instead of a pass over the labels.
    outline_color : (3,) int
        RGB of the outline.

    Returns
    -------
    (N, size, size, 3) uint8 ndarray

    Examples
    --------
    >>> import napari_segrep as sr
    >>> from napari_segrep._sample_data import make_cells
    >>> image, labels, _ = make_cells((128, 128), n_cells=8)
    >>> thumbs = sr.segment_thumbnails(image, labels, [2, 1], size=48)
    >>> thumbs.shape, thumbs.dtype
    ((2, 48, 48, 3), dtype('uint8'))
    >>> masked = sr.segment_thumbnails(image, labels, [2], masked=True, outline=False)
    >>> int(masked[0, 0, 0].max())  # a corner: outside the segment, masked away
    0

    A ball in a z-stack with voxels twice as deep as wide:

    >>> import numpy as np
    >>> zz, yy, xx = np.mgrid[:10, :40, :40]
    >>> ball = ((2 * (zz - 5)) ** 2 + (yy - 20) ** 2 + (xx - 20) ** 2 <= 81).astype(np.uint8)
    >>> sr.segment_thumbnails(ball * 200, ball, [1], axes="zyx", spacing=(2, 1, 1)).shape
    (1, 64, 64, 3)
    """
    source = ThumbnailSource(
        image,
        labels,
        axes=axes,
        spacing=spacing,
        channel_axis=channel_axis,
        normalize=normalize,
        table=table,
    )
    return source.thumbnails(
        ids,
        frame=frame,
        size=size,
        outline=outline,
        masked=masked,
        context=context,
        outline_color=outline_color,
    )
