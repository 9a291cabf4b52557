"""Checks of the user's inputs (image, labels, crop size), each failing with a message that
names the problem and the fix, before any work.

Numpy only.  :func:`as_channels_first` and :func:`validate_labels` live in
:mod:`napari_segrep._images` (shared with :mod:`napari_segrep.analysis`, which never imports
the engine) and are re-exported here and by :mod:`napari_segrep.engine.segments`.
"""

from __future__ import annotations

import numpy as np

from .._images import as_channels_first, validate_labels

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
