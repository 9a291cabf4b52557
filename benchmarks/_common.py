"""Shared helpers of the benchmark scripts: synthetic data, timing, reporting.

Not a test helper and not part of the package: the scripts in this folder put it on their path
(``python benchmarks/<name>.py`` runs with ``benchmarks/`` as ``sys.path[0]``).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

OUT_DIR = Path(__file__).resolve().parent / "out"


# ----------------------------------------------------------------------------- synthetic data
def make_ellipse_labels(
    shape: tuple[int, int],
    grid: tuple[int, int],
    *,
    radius: tuple[float, float],
    aspect: tuple[float, float] = (0.5, 1.0),
    seed: int = 0,
    chunk: int = 2048,
) -> np.ndarray:
    """An int32 label image with one random ellipse per cell of a ``grid`` (rows, cols).

    Each ellipse has a random semi-major axis in ``radius``, a random minor/major ratio in
    ``aspect`` (``(1, 1)``: discs), a random orientation and a random offset inside its cell;
    ellipses never touch (one pixel of background at least between cells).  Labels are
    ``1 .. rows * cols`` in row-major cell order.  Built in vectorised chunks of cells, so a
    10,000-segment 4096 x 4096 image takes well under a second and little extra memory.
    """
    h, w = shape
    rows, cols = grid
    ch, cw = h // rows, w // cols
    side = min(ch, cw) - 1  # one background pixel between neighbouring cells
    r_lo, r_hi = radius
    if 2 * r_hi + 1 > side:
        raise ValueError(f"radius {r_hi} does not fit cells of {ch} x {cw} px")
    n = rows * cols
    rng = np.random.default_rng(seed)
    a = rng.uniform(r_lo, r_hi, n)  # semi-major axis
    b = a * rng.uniform(*aspect, n)  # semi-minor axis
    theta = rng.uniform(0.0, np.pi, n)
    half = (side - 1) / 2.0
    slack = np.maximum(half - np.ceil(a), 0.0)  # keep the ellipse inside its cell
    cy = half + rng.uniform(-1.0, 1.0, n) * slack
    cx = half + rng.uniform(-1.0, 1.0, n) * slack

    cells = np.zeros((n, ch, cw), np.int32)
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32)
    for s in range(0, n, chunk):
        e = min(s + chunk, n)
        dy = yy[None] - cy[s:e, None, None].astype(np.float32)
        dx = xx[None] - cx[s:e, None, None].astype(np.float32)
        cos = np.cos(theta[s:e])[:, None, None].astype(np.float32)
        sin = np.sin(theta[s:e])[:, None, None].astype(np.float32)
        u = (dy * cos + dx * sin) / a[s:e, None, None].astype(np.float32)
        v = (-dy * sin + dx * cos) / b[s:e, None, None].astype(np.float32)
        inside = u * u + v * v <= 1.0
        inside[:, int(half), int(half)] |= True  # never empty, even if tiny
        ids = np.arange(s + 1, e + 1, dtype=np.int32)[:, None, None]
        cells[s:e, :side, :side] = np.where(inside, ids, 0)
        del dy, dx, u, v, inside
    labels = np.zeros((h, w), np.int32)
    labels[: rows * ch, : cols * cw] = (
        cells.reshape(rows, cols, ch, cw).transpose(0, 2, 1, 3).reshape(rows * ch, cols * cw)
    )
    return labels


def make_image(labels: np.ndarray, *, seed: int = 0, dtype=np.uint16, rows_per_chunk: int = 512):
    """A fluorescence-like image for ``labels``: background ~200, each segment a random level
    (500-3000) with a random linear gradient along the last axis, plus Gaussian noise (sigma
    60).  ``dtype`` uint16 or float32.  Built in chunks of ``rows_per_chunk`` along the first
    axis (rows of a 2D image, planes of a volume) to keep temporaries small."""
    rng = np.random.default_rng(seed)
    n = int(labels.max())
    level = np.concatenate([[200.0], rng.uniform(500.0, 3000.0, n)]).astype(np.float32)
    grad = np.concatenate([[0.0], rng.uniform(-15.0, 15.0, n)]).astype(np.float32)
    out = np.empty(labels.shape, dtype)
    h, w = labels.shape[0], labels.shape[-1]
    x = np.arange(w, dtype=np.float32)[None, :]
    for y0 in range(0, h, rows_per_chunk):
        lab = labels[y0 : y0 + rows_per_chunk]
        val = level[lab] + grad[lab] * ((x % 32.0) - 16.0)
        val += rng.standard_normal(lab.shape, dtype=np.float32) * 60.0
        if np.issubdtype(dtype, np.integer):
            info = np.iinfo(dtype)
            np.clip(val, info.min, info.max, out=val)
        out[y0 : y0 + rows_per_chunk] = val
    return out


# ----------------------------------------------------------------------------- synthetic volumes
#: The three shape classes of the volume benchmarks: a sphere, a rod (prolate ellipsoid, axis
#: ratio 3) and a disc (oblate, axis ratio 1/3).
VOLUME_SHAPES = ("sphere", "rod", "disc")
#: Semi-axes of each shape relative to the equivalent radius (same volume: product 1).
SHAPE_AXES = {
    "sphere": (1.0, 1.0, 1.0),
    "rod": (3 ** (2 / 3), 3 ** (-1 / 3), 3 ** (-1 / 3)),
    "disc": (3 ** (-2 / 3), 3 ** (1 / 3), 3 ** (1 / 3)),
}


def smooth_noise(rng, shape, sigma):
    """Gaussian-smoothed white noise (float32) of unit standard deviation."""
    from scipy.ndimage import gaussian_filter

    noise = gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma)
    return noise / (noise.std() + 1e-8)


def cell_grid(n: int) -> tuple[int, int, int]:
    """The (gz, gy, gx) grid of cubic cells holding ``n`` objects (as cubic as it gets)."""
    g = int(np.ceil(n ** (1 / 3)))
    return (int(np.ceil(n / (g * g))), g, g)


def cell_coords(cell: int) -> np.ndarray:
    """(cell, cell, cell, 3) float32 voxel coordinates (z, y, x) relative to the cell's centre."""
    c = np.arange(cell, dtype=np.float32) - (cell - 1) / 2
    return np.stack(np.meshgrid(c, c, c, indexing="ij"), axis=-1)


def cell_window(i: int, grid, cell: int) -> tuple[slice, slice, slice]:
    """The slices of object ``i``'s cell (row-major cell order) in the volume."""
    return tuple(slice(j * cell, (j + 1) * cell) for j in np.unravel_index(i, grid))


def random_ellipsoid(rng, coords, shape: str, radius: float) -> np.ndarray:
    """The bool mask of an ellipsoid of ``shape`` (:data:`SHAPE_AXES`) and equivalent
    ``radius`` (voxels) in a random 3D orientation, its centre within one voxel of ``coords``'
    origin."""
    semi = np.array(SHAPE_AXES[shape]) * radius
    rotation, _ = np.linalg.qr(rng.standard_normal((3, 3)))  # a random orientation
    shift = rng.uniform(-1.0, 1.0, 3)
    local = (coords - shift) @ rotation  # coordinates in the object's own frame
    return ((local / semi) ** 2).sum(-1) <= 1.0


def random_texture(rng, coords) -> np.ndarray:
    """A random texture for an object in a cell with these ``coords``: a brightness (0.3-1),
    smoothed noise of random grain and strength, a linear gradient in a random direction."""
    cell = coords.shape[0]
    level = rng.uniform(0.3, 1.0)
    grain = smooth_noise(rng, coords.shape[:-1], rng.uniform(0.6, 2.5))
    direction = rng.standard_normal(3)
    gradient = (coords @ (direction / np.linalg.norm(direction))) / cell
    return level * (1 + rng.uniform(0.05, 0.4) * grain + rng.uniform(-0.8, 0.8) * gradient)


def random_background(rng, shape) -> np.ndarray:
    """A cell's background: a random level (0-0.3) plus noise (sigma 0.05)."""
    return rng.uniform(0.0, 0.3) + 0.05 * rng.standard_normal(shape)


def make_ellipsoid_cells(
    n_per_class: int,
    *,
    seed: int = 0,
    cell: int = 32,
    radius: tuple[float, float] = (4.0, 6.5),
    textured: bool = True,
):
    """Objects of the three :data:`VOLUME_SHAPES`, one per ``cell``^3 cell of a float32
    volume, in a random order: ``(image, labels, classes, grid)``, the int32 labels (1..n),
    the shape index of label i at ``classes[i - 1]`` and the grid (gz, gy, gx).

    Each object: a random equivalent radius in ``radius``, a random orientation
    (:func:`random_ellipsoid`), a :func:`random_texture` (``textured=False``: a uniform random
    brightness 0.3-1, so only its shape, size and orientation tell it apart), a
    :func:`random_background` around it.  Isotropic voxels, so a cell is its object's centred
    crop."""
    rng = np.random.default_rng(seed)
    n = n_per_class * len(VOLUME_SHAPES)
    classes = rng.permutation(np.repeat(np.arange(len(VOLUME_SHAPES)), n_per_class))
    grid = cell_grid(n)
    image = np.zeros(tuple(k * cell for k in grid), np.float32)
    labels = np.zeros(image.shape, np.int32)
    coords = cell_coords(cell)
    for i, k in enumerate(classes):
        inside = random_ellipsoid(rng, coords, VOLUME_SHAPES[k], rng.uniform(*radius))
        value = random_texture(rng, coords) if textured else rng.uniform(0.3, 1.0)
        window = cell_window(i, grid, cell)
        image[window] = np.where(inside, value, random_background(rng, inside.shape))
        labels[window] = np.where(inside, i + 1, 0)
    return image, labels, classes, grid


def plain_resnet18(in_channels: int = 1, *, seed: int = 0):
    """A genuine ``torchvision.models.resnet18()`` with a ``in_channels``-input conv1 (same
    shape as napari-segrep's adapted conv1) and ``fc = Identity``: the no-masking baseline."""
    import torch
    import torchvision
    from torch import nn

    torch.manual_seed(seed)
    net = torchvision.models.resnet18(weights=None)
    net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
    net.fc = nn.Identity()
    return net


# ----------------------------------------------------------------------------- timing
def interleaved_timings(
    fns: dict[str, Callable[[], object]], *, repeats: int, warmup: int = 1
) -> dict[str, list[float]]:
    """Time each callable ``repeats`` times, round-robin (A B C A B C ...), after ``warmup``
    untimed calls of each.  Interleaving spreads background load over all candidates, so
    ratios stay meaningful on a shared machine."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


def interleaved_unit_timings(
    fns: dict[str, Callable[[int], object]], *, units: int, repeats: int, warmup: int = 1
) -> dict[str, np.ndarray]:
    """Time ``fn(i)`` for every unit ``i`` (e.g. one batch) of every candidate, interleaved at
    the unit level: for each repeat, for each unit, every candidate runs once, starting from a
    rotating candidate so none is always first.  Returns ``{name: (repeats, units) seconds}``.

    Fine-grained interleaving (a unit is a fraction of a second) plus a per-unit minimum over
    repeats (see :func:`unit_stats`) keeps ratios stable on a busy machine, where whole passes
    of several seconds are often hit by load bursts unevenly.
    """
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name](0)
    times = {name: np.zeros((repeats, units)) for name in names}
    for r in range(repeats):
        for i in range(units):
            k = (r + i) % len(names)
            for name in names[k:] + names[:k]:
                t0 = time.perf_counter()
                fns[name](i)
                times[name][r, i] = time.perf_counter() - t0
    return times


def unit_stats(times: np.ndarray) -> dict:
    """``best_s``: sum over units of each unit's fastest repeat; ``median_s``: sum of each
    unit's median; ``pass_*``: the same over whole passes (sum over units per repeat)."""
    passes = times.sum(axis=1)
    return {
        "best_s": float(times.min(axis=0).sum()),
        "median_s": float(np.median(times, axis=0).sum()),
        "pass_best_s": float(passes.min()),
        "pass_median_s": float(np.median(passes)),
        "repeats": int(times.shape[0]),
        "units": int(times.shape[1]),
        "pass_all_s": [round(float(t), 6) for t in passes],
    }


def stats(times: list[float]) -> dict:
    return {
        "best_s": min(times),
        "median_s": statistics.median(times),
        "repeats": len(times),
        "all_s": [round(t, 6) for t in times],
    }


# ----------------------------------------------------------------------------- memory
def proc_status_kib(field: str) -> int | None:
    """``VmRSS``, ``VmHWM``, ... of this process from /proc/self/status, in KiB (Linux only)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def reset_peak_rss() -> bool:
    """Reset this process's VmHWM to its current RSS (Linux >= 4.0: write 5 to clear_refs).
    Returns whether it worked."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        return False
    hwm, rss = proc_status_kib("VmHWM"), proc_status_kib("VmRSS")
    return hwm is not None and rss is not None and hwm <= rss + 4096


# ----------------------------------------------------------------------------- reporting
def environment() -> dict:
    import torch
    import torchvision

    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "torch_threads": torch.get_num_threads(),
        "numpy": np.__version__,
        "loadavg_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }


def write_json(name: str, data: dict) -> Path:
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    path = OUT_DIR / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=_jsonable))
    os.replace(tmp, path)
    return path


def _jsonable(obj):
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def verdict(value: float, target: float, *, higher_is_better: bool = True) -> str:
    ok = value >= target if higher_is_better else value <= target
    return "MEETS" if ok else "MISSES"


def command_line() -> str:
    return " ".join([Path(sys.executable).name, *sys.argv])


def unit_rows(emb: np.ndarray, reference: np.ndarray | None = None) -> np.ndarray:
    """``emb`` standardised with ``reference``'s column means and stds (default: its own),
    each row scaled to unit length: dot products are cosine similarities."""
    ref = emb if reference is None else reference
    z = (emb - ref.mean(0)) / (ref.std(0) + 1e-8)
    return z / (np.linalg.norm(z, axis=1, keepdims=True) + 1e-12)


def knn_accuracy(emb: np.ndarray, truth: np.ndarray, k: int = 5) -> float:
    """Leave-one-out k-NN accuracy (cosine on standardised features, majority vote; ties go to
    the lowest class index)."""
    z = unit_rows(emb)
    sim = z @ z.T
    np.fill_diagonal(sim, -np.inf)
    nn = np.argsort(-sim, axis=1)[:, :k]
    pred = np.array([np.bincount(v).argmax() for v in truth[nn]])
    return float((pred == truth).mean())


def knn_transfer_accuracy(
    train: np.ndarray, train_truth: np.ndarray, test: np.ndarray, test_truth: np.ndarray, k=5
) -> float:
    """k-NN accuracy on ``test`` of the classes of its ``k`` nearest ``train`` rows (cosine,
    both standardised with ``train``'s statistics; majority vote, ties to the lowest class)."""
    sim = unit_rows(test, train) @ unit_rows(train).T
    nn = np.argsort(-sim, axis=1)[:, :k]
    pred = np.array([np.bincount(v).argmax() for v in train_truth[nn]])
    return float((pred == test_truth).mean())
