"""Checks of the user's inputs (image, labels, crop size), each failing with a message that
names the problem and the fix, before any work.

Numpy only.  :mod:`napari_segrep.engine.segments` re-exports :func:`as_channels_first` and
:func:`validate_labels`.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "MAX_CROP_SIZE",
    "as_channels_first",
    "check_crop_size",
    "check_image_values",
    "validate_labels",
]

#: The largest ``crop_size`` accepted at all.
MAX_CROP_SIZE = 4096
#: Crop sizes up to this are accepted whatever the image size (small images, common sizes).
ALWAYS_OK_CROP_SIZE = 256
_FLOAT32_MAX = float(np.finfo(np.float32).max)
_INT64_MAX = int(np.iinfo(np.int64).max)


def as_channels_first(image: np.ndarray, *, channel_axis: int | None) -> np.ndarray:
    """Return ``image`` as a ``(C, Y, X)`` view (no copy, no dtype change).

    ``image`` is 2D ``(Y, X)``, RGB(A) ``(Y, X, 3|4)`` (alpha dropped) when ``channel_axis`` is
    None, or 3D with its channel axis at ``channel_axis``.  An image without pixels or channels
    is refused.
    """
    image = np.asarray(image)
    if image.dtype == bool or not (
        np.issubdtype(image.dtype, np.integer) or np.issubdtype(image.dtype, np.floating)
    ):
        raise TypeError(f"image must be numeric (uint8/uint16/int/float), got dtype {image.dtype}")
    if image.ndim == 2:
        if channel_axis is not None:
            raise ValueError(
                f"channel_axis={channel_axis} given, but the image is 2D {image.shape}: "
                "a 2D image has no channel axis (pass channel_axis=None)"
            )
        image_cf = image[None]
    elif image.ndim != 3:
        raise ValueError(
            f"image must be 2D (Y, X), RGB (Y, X, 3) or multichannel 3D with channel_axis; got "
            f"ndim={image.ndim} shape {image.shape}. For stacks, embed one plane at a time."
        )
    elif channel_axis is None:
        if image.shape[-1] not in (3, 4):
            raise ValueError(
                f"3D image {image.shape} is ambiguous: pass channel_axis (0, 1 or 2) for a "
                "multichannel image; RGB images must be (Y, X, 3)"
            )
        image_cf = np.moveaxis(image[..., :3], -1, 0)
    elif not isinstance(channel_axis, (int, np.integer)) or not -3 <= channel_axis < 3:
        raise ValueError(
            f"channel_axis={channel_axis!r} is not an axis of the 3D image {image.shape}: "
            "use 0, 1, 2 (or -1)"
        )
    else:
        image_cf = np.moveaxis(image, int(channel_axis), 0)
    if image_cf.size == 0:
        what = "no channels" if image_cf.shape[0] == 0 else "no pixels"
        raise ValueError(f"the image is empty: shape {image.shape} has {what}")
    return image_cf


def check_image_values(image_cf: np.ndarray) -> None:
    """Refuse NaN, Inf and values beyond float32 range (the working dtype: a float64 value of
    1e39 becomes Inf there), with the fix.  Integer images always pass.

    One min and one max reduction, without temporary arrays (faster than ``np.isfinite``).
    """
    if not np.issubdtype(image_cf.dtype, np.floating):
        return
    low, high = float(image_cf.min()), float(image_cf.max())  # NaN propagates through both
    if -_FLOAT32_MAX <= low and high <= _FLOAT32_MAX:
        return
    if not (np.isfinite(low) and np.isfinite(high)):
        raise ValueError(
            "image contains NaN or Inf values: replace them first (e.g. np.nan_to_num(image))"
        )
    raise ValueError(
        f"image values reach {max(-low, high):.3g}, beyond float32 range (3.4e38), the precision "
        "napari-segrep computes in: rescale the image first (e.g. image / np.abs(image).max())"
    )


def check_crop_size(crop_size, spatial_shape: tuple[int, ...]) -> int:
    """``crop_size`` as an int, if sensible for images of ``spatial_shape``.

    The rule: a positive integer, at most :data:`MAX_CROP_SIZE` (4096), and at most twice the
    image's longer side, since a larger crop only adds zero padding around any segment (sizes
    up to 256 are always accepted, so common sizes work on small images).
    """
    if isinstance(crop_size, bool) or not isinstance(crop_size, (int, np.integer)) or crop_size < 1:
        raise ValueError(f"crop_size must be a positive integer, got {crop_size!r}")
    crop_size = int(crop_size)
    if crop_size > MAX_CROP_SIZE:
        raise ValueError(
            f"crop_size={crop_size} is too large: at most {MAX_CROP_SIZE} (segments larger than "
            "the crop are downscaled to fit, so a crop of 64-256 pixels suits most data)"
        )
    longer = max(spatial_shape, default=0)
    limit = max(ALWAYS_OK_CROP_SIZE, 2 * longer)
    if crop_size > limit:
        raise ValueError(
            f"crop_size={crop_size} is larger than needed: a crop more than twice the image's "
            f"longer side ({longer} px) is only zero padding; use at most {limit}"
        )
    return crop_size


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
            f"{spatial_shape}: they must be the same (Y, X) grid"
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
