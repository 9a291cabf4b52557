"""Labelled segmentation tasks for the object-classifier benchmark (``classify_clicks.py``).

Each task is one image as a user would classify it: ``image, labels, classes`` with
``classes[label] = class name`` (the truth the simulated user clicks), plus the class names.
Built from data made here or bundled offline.  Not part of the package.
"""

from __future__ import annotations

import _ssl_tasks
import numpy as np

TASKS = ("cells", "ihc", "nuclei", "digits")


def cells(quick: bool = False):
    """The package's generated "cells" sample (``make_cells``: round smooth, elongated, spotty;
    size, orientation and brightness vary within each) at 1024 x 1024 with 600 cells (200 per
    class) instead of the sample's 512 x 512 with 120; ``quick``: the sample's own size."""
    from napari_segrep._sample_data import CELL_CLASSES, make_cells

    if quick:
        image, labels, classes = make_cells(seed=0)
    else:
        image, labels, classes = make_cells((1024, 1024), 600, seed=0)
    return image, labels, classes, list(CELL_CLASSES)


def ihc(quick: bool = False):
    """Real tissue: scikit-image's immunohistochemistry image (bundled), whole, nuclei segmented
    from the haematoxylin channel and classed DAB-positive or negative by their mean DAB stain
    from colour deconvolution (``_ssl_tasks.ihc``: a measurement, independent of the
    embeddings).  The two halves that task makes are put back side by side, so the few nuclei
    crossing the middle column are two segments, each with its nucleus's class."""
    left, right, names = _ssl_tasks.ihc()
    offset = int(left[1].max())
    labels = np.hstack([left[1], np.where(right[1] > 0, right[1] + offset, 0)])
    image = np.hstack([left[0], right[0]])
    classes = {lab: names[c] for lab, c in left[2].items()}
    classes.update({lab + offset: names[c] for lab, c in right[2].items()})
    return image, labels.astype(np.int32), classes, names


def nuclei(quick: bool = False):
    """Generated nuclei in four cell-cycle-like states (``_ssl_tasks.nuclei``: interphase,
    condensed, metaphase, apoptotic; brightness, size and orientation vary within each), the
    first of its two images: 600 nuclei (``quick``: 120)."""
    (image, labels, classes), _, names = _ssl_tasks.nuclei(seed=0, n=120 if quick else 600)
    return image, labels, {lab: names[c] for lab, c in classes.items()}, names


def digits(quick: bool = False):
    """scikit-learn's handwritten digits (bundled; 8 x 8, drawn 4x larger as segments whose
    mask is the pen strokes, on a jittered grid with noise: ``_ssl_tasks.digits``), 10
    classes: its test image, 597 digits (about 60 per class), a size one refinement of the
    encoder handles in its time goal.  ``quick``: the first 120 of them (the same image,
    the other segments erased)."""
    _, (image, labels, classes), names = _ssl_tasks.digits(seed=0)
    if quick:
        labels = np.where(labels <= 120, labels, 0).astype(np.int32)
        classes = {lab: c for lab, c in classes.items() if lab <= 120}
    return image, labels, {lab: names[c] for lab, c in classes.items()}, names


def load(name: str, quick: bool = False):
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}: choose one of {', '.join(TASKS)}")
    return globals()[name](quick)
