"""Training throughput (crops/s): the masked SegRep loop vs the same loop with masking off.

Both trainers step on the *same* batches (augmented once, up front), interleaved step by step
(masked, plain, masked, plain, ...) so background load hits both alike; the full
forward + backward + LARS step + loss is timed.  Data loading is measured separately.

    python benchmarks/training_throughput.py          # ~2 min on 2 CPU cores
    python benchmarks/training_throughput.py --quick
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from napari_segrep._sample_data import make_cells
from napari_segrep.engine.dataset import SegmentDataset
from napari_segrep.engine.train_config import TrainConfig
from napari_segrep.engine.trainer import Trainer

OUT = Path(__file__).parent / "out"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--crop-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    steps = 3 if args.quick else 12
    image, labels, _ = make_cells(shape=(512, 512), n_cells=160, seed=0)
    ds = SegmentDataset(image, labels, crop_size=args.crop_size, seed=0)
    batch = args.batch_size

    t0 = time.perf_counter()
    batches = []
    for s in range(steps + 1):
        items = [ds[(s * batch + i) % len(ds)] for i in range(batch)]
        batches.append([torch.stack(parts) for parts in zip(*items, strict=True)])
    data_s = (time.perf_counter() - t0) / ((steps + 1) * batch)

    trainers = {}
    for name, masked in (("masked", True), ("no_mask", False)):
        cfg = TrainConfig(
            epochs=1,
            batch_size=batch,
            crop_size=args.crop_size,
            image_masking=masked,
            feature_masking=masked,
        )
        trainers[name] = Trainer(ds, cfg, device="cpu")
        trainers[name].model.train()

    def step(trainer: Trainer, tensors) -> float:
        a, ma, b, mb = tensors
        t = time.perf_counter()
        trainer.optimizer.zero_grad(set_to_none=True)
        z = trainer.model(torch.cat([a, b]), torch.cat([ma, mb]))
        za, zb = z.chunk(2)
        trainer.loss(za, zb).backward()
        trainer.optimizer.step()
        return time.perf_counter() - t

    times = {name: [] for name in trainers}
    for name in trainers:  # warm-up
        step(trainers[name], batches[0])
    for s in range(1, steps + 1):
        order = list(trainers) if s % 2 else list(reversed(trainers))
        for name in order:
            times[name].append(step(trainers[name], batches[s]))
    crops = 2 * batch
    report = {
        name: {
            "best_s": min(t),
            "median_s": float(np.median(t)),
            "crops_per_s_best": crops / min(t),
            "crops_per_s_median": crops / float(np.median(t)),
        }
        for name, t in times.items()
    }
    ratio_best = report["masked"]["crops_per_s_best"] / report["no_mask"]["crops_per_s_best"]
    ratio_median = report["masked"]["crops_per_s_median"] / report["no_mask"]["crops_per_s_median"]
    print(
        f"training_throughput  (python benchmarks/training_throughput.py"
        f"{' --quick' if args.quick else ''})"
    )
    print(
        f"  torch {torch.__version__}, {torch.get_num_threads()} threads; crop "
        f"{args.crop_size}, batch {batch} (x2 views), {steps} interleaved steps per variant"
    )
    for name, r in report.items():
        print(
            f"  {name:8s} step: best {r['best_s']:.3f} s, median {r['median_s']:.3f} s -> "
            f"{r['crops_per_s_best']:.0f} crops/s (best)"
        )
    print(
        f"  masked / no-mask throughput: {ratio_best:.2f} (median {ratio_median:.2f})  "
        "target >= 0.8: " + ("MEETS" if ratio_best >= 0.8 else "MISSES")
    )
    print(
        f"  data loading (two augmented views, in process): {data_s * 1000:.1f} ms per "
        f"segment = {2 / data_s:.0f} crops/s"
    )
    OUT.mkdir(exist_ok=True)
    (OUT / "training_throughput.json").write_text(
        json.dumps(
            {
                "report": report,
                "ratio_best": ratio_best,
                "ratio_median": ratio_median,
                "data_ms_per_segment": data_s * 1000,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
