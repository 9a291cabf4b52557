"""Many images, one embedding space: ``embed_images`` over files (with 0, 1, 2 worker
processes preparing the crops) against the sum of single-image calls (read both files +
``embed_segments``), measured in the same run.  Each configuration runs in its own subprocess,
so peak RSS (``ru_maxrss``: the main process, and the largest worker) does not mix.

Generated data: N images of S x S, about M ellipses each (a grid of random ellipses, seeded),
fluorescence-like uint16, saved as TIFF in a temporary folder.  Untrained resnet18
(``sr.SegmentEncoder()``), crop 64, batch 128, device cpu.

    python benchmarks/embed_collection.py                      # 100 x 1024^2 x 1,000 (long)
    python benchmarks/embed_collection.py --images 8           # a quick estimate
    python benchmarks/embed_collection.py --images 8 --size 512 --segments 250
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import command_line, environment, make_ellipse_labels, make_image, write_json

CONFIGS = {
    "single": "sum of single calls (read + embed_segments)",
    "workers0": "embed_images, num_workers=0",
    "workers1": "embed_images, num_workers=1",
    "workers2": "embed_images, num_workers=2",
}
OPTIONS = {"crop_size": 64, "batch_size": 128, "device": "cpu"}


def generate(folder: Path, images: int, size: int, segments: int) -> list[tuple[Path, Path]]:
    """``images`` pairs of TIFF files (image, labels) in ``folder``: a grid of about
    ``segments`` random ellipses (seeded per image) and a fluorescence-like image."""
    import tifffile

    rows = max(1, round(math.sqrt(segments)))
    cols = max(1, round(segments / rows))
    side = min(size // rows, size // cols) - 1
    r_hi = max(1.5, (side - 1) / 2 - 1)
    pairs = []
    for i in range(images):
        labels = make_ellipse_labels((size, size), (rows, cols), radius=(r_hi / 2, r_hi), seed=i)
        image = make_image(labels, seed=i)
        pair = (folder / f"field{i:04d}.tif", folder / f"field{i:04d}_labels.tif")
        tifffile.imwrite(pair[0], image)
        tifffile.imwrite(pair[1], labels)
        pairs.append(pair)
    return pairs


def run_config(config: str, folder: Path) -> dict:
    """One configuration, in this (child) process: seconds, segments, peak RSS."""
    import numpy as np
    import torch

    import napari_segrep as sr
    from napari_segrep.io import read_image

    images = sorted(folder.glob("*[0-9].tif"))
    pairs = [(p, p.with_name(f"{p.stem}_labels.tif")) for p in images]
    encoder = sr.SegmentEncoder()  # untrained resnet18, seed 0
    warm = np.zeros((64, 64), np.uint16)
    warm_labels = np.zeros((64, 64), np.int32)
    warm_labels[20:40, 20:40] = 1
    sr.embed_segments(warm, warm_labels, encoder, **OPTIONS)  # first-call costs, untimed
    t0 = time.perf_counter()
    if config == "single":
        rows = 0
        for image_path, labels_path in pairs:
            df = sr.embed_segments(
                read_image(image_path), read_image(labels_path), encoder, **OPTIONS
            )
            rows += len(df)
    else:
        workers = int(config.removeprefix("workers"))
        df = sr.embed_images(
            [p[0] for p in pairs],
            [p[1] for p in pairs],
            encoder=encoder,
            num_workers=workers,
            **OPTIONS,
        )
        rows = len(df)
    seconds = time.perf_counter() - t0
    return {
        "config": config,
        "seconds": seconds,
        "segments": rows,
        "images": len(pairs),
        "torch_threads": torch.get_num_threads(),
        "main_maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "worker_maxrss_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--segments", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=1, help="runs of each configuration")
    parser.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated subset")
    parser.add_argument("--run", help=argparse.SUPPRESS)  # internal: one config in a child
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        print(json.dumps(run_config(args.run, Path(args.folder))))
        return

    configs = [c for c in args.configs.split(",") if c]
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown:
        parser.error(f"unknown configs {unknown}: choose from {list(CONFIGS)}")
    print(f"embed_collection  ({command_line()})")
    results = {}
    with tempfile.TemporaryDirectory(prefix="segrep_collection_") as folder:
        t0 = time.perf_counter()
        generate(Path(folder), args.images, args.size, args.segments)
        print(
            f"  generated {args.images} images of {args.size}^2 in {time.perf_counter() - t0:.1f} s"
        )
        runs: dict[str, list[dict]] = {config: [] for config in configs}
        for r in range(args.repeats):  # round-robin, rotating: background load hits all alike
            k = r % len(configs)
            for config in configs[k:] + configs[:k]:
                child = subprocess.run(
                    [sys.executable, __file__, "--run", config, "--folder", folder],
                    check=True,
                    capture_output=True,
                    text=True,
                )
                runs[config].append(json.loads(child.stdout.strip().splitlines()[-1]))
                print(f"  ran {config}: {runs[config][-1]['seconds']:.1f} s", flush=True)
    for config, done in runs.items():  # the fastest run (least disturbed), peaks over all runs
        best = min(done, key=lambda run: run["seconds"])
        results[config] = {
            **best,
            "all_seconds": [round(run["seconds"], 3) for run in done],
            "main_maxrss_mib": max(run["main_maxrss_mib"] for run in done),
            "worker_maxrss_mib": max(run["worker_maxrss_mib"] for run in done),
        }
    base = results.get("single")
    print(
        f"  {'configuration':46s} {'seconds':>8s} {'seg/s':>7s} {'vs single':>9s} "
        f"{'main RSS':>9s} {'worker RSS':>10s}"
    )
    for config, r in results.items():
        ratio = f"{base['seconds'] / r['seconds']:8.2f}x" if base else "        -"
        worker = (
            f"{r['worker_maxrss_mib']:7.0f} MiB"
            if config not in ("single", "workers0")
            else "         -"
        )
        print(
            f"  {CONFIGS[config]:46s} {r['seconds']:8.1f} {r['segments'] / r['seconds']:7.0f} "
            f"{ratio} {r['main_maxrss_mib']:5.0f} MiB {worker:>10s}"
        )
    segments = sorted({r["segments"] for r in results.values()})
    print(f"  segments embedded: {segments} (best of {args.repeats} run(s) each, interleaved)")
    path = write_json(
        "embed_collection",
        {"command": command_line(), "args": vars(args), "results": results, "env": environment()},
    )
    print(f"  written: {path}")


if __name__ == "__main__":
    main()
