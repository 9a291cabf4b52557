"""What does dual masking cost?  Masked SegmentEncoder vs the plain torchvision ResNet-18.

Measured in one run, on the same crops (crop 64, batch 128, eval mode, ``torch.inference_mode``):

(a) ``SegmentEncoder(in_channels=1)`` with image + feature masking, channels_last, on realistic
    masks: the crops and masks of random ellipses that ``embed_segments`` itself cuts out of a
    synthetic label image (so neighbours are in the crop and outside the mask);
(b) the plain backbone, twice: a genuine ``torchvision.models.resnet18()`` with a 1-channel
    conv1 and ``fc = Identity`` (the baseline of every ratio), and the SegmentEncoder with both
    maskings off (given the same weights, its output is checked to equal (b)'s);
(c) the full ``embed_segments`` (segment table, normalisation, crop extraction, forward, table)
    on the label image holding exactly those segments.

Ratios are throughput ratios (crops/s over crops/s): masked / plain, target >= 0.8 (aim 0.9),
for the encoder alone and end-to-end.  Also channels_last vs contiguous (NCHW) for the masked
encoder (and for the plain one, as a reference): the engine uses channels_last on the claim that
it is faster on CPU; a ratio > 1 supports the claim.

Run: ``python benchmarks/masking_overhead.py`` (about 1-2 min on 2 cores) or ``--quick``.
Figures go to ``benchmarks/out/masking_overhead.json``.
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
    plain_resnet18,
    stats,
    unit_stats,
    verdict,
    write_json,
)

CROP = 64
BATCH = 128
TARGET = 0.8
AIM = 0.9


def build_crops(image, labels, *, crop_size, batch_size, mask_image):
    """The engine's own crops and masks, as lists of (images, masks) tensors per batch."""
    from napari_segrep.engine.segments import (
        as_channels_first,
        iter_crop_batches,
        resolve_normalization,
        segment_table,
    )

    image_cf = as_channels_first(image, channel_axis=None)
    table = segment_table(labels)
    norm = resolve_normalization(image_cf, "image")
    batches = []
    for b in iter_crop_batches(
        image_cf,
        table,
        crop_size=crop_size,
        batch_size=batch_size,
        norm=norm,
        mask_image=mask_image,
    ):
        batches.append((torch.from_numpy(b.images), torch.from_numpy(b.masks)))
    return batches, len(table)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 64 crops, 2 repeats")
    parser.add_argument("--repeats", type=int, default=None, help="timed passes per variant")
    args = parser.parse_args(argv)

    import napari_segrep as sr
    from napari_segrep.engine.encoder import SegmentEncoder

    if args.quick:
        grid, shape, strip_rows, repeats = (8, 8), (256, 256), 8, 2
    else:
        grid, shape, strip_rows, repeats = (32, 32), (1024, 1024), 4, 5
    repeats = args.repeats or repeats

    # Realistic masks: ellipses of 4-14 px semi-axis in 32 px cells, so a 64 px crop holds
    # its segment plus parts of ~8 neighbours (outside the mask).  The image is cut into
    # horizontal strips of BATCH segments (4 rows of 32 cells): one strip = one batch = one
    # timing unit, for every variant, the end-to-end embed_segments call included.
    labels = make_ellipse_labels(shape, grid, radius=(4, 14), aspect=(0.4, 1.0), seed=1)
    image = make_image(labels, seed=1)
    cell_h = shape[0] // grid[0]
    strips = []
    for y0 in range(0, grid[0] * cell_h, strip_rows * cell_h):
        sl = slice(y0, y0 + strip_rows * cell_h)
        strips.append((image[sl], labels[sl]))
    batches = []
    for img_s, lab_s in strips:
        b, n = build_crops(img_s, lab_s, crop_size=CROP, batch_size=BATCH, mask_image=True)
        assert len(b) == 1 and n == strip_rows * grid[1], (len(b), n)
        batches.append(b[0])
    n_crops = sum(len(x) for x, _ in batches)
    assert n_crops == grid[0] * grid[1]
    fill = float(np.mean([m.float().mean().item() for _, m in batches]))

    cl = torch.channels_last
    masked = SegmentEncoder(in_channels=1, seed=0).eval()  # contiguous weights
    masked_cl = SegmentEncoder(in_channels=1, seed=0).eval().to(memory_format=cl)
    off = SegmentEncoder(in_channels=1, image_masking=False, feature_masking=False, seed=0)
    off.eval().to(memory_format=cl)
    plain = plain_resnet18(1, seed=0).eval()
    plain.load_state_dict(off.backbone.state_dict())  # same weights: outputs must be equal
    plain_cl = plain_resnet18(1, seed=0).eval()
    plain_cl.load_state_dict(off.backbone.state_dict())
    plain_cl.to(memory_format=cl)

    imgs_cl = [(x.contiguous(memory_format=cl), m) for x, m in batches]
    imgs_nchw = [(x.contiguous(), m) for x, m in batches]

    def embed(img, lab):
        return sr.embed_segments(
            img, lab, encoder=masked_cl, crop_size=CROP, batch_size=BATCH, device="cpu"
        )

    variants = {
        "masked_channels_last": lambda i: masked_cl(*imgs_cl[i]),
        "plain_torchvision_channels_last": lambda i: plain_cl(imgs_cl[i][0]),
        "masking_off_channels_last": lambda i: off(imgs_cl[i][0]),
        "masked_contiguous": lambda i: masked(*imgs_nchw[i]),
        "plain_torchvision_contiguous": lambda i: plain(imgs_nchw[i][0]),
        "embed_segments_end_to_end": lambda i: embed(*strips[i]),
    }

    with torch.inference_mode():
        # Sanity: masking off == torchvision, and embed_segments == the encoder on our crops.
        x0 = imgs_cl[0][0]
        diff_off_plain = (off(x0) - plain_cl(x0)).abs().max().item()
        emb = embed(*strips[0]).filter(like="emb_").to_numpy()
        diff_embed_enc = float(np.abs(emb - masked_cl(*imgs_cl[0]).numpy()).max())

        t_start = time.perf_counter()
        unit_times = interleaved_unit_timings(
            variants, units=len(batches), repeats=repeats, warmup=1
        )
        wall = time.perf_counter() - t_start
        # Info only (not interleaved): one embed_segments call on the whole image.
        whole_times = []
        for _ in range(2):
            t0 = time.perf_counter()
            embed(image, labels)
            whole_times.append(time.perf_counter() - t0)

    res = {name: unit_stats(t) for name, t in unit_times.items()}
    res["embed_segments_whole_image_single_call"] = stats(whole_times)
    for r in res.values():
        r["crops_per_s_best"] = n_crops / r["best_s"]
        r["crops_per_s_median"] = n_crops / r["median_s"]

    def ratio(a, b, key="best_s"):
        # throughput ratio a/b == time ratio b/a
        return res[b][key] / res[a][key]

    base = "plain_torchvision_channels_last"
    ratios = {
        "encoder_masked_over_plain": ratio("masked_channels_last", base),
        "encoder_masked_over_plain_median": ratio("masked_channels_last", base, "median_s"),
        "encoder_masked_over_masking_off": ratio(
            "masked_channels_last", "masking_off_channels_last"
        ),
        "masking_off_over_plain": ratio("masking_off_channels_last", base),
        "end_to_end_over_plain": ratio("embed_segments_end_to_end", base),
        "end_to_end_over_plain_median": ratio("embed_segments_end_to_end", base, "median_s"),
        "end_to_end_over_masked_encoder": ratio(
            "embed_segments_end_to_end", "masked_channels_last"
        ),
        "masked_channels_last_over_contiguous": ratio("masked_channels_last", "masked_contiguous"),
        "masked_channels_last_over_contiguous_median": ratio(
            "masked_channels_last", "masked_contiguous", "median_s"
        ),
        "plain_channels_last_over_contiguous": ratio(base, "plain_torchvision_contiguous"),
        "whole_image_single_call_over_plain_not_interleaved": ratio(
            "embed_segments_whole_image_single_call", base
        ),
    }
    out = {
        "benchmark": "masking_overhead",
        "command": command_line(),
        "quick": args.quick,
        "environment": environment(),
        "setup": {
            "crop_size": CROP,
            "batch_size": BATCH,
            "n_crops": n_crops,
            "n_batches": len(batches),
            "image_shape": list(shape),
            "mean_mask_fill": fill,
            "timing": f"interleaved per batch (every variant runs batch i, rotating order, "
            f"then batch i+1 ...), 1 warm-up + {repeats} repeats; best = sum over batches of each "
            "batch's fastest repeat, median = sum of per-batch medians; ratios from best "
            "(median ratios given too)",
            "end_to_end": "embed_segments called once per strip image holding one batch "
            f"({BATCH} segments): per-call overheads (segment table, percentiles, table) are "
            "counted once per batch, a conservative figure",
        },
        "checks": {
            "max_abs_diff_masking_off_vs_torchvision": diff_off_plain,
            "max_abs_diff_embed_segments_vs_encoder_first_batch": diff_embed_enc,
        },
        "results": res,
        "ratios": ratios,
        "targets": {"masked_over_plain_min": TARGET, "masked_over_plain_aim": AIM},
        "total_timing_wall_s": wall,
    }
    path = write_json("masking_overhead", out)
    _print_report(out, path)
    return out


def _print_report(out, path) -> None:
    s, r, q = out["setup"], out["results"], out["ratios"]
    env = out["environment"]
    print(f"masking_overhead  ({out['command']})")
    print(
        f"  torch {env['torch']}, {env['torch_threads']} threads, {env['cpu_count']} CPUs, "
        f"load avg {env['loadavg_1min']:.2f}"
    )
    print(
        f"  {s['n_crops']} crops of {s['crop_size']} px in {s['n_batches']} batch(es) of up to "
        f"{s['batch_size']}, masks fill {100 * s['mean_mask_fill']:.0f}% of the crop on average"
    )
    print(f"  timing: {s['timing']}")
    print(f"  end-to-end: {s['end_to_end']}")
    print(f"  {'variant':<40}{'best s':>9}{'median s':>10}{'crops/s':>10}")
    for name, v in r.items():
        print(
            f"  {name:<40}{v['best_s']:>9.3f}{v['median_s']:>10.3f}{v['crops_per_s_best']:>10.1f}"
        )
    c = out["checks"]
    print(
        f"  check: masking off vs torchvision max |diff| = {c['max_abs_diff_masking_off_vs_torchvision']:.2e}; "
        f"embed_segments vs encoder max |diff| = {c['max_abs_diff_embed_segments_vs_encoder_first_batch']:.2e}"
    )
    print(
        "  ratios (throughput, >1 = first is faster; baseline = plain torchvision, channels_last):"
    )
    print(
        f"    encoder:     masked / plain       = {q['encoder_masked_over_plain']:.3f} "
        f"(median {q['encoder_masked_over_plain_median']:.3f})  target >= {TARGET}, aim >= {AIM}: "
        f"{verdict(q['encoder_masked_over_plain'], TARGET)} / {verdict(q['encoder_masked_over_plain'], AIM)}"
    )
    print(
        f"    end-to-end:  embed_segments / plain = {q['end_to_end_over_plain']:.3f} "
        f"(median {q['end_to_end_over_plain_median']:.3f})  target >= {TARGET}, aim >= {AIM}: "
        f"{verdict(q['end_to_end_over_plain'], TARGET)} / {verdict(q['end_to_end_over_plain'], AIM)}"
    )
    print(
        f"    whole image, one embed_segments call / plain = "
        f"{q['whole_image_single_call_over_plain_not_interleaved']:.3f}  (best of 2, not interleaved)"
    )
    print(f"    masked / masking-off encoder       = {q['encoder_masked_over_masking_off']:.3f}")
    print(
        f"    masking-off encoder / torchvision  = {q['masking_off_over_plain']:.3f}  (same computation: a noise gauge, expect 1.00)"
    )
    print(
        f"    embed_segments / masked encoder    = {q['end_to_end_over_masked_encoder']:.3f}  (crop extraction etc.)"
    )
    print(
        f"    channels_last / contiguous, masked = {q['masked_channels_last_over_contiguous']:.3f} "
        f"(median {q['masked_channels_last_over_contiguous_median']:.3f}); plain = "
        f"{q['plain_channels_last_over_contiguous']:.3f}   (>1: channels_last faster)"
    )
    if out["quick"]:
        print("  QUICK smoke run: smaller problem, figures are not comparable with the targets")
    print(f"  figures: {path}")


if __name__ == "__main__":
    main()
