"""How long does refining the encoder from annotations take (issue 25: <= 2 min for ~500 segments)?

One image of generated cells (``make_cells``: three classes), 10 clicks per class,
``refine_encoder`` with its defaults (``epochs="auto"``: 96 steps of 32 segments, resnet18,
crop 64), then the image embedded again with the encoder kept (what Classify segments does
after refining).  Baseline in the same run: ``train_ssl`` with the contrastive objective for
the same number of steps of the same batch (what the supervised objective adds: the annotated
segments' redraws, the classifier head, the held-out comparison).  Best of ``--repeats``
(alternated).

    python benchmarks/refine_time.py                 # 500 cells, 2 repeats
    python benchmarks/refine_time.py --cells 200 --repeats 1
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
from _common import command_line, environment, write_json

import napari_segrep as sr
from napari_segrep._sample_data import make_cells
from napari_segrep.refine import AUTO_STEPS, BATCH_SIZE

GOAL_S = 120.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", type=int, default=500)
    parser.add_argument("--clicks", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=UserWarning)
    env = environment()
    side = int(round(1024 * (args.cells / 600) ** 0.5))
    image, labels, classes = make_cells((side, side), args.cells, seed=0)
    rng = np.random.default_rng(0)
    annotations = {}
    for name in sorted(set(classes.values())):
        mine = [lab for lab, c in sorted(classes.items()) if c == name]
        annotations.update(dict.fromkeys(rng.permutation(mine)[: args.clicks].tolist(), name))
    n = len(np.unique(labels)) - 1
    print(f"refine_time  ({command_line()})")
    print(
        f"  {n} generated cells ({side}x{side}), {len(annotations)} annotations; resnet18, crop "
        f"64, CPU, {env['torch_threads']} torch threads, load {env['loadavg_1min']:.1f}"
    )
    refine, reembed, baseline, steps = [], [], [], 0
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        result = sr.refine_encoder(image, labels, annotations, device="cpu")
        t1 = time.perf_counter()
        sr.embed_segments(image, labels, result.encoder, device="cpu")
        t2 = time.perf_counter()
        steps = len(result.history)
        epochs = result.history[-1]["total_steps"] // result.history[-1]["steps_per_epoch"]
        done = []
        sr.train_ssl(
            image,
            labels,
            epochs=1000,  # stopped after the refinement's number of steps
            batch_size=BATCH_SIZE,
            lr=3e-4,
            device="cpu",
            monitor_size=64,
            monitor_hold_out=False,
            on_step=done.append,
            should_stop=lambda: len(done) >= steps,  # noqa: B023
        )
        t3 = time.perf_counter()
        refine.append(t1 - t0)
        reembed.append(t2 - t1)
        baseline.append(t3 - t2)
        print(
            f"    refine {t1 - t0:.1f} s ({steps} steps, {epochs} epochs; {result.message}), "
            f"re-embed {t2 - t1:.1f} s; contrastive, same steps: {t3 - t2:.1f} s",
            flush=True,
        )
    best = min(r + e for r, e in zip(refine, reembed, strict=True))
    ratio = min(refine) / min(baseline)
    met = "MET" if best <= GOAL_S else "NOT MET"
    print(
        f"  best: refine {min(refine):.1f} s + re-embed {min(reembed):.1f} s = {best:.1f} s "
        f"(goal <= {GOAL_S:.0f} s: {met}); refine / contrastive of the same steps {ratio:.2f}x "
        f"(AUTO_STEPS {AUTO_STEPS}, batch {BATCH_SIZE})"
    )
    path = write_json(
        "refine_time",
        {
            "args": vars(args),
            "environment": env,
            "segments": n,
            "refine_s": refine,
            "reembed_s": reembed,
            "contrastive_same_steps_s": baseline,
            "steps": steps,
        },
    )
    print(f"  figures in {path}")


if __name__ == "__main__":
    main()
