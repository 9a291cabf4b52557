"""Does ``features="embedding+geometry"`` help the object classifier?  And the segment's size in
the default features?  Accuracy of three feature sets, paired.

Generated scenes of 400 segments (ellipses on a 20 x 20 grid of 32 px cells, 640 x 640 float
image, background ~0.1): every segment has a random size (radius 4-12 px), elongation (1-1.6),
orientation, position jitter, base brightness (0.3-1.0) and texture class, drawn the same way
in every task; only which property is the class changes:

- ``size``: ``large`` (more than pi 8^2 px) vs ``small``;
- ``brightness``: ``bright`` (base level > 0.65) vs ``dim``;
- ``texture``: ``spotty`` (15 % of the pixels +0.6) vs ``smooth`` (noise only);
- ``radial``, the control: ``peaked`` (bright centre) vs ``hollow`` (bright rim), a radial
  profile with the same mean and standard deviation in both classes, so the measurements
  (area, shape, intensity mean and std) cannot see the class; only the embeddings can.

Each scene is embedded once with ``embed_segments``' defaults (the **untrained** resnet18, seed
0, on the CPU: no ImageNet weights here) and measured once with ``add_measurements``.  A
simulated user annotates 10 and 30 segments per class at random (``--draws`` draws; the same
segments for every method and every feature set, so the comparison is paired);
``train_classifier(table, annotations, method=..., features=..., size=..., seed=draw)``, then
``predict``; the accuracy is measured on **every segment not annotated**.  The feature sets:

- ``alone``: ``features="embedding", size=False``, the embeddings alone (the default before
  issue 22);
- ``embedding``: the default, the embeddings plus log(area) weighted by how much the annotated
  classes differ in size (sqrt(D) x min(between / within sums of squares, 4), at least 1);
- ``embedding+geometry``: with the library's own weighting of the measurement block (each of
  its G columns times sqrt(D / G)).

Reported: mean ± sd (sample sd) over the draws, and the paired differences embedding - alone
(what the size column changes) and embedding+geometry - embedding.

Expected: the size column helps where size defines the class and changes nothing elsewhere;
geometry helps where a measurement defines the class (size, brightness, texture via the
intensity std) and costs accuracy on the control, where the measurements are noise that the
weighting makes as loud as the embeddings.

    python benchmarks/classify_geometry.py            # 4 tasks x 3 methods x 5 draws, ~1 min
    python benchmarks/classify_geometry.py --tasks texture radial --methods logistic
    python benchmarks/classify_geometry.py --quick    # smoke run: 144 segments, 2 draws (~30 s)
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
from _common import command_line, environment, write_json

import napari_segrep as sr
from napari_segrep.analysis.classify import METHODS
from napari_segrep.analysis.measure import geometry_columns

TASKS = ("size", "brightness", "texture", "radial")
CONTROL = "radial"  # the measurements cannot see its classes
CELL = 32  # px per grid cell
HEADLINE = ("logistic", 10)  # the comparison the verdicts use
#: name -> train_classifier's (features, size)
FEATURE_SETS = {
    "alone": ("embedding", False),
    "embedding": ("embedding", True),
    "embedding+geometry": ("embedding+geometry", True),
}


# ----------------------------------------------------------------------------- scenes
def scene(task: str, n: int = 400, seed: int = 0):
    """``image, labels, truth`` (``truth[label] = class``) of one generated task.

    ``n`` ellipses on a ``ceil(sqrt(n))``-square grid of 32 px cells, drawn in label order
    (neighbours may touch: a later segment overwrites the pixels it shares with an earlier
    one).  Every segment's size, shape, brightness and texture class are drawn whatever the
    task, so the tasks differ only in what defines the class."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}: choose one of {', '.join(TASKS)}")
    rng = np.random.default_rng(seed)
    grid = int(np.ceil(np.sqrt(n)))
    side = grid * CELL
    image = rng.normal(0.1, 0.02, (side, side))
    labels = np.zeros((side, side), np.int32)
    truth = {}
    reach = CELL  # an ellipse reaches at most 12 * sqrt(1.6) + 2 px from its cell's centre
    for k in range(n):
        gy, gx = divmod(k, grid)
        r = rng.uniform(4, 12)  # radius
        a = rng.uniform(1.0, 1.6)  # elongation
        th = rng.uniform(0, np.pi)  # orientation
        cy = gy * CELL + CELL / 2 + rng.uniform(-2, 2)
        cx = gx * CELL + CELL / 2 + rng.uniform(-2, 2)
        y0, x0 = max(int(cy) - reach, 0), max(int(cx) - reach, 0)
        win = np.s_[y0 : min(int(cy) + reach, side), x0 : min(int(cx) + reach, side)]
        yy, xx = np.mgrid[win]
        dy, dx = yy - cy, xx - cx
        u = (dy * np.cos(th) + dx * np.sin(th)) / (r * np.sqrt(a))
        v = (-dy * np.sin(th) + dx * np.cos(th)) * np.sqrt(a) / r
        m = u * u + v * v <= 1
        b = rng.uniform(0.3, 1.0)  # base brightness
        first = rng.random() < 0.5  # the texture class: spotty / peaked
        npx = int(m.sum())
        if task == CONTROL:  # bright centre vs bright rim: same mean and std
            rho = np.sqrt(u[m] ** 2 + v[m] ** 2)
            profile = 0.3 * (np.cos(np.pi * rho) + 4 / np.pi**2)
            tex = (profile if first else -profile) + rng.normal(0, 0.05, npx)
        else:
            tex = rng.normal(0, 0.1, npx)
            if first:
                tex += (rng.random(npx) < 0.15) * 0.6
        image[win][m] = b + tex
        labels[win][m] = k + 1
        if task == "size":
            truth[k + 1] = "large" if npx > np.pi * 8**2 else "small"
        elif task == "brightness":
            truth[k + 1] = "bright" if b > 0.65 else "dim"
        elif task == "texture":
            truth[k + 1] = "spotty" if first else "smooth"
        else:
            truth[k + 1] = "peaked" if first else "hollow"
    return image.astype(np.float32), labels, truth


# ----------------------------------------------------------------------------- evaluation
def draw_annotations(y: np.ndarray, n_per: int, seed: int) -> np.ndarray:
    """Row positions of ``n_per`` random segments of every class (classes in sorted order)."""
    rng = np.random.default_rng(seed)
    return np.concatenate(
        [rng.choice(np.flatnonzero(y == c), n_per, replace=False) for c in np.unique(y)]
    )


def accuracy(table, y, picked, method: str, feature_set: str, seed: int) -> float:
    """Train on the ``picked`` rows, predict every row; accuracy on the rows not picked."""
    labels = table["label"].to_numpy()
    ann = {int(labels[i]): y[i] for i in picked}
    features, size = FEATURE_SETS[feature_set]
    clf = sr.train_classifier(table, ann, method=method, features=features, size=size, seed=seed)
    pred = clf.predict(table)["class"].to_numpy()
    rest = np.ones(len(y), bool)
    rest[picked] = False
    return float((pred[rest] == y[rest]).mean())


def mean_sd(values) -> tuple[float, float]:
    v = np.asarray(values, float)
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def fmt(values, sign: str = "") -> str:
    m, s = mean_sd(values)
    return f"{round(m, 3) + 0.0:{sign}.3f} ± {s:.3f}"  # + 0.0: no "-0.000"


# ----------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    parser.add_argument(
        "--methods", nargs="+", default=["logistic", "knn", "random_forest"], choices=METHODS
    )
    parser.add_argument("--per-class", nargs="+", type=int, default=[10, 30])
    parser.add_argument("--draws", type=int, default=5, help="annotation draws (default 5)")
    parser.add_argument("--segments", type=int, default=400, help="segments per scene")
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="scenes' seed; draw d annotates with seed 100 + 1000 * seed + d (default 0)",
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: 144 segments, 2 draws")
    args = parser.parse_args()
    if args.quick:
        args.segments, args.draws = 144, min(args.draws, 2)
    warnings.filterwarnings("ignore", category=UserWarning)
    start = time.perf_counter()
    env = environment()
    draw_seeds = [100 + 1000 * args.seed + d for d in range(args.draws)]
    print(f"classify_geometry  ({command_line()})")
    print(
        f"  features {' vs '.join(FEATURE_SETS)}; embed_segments' defaults (untrained resnet18, "
        f"seed 0; no ImageNet weights), CPU, {env['torch_threads']} torch threads, load "
        f"{env['loadavg_1min']:.1f}\n  scenes of {args.segments} segments, seed {args.seed}; "
        f"{args.draws} draws (annotation seeds {draw_seeds[0]}..{draw_seeds[-1]}); "
        f"methods {', '.join(args.methods)}; annotations per class {args.per_class}"
    )
    results = {"args": vars(args), "environment": env, "tasks": {}}
    fit_s = {(m, f): 0.0 for m in args.methods for f in FEATURE_SETS}
    fit_n = dict.fromkeys(fit_s, 0)
    for task in args.tasks:
        t0 = time.perf_counter()
        image, labels, truth = scene(task, args.segments, args.seed)
        t1 = time.perf_counter()
        table = sr.embed_segments(image, labels, device="cpu")
        t2 = time.perf_counter()
        table = sr.add_measurements(table, image, labels)
        t3 = time.perf_counter()
        y = np.array([truth[int(lab)] for lab in table["label"]], dtype=object)
        names = sorted(set(y))
        counts = {c: int((y == c).sum()) for c in names}
        n_emb = sum(1 for c in table.columns if isinstance(c, str) and c.startswith("emb_"))
        n_geo = len(geometry_columns(table))
        listed = ", ".join(f"{c} {n}" for c, n in counts.items())
        print(
            f"\n  {task}: {len(table)} segments ({listed})"
            f"\n    {n_emb} embedding + {n_geo} measurement columns (weight sqrt(D/G) = "
            f"{np.sqrt(n_emb / n_geo):.2f}); scene {t1 - t0:.2f} s, embed {t2 - t1:.1f} s, "
            f"measure {t3 - t2:.2f} s",
            flush=True,
        )
        if task == args.tasks[0]:  # warm-up, untimed: imports, first-call overheads
            for method in args.methods:
                for features in FEATURE_SETS:
                    accuracy(table, y, draw_annotations(y, 2, 0), method, features, seed=0)
        acc = {}  # (method, n_per, features) -> accuracies per draw
        for method in args.methods:
            for n_per in args.per_class:
                for d, draw_seed in enumerate(draw_seeds):
                    picked = draw_annotations(y, n_per, draw_seed)
                    for features in FEATURE_SETS:
                        t = time.perf_counter()
                        a = accuracy(table, y, picked, method, features, seed=d)
                        fit_s[method, features] += time.perf_counter() - t
                        fit_n[method, features] += 1
                        acc.setdefault((method, n_per, features), []).append(a)
                alone, emb, geo = (acc[method, n_per, f] for f in FEATURE_SETS)
                print(
                    f"    {method:13s} {n_per:3d}/class  {fmt(alone)} -> {fmt(emb)} -> {fmt(geo)}",
                    flush=True,
                )
        results["tasks"][task] = {
            "segments": len(table),
            "classes": counts,
            "embedding_columns": n_emb,
            "measurement_columns": n_geo,
            "scene_s": t1 - t0,
            "embed_s": t2 - t1,
            "measure_s": t3 - t2,
            "accuracy": {
                f"{m}_{n}_{f}": {"mean": mean_sd(v)[0], "sd": mean_sd(v)[1], "all": v}
                for (m, n, f), v in acc.items()
            },
        }

    print(
        f"\n  accuracy on the segments not annotated, mean ± sd over {args.draws} draws "
        "(diff: paired, per draw)"
    )
    head = f"  {'task':12s} {'method':13s} {'ann/class':>9s} {'alone':>15s} {'embedding':>15s} "
    print(head + f"{'size diff':>15s} {'emb+geometry':>15s} {'geometry diff':>15s}")
    verdicts, size_verdicts, over_alone = {}, {}, {}
    for task in args.tasks:
        acc = results["tasks"][task]["accuracy"]
        for method in args.methods:
            for n_per in args.per_class:
                alone, emb, geo = (acc[f"{method}_{n_per}_{f}"]["all"] for f in FEATURE_SETS)
                diff, size_diff = np.subtract(geo, emb), np.subtract(emb, alone)
                name = f"{task} (ctl)" if task == CONTROL else task
                print(
                    f"  {name:12s} {method:13s} {n_per:9d} {fmt(alone):>15s} {fmt(emb):>15s} "
                    f"{fmt(size_diff, '+'):>15s} {fmt(geo):>15s} {fmt(diff, '+'):>15s}"
                )
                if (method, n_per) == HEADLINE:
                    verdicts[task] = float(diff.mean())
                    size_verdicts[task] = float(size_diff.mean())
                    over_alone[task] = float(np.subtract(geo, alone).mean())
    if size_verdicts:
        method, n_per = HEADLINE
        print(
            f"\n  {method}, {n_per}/class: embedding (with size) - alone "
            + ", ".join(f"{t} {v:+.3f}" for t, v in size_verdicts.items())
        )
        results["headline_size_diff"] = size_verdicts
        quiet = [t for t in size_verdicts if t != "size"]
        if quiet:
            worst = min(size_verdicts[t] for t in quiet)
            print(
                f"  the size column costs nothing where size does not define the class "
                f"({', '.join(quiet)}; worst {worst:+.3f}): {'YES' if worst > -0.01 else 'NO'}"
            )
    if verdicts:
        method, n_per = HEADLINE
        helped = [t for t in verdicts if t != CONTROL]
        ok = all(over_alone[t] > 0 for t in helped)
        print(
            f"  {method}, {n_per}/class: embedding+geometry - embedding "
            + ", ".join(f"{t} {v:+.3f}" for t, v in verdicts.items())
        )
        print(
            f"  {method}, {n_per}/class: embedding+geometry - alone "
            + ", ".join(f"{t} {v:+.3f}" for t, v in over_alone.items())
        )
        if helped:
            print(
                f"  geometry helps the embeddings alone where a measurement defines the class "
                f"({', '.join(helped)}): {'YES' if ok else 'NO'}"
            )
        if CONTROL in verdicts:
            print(
                f"  control ({CONTROL}, invisible to the measurements): "
                f"{verdicts[CONTROL]:+.3f} (the cost of the measurement block where it is noise)"
            )
        results["headline_diff"] = verdicts
        results["headline_diff_over_alone"] = over_alone
    print(
        "\n  time per train_classifier + predict (one fit, its 5-fold CV, predict all rows; "
        "after a warm-up):"
    )
    for (method, features), seconds in fit_s.items():
        if fit_n[method, features]:
            print(
                f"    {method:13s} {features:18s} {1000 * seconds / fit_n[method, features]:7.0f}"
                f" ms  ({fit_n[method, features]} calls, {seconds:.1f} s)"
            )
    results["fit_s"] = {f"{m}_{f}": s for (m, f), s in fit_s.items()}
    total = time.perf_counter() - start
    results["total_s"] = total
    path = write_json("classify_geometry", results)
    print(f"  total {total:.0f} s; figures in {path}")


if __name__ == "__main__":
    main()
