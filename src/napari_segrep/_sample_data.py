"""Sample data made here, never downloaded.

- :func:`make_cells`: a generated "cells" image with three visibly different classes of segments
  (round smooth, elongated, textured/spotty), labels and the class of each label;
- :func:`make_coins`: scikit-image's bundled ``coins`` photograph, segmented by thresholding.

The ``*_sample`` functions return napari layer-data tuples (no napari import).
"""

from __future__ import annotations

import numpy as np

__all__ = ["CELL_CLASSES", "coins_sample", "cells_sample", "make_cells", "make_coins"]

CELL_CLASSES = ("round", "elongated", "spotty")


def make_cells(
    shape: tuple[int, int] = (512, 512),
    n_cells: int = 120,
    *,
    seed: int = 0,
    min_distance: int = 10,
) -> tuple[np.ndarray, np.ndarray, dict[int, str]]:
    """Generate a fluorescence-like image of cells of three classes.

    Returns
    -------
    image : (Y, X) uint16 ndarray
    labels : (Y, X) int32 ndarray
        One id per cell, 0 background; cells never overlap, some may touch.
    classes : dict
        label id -> class name (one of :data:`CELL_CLASSES`).
    """
    rng = np.random.default_rng(seed)
    h, w = shape
    labels = np.zeros(shape, np.int32)
    image = np.zeros(shape, np.float64)
    yy, xx = np.mgrid[0:h, 0:w]
    classes: dict[int, str] = {}
    next_id = 1
    attempts = 0
    while next_id <= n_cells and attempts < n_cells * 50:
        attempts += 1
        kind = CELL_CLASSES[(next_id - 1) % len(CELL_CLASSES)]
        cy, cx = rng.uniform(15, h - 15), rng.uniform(15, w - 15)
        angle = rng.uniform(0, np.pi)
        if kind == "elongated":
            a, b = rng.uniform(11, 15), rng.uniform(4, 5.5)
        elif kind == "round":
            a = b = rng.uniform(6, 8)
        else:
            a, b = rng.uniform(8, 10), rng.uniform(7, 9)
        r = int(np.ceil(max(a, b))) + 2
        y0, y1 = int(max(cy - r, 0)), int(min(cy + r + 1, h))
        x0, x1 = int(max(cx - r, 0)), int(min(cx + r + 1, w))
        dy, dx = yy[y0:y1, x0:x1] - cy, xx[y0:y1, x0:x1] - cx
        u = dx * np.cos(angle) + dy * np.sin(angle)
        v = -dx * np.sin(angle) + dy * np.cos(angle)
        inside = (u / a) ** 2 + (v / b) ** 2 <= 1.0
        region = labels[y0:y1, x0:x1]
        if (region[inside] != 0).any():
            continue
        near = labels[
            max(y0 - min_distance // 2, 0) : y1 + min_distance // 2,
            max(x0 - min_distance // 2, 0) : x1 + min_distance // 2,
        ]
        if (near != 0).sum() > 0 and rng.random() < 0.7:  # let a few cells touch
            continue
        region[inside] = next_id
        rho = np.sqrt((u / a) ** 2 + (v / b) ** 2)
        if kind == "spotty":
            spots = rng.random(inside.shape) < 0.12
            texture = 0.35 + 0.9 * spots
        elif kind == "round":
            texture = 1.0 - 0.3 * rho**2
        else:
            texture = 0.8 + 0.2 * np.cos(3 * u / a)
        image[y0:y1, x0:x1][inside] += (rng.uniform(0.7, 1.0) * texture)[inside]
        classes[next_id] = kind
        next_id += 1
    from scipy import ndimage

    image = ndimage.gaussian_filter(image, 1.0)
    image = 0.05 + image + rng.normal(0, 0.03, shape)
    image = np.clip(image * 40000, 0, 65535).astype(np.uint16)
    return image, labels, classes


def make_coins() -> tuple[np.ndarray, np.ndarray]:
    """scikit-image's ``coins`` (bundled, offline) and a label image from Otsu thresholding."""
    from scipy import ndimage
    from skimage import data, filters, measure, morphology, segmentation

    image = data.coins()
    smooth = filters.gaussian(image, sigma=2, preserve_range=True)
    mask = smooth > filters.threshold_otsu(smooth)
    mask = ndimage.binary_fill_holes(morphology.opening(mask, morphology.disk(3)))
    labels = measure.label(segmentation.clear_border(mask))
    small = np.bincount(labels.ravel()) < 150  # drop specks (any scikit-image version)
    small[0] = False
    labels[small[labels]] = 0
    return image, segmentation.relabel_sequential(labels)[0].astype(np.int32)


def cells_sample():
    image, labels, classes = make_cells()
    return [
        (image, {"name": "cells"}, "image"),
        (labels, {"name": "cells labels"}, "labels"),
    ]


def coins_sample():
    image, labels = make_coins()
    return [
        (image, {"name": "coins"}, "image"),
        (labels, {"name": "coins labels"}, "labels"),
    ]
