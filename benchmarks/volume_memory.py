"""Volumes: memory of a large z-stack embedded streaming, bounded by the batch, not the objects.

A (256, 1024, 1024) uint16 z-stack (512 MiB) and its int32 labels (1 GiB) with 2,048 nuclei:
random axis-aligned ellipsoids (semi-axes 4-7 voxels in z, 8-14 in y and x, at a random offset)
one per (32, 64, 64) cell of a grid, voxels (1, 0.5, 0.5) um (the nuclei are about round
in micrometres), the image ``_common.make_image`` (a random level and gradient per nucleus,
background ~200, noise); built in place, plane chunk by plane chunk, so the process holds the
image, the labels and small temporaries only.

Measured: ``embed_segments(image, labels, axes="zyx", spacing=(1, 0.5, 0.5), batch_size=B,
device="cpu")`` with everything else default (the default volume encoder, untrained
``resnet18_3d``, crop 32, per-image normalisation), each configuration in a fresh subprocess
(as ``large_image.py``): peak RSS ABOVE the inputs (VmHWM reset after building them, and a 5 ms
RSS sampler), wall seconds and objects/s.  Configurations: batch 8 and 32 on the whole volume,
and batch 32 on its first 128 planes (half the objects): a peak that follows the batch and not
the object count is what streaming means.  The encoder's own weights (about 130 MiB for
``resnet18_3d``) are part of the peak.

Run: ``python benchmarks/volume_memory.py`` (several minutes on 2 cores: 5,120 objects in
all) or ``--quick`` (a (64, 256, 256) volume, 32 objects).  Figures go to
``benchmarks/out/volume_memory.json``.

Latest figures (``python benchmarks/volume_memory.py``, 2 shared CPU cores, load 4-9: the wall
clock is inflated, the CPU seconds less so; inputs 1,536 MiB):

    volume             objects  batch  peak above inputs  wall s  objects/s  CPU s
    (256, 1024, 1024)  2048     8      178 MiB            581     3.5        258
    (256, 1024, 1024)  2048     32     255 MiB            182     11.2       105
    (128, 1024, 1024)  1024     32     255 MiB            48      21.2       48

The peak follows the batch (8 -> 32: +77 MiB) and not the object count (1,024 -> 2,048 at
batch 32: +0 MiB); 126 MiB of it is the encoder's weights.  Batch 8 costs 2.5x the CPU time of
batch 32 per object (3D convolutions are inefficient on small batches).

The fast mode vs the default, batch 32, run one after the other on a quieter machine (load ~2)
(``python benchmarks/volume_memory.py --backbone resnet18_planes --batches 32`` then
``python benchmarks/volume_memory.py --batches 32``):

    encoder          volume             objects  peak above inputs  wall s  objects/s  CPU s
    resnet18_planes  (256, 1024, 1024)  2048     118 MiB            12.8    160        17.1
    resnet18_planes  (128, 1024, 1024)  1024     128 MiB            13.3    77         14.9
    resnet18_3d      (256, 1024, 1024)  2048     266 MiB            57.0    36         69.1
    resnet18_3d      (128, 1024, 1024)  1024     263 MiB            28.0    37         34.6

End to end on this CPU the native 3D encoder costs about 4x the fast mode's CPU time per object
(34 vs 8 ms; the planes' wall clock swung 3.3-13.3 s for 1,024 objects between runs: a busy
machine), and twice its memory above the inputs (its weights: 126 vs 43 MiB).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time

import numpy as np
from _common import (
    command_line,
    environment,
    make_image,
    proc_status_kib,
    reset_peak_rss,
    write_json,
)
from large_image import _RssSampler

CELL = (32, 64, 64)
SPACING = (1.0, 0.5, 0.5)
SEMI_Z = (4.0, 7.0)
SEMI_XY = (8.0, 14.0)
MARK = "VOLUME_MEMORY_CHILD_RESULT "


# ----------------------------------------------------------------------------- data
def make_nuclei(shape: tuple[int, int, int], *, seed: int = 0) -> np.ndarray:
    """int32 labels of ``shape``: one random axis-aligned ellipsoid per :data:`CELL` cell
    (labels 1..n in row-major cell order), built one row of cells at a time."""
    rng = np.random.default_rng(seed)
    grid = tuple(s // c for s, c in zip(shape, CELL, strict=True))
    n = int(np.prod(grid))
    semi = np.column_stack(
        [rng.uniform(*SEMI_Z, n), rng.uniform(*SEMI_XY, n), rng.uniform(*SEMI_XY, n)]
    ).astype(np.float32)
    half = (np.array(CELL, np.float32) - 1) / 2
    slack = np.maximum(half - np.ceil(semi) - 1, 0)  # keep each nucleus inside its cell
    centre = half + rng.uniform(-1, 1, (n, 3)).astype(np.float32) * slack
    labels = np.zeros(shape, np.int32)
    cz, cy, cx = (np.arange(c, dtype=np.float32) for c in CELL)
    gz, gy, gx = grid
    for z in range(gz):
        for y in range(gy):
            first = (z * gy + y) * gx  # this row's cells: first .. first + gx - 1
            c, s = centre[first : first + gx], semi[first : first + gx]
            d = (
                ((cz[None, :, None, None] - c[:, 0, None, None, None]) / s[:, 0, None, None, None])
                ** 2
                + (
                    (cy[None, None, :, None] - c[:, 1, None, None, None])
                    / s[:, 1, None, None, None]
                )
                ** 2
                + (
                    (cx[None, None, None, :] - c[:, 2, None, None, None])
                    / s[:, 2, None, None, None]
                )
                ** 2
            )  # (gx, *CELL)
            ids = np.arange(first + 1, first + gx + 1, dtype=np.int32)[:, None, None, None]
            row = np.where(d <= 1.0, ids, 0)  # (gx, cz, cy, cx)
            labels[z * CELL[0] : (z + 1) * CELL[0], y * CELL[1] : (y + 1) * CELL[1], : gx * CELL[2]] = (
                row.transpose(1, 2, 0, 3).reshape(CELL[0], CELL[1], gx * CELL[2])
            )  # fmt: skip
    return labels


# ----------------------------------------------------------------------------- child process
def child(shape: tuple[int, int, int], batch: int, backbone: str | None) -> None:
    rss_start = proc_status_kib("VmRSS")
    import torch

    import napari_segrep as sr

    sr.embed_segments  # noqa: B018 - resolve the lazy import before measuring
    rss_imports = proc_status_kib("VmRSS")

    t0 = time.perf_counter()
    labels = make_nuclei(shape, seed=5)
    image = make_image(labels, seed=5, dtype=np.uint16, rows_per_chunk=4)
    build_s = time.perf_counter() - t0
    gc.collect()
    n_labels = int(labels.max())
    input_bytes = labels.nbytes + image.nbytes
    rss_inputs = proc_status_kib("VmRSS")
    reset_ok = reset_peak_rss()

    sampler = _RssSampler()
    sampler.start()
    t0, c0 = time.perf_counter(), time.process_time()
    encoder = None if backbone is None else sr.SegmentEncoder(backbone, in_channels=1)
    df = sr.embed_segments(
        image, labels, encoder, axes="zyx", spacing=SPACING, batch_size=batch, device="cpu"
    )
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    sampler.stop()
    hwm = proc_status_kib("VmHWM")
    peak_kib = max(hwm if reset_ok and hwm else 0, sampler.peak_kib)

    emb = df.filter(like="emb_").to_numpy()
    result = {
        "shape": list(shape),
        "batch_size": batch,
        "backbone": backbone or "default",
        "n_labels": n_labels,
        "rows": len(df),
        "embedding_dim": emb.shape[1],
        "all_finite": bool(np.isfinite(emb).all()),
        "has_centroid_z": "centroid_z" in df.columns,
        "downscaled": int((df["scale"] < 1).sum()),
        "layout": df.attrs.get("layout"),
        "build_inputs_s": build_s,
        "input_bytes": input_bytes,
        "torch_threads": torch.get_num_threads(),
        "wall_s": wall,
        "cpu_s": cpu,
        "objects_per_s": n_labels / wall,
        "rss_start_kib": rss_start,
        "rss_after_imports_kib": rss_imports,
        "rss_after_inputs_kib": rss_inputs,
        "vmhwm_reset_ok": reset_ok,
        "vmhwm_after_run_kib": hwm,
        "sampled_peak_rss_kib": sampler.peak_kib,
        "peak_rss_kib": peak_kib,
        "peak_above_inputs_kib": peak_kib - rss_inputs,
    }
    print(MARK + json.dumps(result), flush=True)


# ----------------------------------------------------------------------------- parent process
def run_child(shape, batch, backbone) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", "--batch", str(batch)]
    cmd += ["--shape", *map(str, shape)]
    if backbone:
        cmd += ["--backbone", backbone]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"child process failed with exit code {proc.returncode}")
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith(MARK))
    return json.loads(line[len(MARK) :])


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: (64, 256, 256)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--shape", type=int, nargs=3, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--batches", default="8,32", help="batch sizes on the whole volume")
    parser.add_argument(
        "--backbone",
        default=None,
        help="a backbone instead of the default volume encoder, e.g. resnet18_planes",
    )
    args = parser.parse_args(argv)
    if args.child:
        child(tuple(args.shape), args.batch, args.backbone)
        return {}

    shape = (64, 256, 256) if args.quick else (256, 1024, 1024)
    half = (shape[0] // 2, *shape[1:])
    batches = [int(b) for b in args.batches.split(",")]
    configs = [(shape, b) for b in batches] + [(half, batches[-1])]
    runs = []
    for s, b in configs:
        res = run_child(s, b, args.backbone)
        runs.append(res)
        print(
            f"  {s} batch {b}: {res['n_labels']} objects, {res['wall_s']:.1f} s, peak above "
            f"inputs {res['peak_above_inputs_kib'] / 1024:.0f} MiB",
            flush=True,
        )
        assert res["rows"] == res["n_labels"] and res["all_finite"] and res["has_centroid_z"]

    import torch  # noqa: F401 - the encoder's size, for the report

    import napari_segrep as sr
    from napari_segrep.engine.embed import VOLUME_BACKBONE

    name = args.backbone or VOLUME_BACKBONE
    weights_mib = sum(p.numel() * p.element_size() for p in sr.SegmentEncoder(name).parameters()) / 2**20  # fmt: skip
    out = {
        "benchmark": "volume_memory",
        "command": command_line(),
        "quick": args.quick,
        "environment": environment(),
        "setup": {
            "cell": CELL,
            "spacing": SPACING,
            "semi_axes_voxels": {"z": SEMI_Z, "y, x": SEMI_XY},
            "embed_call": f"embed_segments(image, labels, {args.backbone or 'None'}, "
            f'axes="zyx", spacing={SPACING}, batch_size=B, device="cpu") (all else default: '
            f"untrained {name}, crop 32)",
            "backbone": name,
            "encoder_weights_mib": weights_mib,
            "peak": "max of VmHWM (reset after building the inputs) and a 5 ms RSS sampler, "
            "minus the RSS after building the inputs; each configuration in a fresh process",
        },
        "runs": runs,
    }
    suffix = f"_{args.backbone}" if args.backbone else ""
    path = write_json(f"volume_memory{suffix}", out)
    _print_report(out, path)
    return out


def _print_report(out, path) -> None:
    s, env = out["setup"], out["environment"]
    print(f"volume_memory  ({out['command']})")
    print(
        f"  torch {env['torch']}, {env['torch_threads']} threads, {env['cpu_count']} CPUs, "
        f"load avg {env['loadavg_1min']:.2f}"
    )
    print(f"  call: {s['embed_call']}; the encoder's weights {s['encoder_weights_mib']:.0f} MiB")
    print(f"  peak: {s['peak']}")
    print(
        f"  {'volume':<18}{'objects':>8}{'inputs MiB':>12}{'batch':>7}{'peak above MiB':>16}"
        f"{'wall s':>8}{'objects/s':>11}{'CPU s':>8}"
    )
    for r in out["runs"]:
        print(
            f"  {str(tuple(r['shape'])):<18}{r['n_labels']:>8}{r['input_bytes'] / 2**20:>12.0f}"
            f"{r['batch_size']:>7}{r['peak_above_inputs_kib'] / 1024:>16.0f}{r['wall_s']:>8.1f}"
            f"{r['objects_per_s']:>11.1f}{r['cpu_s']:>8.1f}"
        )
    if out["quick"]:
        print("  QUICK smoke run: a small volume, figures are not the report's")
    print(f"  figures: {path}")


if __name__ == "__main__":
    main()
