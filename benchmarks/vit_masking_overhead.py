"""What does dual masking cost a Vision Transformer?  Masked vs unmasked ViTs, and ViTs vs
resnet18, on the same crops.

Measured in one run, on the crops and masks ``embed_segments`` itself cuts out of a synthetic
label image (random ellipses of 4-14 px semi-axis in 32 px cells, so neighbours are in the crop
and outside the mask), eval mode, ``torch.inference_mode``, untrained (random) weights:

- for each ViT (``vit_tiny_patch16_224``, ``vit_small_patch16_224``,
  ``vit_small_patch14_reg4_dinov2``): ``SegmentEncoder(name)`` masked (image + feature masking:
  the attention mask, zeroing after every block, in-segment pooling) and unmasked (both off:
  timm's own forward pass), at the ViT's default crop (112) and at crop 64;
- ``SegmentEncoder("resnet18")`` masked, at the same two crop sizes (channels_last, as the
  engine runs it on CPU).

Ratios are throughput ratios (crops/s over crops/s): masked / unmasked per ViT (goal >= 0.8),
and each masked ViT / masked resnet18 at the same crop.

Run: ``OMP_NUM_THREADS=1 python benchmarks/vit_masking_overhead.py`` (a few minutes on one
thread) or ``--quick``.  Figures go to ``benchmarks/out/vit_masking_overhead.json``.
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
    make_ellipse_labels,
    make_image,
    unit_stats,
    verdict,
    write_json,
)
from masking_overhead import build_crops

VITS = ("vit_tiny_patch16_224", "vit_small_patch16_224", "vit_small_patch14_reg4_dinov2")
CROPS = (112, 64)
TARGET = 0.8


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 32 crops, 1 repeat")
    parser.add_argument("--repeats", type=int, default=None, help="timed passes per variant")
    args = parser.parse_args(argv)

    from napari_segrep.catalogue import get_entry
    from napari_segrep.engine.encoder import SegmentEncoder

    if args.quick:
        grid, shape, batch, repeats = (4, 8), (128, 256), 32, 1
    else:
        grid, shape, batch, repeats = (8, 16), (256, 512), 32, 3
    repeats = args.repeats or repeats
    assert all(get_entry(name).default_crop == CROPS[0] for name in VITS)

    labels = make_ellipse_labels(shape, grid, radius=(4, 14), aspect=(0.4, 1.0), seed=1)
    image = make_image(labels, seed=1)
    crops = {}
    for crop in CROPS:
        batches, n = build_crops(image, labels, crop_size=crop, batch_size=batch, mask_image=True)
        crops[crop] = batches
    n_crops = n
    units = len(crops[CROPS[0]])
    fill = {c: float(np.mean([m.float().mean().item() for _, m in crops[c]])) for c in CROPS}

    encoders = {}
    for name in VITS:
        encoders[f"{name}_masked"] = SegmentEncoder(name, in_channels=1, seed=0).eval()
        encoders[f"{name}_unmasked"] = SegmentEncoder(
            name, in_channels=1, image_masking=False, feature_masking=False, seed=0
        ).eval()
    cl = torch.channels_last
    encoders["resnet18_masked"] = SegmentEncoder(in_channels=1, seed=0).eval().to(memory_format=cl)

    def variant(enc_name, crop):
        enc = encoders[enc_name]
        data = crops[crop]
        if enc_name.startswith("resnet"):
            data = [(x.contiguous(memory_format=cl), m) for x, m in data]
        return lambda i: enc(*data[i])

    variants = {f"{enc}_crop{crop}": variant(enc, crop) for enc in encoders for crop in CROPS}
    with torch.inference_mode():
        t0 = time.perf_counter()
        times = interleaved_unit_timings(variants, units=units, repeats=repeats, warmup=1)
        wall = time.perf_counter() - t0
    res = {name: unit_stats(t) for name, t in times.items()}
    for r in res.values():
        r["crops_per_s_best"] = n_crops / r["best_s"]
        r["crops_per_s_median"] = n_crops / r["median_s"]

    def ratio(a, b, key="best_s"):
        return res[b][key] / res[a][key]

    ratios = {}
    for name in VITS:
        for crop in CROPS:
            m, u = f"{name}_masked_crop{crop}", f"{name}_unmasked_crop{crop}"
            ratios[f"{name}_masked_over_unmasked_crop{crop}"] = ratio(m, u)
            ratios[f"{name}_masked_over_unmasked_crop{crop}_median"] = ratio(m, u, "median_s")
            ratios[f"{name}_masked_over_resnet18_masked_crop{crop}"] = ratio(
                m, f"resnet18_masked_crop{crop}"
            )
    out = {
        "benchmark": "vit_masking_overhead",
        "command": command_line(),
        "quick": args.quick,
        "environment": environment(),
        "setup": {
            "crops": list(CROPS),
            "batch_size": batch,
            "n_crops": n_crops,
            "n_batches": units,
            "image_shape": list(shape),
            "mean_mask_fill": fill,
            "weights": "random (untrained)",
            "timing": f"interleaved per batch, 1 warm-up + {repeats} repeat(s); best = sum "
            "over batches of each batch's fastest repeat; ratios from best (median given too)",
        },
        "results": res,
        "ratios": ratios,
        "targets": {"masked_over_unmasked_min": TARGET},
        "total_timing_wall_s": wall,
    }
    path = write_json("vit_masking_overhead", out)
    _print_report(out, path)
    return out


def _print_report(out, path) -> None:
    s, r, q, env = out["setup"], out["results"], out["ratios"], out["environment"]
    print(f"vit_masking_overhead  ({out['command']})")
    print(
        f"  torch {env['torch']}, {env['torch_threads']} threads, {env['cpu_count']} CPUs, "
        f"load avg {env['loadavg_1min']:.2f}"
    )
    fills = ", ".join(f"crop {c}: {100 * f:.0f}%" for c, f in s["mean_mask_fill"].items())
    print(f"  {s['n_crops']} crops in batches of {s['batch_size']}; masks fill {fills}")
    print(f"  {'variant':<52}{'best s':>9}{'crops/s':>10}")
    for name, v in r.items():
        print(f"  {name:<52}{v['best_s']:>9.3f}{v['crops_per_s_best']:>10.1f}")
    print("  ratios (throughput; goal masked / unmasked >= 0.8):")
    for name in VITS:
        for crop in CROPS:
            mu = q[f"{name}_masked_over_unmasked_crop{crop}"]
            med = q[f"{name}_masked_over_unmasked_crop{crop}_median"]
            rn = q[f"{name}_masked_over_resnet18_masked_crop{crop}"]
            print(
                f"    {name:<32} crop {crop:>3}: masked/unmasked {mu:.3f} (median {med:.3f}) "
                f"{verdict(mu, TARGET)}; masked ViT / masked resnet18 {rn:.3f}"
            )
    if out["quick"]:
        print("  QUICK smoke run: few crops, one repeat: figures are noisy")
    print(f"  figures: {path}")


if __name__ == "__main__":
    main()
