"""Does the default self-supervised training help?  Linear probe and k-NN, before vs after.

Tasks with known classes, the classes never seen by the training (``_ssl_tasks.py``):

- ``digits``: scikit-learn's handwritten digits drawn as segments (1,200 train, 597 test);
- ``nuclei``: generated nuclei in four cell-cycle-like states, size/brightness/orientation
  varying within each (600 train, 600 test);
- ``texture``: the texture-classed touching cells of ``ssl_knn.py`` (320 train, 320 test);
- ``ihc``: real tissue (scikit-image's immunohistochemistry image), nuclei segmented here and
  classed DAB-positive/negative by colour deconvolution (left half trains, right half tests;
  both on 8-bit RGB's fixed 0-255 scale, see ``NORMALIZE``).

For each task and seed: the untrained encoder (``SegmentEncoder(seed=seed)``, the starting point)
and the encoder after ``train_ssl`` with default settings from that starting point.  Both embed
the test image with ``embed_segments``; the figures are k-NN accuracy (k=5, cosine,
leave-one-out within the test image) and linear-probe accuracy (logistic regression on
standardised embeddings fitted on the training image's segments, scored on the test image's).

    python benchmarks/ssl_eval.py                 # all tasks, 3 seeds (~40 min on 2 CPU cores)
    python benchmarks/ssl_eval.py --tasks digits --seeds 0
    python benchmarks/ssl_eval.py --quick         # smoke run: 1 epoch, 1 seed, small crops
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

import _ssl_tasks as tasks
import numpy as np
from _common import OUT_DIR, knn_accuracy

import napari_segrep as sr
from napari_segrep.engine.training import train_ssl

TASKS = ("digits", "nuclei", "texture", "ihc")
#: The linear probe compares two images, so they need one intensity scale (the README's advice
#: for comparing images): 8-bit RGB takes the fixed 0-255 scale.  With per-image percentiles
#: (the default, ``--set normalize='"image"'``) ihc's halves are stretched differently (they
#: differ in how much DAB they hold) and training makes the network more sensitive to that.
NORMALIZE = {"ihc": (0, 255)}


def linear_probe(x_train, y_train, x_test, y_test) -> float:
    """Logistic regression on standardised embeddings, fitted on one image, scored on another."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(x_train)
    model = LogisticRegression(max_iter=3000, C=0.1)
    model.fit(scaler.transform(x_train), y_train)
    return float(model.score(scaler.transform(x_test), y_test))


def _embed(encoder, part, crop, normalize):
    image, labels, classes = part
    df = sr.embed_segments(
        image, labels, encoder, crop_size=crop, device="cpu", normalize=normalize
    )
    truth = np.array([classes[int(lab)] for lab in df["label"]])
    return df.filter(like="emb_").to_numpy(), truth


def scores(encoder, train, test, crop, normalize) -> dict:
    x_train, y_train = _embed(encoder, train, crop, normalize)
    x_test, y_test = _embed(encoder, test, crop, normalize)
    return {
        "knn": knn_accuracy(x_test, y_test),
        "linear": linear_probe(x_train, y_train, x_test, y_test),
    }


def load_task(name: str):
    if name == "texture":
        from ssl_knn import CLASSES, make_texture_cells

        def part(seed):
            image, labels, classes = make_texture_cells((640, 640), 320, seed=seed)
            return image, labels, {k: CLASSES.index(v) for k, v in classes.items()}

        return part(0), part(1), list(CLASSES)
    return getattr(tasks, name)()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=None, help="default: train_ssl's")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="KEY=JSON",
        help="train_ssl options other than the defaults (e.g. loss='\"ntxent\"')",
    )
    args = parser.parse_args()
    options = {k: json.loads(v) for k, v in (s.split("=", 1) for s in args.set)}
    if args.quick:
        args.seeds, options = args.seeds[:1], {"epochs": 1, "crop_size": 32, **options}
    if args.epochs is not None:
        options["epochs"] = args.epochs
    crop = options.get("crop_size", 64)
    warnings.filterwarnings("ignore", category=UserWarning)
    print(f"ssl_eval  (python benchmarks/ssl_eval.py{' --quick' if args.quick else ''})")
    print(f"  train_ssl options beyond the defaults: {options or 'none'}; CPU")
    results = {"options": options, "tasks": {}}
    for name in args.tasks:
        train, test, classes = load_task(name)
        task_options = {"normalize": NORMALIZE.get(name, "image"), **options}
        normalize = task_options["normalize"]
        rows = []
        for seed in args.seeds:
            channels = 3 if train[0].ndim == 3 else 1
            start = sr.SegmentEncoder(in_channels=channels, seed=seed)
            before = scores(start, train, test, crop, normalize)
            t0 = time.perf_counter()
            res = train_ssl(
                train[0], train[1], encoder=start, device="cpu", seed=seed, **task_options
            )
            seconds = time.perf_counter() - t0
            after = scores(res.encoder, train, test, crop, normalize)
            epochs = res.history[-1]["epoch"]
            losses = [
                float(np.mean([h["loss"] for h in res.history if h["epoch"] == e]))
                for e in range(1, epochs + 1)
            ]
            rows.append(
                {
                    "seed": seed,
                    "before": before,
                    "after": after,
                    "seconds": seconds,
                    "steps": len(res.history),
                    "loss_per_epoch": losses,
                }
            )
            print(
                f"  {name:8s} seed {seed}: k-NN {before['knn']:.3f} -> {after['knn']:.3f}, "
                f"linear {before['linear']:.3f} -> {after['linear']:.3f}  "
                f"({len(res.history)} steps, {seconds:.0f} s; loss "
                f"{losses[0]:.3f} -> {losses[-1]:.3f})",
                flush=True,
            )
        summary = {}
        for metric in ("knn", "linear"):
            b = np.array([r["before"][metric] for r in rows])
            a = np.array([r["after"][metric] for r in rows])
            summary[metric] = {
                "before": float(b.mean()),
                "after": float(a.mean()),
                "gain": float((a - b).mean()),
                "worst_gain": float((a - b).min()),
            }
        results["tasks"][name] = {
            "classes": classes,
            "normalize": normalize,
            "runs": rows,
            "summary": summary,
        }
        s = summary
        print(
            f"  {name:8s} mean of {len(rows)} seed(s): k-NN {s['knn']['before']:.3f} -> "
            f"{s['knn']['after']:.3f} ({s['knn']['gain']:+.3f}), linear "
            f"{s['linear']['before']:.3f} -> {s['linear']['after']:.3f} "
            f"({s['linear']['gain']:+.3f})",
            flush=True,
        )
    OUT_DIR.mkdir(exist_ok=True)
    (OUT_DIR / "ssl_eval.json").write_text(json.dumps(results, indent=2))
    print(f"  figures: {OUT_DIR / 'ssl_eval.json'}")


if __name__ == "__main__":
    main()
