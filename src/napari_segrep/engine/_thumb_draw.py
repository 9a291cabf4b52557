"""Drawing helpers shared by the thumbnails of 2D segments and of 3D objects: resampling
matrices, channels to RGB, outlines.  numpy only."""

from __future__ import annotations

from functools import lru_cache

import numpy as np

__all__ = ["inner_boundary", "resample_matrix", "to_rgb"]


def to_rgb(channels: np.ndarray) -> np.ndarray:
    """(C, H, W) values in 0-1 -> (H, W, 3) uint8: grey for 1 channel, magenta/green for 2,
    the first three as RGB otherwise."""
    c = np.clip(channels, 0.0, 1.0) * 255.0 + 0.5
    c = c.astype(np.uint8)
    if len(c) == 1:
        c = np.concatenate([c, c, c])
    elif len(c) == 2:
        c = np.stack([c[0], c[1], c[0]])
    return np.moveaxis(c[:3], 0, -1)


def inner_boundary(masks: np.ndarray) -> np.ndarray:
    """(N, S, S) bool: the pixels of each mask with a 4-neighbour outside it (or the edge)."""
    padded = np.pad(masks, ((0, 0), (1, 1), (1, 1)))
    core = padded[:, :-2, 1:-1] & padded[:, 2:, 1:-1] & padded[:, 1:-1, :-2] & padded[:, 1:-1, 2:]
    return masks & ~core


@lru_cache(maxsize=512)
def resample_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) float32 weights resampling one axis: area averages when shrinking,
    linear interpolation (pixel centres aligned) when enlarging.  Rows sum to 1."""
    if n_in >= n_out:
        step = n_in / n_out
        edges = np.arange(n_out + 1) * step
        i = np.arange(n_in)[None, :]
        overlap = np.minimum(edges[1:, None], i + 1) - np.maximum(edges[:-1, None], i)
        w = np.clip(overlap, 0.0, None) / step
    else:
        pos = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
        i0 = np.floor(pos).astype(int)
        i1 = np.minimum(i0 + 1, n_in - 1)
        f = pos - i0
        w = np.zeros((n_out, n_in))
        np.add.at(w, (np.arange(n_out), i0), 1.0 - f)
        np.add.at(w, (np.arange(n_out), i1), f)
    return w.astype(np.float32)
