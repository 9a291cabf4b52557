"""The image and label arrays users give, read the one way every part of the package reads
them.

* :func:`layout_of` / :class:`Layout`: **the one place that says what an input's axes are**
  (time, z, y, x) and its voxel spacing.  Nobody else decides from ``ndim`` whether a 3D array
  is a z-stack or a time-lapse: a 3D label image whose axes were not said is refused
  (:class:`AxesUnknown`, with the fix), never guessed.
* :func:`as_channels_first` (2D or 3D spatial, RGB(A), or multichannel with ``channel_axis``)
  and :func:`validate_labels`.

Numpy only: shared by :mod:`napari_segrep.engine` (re-exported by ``engine.inputs`` and
``engine.segments``) and :mod:`napari_segrep.analysis` (measurements), which never imports the
engine or torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "AXES",
    "AxesUnknown",
    "Layout",
    "as_channels_first",
    "check_spacing",
    "frame_channel_axis",
    "layout_of",
    "validate_labels",
]

_INT64_MAX = int(np.iinfo(np.int64).max)


def as_channels_first(
    image: np.ndarray, *, channel_axis: int | None, spatial_ndim: int = 2
) -> np.ndarray:
    """Return ``image`` as a ``(C, *spatial)`` view (no copy, no dtype change).

    ``spatial_ndim`` is 2 (``(Y, X)``, the default) or 3 (``(Z, Y, X)``, a volume; say so with
    :func:`layout_of`).  The image is grey (``spatial_ndim`` axes), RGB(A) with its colour axis
    last (``(..., 3|4)``, alpha dropped) when ``channel_axis`` is None, or has one more axis, its
    channels, at ``channel_axis``.  An image without pixels or channels is refused.
    """
    image = np.asarray(image)
    if image.dtype == bool or not (
        np.issubdtype(image.dtype, np.integer) or np.issubdtype(image.dtype, np.floating)
    ):
        raise TypeError(f"image must be numeric (uint8/uint16/int/float), got dtype {image.dtype}")
    what = "2D" if spatial_ndim == 2 else "3D"
    if image.ndim == spatial_ndim:
        if channel_axis is not None:
            raise ValueError(
                f"channel_axis={channel_axis} given, but the image is {what} {image.shape}: "
                f"a {what} image has no channel axis (pass channel_axis=None)"
            )
        image_cf = image[None]
    elif image.ndim != spatial_ndim + 1:
        if spatial_ndim == 2:
            raise ValueError(
                f"image must be 2D (Y, X), RGB (Y, X, 3) or multichannel 3D with channel_axis; "
                f"got ndim={image.ndim} shape {image.shape}. For stacks, embed one plane at a time."
            )
        raise ValueError(
            f"a volume's image must be (Z, Y, X), or (Z, Y, X) plus one channel axis; got "
            f"ndim={image.ndim} shape {image.shape}"
        )
    elif channel_axis is None:
        if image.shape[-1] not in (3, 4):
            if spatial_ndim == 2:
                raise ValueError(
                    f"3D image {image.shape} is ambiguous: pass channel_axis (0, 1 or 2) for a "
                    "multichannel image; RGB images must be (Y, X, 3)"
                )
            raise ValueError(
                f"the volume's image {image.shape} has one axis more than (Z, Y, X): pass "
                "channel_axis for a multichannel volume"
            )
        image_cf = np.moveaxis(image[..., :3], -1, 0)
    elif not isinstance(channel_axis, (int, np.integer)) or not (
        -image.ndim <= channel_axis < image.ndim
    ):
        raise ValueError(
            f"channel_axis={channel_axis!r} is not an axis of the image {image.shape}: "
            f"use 0 ... {image.ndim - 1} (or -1)"
        )
    else:
        image_cf = np.moveaxis(image, int(channel_axis), 0)
    if image_cf.size == 0:
        what = "no channels" if image_cf.shape[0] == 0 else "no pixels"
        raise ValueError(f"the image is empty: shape {image.shape} has {what}")
    return image_cf


def validate_labels(labels: np.ndarray, spatial_shape: tuple[int, ...]) -> np.ndarray:
    """Check ``labels`` is a non-negative integer array of ``spatial_shape`` with ids < 2**63.

    RGB-looking labels (a coloured rendering of a label image) and fractional floats (an
    intensity image: image and labels swapped?) are refused with their likely cause.
    """
    labels = np.asarray(labels)
    spatial_shape = tuple(spatial_shape)
    if labels.ndim == len(spatial_shape) + 1 and labels.shape[:-1] == spatial_shape:
        if labels.shape[-1] in (3, 4):
            raise ValueError(
                f"labels look like an RGB image {labels.shape}: a label image has one integer id "
                f"per pixel, shape {spatial_shape} like the image's. Use the label image itself, "
                "not a coloured rendering of it"
            )
    if labels.dtype == bool or not np.issubdtype(labels.dtype, np.integer):
        if labels.dtype == bool:
            hint = " (a boolean mask: convert it with skimage.measure.label(mask))"
        elif np.issubdtype(labels.dtype, np.floating) and not (
            np.isfinite(labels).all() and (labels == np.round(labels)).all()
        ):
            hint = (
                " holding fractional values: this looks like an intensity image, not labels "
                "(are image and labels swapped?)"
            )
        else:
            hint = " (convert whole-number floats with labels.astype(np.int32))"
        raise TypeError(f"labels must be an integer array, got dtype {labels.dtype}{hint}")
    if labels.shape != spatial_shape:
        raise ValueError(
            f"labels shape {labels.shape} does not match the image's spatial shape "
            f"{spatial_shape}: they must be the same {_grid(len(spatial_shape))} grid"
        )
    if labels.size and np.issubdtype(labels.dtype, np.signedinteger) and labels.min() < 0:
        raise ValueError(
            f"labels contain negative values (min {labels.min()}); label ids must be >= 0 "
            "(0 is background)"
        )
    if labels.size and labels.dtype == np.uint64 and int(labels.max()) > _INT64_MAX:
        raise ValueError(
            f"labels contain ids >= 2**63 (max {int(labels.max())}), beyond the int64 label ids "
            "napari-segrep keeps: relabel them first, e.g. "
            "skimage.segmentation.relabel_sequential(labels)[0]"
        )
    return labels


def _grid(ndim: int) -> str:
    return {2: "(Y, X)", 3: "(Z, Y, X)"}.get(ndim, f"{ndim}-D")


# ----------------------------------------------------------------------------- layout
#: The label layouts napari-segrep embeds: a 2D image, a z-stack (one 3D object per label), a
#: time-lapse of 2D images, a time-lapse of volumes (``frame`` column + 3D objects).
AXES = ("yx", "zyx", "tyx", "tzyx")


class AxesUnknown(ValueError):
    """A 3D label image whose axes were not said: a z-stack (``"zyx"``) or a time-lapse
    (``"tyx"``)?  Never guessed.  ``shape`` is the labels' shape; the message gives the API's
    fix, :meth:`fix` lets the CLI and the widgets phrase it their way."""

    def __init__(self, shape: tuple[int, ...], *, how: str = "axes={axes!r}"):
        self.shape = tuple(int(n) for n in shape)
        super().__init__(self.message(how))

    def message(self, how: str) -> str:
        """The message, ``how`` the way to say the axes (formatted with ``axes=``)."""
        return (
            f"the labels are 3D {self.shape}: say whether they are a z-stack or a time-lapse, "
            f"{how.format(axes='zyx')} for a z-stack (one 3D object per label) or "
            f"{how.format(axes='tyx')} for a time-lapse (one row per label and frame)"
        )


@dataclass(frozen=True)
class Layout:
    """What the axes of a label image (and of its image, less the channels) are.

    Attributes
    ----------
    axes : str
        One of :data:`AXES`: ``"yx"``, ``"zyx"``, ``"tyx"``, ``"tzyx"``.
    spacing : tuple of float, or None
        The physical size of a voxel along each spatial axis (``(dz, dy, dx)`` or ``(dy, dx)``,
        any one unit); None when not known (voxels are then taken as cubes of side 1).
    spacing_source : str
        Where the spacing came from ("given", "OME-TIFF", "ImageJ TIFF", "napari scale"...);
        empty when there is none.
    """

    axes: str
    spacing: tuple[float, ...] | None = None
    spacing_source: str = ""

    @property
    def spatial_axes(self) -> str:
        """``"zyx"`` or ``"yx"``."""
        return self.axes.replace("t", "")

    @property
    def spatial_ndim(self) -> int:
        """2 or 3."""
        return len(self.spatial_axes)

    @property
    def has_time(self) -> bool:
        """A time-lapse: one table per frame, with a ``frame`` column."""
        return self.axes.startswith("t")

    @property
    def is_volume(self) -> bool:
        """Objects are 3D."""
        return self.spatial_ndim == 3

    @property
    def voxel_spacing(self) -> tuple[float, ...]:
        """The spacing, or 1 along every spatial axis when not known."""
        return self.spacing if self.spacing is not None else (1.0,) * self.spatial_ndim

    @property
    def frame_layout(self) -> Layout:
        """The layout of one frame (``self`` when there is no time axis)."""
        if not self.has_time:
            return self
        return Layout(self.spatial_axes, self.spacing, self.spacing_source)

    def describe(self) -> dict:
        """For provenance (a table's ``attrs``, its sidecar): JSON types only."""
        return {
            "axes": self.axes,
            "spacing": None if self.spacing is None else [float(v) for v in self.spacing],
            "spacing_source": self.spacing_source,
        }


def layout_of(
    labels,
    *,
    axes: str | None = None,
    spacing=None,
    spacing_source: str = "given",
) -> Layout:
    """The :class:`Layout` of a label image (an array or just its shape), checked.

    Parameters
    ----------
    labels : ndarray or tuple of int
    axes : "yx", "zyx", "tyx", "tzyx" or None
        None: ``"yx"`` for 2D labels, ``"tzyx"`` for 4D ones; 3D labels must say (z-stack or
        time-lapse), :class:`AxesUnknown` otherwise.
    spacing : sequence of float, optional
        One positive value per spatial axis.
    spacing_source : str
        Recorded with the spacing.

    Raises
    ------
    AxesUnknown
        3D labels without ``axes``.
    ValueError
        ``axes`` unknown or not matching the labels' dimensions, a one-plane volume, spacing of
        the wrong length or not positive and finite.
    """
    shape = tuple(int(n) for n in (labels if isinstance(labels, tuple) else np.shape(labels)))
    ndim = len(shape)
    if axes is None:
        if ndim == 3:
            raise AxesUnknown(shape)
        axes = {2: "yx", 4: "tzyx"}.get(ndim)
        if axes is None:
            raise ValueError(
                f"labels must be 2D (Y, X), 3D (a z-stack or a time-lapse) or 4D (T, Z, Y, X); "
                f"got shape {shape}"
            )
    if not isinstance(axes, str) or axes.lower() not in AXES:
        raise ValueError(f"axes={axes!r} is not a layout: use one of {', '.join(AXES)}")
    axes = axes.lower()
    if len(axes) != ndim:
        raise ValueError(
            f"axes={axes!r} names {len(axes)} axes but the labels are {ndim}D {shape}: "
            + (
                "for 3D labels use axes='zyx' (a z-stack) or 'tyx' (a time-lapse)"
                if ndim == 3
                else {2: "2D labels are axes='yx'", 4: "4D labels are axes='tzyx'"}.get(
                    ndim, "labels must be 2D, 3D or 4D"
                )
            )
        )
    if "z" in axes:
        depth = shape[axes.index("z")]
        if depth < 2:
            raise ValueError(
                f"a volume with {depth} plane{'s' if depth != 1 else ''} {shape}: a z-stack "
                "needs at least 2 planes; embed one plane as a 2D image (labels[0])"
            )
    layout = Layout(axes, None, "")
    if spacing is None:
        return layout
    return Layout(axes, check_spacing(spacing, layout.spatial_axes), spacing_source)


def check_spacing(spacing, spatial_axes: str) -> tuple[float, ...]:
    """``spacing`` as a tuple of one positive finite float per axis of ``spatial_axes``."""
    names = ", ".join(f"d{a}" for a in spatial_axes)
    try:
        values = tuple(float(v) for v in np.asarray(spacing, dtype=np.float64).reshape(-1))
    except (TypeError, ValueError):
        raise ValueError(
            f"spacing={spacing!r} is not a sequence of numbers: give ({names})"
        ) from None
    if len(values) != len(spatial_axes):
        raise ValueError(
            f"spacing has {len(values)} value{'s' if len(values) != 1 else ''} {values} but the "
            f"objects have {len(spatial_axes)} spatial axes: give ({names})"
        )
    if not all(np.isfinite(v) and v > 0 for v in values):
        raise ValueError(f"spacing must be positive and finite along every axis, got {values}")
    return values


def frame_channel_axis(channel_axis: int | None, layout: Layout, image_ndim: int) -> int | None:
    """The channel axis within one frame, from ``channel_axis`` counted in the whole image of a
    time-lapse (the time axis comes first); ``channel_axis`` itself without a time axis."""
    if channel_axis is None or not layout.has_time:
        return channel_axis
    axis = int(channel_axis)
    if axis < 0:
        axis += image_ndim
    if axis == 0:
        raise ValueError(
            "channel_axis=0 is the time axis of a time-lapse: the channels are another axis"
        )
    return axis - 1
