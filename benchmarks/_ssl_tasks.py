"""Labelled segmentation tasks for the self-supervised training benchmark (``ssl_eval.py``).

Each task builds a training image and a held-out test image (``image, labels, classes`` with
``classes[label] = class index``) from data bundled offline; the classes are never seen by the
training.  Not part of the package.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def _place(patches, masks, *, cell: int, seed: int):
    """Put patches (with their masks) on a jittered grid; labels 1..n in order."""
    n = len(patches)
    cols = int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    rng = np.random.default_rng(seed)
    image = np.zeros((rows * cell, cols * cell), np.float64)
    labels = np.zeros(image.shape, np.int32)
    for i, (patch, mask) in enumerate(zip(patches, masks, strict=True)):
        r, c = divmod(i, cols)
        h, w = mask.shape
        oy = r * cell + int(rng.integers(0, cell - h + 1))
        ox = c * cell + int(rng.integers(0, cell - w + 1))
        image[oy : oy + h, ox : ox + w] += patch * mask
        labels[oy : oy + h, ox : ox + w][mask] = i + 1
    return image, labels


def digits(seed: int = 0):
    """scikit-learn's 1,797 handwritten digits (8 x 8, 10 classes) drawn 4x larger as
    segments (mask: the pen strokes), 1,200 in the training image and 597 in the test image."""
    from sklearn.datasets import load_digits

    data = load_digits()
    order = np.random.default_rng(seed).permutation(len(data.target))
    out = []
    for part, idx in (("train", order[:1200]), ("test", order[1200:])):
        patches, masks = [], []
        for i in idx:
            up = ndimage.zoom(data.images[i] / 16.0, 4, order=1)
            mask = ndimage.binary_dilation(up > 0.2)
            patches.append(up + 0.1)
            masks.append(mask)
        image, labels = _place(patches, masks, cell=40, seed=seed + (part == "test"))
        rng = np.random.default_rng(seed + 7)
        image = image + rng.normal(0, 0.02, image.shape) + 0.05
        image = np.clip(image * 20000, 0, 65535).astype(np.uint16)
        classes = {k + 1: int(data.target[i]) for k, i in enumerate(idx)}
        out.append((image, labels, classes))
    return out[0], out[1], [str(d) for d in range(10)]


NUCLEUS_STATES = ("interphase", "condensed", "metaphase", "apoptotic")


def _nucleus(kind: str, rng: np.random.Generator):
    """One generated nucleus of a state: (intensity patch, mask)."""
    size = 40
    yy, xx = np.mgrid[0:size, 0:size] - (size - 1) / 2
    angle = rng.uniform(0, np.pi)
    u = xx * np.cos(angle) + yy * np.sin(angle)
    v = -xx * np.sin(angle) + yy * np.cos(angle)
    if kind == "metaphase":  # a bright, condensed plate of chromosomes
        a, b = rng.uniform(7, 11), rng.uniform(2.5, 4)
    elif kind == "condensed":
        a = rng.uniform(7, 11)
        b = a * rng.uniform(0.7, 1.0)
    else:
        a = rng.uniform(9, 14)
        b = a * rng.uniform(0.6, 1.0)
    rho = np.sqrt((u / a) ** 2 + (v / b) ** 2)
    if kind == "apoptotic":  # fragmented: a cluster of small round bodies
        mask = np.zeros((size, size), bool)
        tex = np.zeros((size, size))
        for _ in range(int(rng.integers(3, 7))):
            cy, cx = rng.normal(0, a / 2.5, 2)
            r = rng.uniform(2, 4.5)
            blob = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
            mask |= blob
            tex = np.maximum(tex, blob * rng.uniform(0.8, 1.2))
        mask = ndimage.binary_closing(mask, iterations=1)
        tex = np.maximum(tex, 0.3 * mask)
    else:
        mask = rho <= 1
        if kind == "interphase":  # smooth chromatin, a few nucleoli (dark) and a rim
            tex = 0.55 + 0.15 * (rho > 0.8)
            for _ in range(int(rng.integers(1, 4))):
                cy, cx = rng.normal(0, a / 3, 2)
                tex = tex - 0.3 * (((yy - cy) ** 2 + (xx - cx) ** 2) <= rng.uniform(1.5, 3) ** 2)
        elif kind == "condensed":  # speckled, condensing chromatin
            tex = 0.4 + 0.9 * ndimage.gaussian_filter(rng.random((size, size)), 0.8)
        else:
            tex = 1.2 + 0.3 * rng.random((size, size))
    tex = ndimage.gaussian_filter(tex, 0.6)
    return tex * rng.uniform(0.6, 1.4), mask


def nuclei(seed: int = 0, n: int = 600):
    """Generated nuclei in four states (interphase, condensed, metaphase, apoptotic), like a
    cell-cycle screen; brightness, size and orientation vary within every state.  ``n`` in
    each of a training and a test image."""
    out = []
    for part in (0, 1):
        rng = np.random.default_rng(1000 * seed + part)
        kinds = [NUCLEUS_STATES[i % 4] for i in range(n)]
        rng.shuffle(kinds)
        patches, masks = zip(*(_nucleus(k, rng) for k in kinds), strict=True)
        image, labels = _place(patches, masks, cell=44, seed=1000 * seed + part)
        image = ndimage.gaussian_filter(image, 0.7) + 0.05 + rng.normal(0, 0.03, image.shape)
        image = np.clip(image * 25000, 0, 65535).astype(np.uint16)
        classes = {i + 1: NUCLEUS_STATES.index(k) for i, k in enumerate(kinds)}
        out.append((image, labels, classes))
    return out[0], out[1], list(NUCLEUS_STATES)


def ihc(seed: int = 0):
    """Real tissue: scikit-image's immunohistochemistry image (bundled), nuclei segmented here
    from the haematoxylin channel (threshold + watershed) and classed DAB-positive or negative
    by their mean DAB stain from colour deconvolution, a measurement independent of the
    embeddings.  The left half trains, the right half tests (the classes are never seen by the
    training).  ``seed`` is unused (the image is fixed)."""
    from skimage import data, feature, filters, measure, morphology, segmentation
    from skimage.color import rgb2hed

    rgb = data.immunohistochemistry()
    hed = rgb2hed(rgb)
    h = filters.gaussian(hed[..., 0], 1.5)
    fg = morphology.remove_small_objects(h > filters.threshold_otsu(h), max_size=30)
    dist = ndimage.distance_transform_edt(fg)
    peaks = feature.peak_local_max(dist, min_distance=5, labels=measure.label(fg))
    markers = np.zeros(fg.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    labels = segmentation.watershed(-dist, markers, mask=fg)
    labels = morphology.remove_small_objects(labels, max_size=30)
    props = measure.regionprops(labels, intensity_image=hed[..., 2])
    dab = np.array([p.intensity_mean for p in props])
    cut = filters.threshold_otsu(dab)
    out = []
    half = rgb.shape[1] // 2
    for cols in (slice(0, half), slice(half, None)):
        lab = labels[:, cols].copy()
        keep = {p.label: int(p.intensity_mean > cut) for p in props}
        lab, _, inverse = segmentation.relabel_sequential(lab)
        pairs = zip(inverse.in_values, inverse.out_values, strict=True)
        classes = {int(new): keep[int(old)] for new, old in pairs if new != 0}
        out.append((np.ascontiguousarray(rgb[:, cols]), lab, classes))
    return out[0], out[1], ["DAB-negative", "DAB-positive"]
