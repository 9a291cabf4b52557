"""What the run folder costs: a training run with its config.yaml, charts and TensorBoard logs
(scalars and the embedding projector) against the same run with its checkpoint only.

Both runs train the same weights (tested); they are timed end to end (``train_ssl``, data and
monitor set included), alternated (plain, full, full, plain, ...) so background load hits both
alike.  Then the pieces alone: drawing both charts for a long run, and one projector entry.

    python benchmarks/run_folder_overhead.py            # ~5 min on 2 CPU cores
    python benchmarks/run_folder_overhead.py --quick
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import command_line, environment, write_json

from napari_segrep._sample_data import make_cells
from napari_segrep.engine.training import train_ssl


def _run(image, labels, folder: Path, *, full: bool, options: dict) -> float:
    extra = {"run_config": "# benchmark\n", "charts": True, "tensorboard": True} if full else {}
    t = time.perf_counter()
    train_ssl(image, labels, checkpoint_dir=folder, device="cpu", **extra, **options)
    return time.perf_counter() - t


def _chart_seconds(steps: int) -> float:
    """Both charts of a run of ``steps`` steps (400 an epoch), drawn and encoded."""
    from napari_segrep.engine._charts_draw import png_bytes
    from napari_segrep.engine.callbacks.charts import loss_chart, quality_chart
    from napari_segrep.engine.train_config import TrainConfig

    rng = np.random.default_rng(0)
    history = [
        {"step": s, "epoch": 1 + (s - 1) // 400, "loss": 4 - s / steps + rng.normal(0, 0.1),
         "lr": 1e-4, "loss_invariance": 1.0, "loss_covariance": 0.5}
        for s in range(1, steps + 1)
    ]  # fmt: skip
    quality = [
        {"epoch": e, "step": 400 * e, "effective_rank": 100.0 + e, "view_agreement": 0.5,
         "n": 256, "monitor": "held-back", "collapsed": False}
        for e in range(steps // 400 + 1)
    ]  # fmt: skip
    config = TrainConfig(epochs=steps // 400)
    t = time.perf_counter()
    png_bytes(loss_chart(history, 400, config))
    png_bytes(quality_chart(quality, config))
    return time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 repeat, 1 epoch, few cells")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    cells, repeats = (120, 1) if args.quick else (400, args.repeats)
    image, labels, _ = make_cells(shape=(640, 640), n_cells=cells, seed=0)
    options = {"epochs": 1 if args.quick else 3, "batch_size": 32, "crop_size": 48, "seed": 0}
    times: dict[str, list[float]] = {"plain": [], "full": []}
    with tempfile.TemporaryDirectory() as tmp:
        _run(image, labels, Path(tmp) / "warm", full=False, options={**options, "epochs": 1})
        for r in range(repeats):
            order = ("plain", "full") if r % 2 == 0 else ("full", "plain")
            for name in order:
                folder = Path(tmp) / f"{name}{r}"
                times[name].append(
                    _run(image, labels, folder, full=name == "full", options=options)
                )
    plain, full = min(times["plain"]), min(times["full"])
    charts = {steps: _chart_seconds(steps) for steps in (400, 4000, 40000)}
    report = {
        "command": command_line(),
        "segments": cells,
        "options": options,
        "seconds": times,
        "ratio_full_over_plain": full / plain,
        "chart_seconds_by_steps": charts,
        "environment": environment(),
    }
    path = write_json("run_folder_overhead", report)
    print("run_folder_overhead  (python benchmarks/run_folder_overhead.py)")
    print(
        f"  {cells} generated cells, {options['epochs']} epochs, resnet18, crop 48, batch 32, CPU;"
        f" best of {repeats}"
    )
    print(f"  checkpoint only:                          {plain:7.1f} s")
    print(f"  + config.yaml, charts, TensorBoard:       {full:7.1f} s   ratio {full / plain:.3f}")
    for steps, seconds in charts.items():
        print(f"  both charts of a {steps:>6,}-step run drawn and encoded: {seconds:.2f} s")
    print(f"  figures: {path}")


if __name__ == "__main__":
    main()
