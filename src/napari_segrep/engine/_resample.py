"""Crops of objects on grids whose voxels are not cubes (a z-stack imaged at 2 um in z and
0.5 um in y and x), or too large for the crop: the object's window resampled to near-isotropic
voxels, then to the crop.  Used by :func:`~napari_segrep.engine.segments.iter_crop_batches` for
volumes (and 2D images with anisotropic pixels); numpy only.

One resampling, separable along the axes, exact in position:

* the target voxel is a cube whose side is the finest spacing (the other axes are upsampled by
  ``spacing_i / min(spacing)``), so the same object imaged at another z step gives about the
  same crop (size and shape are phenotypes);
* an object larger than the crop (in those isotropic voxels) is downscaled to fit, by
  ``scale = crop_size / longest side`` (recorded in the ``scale`` column), as in 2D;
* along an axis that shrinks, each crop voxel is the exact area (volume) average of the raw
  voxels it covers; along an axis that grows, linear interpolation (trilinear in 3D); an axis
  whose step is exactly one raw voxel is copied (an isotropic object that fits is its window,
  bit for bit);
* masking as for 2D downscaling: the image is resampled as ``interp(image * mask) /
  interp(mask)``, so no voxel outside the object leaks in, and the crop's mask is
  ``interp(mask) >= 0.5`` (``> 0`` for a thin object that would vanish).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["crop_geometry", "isotropy_factors", "resampled_crop", "window"]

#: Spacings this close to the finest count as equal (a z step written as 0.5000001).
_RTOL = 1e-6


def isotropy_factors(spacing: Sequence[float] | None, ndim: int) -> np.ndarray:
    """``spacing_i / min(spacing)`` per axis (float64, all >= 1): how much finer the isotropic
    grid is than the raw one along each axis; ones when ``spacing`` is None."""
    if spacing is None:
        return np.ones(ndim)
    spacing = np.asarray(spacing, np.float64)
    factors = spacing / spacing.min()
    factors[np.abs(factors - 1.0) <= _RTOL] = 1.0
    return factors


def crop_geometry(extent: Sequence[int], factors: np.ndarray, crop_size: int):
    """``(scale, steps)`` of an object whose bounding box spans ``extent`` raw voxels: the
    factor from isotropic voxels to the crop (1.0 when it fits) and, per axis, the number of
    raw voxels one crop voxel spans."""
    longest = float(max(np.asarray(extent, np.float64) * factors))
    scale = 1.0 if longest <= crop_size else crop_size / longest
    steps = 1.0 / (factors * scale)
    steps[np.abs(steps - 1.0) <= _RTOL] = 1.0
    return scale, steps


def _axis_weights(origin: float, step: float, size: int) -> tuple[int, np.ndarray]:
    """``(first, W)``: crop voxel ``j`` (of ``size``) spans raw coordinates ``[origin + j *
    step, origin + (j + 1) * step)`` (raw voxel ``k`` spans ``[k, k + 1)``); ``W`` (size, n)
    float32 weights of the raw voxels ``first .. first + n``, each row summing to 1."""
    if step >= 1.0:  # exact area average (identity for step 1 and an integer origin)
        edges = origin + step * np.arange(size + 1)
        first = math.floor(edges[0])
        k = np.arange(first, math.ceil(edges[-1]))
        overlap = np.minimum(edges[1:, None], k[None] + 1) - np.maximum(edges[:-1, None], k[None])
        weights = np.clip(overlap, 0.0, None) / step
    else:  # linear interpolation between raw voxel centres (k + 0.5)
        centres = origin + step * (np.arange(size) + 0.5) - 0.5
        first = math.floor(centres[0])
        k = np.arange(first, math.floor(centres[-1]) + 2)
        weights = np.clip(1.0 - np.abs(centres[:, None] - k[None]), 0.0, None)
    return first, weights.astype(np.float32)


def window(arr: np.ndarray, starts: Sequence[int], sizes: Sequence[int]) -> np.ndarray:
    """``arr[..., s0:s0+n0, s1:s1+n1, ...]`` over its last ``len(starts)`` axes, zeros where
    the window leaves ``arr``."""
    nd = len(starts)
    out = np.zeros(arr.shape[: arr.ndim - nd] + tuple(sizes), dtype=arr.dtype)
    src, dst = [], []
    for start, n, dim in zip(starts, sizes, arr.shape[arr.ndim - nd :], strict=True):
        lo, hi = max(start, 0), min(start + n, dim)
        if hi <= lo:
            return out
        src.append(slice(lo, hi))
        dst.append(slice(lo - start, hi - start))
    out[(Ellipsis, *dst)] = arr[(Ellipsis, *src)]
    return out


def _resample(data: np.ndarray, weights: Sequence[np.ndarray]) -> np.ndarray:
    """``data`` (K, n_0, ..., n_{d-1}) resampled separably: axis ``i`` by ``weights[i]``
    (S_i, n_i) -> (K, S_0, ..., S_{d-1}).

    Each crop voxel draws on a few neighbouring raw voxels (2 when an axis grows, about
    ``step + 1`` when it shrinks), so the weights are applied as a band, tap by tap: elementwise
    numpy, no matrix product (a BLAS call per object costs more in thread start-up than the
    work, on a busy CPU up to 100x).  The axes that shrink most go first (less work after).
    """
    order = sorted(range(len(weights)), key=lambda i: weights[i].shape[0] / weights[i].shape[1])
    out = data
    for i in order:
        w = weights[i]
        nonzero = w > 0
        lo = nonzero.argmax(axis=1)
        taps = int((w.shape[1] - nonzero[:, ::-1].argmax(axis=1) - lo).max())
        shape = [1] * out.ndim
        shape[1 + i] = w.shape[0]
        acc = None
        for t in range(taps):
            idx = np.minimum(lo + t, w.shape[1] - 1)
            wt = np.where(lo + t < w.shape[1], w[np.arange(w.shape[0]), idx], 0.0)
            term = np.take(out, idx, axis=1 + i) * wt.astype(np.float32).reshape(shape)
            acc = term if acc is None else acc + term
        out = acc
    return out


def resampled_crop(
    image_cf: np.ndarray,
    search_labels: np.ndarray,
    sl: tuple[slice, ...],
    lab: int,
    *,
    crop_size: int,
    factors: np.ndarray,
    normalise,
    mask_image: bool,
) -> tuple[np.ndarray, np.ndarray, float]:
    """One object's crop on the isotropic grid: image ``(C, S, ..., S)`` float32, mask
    ``(S, ..., S)`` bool, and the downscale factor.

    ``sl`` is the object's bounding box in ``search_labels`` (where its voxels equal ``lab``),
    ``factors`` :func:`isotropy_factors`, ``normalise(raw, mask)`` scales the raw window
    ``(C, ...)`` float32 given the object's mask (the crop's normalisation, computed from raw
    voxels as for a crop at native scale).  The crop is centred on the bounding box.
    """
    extent = [s.stop - s.start for s in sl]
    scale, steps = crop_geometry(extent, factors, crop_size)
    firsts, weights = [], []
    for s, e, step in zip(sl, extent, steps, strict=True):
        # Centred, the object's first raw edge on a crop voxel's edge (as a crop at native
        # scale is placed: start - (S - e) // 2), so no crop voxel straddles it needlessly.
        before = math.floor((crop_size - e / step) / 2 + 1e-9)
        first, w = _axis_weights(s.start - before * float(step), float(step), crop_size)
        firsts.append(first)
        weights.append(w)
    sizes = [w.shape[1] for w in weights]
    mask = window(search_labels, firsts, sizes) == lab
    raw = normalise(window(image_cf, firsts, sizes).astype(np.float32), mask)
    m = mask[None].astype(np.float32)
    out = _resample(np.concatenate([raw * m if mask_image else raw, m]), weights)
    m_small = out[-1]
    img = out[:-1]
    if mask_image:
        img = img / np.maximum(m_small, 1e-6)
    small_mask = m_small >= 0.5
    if not small_mask.any():  # thin object: keep every voxel it touches
        small_mask = m_small > 0
    return img.astype(np.float32, copy=False), small_mask, scale
