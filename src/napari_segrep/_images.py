"""The image and label arrays users give, read the one way every part of the package reads
them: :func:`as_channels_first` (2D, RGB(A), or multichannel with ``channel_axis``) and
:func:`validate_labels`.

Numpy only: shared by :mod:`napari_segrep.engine` (re-exported by ``engine.inputs`` and
``engine.segments``) and :mod:`napari_segrep.analysis` (measurements), which never imports the
engine or torch.
"""

from __future__ import annotations

import numpy as np

__all__ = ["as_channels_first", "validate_labels"]

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
