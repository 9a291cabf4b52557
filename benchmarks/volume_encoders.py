"""Volumes: the fast planes encoder vs the native 3D one, time and quality, in one run.

Generated volumes with known classes: three shapes, a sphere, a rod (prolate ellipsoid, axis
ratio 3) and a disc (oblate, axis ratio 1/3), all of the same volume range (equivalent radius
4-6.5 voxels), each randomly rotated in 3D, with a random texture (brightness, smoothed noise of
random grain and strength, a linear gradient in a random direction) that says nothing about the
class, in noise.  Each object lies in its own 32^3 cell of one volume (isotropic voxels: the
data needs no resampling), so a cell is the object's centred crop.

Encoders (untrained, seeded; ImageNet-initialised too when torchvision's resnet18 file is in the
torch cache), all dual-masked through ``SegmentEncoder`` (image + feature masking, eval mode):

- ``resnet18_planes``: three orthogonal planes through the object, views concatenated (1536-d);
- ``planes_mean``: the same network and planes, the views' area-weighted mean (512-d);
- ``resnet18_slices``: the same 2D network on every z-slice of the object, area-weighted mean
  (512-d);
- ``resnet18_3d``: the native 3D network, when it is registered.

Quality: leave-one-out k-NN accuracy (k=5, cosine on standardised embeddings) of the class.
Time: objects/s of the encoder's forward over the same crops (batches of 16 and of 128,
``embed_segments``' default; ``inference_mode``), variants interleaved batch by batch (best of
the repeats), and the CPU time per object; at crop 32 (the volumes' default) and 24 (the centre
24^3 of the same crops); for context, the 2D ``resnet18`` at its default crop 64 on each
object's z-plane of largest area (what embedding the objects' middle planes as 2D segments
costs).

Run: ``python benchmarks/volume_encoders.py`` (about 8 min on 2 shared cores) or ``--quick``.
Figures go to ``benchmarks/out/volume_encoders.json``.

Latest figures (``python benchmarks/volume_encoders.py``, 2 shared CPU cores, load ~3; 180
objects; untrained, mean of 3 seeds; no ImageNet file in the cache here).  k-NN-5 of the shape
(normalize image / segment); objects/s of the forward, best of 3, batch 16 / 128; CPU ms per
object at batch 16:

    encoder            dim   kNN-5 image / segment  crop 32 obj/s  crop 24 obj/s  CPU ms (32)
    resnet18_planes    1536  0.615 / 0.678          278 / 235      347 / 433      6.9
    planes_mean        512   0.600 / 0.613          274 / 327      343 / 424      6.9
    resnet18_slices    512   0.783 / 0.802           80 / 70       101 / 90       22.9
    resnet18_3d        512   0.681 / 0.715          119 / 84       192 / 228      16.0
    resnet18 (2D), crop 64, each object's largest z-plane:   331 / 381 obj/s, 5.8 CPU ms

``resnet18_3d`` costs 2.3-2.8x ``resnet18_planes``' time per object at crop 32 (1.6-1.9x at
crop 24); the planes cost about what the 2D encoder costs on one plane per object at crop 64.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from _common import (
    VOLUME_SHAPES,
    cell_window,
    command_line,
    environment,
    knn_accuracy,
    make_ellipsoid_cells,
    write_json,
)

CROP = 32
BATCH = 16
PERCENTILES = (1.0, 99.8)  # embed_segments' normalisation
NORMALIZE = ("image", "segment")
CLASSES = VOLUME_SHAPES
SMALL_CROP = 24
BASELINE_2D = "resnet18 (2D), crop 64, middle z-plane"


# ----------------------------------------------------------------------------- data
def cell_crops(image, labels, grid, *, normalize: str = "image", cell: int = CROP):
    """The objects' centred crops: (n, 1, cell, cell, cell) float32 and bool masks.

    ``normalize`` as ``embed_segments``: ``"image"``, the volume's 1st and 99.8th percentiles
    map to 0 and 1; ``"segment"``, those of each object's own voxels."""
    n = int(labels.max())
    xs = np.empty((n, 1, cell, cell, cell), np.float32)
    ms = np.empty((n, 1, cell, cell, cell), bool)
    low, high = np.percentile(image, PERCENTILES)
    for i in range(n):
        window = cell_window(i, grid, cell)
        ms[i, 0] = labels[window] == i + 1
        if normalize == "segment":
            low, high = np.percentile(image[window][ms[i, 0]], PERCENTILES)
        xs[i, 0] = (image[window] - low) / (high - low)
    return torch.from_numpy(xs), torch.from_numpy(ms)


# ----------------------------------------------------------------------------- encoders
def _register_variants():
    """A benchmark-only backbone: the planes' views averaged, weighted by their areas (the
    alternative to concatenating them)."""
    from torchvision.models.resnet import BasicBlock

    from napari_segrep.engine.backbones import BACKBONES, register_backbone
    from napari_segrep.engine.backbones.planes import IMAGENET_URL, MaskedResNetPlanes

    if "planes_mean" not in BACKBONES:
        register_backbone(
            "planes_mean",
            lambda *, in_channels, seed: MaskedResNetPlanes(
                BasicBlock, [2, 2, 2, 2], in_channels=in_channels, seed=seed, combine="mean"
            ),
            imagenet_url=IMAGENET_URL,
            spatial_dims=3,
        )


def _encoders(names, *, seed, weights):
    from napari_segrep import SegmentEncoder

    return {
        name: SegmentEncoder(name, in_channels=1, seed=seed, weights=weights).eval()
        for name in names
    }


def _time_encoders(variants, *, batch, repeats):
    """``{name: {"wall": (repeats, units), "cpu": (repeats, units)}}`` seconds of each
    variant's forward (``variants[name] = (encoder, crops, masks)``, the same objects) on every
    batch, interleaved per batch in a rotating order after one untimed pass."""
    n_objects = len(next(iter(variants.values()))[1])
    starts = range(0, n_objects, batch)
    names = list(variants)
    times = {n: {"wall": np.zeros((repeats, len(starts))), "cpu": np.zeros((repeats, len(starts)))}
             for n in names}  # fmt: skip
    with torch.inference_mode():
        for enc, x, m in variants.values():
            enc(x[:batch], m[:batch])
        for r in range(repeats):
            for i, start in enumerate(starts):
                k = (r + i) % len(names)
                for name in names[k:] + names[:k]:
                    enc, x, m = variants[name]
                    x, m = x[start : start + batch], m[start : start + batch]
                    w0, c0 = time.perf_counter(), time.process_time()
                    enc(x, m)
                    times[name]["wall"][r, i] = time.perf_counter() - w0
                    times[name]["cpu"][r, i] = time.process_time() - c0
    return times


def _centre(xs, ms, size):
    """The centre ``size``^3 of cubic crops and masks (for timing: the crop size's cost)."""
    a = (xs.shape[-1] - size) // 2
    window = (Ellipsis, slice(a, a + size), slice(a, a + size), slice(a, a + size))
    return xs[window].contiguous(), ms[window].contiguous()


def _middle_planes_2d(xs, ms):
    """``(encoder, crops, masks)`` of the 2D baseline: untrained ``resnet18`` (channels_last)
    on each object's z-plane of largest area, zero-padded to 64 x 64 (the 2D default crop)."""
    from napari_segrep import SegmentEncoder

    z = ms.sum(dim=(1, 3, 4)).argmax(dim=1)
    rows = torch.arange(len(xs))
    pad = (64 - xs.shape[-1]) // 2
    pad4 = (pad, 64 - xs.shape[-1] - pad) * 2
    x2 = torch.nn.functional.pad(xs[rows, :, z], pad4)
    m2 = torch.nn.functional.pad(ms[rows, :, z], pad4)
    cl = torch.channels_last
    enc = SegmentEncoder("resnet18", in_channels=1, seed=0).eval().to(memory_format=cl)
    return enc, x2.contiguous(memory_format=cl), m2.contiguous(memory_format=cl)


def _embed(encoder, xs, ms, batch):
    with torch.inference_mode():
        return torch.cat(
            [encoder(xs[i : i + batch], ms[i : i + batch]) for i in range(0, len(xs), batch)]
        ).numpy()


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 8 objects per class")
    parser.add_argument("--per-class", type=int, default=None, help="objects per class (60)")
    parser.add_argument("--seeds", type=int, default=None, help="encoder seeds (3)")
    parser.add_argument("--repeats", type=int, default=None, help="timed passes (3)")
    parser.add_argument("--time-objects", type=int, default=None, help="objects timed (all)")
    parser.add_argument(
        "--batches", default="16,128", help="batch sizes timed (128: embed_segments' default)"
    )
    args = parser.parse_args(argv)

    from napari_segrep.engine.backbones import BACKBONES, imagenet_cache_path

    _register_variants()
    names = ["resnet18_planes", "planes_mean", "resnet18_slices"]
    if "resnet18_3d" in BACKBONES:
        names.append("resnet18_3d")
    per_class = args.per_class or (8 if args.quick else 60)
    seeds = args.seeds or (1 if args.quick else 3)
    repeats = args.repeats or (1 if args.quick else 3)
    n_time = args.time_objects or (32 if args.quick else 3 * per_class)
    batches = [int(b) for b in args.batches.split(",")]

    t0 = time.perf_counter()
    image, labels, classes, grid = make_ellipsoid_cells(per_class, seed=0, cell=CROP)
    crops = {norm: cell_crops(image, labels, grid, normalize=norm) for norm in NORMALIZE}
    xs, ms = crops["image"]
    data_s = time.perf_counter() - t0
    fill = float(ms.float().mean())

    weight_sets = [None]
    if imagenet_cache_path("resnet18").is_file():
        weight_sets.append("imagenet")
    quality: dict[str, dict] = {}
    for weights in weight_sets:
        for seed in range(seeds if weights is None else 1):
            encoders = _encoders(names, seed=seed, weights=weights)
            for name, enc in encoders.items():
                for norm, (x, m) in crops.items():
                    emb = _embed(enc, x, m, BATCH)
                    assert np.isfinite(emb).all()
                    key = f"{name}, {weights or 'untrained'}, normalize={norm}"
                    quality.setdefault(key, {"knn5": [], "knn1": [], "dim": emb.shape[1]})
                    quality[key]["knn5"].append(knn_accuracy(emb, classes, k=5))
                    quality[key]["knn1"].append(knn_accuracy(emb, classes, k=1))
    for q in quality.values():
        q["knn5_mean"] = float(np.mean(q["knn5"]))
        q["knn1_mean"] = float(np.mean(q["knn1"]))

    # Time: the same objects through each encoder, interleaved batch by batch.
    encoders = _encoders(names, seed=0, weights=None)
    tx, tm = xs[:n_time], ms[:n_time]
    variants = {name: (enc, tx, tm) for name, enc in encoders.items()}
    for name, enc in encoders.items():
        variants[f"{name}, crop {SMALL_CROP}"] = (enc, *_centre(tx, tm, SMALL_CROP))
    variants[BASELINE_2D] = _middle_planes_2d(tx, tm)
    speed = {}
    for batch in batches:
        times = _time_encoders(variants, batch=batch, repeats=repeats)
        for name, t in times.items():
            wall, cpu = t["wall"].min(axis=0).sum(), t["cpu"].min(axis=0).sum()
            speed.setdefault(name, {})[f"batch {batch}"] = {
                "objects_per_s_best": len(tx) / wall,
                "objects_per_s_median": len(tx) / np.median(t["wall"], axis=0).sum(),
                "cpu_ms_per_object_best": 1000 * cpu / len(tx),
            }
    ratios = {
        f"{name}_over_resnet18_planes, batch {batch}": speed[name][f"batch {batch}"][
            "objects_per_s_best"
        ]
        / speed["resnet18_planes"][f"batch {batch}"]["objects_per_s_best"]
        for batch in batches
        for name in names
        if name != "resnet18_planes"
    }
    ratios.update(
        {
            f"{name} over {BASELINE_2D}, batch {batch}": speed[name][f"batch {batch}"][
                "objects_per_s_best"
            ]
            / speed[BASELINE_2D][f"batch {batch}"]["objects_per_s_best"]
            for batch in batches
            for name in variants
            if name.split(",")[0] in ("resnet18_planes", "resnet18_3d")
        }
    )

    out = {
        "benchmark": "volume_encoders",
        "command": command_line(),
        "quick": args.quick,
        "environment": environment(),
        "setup": {
            "classes": list(CLASSES),
            "objects": int(len(classes)),
            "per_class": per_class,
            "crop_size": CROP,
            "batch_size": BATCH,
            "volume_shape": list(image.shape),
            "mean_mask_fill": fill,
            "data_s": data_s,
            "encoder_seeds": seeds,
            "weights": [w or "untrained" for w in weight_sets],
            "quality": "leave-one-out k-NN accuracy (cosine, standardised), k=5 and k=1, "
            "mean over encoder seeds; crops normalised per volume (image) or per object "
            "(segment), 1st-99.8th percentiles to 0-1",
            "timing": f"{len(tx)} objects, batches of {batches}, the encoders' forward in "
            "inference_mode, contiguous tensors; interleaved per batch (rotating order), 1 "
            f"warm-up + {repeats} repeats; best = sum of each batch's fastest repeat; wall "
            "clock and this process's CPU time (a loaded machine inflates the wall clock). "
            f"Crop {CROP} (the volumes' default) and the centre {SMALL_CROP}^3 of the same "
            f"crops; context: {BASELINE_2D} (each object's z-plane of largest area, zero-padded "
            "to 64 x 64, channels_last as embed_segments runs 2D crops)",
        },
        "quality": quality,
        "speed": speed,
        "ratios": ratios,
    }
    path = write_json("volume_encoders", out)
    _print_report(out, path)
    return out


def _print_report(out, path) -> None:
    s, env = out["setup"], out["environment"]
    print(f"volume_encoders  ({out['command']})")
    print(
        f"  torch {env['torch']}, {env['torch_threads']} threads, {env['cpu_count']} CPUs, "
        f"load avg {env['loadavg_1min']:.2f}"
    )
    print(
        f"  {s['objects']} objects ({', '.join(s['classes'])}; {s['per_class']} each) in "
        f"{s['crop_size']}^3 crops, masks fill {100 * s['mean_mask_fill']:.1f}% of the crop"
    )
    print(f"  quality: {s['quality']}")
    print(f"  {'encoder, weights, normalisation':<54}{'dim':>6}{'kNN-5':>8}{'kNN-1':>8}   per seed")
    for name, q in out["quality"].items():
        seeds = " ".join(f"{v:.3f}" for v in q["knn5"])
        print(f"  {name:<54}{q['dim']:>6}{q['knn5_mean']:>8.3f}{q['knn1_mean']:>8.3f}   {seeds}")
    print(f"  timing: {s['timing']}")
    print(f"  {'encoder':<42}{'batch':>7}{'objects/s':>11}{'median':>9}{'CPU ms/object':>15}")
    for name, per_batch in out["speed"].items():
        for batch, v in per_batch.items():
            print(
                f"  {name:<42}{batch.split()[1]:>7}{v['objects_per_s_best']:>11.1f}"
                f"{v['objects_per_s_median']:>9.1f}{v['cpu_ms_per_object_best']:>15.1f}"
            )
    for name, r in out["ratios"].items():
        print(f"  {name}: {r:.2f}x")
    print(f"  figures: {path}")


if __name__ == "__main__":
    main()
