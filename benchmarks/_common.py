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
    (500-3000) with a random linear gradient, plus Gaussian noise (sigma 60).  ``dtype`` uint16
    or float32.  Built in row chunks to keep temporaries small."""
    rng = np.random.default_rng(seed)
    n = int(labels.max())
    level = np.concatenate([[200.0], rng.uniform(500.0, 3000.0, n)]).astype(np.float32)
    grad = np.concatenate([[0.0], rng.uniform(-15.0, 15.0, n)]).astype(np.float32)
    out = np.empty(labels.shape, dtype)
    h, w = labels.shape
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


def knn_accuracy(emb: np.ndarray, truth: np.ndarray, k: int = 5) -> float:
    """Leave-one-out k-NN accuracy (cosine on standardised features, majority vote; ties go to
    the lowest class index)."""
    z = (emb - emb.mean(0)) / (emb.std(0) + 1e-8)
    z /= np.linalg.norm(z, axis=1, keepdims=True) + 1e-12
    sim = z @ z.T
    np.fill_diagonal(sim, -np.inf)
    nn = np.argsort(-sim, axis=1)[:, :k]
    pred = np.array([np.bincount(v).argmax() for v in truth[nn]])
    return float((pred == truth).mean())
