"""What does cutting a volume's crops cost, and does the spacing give the same crops?

One run, on generated nuclei (random ellipsoids on a grid, never touching, in a float volume):

(a) **2D baseline**: the 2D crops (crop 64) of every nucleus's middle plane, as ``embed_segments``
    cuts them (the engine's 2D path, unchanged);
(b) **exact 3D windows**: the isotropic volume (no spacing), crop 32: each nucleus that fits is
    its raw 32^3 window, no resampling;
(c) **resampled**: the same nuclei with 4x fewer planes (every 4th plane of the isotropic
    volume) and ``spacing=(4, 1, 1)``: each window resampled to isotropic voxels (linear in z);
    also its masks' overlap (IoU) with (b)'s, nucleus by nucleus, and without the spacing
    (the z-subsampled volume taken as isotropic: squashed 4x);
(d) **downscaled**: the isotropic volume at crop 12, so that most nuclei are larger than the
    crop and are area-averaged into it.

Crops/s are for ``iter_crop_batches`` alone (segment table and normalisation made before the
clock starts), ``normalize="image"``, batch 64, best of ``--repeats`` runs each, interleaved.

Run: ``python benchmarks/volume_crops.py`` (about 10 s on 2 cores) or ``--quick``.
Figures go to ``benchmarks/out/volume_crops.json``.  Latest (2 shared cores, load ~5): 2D
mid-planes 24,902 crops/s; exact 3D windows 6,193/s (0.25x); resampled 1,393/s (0.06x, 0.7 ms
a crop); downscaled 2,923/s (0.12x); mask IoU with the isotropic crops, median 0.78 with the
spacing vs 0.25 without.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from _common import command_line, environment, write_json


def make_nuclei(shape, grid, *, radius=(4.0, 9.0), seed=0):
    """``(image, labels)``: one random axis-aligned ellipsoid per cell of ``grid`` (z, y, x
    cells), semi-axes in ``radius``, a textured float32 image (brighter inside)."""
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, np.int32)
    cell = [s // g for s, g in zip(shape, grid, strict=True)]
    label = 0
    for cz in range(grid[0]):
        for cy in range(grid[1]):
            for cx in range(grid[2]):
                radii = rng.uniform(*radius, 3)
                radii = np.minimum(radii, np.array(cell) / 2 - 1)
                centre = [(c + 0.5) * n for c, n in zip((cz, cy, cx), cell, strict=True)]
                lo = [max(int(c - r) - 1, 0) for c, r in zip(centre, radii, strict=True)]
                hi = [int(c + r) + 2 for c, r in zip(centre, radii, strict=True)]
                zz, yy, xx = np.ogrid[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))]
                inside = (
                    ((zz + 0.5 - centre[0]) / radii[0]) ** 2
                    + ((yy + 0.5 - centre[1]) / radii[1]) ** 2
                    + ((xx + 0.5 - centre[2]) / radii[2]) ** 2
                ) <= 1
                label += 1
                labels[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))][inside] = label
    image = (rng.random(shape) * 0.3 + (labels > 0) * 0.7).astype(np.float32)
    return image, labels


def prepare(image, labels, *, axes, spacing=None, crop_size):
    from napari_segrep._images import layout_of
    from napari_segrep.engine.pipeline import prepare_segments

    layout = layout_of(labels, axes=axes, spacing=spacing)
    return prepare_segments(image, labels, layout=layout, crop_size=crop_size, batch_size=64)


def all_crops(prepared):
    images, masks = [], []
    for batch in prepared.batches():
        images.append(batch.images)
        masks.append(batch.masks)
    return np.concatenate(images), np.concatenate(masks)[:, 0]


def mid_planes(image, labels):
    """The 2D baseline's input: every nucleus's middle plane, as one label image per plane
    holding just the nuclei centred there (so each nucleus is one 2D segment)."""
    from napari_segrep._images import layout_of
    from napari_segrep.engine.segments import segment_table

    table = segment_table(labels, layout=layout_of(labels, axes="zyx"))
    mid = np.round(table.geometry["centroid_z"].to_numpy()).astype(int)
    planes = []
    for z in np.unique(mid):
        ids = table.geometry["label"].to_numpy()[mid == z]
        planes.append((image[z], np.where(np.isin(labels[z], ids), labels[z], 0)))
    return planes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smaller volume, one repeat")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.quick:
        shape, grid, repeats = (48, 96, 96), (2, 4, 4), 1
    else:
        shape, grid, repeats = (96, 192, 192), (4, 8, 8), args.repeats

    image, labels = make_nuclei(shape, grid)
    sub_image, sub_labels = image[1::4], labels[1::4]  # plane centres at 1.5, 5.5, ...: 4x fewer
    cases = {
        "2d mid-planes, crop 64": [
            prepare(im, lab, axes="yx", crop_size=64) for im, lab in mid_planes(image, labels)
        ],
        "3d exact windows, crop 32": [prepare(image, labels, axes="zyx", crop_size=32)],
        "3d resampled (spacing 4,1,1), crop 32": [
            prepare(sub_image, sub_labels, axes="zyx", spacing=(4, 1, 1), crop_size=32)
        ],
        "3d downscaled, crop 12": [prepare(image, labels, axes="zyx", crop_size=12)],
    }
    best = {name: np.inf for name in cases}
    for _ in range(repeats):
        for name, prepared in cases.items():
            t0 = time.perf_counter()
            for p in prepared:
                for _batch in p.batches():
                    pass
            best[name] = min(best[name], time.perf_counter() - t0)
    counts = {name: sum(len(p) for p in prepared) for name, prepared in cases.items()}
    base = counts["2d mid-planes, crop 64"] / best["2d mid-planes, crop 64"]

    # the same nuclei's masks: z-subsampled with the spacing, and without it, vs isotropic
    iso = cases["3d exact windows, crop 32"][0]
    _, iso_masks = all_crops(iso)
    _, spaced = all_crops(cases["3d resampled (spacing 4,1,1), crop 32"][0])
    _, squashed = all_crops(prepare(sub_image, sub_labels, axes="zyx", crop_size=32))
    iso_ids = iso.table.geometry["label"].to_numpy()
    sub_ids = cases["3d resampled (spacing 4,1,1), crop 32"][0].table.geometry["label"].to_numpy()
    rows = np.searchsorted(iso_ids, sub_ids)

    def iou(a, b):
        return float((a & b).sum() / max((a | b).sum(), 1))

    iou_spaced = [iou(iso_masks[r], m) for r, m in zip(rows, spaced, strict=True)]
    iou_squashed = [iou(iso_masks[r], m) for r, m in zip(rows, squashed, strict=True)]

    print(f"volume {shape}, {len(iso_ids)} nuclei; best of {repeats}")
    print(f"{'crops':42s} {'n':>5s} {'crops/s':>9s} {'vs 2D':>7s}")
    results = {}
    for name in cases:
        rate = counts[name] / best[name]
        results[name] = {"n": counts[name], "seconds": best[name], "crops_per_s": rate}
        print(f"{name:42s} {counts[name]:5d} {rate:9.0f} {rate / base:6.2f}x")
    print(
        f"mask IoU with the isotropic crops, {len(sub_ids)} nuclei: with the spacing median "
        f"{np.median(iou_spaced):.3f} (min {min(iou_spaced):.3f}); without it median "
        f"{np.median(iou_squashed):.3f}"
    )
    path = write_json(
        "volume_crops",
        {
            "command": command_line(),
            "environment": environment(),
            "shape": shape,
            "nuclei": len(iso_ids),
            "results": results,
            "iou_with_spacing": {"median": float(np.median(iou_spaced)), "min": min(iou_spaced)},
            "iou_without_spacing": {"median": float(np.median(iou_squashed))},
        },
    )
    print(f"figures: {path}")


if __name__ == "__main__":
    main()
