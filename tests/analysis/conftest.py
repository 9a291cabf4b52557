"""Shared data of the analysis tests: well-separated blobs with known classes."""

from __future__ import annotations

import numpy as np


def blobs(n_per=30, d=16, seed=0):
    """Three Gaussian blobs in ``d`` dimensions: ``(3 * n_per, d)`` rows and their class ids."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 8, (3, d))
    emb = np.concatenate([c + rng.normal(0, 1, (n_per, d)) for c in centres])
    return emb, np.repeat([0, 1, 2], n_per)
