"""3D measurements (``measure_segments(..., axes="zyx", spacing=...)``): does the spacing make a
z-subsampled object measure like the isotropic one, and how fast are they?

1. **Spacing.**  Balls of radius 4, 6, 8 and 12 voxels (y and x units), each at ``--draws``
   random sub-voxel centres, imaged isotropic (every plane, spacing (1, 1, 1)) and
   z-subsampled (every 2nd or 4th plane).  The subsampled ball is measured with its true spacing
   ``(f, 1, 1)`` and without it (unit voxels, what a tool that ignores spacing sees).  Reported:
   the mean absolute relative difference to the isotropic ball's ``volume``, ``surface_area``,
   ``equivalent_diameter``, ``axis_major_length`` and ``axis_minor_length``; and the isotropic
   ball's volume and surface area against 4/3 pi r^3 and 4 pi r^2 (marching cubes of a voxel
   mask overestimates a smooth surface).
2. **Speed.**  A ``(48, 512, 512)`` uint16 volume holding one random ellipsoid nucleus per cell
   of a 6 x 16 x 16 grid (1,536 objects, semi-axes 2-4 voxels in z, 5-12 in y and x), spacing
   (2, 0.5, 0.5): ``measure_segments`` (best and median of ``--repeats``) vs, in the same run,
   scikit-image alone: ``regionprops_table(labels, image, spacing=...)`` with the same
   properties (area, centroid, bbox, axis lengths, solidity, extent, equivalent diameter,
   intensity mean and std) plus a marching-cubes surface area per object (which regionprops
   does not have).  Objects per second (wall and CPU time: this process's CPU seconds, steadier
   on a shared machine) and the ratio.

    python benchmarks/measure3d.py             # ~1 min on 2 idle cores
    python benchmarks/measure3d.py --quick     # smoke run (~10 s)

Writes ``benchmarks/out/measure3d.json``.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
import warnings

import numpy as np
from _common import write_json

from napari_segrep.analysis.measure import measure_segments

COMPARED = (
    "volume",
    "surface_area",
    "equivalent_diameter",
    "axis_major_length",
    "axis_minor_length",
)


def ball(radius: float, centre: np.ndarray, step: int, n: int) -> np.ndarray:
    """A ball of ``radius`` at ``centre`` in an ``n``-wide cube, sampled every ``step`` planes
    in z (plane k at z = k * step)."""
    z = np.arange(0, n, step)[:, None, None]
    y, x = np.arange(n)[None, :, None], np.arange(n)[None, None, :]
    inside = (z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2 <= radius**2
    return inside.astype(np.int32)


def spacing_part(radii, steps, draws: int) -> dict:
    rng = np.random.default_rng(0)
    out: dict = {}
    for radius in radii:
        n = int(2 * radius + 8)
        rows: dict = {f"x{s}": {"given": [], "ignored": []} for s in steps}
        truth = {"volume": [], "surface_area": []}
        for _ in range(draws):
            centre = (n - 1) / 2 + rng.uniform(-0.5, 0.5, 3)
            iso = ball(radius, centre, 1, n)
            ref = measure_segments(np.ones(iso.shape), iso, axes="zyx").iloc[0]
            truth["volume"].append(ref["volume"] / (4 / 3 * np.pi * radius**3) - 1)
            truth["surface_area"].append(ref["surface_area"] / (4 * np.pi * radius**2) - 1)
            for s in steps:
                sub = ball(radius, centre, s, n)
                for how, spacing in (("given", (s, 1, 1)), ("ignored", None)):
                    got = measure_segments(np.ones(sub.shape), sub, axes="zyx", spacing=spacing)
                    row = got.iloc[0]
                    rows[f"x{s}"][how].append([abs(row[c] / ref[c] - 1) for c in COMPARED])
        out[f"r{radius}"] = {
            "vs_isotropic": {
                step: {
                    how: dict(zip(COMPARED, np.mean(errors, axis=0).round(4), strict=True))
                    for how, errors in by.items()
                }
                for step, by in rows.items()
            },
            "isotropic_vs_smooth_ball": {k: round(float(np.mean(v)), 4) for k, v in truth.items()},
        }
    return out


def nuclei(shape=(48, 512, 512), grid=(6, 16, 16), seed=0):
    """uint16 image and int32 labels: one random ellipsoid per grid cell."""
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, np.int32)
    cell = [s // g for s, g in zip(shape, grid, strict=True)]
    zz, yy, xx = np.indices(cell)
    k = 0
    for i in range(grid[0]):
        for j in range(grid[1]):
            for m in range(grid[2]):
                k += 1
                semi = np.array([rng.uniform(2, min(4, cell[0] / 2 - 1)), *rng.uniform(5, 12, 2)])
                centre = (np.array(cell) - 1) / 2
                inside = sum(
                    ((a - c) / s) ** 2 for a, c, s in zip((zz, yy, xx), centre, semi, strict=True)
                )
                window = labels[
                    i * cell[0] : (i + 1) * cell[0],
                    j * cell[1] : (j + 1) * cell[1],
                    m * cell[2] : (m + 1) * cell[2],
                ]
                window[inside <= 1] = k
    noise = rng.normal(1000, 100, shape)
    image = np.clip(noise + 2000 * (labels > 0), 0, 65535).astype(np.uint16)
    return image, labels


def skimage_alone(image, labels, spacing):
    from scipy import ndimage
    from skimage.measure import marching_cubes, mesh_surface_area, regionprops_table

    props = (
        "label",
        "area",
        "centroid",
        "bbox",
        "axis_major_length",
        "axis_minor_length",
        "solidity",
        "extent",
        "equivalent_diameter_area",
        "intensity_mean",
        "intensity_std",
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = regionprops_table(labels, image, properties=props, spacing=spacing)
    areas = []
    for ident, window in enumerate(ndimage.find_objects(labels), start=1):
        if window is None:
            continue
        padded = np.pad(labels[window] == ident, 1).astype(np.float32)
        verts, faces, _, _ = marching_cubes(padded, 0.5, spacing=spacing)
        areas.append(mesh_surface_area(verts, faces))
    return table, areas


def speed_part(repeats: int, quick: bool) -> dict:
    shape, grid = ((24, 256, 256), (3, 8, 8)) if quick else ((48, 512, 512), (6, 16, 16))
    image, labels = nuclei(shape, grid)
    spacing = (2.0, 0.5, 0.5)
    n = int(labels.max())
    ours, theirs, ours_cpu, theirs_cpu = [], [], [], []
    measure_segments(image, labels, axes="zyx", spacing=spacing)  # warm-up (imports)
    skimage_alone(image, labels, spacing)
    for _ in range(repeats):  # interleaved
        t, c = time.perf_counter(), time.process_time()
        table = measure_segments(image, labels, axes="zyx", spacing=spacing)
        ours.append(time.perf_counter() - t)
        ours_cpu.append(time.process_time() - c)
        t, c = time.perf_counter(), time.process_time()
        skimage_alone(image, labels, spacing)
        theirs.append(time.perf_counter() - t)
        theirs_cpu.append(time.process_time() - c)
    assert len(table) == n and np.isfinite(table.drop(columns="label").to_numpy(float)).all()
    return {
        "shape": list(shape),
        "objects": n,
        "spacing": list(spacing),
        "measure_segments_s": {"best": min(ours), "median": float(np.median(ours))},
        "skimage_alone_s": {"best": min(theirs), "median": float(np.median(theirs))},
        "measure_segments_cpu_s": min(ours_cpu),
        "skimage_alone_cpu_s": min(theirs_cpu),
        "objects_per_s": round(n / min(ours), 1),
        "objects_per_cpu_s": round(n / min(ours_cpu), 1),
        "speedup_vs_skimage": round(min(theirs) / min(ours), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    radii = (4, 8) if args.quick else (4, 6, 8, 12)
    draws = 2 if args.quick else args.draws
    repeats = 1 if args.quick else args.repeats
    result = {
        "spacing": spacing_part(radii, (2, 4), draws),
        "speed": speed_part(repeats, args.quick),
        "environment": {
            "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
            "loadavg_1min": os.getloadavg()[0],
        },
    }
    print("Spacing: mean |relative difference| to the isotropic ball (given -> ignored)")
    for radius, part in result["spacing"].items():
        for step, by in part["vs_isotropic"].items():
            cells = ", ".join(
                f"{c} {by['given'][c]:.3f} -> {by['ignored'][c]:.3f}" for c in COMPARED
            )
            print(f"  {radius} z{step}: {cells}")
        smooth = part["isotropic_vs_smooth_ball"]
        print(
            f"  {radius} isotropic vs a smooth ball: volume {smooth['volume']:+.3f}, "
            f"surface {smooth['surface_area']:+.3f}"
        )
    speed = result["speed"]
    print(
        f"Speed: {speed['objects']} objects in {tuple(speed['shape'])}: measure_segments "
        f"{speed['measure_segments_s']['best']:.2f} s ({speed['objects_per_s']} objects/s; CPU "
        f"{speed['measure_segments_cpu_s']:.2f} s, {speed['objects_per_cpu_s']} objects per CPU "
        f"s), scikit-image alone {speed['skimage_alone_s']['best']:.2f} s (CPU "
        f"{speed['skimage_alone_cpu_s']:.2f} s): {speed['speedup_vs_skimage']}x; load "
        f"{result['environment']['loadavg_1min']:.1f} on {result['environment']['cpu_count']} "
        "cores"
    )
    print(f"-> {write_json('measure3d', result)}")


if __name__ == "__main__":
    main()
