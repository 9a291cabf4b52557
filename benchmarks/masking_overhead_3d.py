"""What does dual masking cost in 3D?  resnet18_3d dual-masked vs the same network unmasked.

Measured in one run, on the same crops (crop 32 x 32 x 32, batch 16, eval mode,
``torch.inference_mode``, CPU):

(a) ``SegmentEncoder("resnet18_3d", in_channels=1)`` with image + feature masking (masked
    BatchNorm at every grid, masked pooling);
(b) the same encoder with both maskings off: the plain 3D ResNet-18 (convolutions, BatchNorm,
    global average pooling; ``tests/engine/test_resnet3d.py`` checks it equals the network
    composed by hand), the baseline of the ratio; same weights as (a);
(c) both in the two memory formats a 5D tensor can take: contiguous (NCDHW) and
    ``torch.channels_last_3d`` (NDHWC), to choose the one ``BatchEncoder`` uses for volumes.

The crops are realistic: a volume of random ellipsoids (semi-axes 3-7 voxels, one per 16-voxel
cell, random orientation) and a 32-voxel crop centred on each, so a crop holds its object plus
parts of its neighbours (outside the mask), and the masks fill the crop as 3D objects do.

Ratios are throughput ratios (crops/s over crops/s): masked / unmasked, target >= 0.8 (the
issue's goal; 2D measures 1.19x, see ``masking_overhead.py``); channels_last_3d / contiguous
(> 1: channels_last_3d faster).  On a shared machine a batch's time swings with other
processes' load (here the median was up to 5x the best); the verdicts use the sums of each
batch's fastest repeat (the uncontended cost, as ``masking_overhead.py``), with enough repeats
for the fastest to be reached; the median sums and a paired ratio (the median, over every batch
and repeat, of the two variants' time ratio on that unit: they ran back to back) are given too.

Run: ``python benchmarks/masking_overhead_3d.py`` (4 batches, 10 repeats, 1-4 min on 2 cores
depending on their load) or ``--quick`` (2 batches, 2 repeats; noisy).  Figures go to
``benchmarks/out/masking_overhead_3d.json`` (``masking_overhead_3d_quick.json`` for ``--quick``,
so a smoke run never replaces the figures of a full one).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from _common import (
    command_line,
    environment,
    interleaved_unit_timings,
    unit_stats,
    verdict,
    write_json,
)

CROP = 32
BATCH = 16
CELL = 16
TARGET = 0.8


def make_ellipsoid_labels(grid: tuple[int, int, int], *, seed: int = 0) -> np.ndarray:
    """An int32 (D, H, W) label volume with one random ellipsoid per ``CELL``-voxel cell of
    ``grid``: semi-axes 3-7 voxels (clipped to the cell), random orientation; labels
    ``1 .. prod(grid)`` in cell order.  Neighbours can touch across cell borders."""
    rng = np.random.default_rng(seed)
    labels = np.zeros(tuple(g * CELL for g in grid), np.int32)
    c = np.arange(CELL) - (CELL - 1) / 2
    zz, yy, xx = np.meshgrid(c, c, c, indexing="ij")
    points = np.stack([zz, yy, xx], -1)  # (C, C, C, 3)
    label = 0
    for cz in range(grid[0]):
        for cy in range(grid[1]):
            for cx in range(grid[2]):
                label += 1
                axes = rng.uniform(3.0, 7.0, 3)
                rot, _ = np.linalg.qr(rng.normal(size=(3, 3)))
                shift = rng.uniform(-1.5, 1.5, 3)
                local = (points - shift) @ rot
                inside = ((local / axes) ** 2).sum(-1) <= 1.0
                inside[CELL // 2, CELL // 2, CELL // 2] = True  # never empty
                cell = labels[
                    cz * CELL : (cz + 1) * CELL,
                    cy * CELL : (cy + 1) * CELL,
                    cx * CELL : (cx + 1) * CELL,
                ]
                cell[inside] = label
    return labels


def make_crops(labels: np.ndarray, *, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A textured image of ``labels`` (per-object brightness, noise), and a ``CROP``-voxel crop
    centred on every object's centroid: ``[(images (B, 1, S, S, S) float32, masks (B, 1, S,
    S, S) bool)]`` in batches of ``BATCH``, images scaled to 0-1 as the engine does."""
    rng = np.random.default_rng(seed)
    n = int(labels.max())
    brightness = rng.uniform(0.3, 1.0, n + 1)
    brightness[0] = 0.05
    image = brightness[labels] + rng.normal(0, 0.08, labels.shape)
    image = np.clip(image, 0, None).astype(np.float32)
    image /= np.percentile(image, 99.8)
    half = CROP // 2
    pad = [(half, half)] * 3
    image_p, labels_p = np.pad(image, pad), np.pad(labels, pad)
    images, masks = [], []
    for lab in range(1, n + 1):
        centre = np.round(np.argwhere(labels == lab).mean(0)).astype(int) + half
        sl = tuple(slice(c - half, c + half) for c in centre)
        images.append(image_p[sl])
        masks.append(labels_p[sl] == lab)
    batches = []
    for s in range(0, n, BATCH):
        x = torch.from_numpy(np.stack(images[s : s + BATCH])[:, None])
        m = torch.from_numpy(np.stack(masks[s : s + BATCH])[:, None])
        batches.append((x, m))
    return batches


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 batches, 2 repeats")
    parser.add_argument("--batches", type=int, default=None, help="batches of 16 crops (4)")
    parser.add_argument("--repeats", type=int, default=None, help="timed passes per variant (10)")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads (default: torch's); 1 is steadiest on a shared machine",
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from napari_segrep.engine.encoder import SegmentEncoder

    n_batches, repeats = (2, 2) if args.quick else (4, 10)
    n_batches = args.batches or n_batches
    repeats = args.repeats or repeats
    # a grid of 2 x 4 x (2 per batch) cells: exactly n_batches full batches of 16
    labels = make_ellipsoid_labels((2, 4, 2 * n_batches), seed=1)
    batches = make_crops(labels, seed=1)
    assert len(batches) == n_batches and all(len(x) == BATCH for x, _ in batches)
    n_crops = n_batches * BATCH
    fill = float(np.mean([m.float().mean().item() for _, m in batches]))
    context = float(np.mean([((x > 0.2) & ~m).float().mean().item() for x, m in batches]))

    cl3 = torch.channels_last_3d
    masked = SegmentEncoder("resnet18_3d", in_channels=1, seed=0).eval()
    plain = SegmentEncoder(
        "resnet18_3d", in_channels=1, image_masking=False, feature_masking=False, seed=0
    ).eval()
    masked_cl = SegmentEncoder("resnet18_3d", in_channels=1, seed=0).eval().to(memory_format=cl3)
    plain_cl = SegmentEncoder(
        "resnet18_3d", in_channels=1, image_masking=False, feature_masking=False, seed=0
    )
    plain_cl.eval().to(memory_format=cl3)
    crops = [(x.contiguous(), m) for x, m in batches]
    crops_cl = [(x.contiguous(memory_format=cl3), m) for x, m in batches]

    variants = {
        "masked_contiguous": lambda i: masked(*crops[i]),
        "unmasked_contiguous": lambda i: plain(crops[i][0]),
        "masked_channels_last_3d": lambda i: masked_cl(*crops_cl[i]),
        "unmasked_channels_last_3d": lambda i: plain_cl(crops_cl[i][0]),
    }

    with torch.inference_mode():
        # Sanity: the two memory formats compute the same embeddings; the mask matters.
        z, z_cl = masked(*crops[0]), masked_cl(*crops_cl[0])
        diff_formats = float((z - z_cl).abs().max() / z.abs().max())
        diff_plain_masked = float((z - plain(crops[0][0])).abs().max() / z.abs().max())
        t_start = time.perf_counter()
        unit_times = interleaved_unit_timings(
            variants, units=len(batches), repeats=repeats, warmup=1
        )
        wall = time.perf_counter() - t_start

    res = {name: unit_stats(t) for name, t in unit_times.items()}
    for r in res.values():
        r["crops_per_s_best"] = n_crops / r["best_s"]
        r["crops_per_s_median"] = n_crops / r["median_s"]

    def ratio(a, b, key):
        """Throughput of ``a`` over ``b`` (= time of b / time of a) from the sums of best
        (``"best_s"``, the verdicts') or median (``"median_s"``) times, or ``"paired"``: the
        median over every (repeat, batch) unit of b's time over a's on that unit."""
        if key == "paired":
            return float(np.median(unit_times[b] / unit_times[a]))
        return res[b][key] / res[a][key]

    pairs = {
        "masked_over_unmasked_contiguous": ("masked_contiguous", "unmasked_contiguous"),
        "masked_over_unmasked_channels_last_3d": (
            "masked_channels_last_3d",
            "unmasked_channels_last_3d",
        ),
        "masked_channels_last_3d_over_contiguous": ("masked_channels_last_3d", "masked_contiguous"),
        "unmasked_channels_last_3d_over_contiguous": (
            "unmasked_channels_last_3d",
            "unmasked_contiguous",
        ),
    }
    ratios = {
        name: {key: ratio(a, b, key) for key in ("paired", "best_s", "median_s")}
        for name, (a, b) in pairs.items()
    }
    gain = ratios["masked_channels_last_3d_over_contiguous"]["best_s"]
    if abs(gain - 1) < 0.03:
        fastest = "neither (within 3%: keep contiguous)"
    else:
        fastest = "channels_last_3d" if gain > 1 else "contiguous"
    out = {
        "benchmark": "masking_overhead_3d",
        "command": command_line(),
        "quick": args.quick,
        "environment": environment(),
        "setup": {
            "backbone": "resnet18_3d",
            "crop_size": CROP,
            "batch_size": BATCH,
            "n_crops": n_crops,
            "n_batches": n_batches,
            "volume_shape": list(labels.shape),
            "mean_mask_fill": fill,
            "mean_context_fill": context,
            "timing": f"interleaved per batch (every variant runs batch i, rotating order, "
            f"then batch i+1 ...), 1 warm-up + {repeats} repeats; best = sum over batches of each "
            "batch's fastest repeat, median = sum of per-batch medians; ratios from best (verdicts), "
            "from median, and paired (median over units of the per-unit time ratio)",
        },
        "checks": {
            "relative_max_diff_channels_last_3d_vs_contiguous": diff_formats,
            "relative_max_diff_masked_vs_unmasked": diff_plain_masked,
        },
        "results": res,
        "ratios": ratios,
        "faster_memory_format_for_the_masked_encoder": fastest,
        "targets": {"masked_over_unmasked_min": TARGET},
        "total_timing_wall_s": wall,
    }
    path = write_json("masking_overhead_3d_quick" if args.quick else "masking_overhead_3d", out)
    _print_report(out, path)
    return out


def _print_report(out, path) -> None:
    s, r, q, c = out["setup"], out["results"], out["ratios"], out["checks"]
    env = out["environment"]
    print(f"masking_overhead_3d  ({out['command']})")
    print(
        f"  torch {env['torch']}, {env['torch_threads']} threads, {env['cpu_count']} CPUs, "
        f"load avg {env['loadavg_1min']:.2f}"
    )
    print(
        f"  {s['backbone']}: {s['n_crops']} crops of {s['crop_size']}^3 voxels in "
        f"{s['n_batches']} batches of {s['batch_size']}; masks fill "
        f"{100 * s['mean_mask_fill']:.1f}% of the crop, neighbours "
        f"{100 * s['mean_context_fill']:.1f}%"
    )
    print(f"  timing: {s['timing']}")
    print(f"  {'variant':<32}{'best s':>9}{'median s':>10}{'crops/s':>10}")
    for name, v in r.items():
        print(
            f"  {name:<32}{v['best_s']:>9.3f}{v['median_s']:>10.3f}{v['crops_per_s_best']:>10.1f}"
        )
    print(
        f"  checks: channels_last_3d vs contiguous, relative max |diff| = "
        f"{c['relative_max_diff_channels_last_3d_vs_contiguous']:.1e}; masked vs unmasked "
        f"differ by {c['relative_max_diff_masked_vs_unmasked']:.2f} (the mask matters)"
    )
    print("  ratios (throughput, >1 = first is faster): from best (from median; paired)")

    def line(label, name, target=None):
        v = q[name]
        text = f"    {label:<40}= {v['best_s']:.3f} ({v['median_s']:.3f}; {v['paired']:.3f})"
        if target is not None:
            text += f"  target >= {target}: {verdict(v['best_s'], target)}"
        print(text)

    line("masked / unmasked, contiguous", "masked_over_unmasked_contiguous", TARGET)
    line("masked / unmasked, channels_last_3d", "masked_over_unmasked_channels_last_3d", TARGET)
    line("channels_last_3d / contiguous, masked", "masked_channels_last_3d_over_contiguous")
    line("channels_last_3d / contiguous, unmasked", "unmasked_channels_last_3d_over_contiguous")
    fastest = out["faster_memory_format_for_the_masked_encoder"]
    print(f"  faster memory format for the masked encoder: {fastest}")
    if out["quick"]:
        print("  QUICK smoke run: few batches, figures are noisier")
    print(f"  figures: {path}")


if __name__ == "__main__":
    main()
