"""How many clicks does the object classifier need?  Accuracy vs annotations per class.

A simulated user annotates segments with their true class; ``train_classifier`` (logistic by
default) is fitted on those and ``predict`` classifies every segment; the accuracy is measured
on **all the segments not annotated**.  Tasks (``_classify_tasks.py``), each one image embedded
once by ``embed_segments`` with its defaults (the **untrained** resnet18, seed 0: no ImageNet
weights are downloaded here, so these figures are a floor for what pretrained weights give):

- ``cells``: the package's generated three-class cells sample (round, elongated, spotty), 600
  cells at 1024 x 1024;
- ``ihc``: real tissue (scikit-image's immunohistochemistry image), nuclei segmented and classed
  DAB-positive/negative by colour deconvolution, a measurement independent of the embeddings;
- ``nuclei``: generated nuclei in four cell-cycle-like states (600).

Two strategies, for 5, 10 and 20 clicks per class (``--clicks``), over several draws
(``--seeds``; one draw = one random order of each class's segments):

- ``random``: n segments of every class drawn at random (the first n of the draw's order, so
  the 5-click set is part of the 10-click set);
- ``suggest``: the first 2 of every class (as ``random``), then rounds of: train, predict,
  annotate the ``--round`` segment(s) ``suggest_next`` proposes (smallest margin, never one
  already annotated) with their true class, until n x (number of classes) clicks in all.  The
  total matches ``random``'s, but not per class: the suggestions choose the classes.

Context per task: KMeans on the standardised embeddings (k = the number of classes, 10 inits),
adjusted Rand index against the truth, and the classifier's own cross-validated accuracy with
every segment annotated (5 folds): what no clicking strategy can beat much.

Caveat: ``suggest`` takes the segments the model finds hardest out of the scored pool, so its
accuracy on the rest is a little flattering (at most 60 of 600 cells are annotated).

    python benchmarks/classify_clicks.py                  # 3 tasks, 5 draws (~2 min, 2 cores)
    python benchmarks/classify_clicks.py --tasks cells --seeds 0 1
    python benchmarks/classify_clicks.py --quick          # smoke run: small cells, 2 draws
"""

from __future__ import annotations

import argparse
import time
import warnings

import _classify_tasks
import numpy as np
from _common import command_line, environment, write_json

import napari_segrep as sr
from napari_segrep.analysis.classify import suggest_next

GOAL = 0.9  # accuracy with 10 clicks per class on the generated cells (issue 4/6)


def embed(name: str, quick: bool):
    image, labels, classes, names = _classify_tasks.load(name, quick)
    t0 = time.perf_counter()
    table = sr.embed_segments(image, labels, device="cpu")
    seconds = time.perf_counter() - t0
    truth = np.array([classes[int(lab)] for lab in table["label"]], dtype=object)
    return table, truth, names, seconds


def context(table, truth, names, method: str) -> dict:
    """KMeans ARI on the standardised embeddings; cross-validated accuracy, all annotated."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score

    x = table.filter(like="emb_").to_numpy(np.float64)
    z = (x - x.mean(0)) / np.maximum(x.std(0), 1e-12)
    found = KMeans(len(names), n_init=10, random_state=0).fit_predict(z)
    everything = dict(zip(table["label"].astype(int), truth, strict=True))
    clf = sr.train_classifier(table, everything, method=method, seed=0)
    return {
        "kmeans_ari": float(adjusted_rand_score(truth, found)),
        "cv_all_annotated": float(clf.cv_score_),
    }


def class_orders(truth, names, seed: int) -> list[np.ndarray]:
    """Every class's row positions, in one random order per draw."""
    rng = np.random.default_rng(seed)
    return [rng.permutation(np.flatnonzero(truth == c)) for c in names]


def fit_and_score(table, truth, annotated: np.ndarray, method: str, seed: int):
    """Train on the annotated rows, predict all; accuracy on the rows not annotated."""
    rows = np.flatnonzero(annotated)
    ann = dict(zip(table["label"].to_numpy()[rows].astype(int), truth[rows], strict=True))
    pred = sr.train_classifier(table, ann, method=method, seed=seed).predict(table)
    correct = pred["class"].to_numpy() == truth
    return pred, float(correct[~annotated].mean())


def random_clicks(table, truth, names, clicks, seed, method) -> dict[int, float]:
    orders = class_orders(truth, names, seed)
    out = {}
    for n in clicks:
        annotated = np.zeros(len(table), bool)
        for order in orders:
            annotated[order[:n]] = True
        out[n] = fit_and_score(table, truth, annotated, method, seed)[1]
    return out


def suggested_clicks(table, truth, names, clicks, seed, method, round_size):
    """Start with 2 random per class, then annotate ``suggest_next``'s proposals."""
    k = len(names)
    annotated = np.zeros(len(table), bool)
    for order in class_orders(truth, names, seed):
        annotated[order[:2]] = True
    targets = sorted(n * k for n in clicks)
    out, per_class, rounds = {}, {}, 0
    while True:
        pred, acc = fit_and_score(table, truth, annotated, method, seed)
        rounds += 1
        total = int(annotated.sum())
        if total in targets:
            out[total // k] = acc
            per_class[total // k] = {c: int((annotated & (truth == c)).sum()) for c in names}
        if total >= targets[-1]:
            return out, per_class, rounds
        step = min(round_size, min(t for t in targets if t > total) - total)
        chosen = suggest_next(pred, n=step, exclude=annotated)
        annotated[pred.index.get_indexer(chosen.index)] = True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--tasks", nargs="+", default=list(_classify_tasks.TASKS), choices=_classify_tasks.TASKS
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--clicks", nargs="+", type=int, default=[5, 10, 20])
    parser.add_argument("--method", default="logistic", choices=sr.analysis.classify.METHODS)
    parser.add_argument(
        "--round", type=int, default=1, help="suggestions annotated per round (default 1)"
    )
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.tasks, args.seeds, args.clicks = ["cells"], args.seeds[:2], [5, 10]
    warnings.filterwarnings("ignore", category=UserWarning)
    start = time.perf_counter()
    env = environment()
    print(f"classify_clicks  ({command_line()})")
    print(
        f"  {args.method} classifier on embed_segments' defaults (untrained resnet18, seed 0; "
        f"no ImageNet weights); draws {args.seeds}; suggestions: {args.round} per round; "
        f"CPU, {env['torch_threads']} torch threads, load {env['loadavg_1min']:.1f}"
    )
    results = {"args": vars(args), "environment": env, "tasks": {}}
    rows = []
    for name in args.tasks:
        table, truth, names, embed_s = embed(name, args.quick)
        counts = {c: int((truth == c).sum()) for c in names}
        ctx = context(table, truth, names, args.method)
        print(
            f"\n  {name}: {len(table)} segments ({', '.join(f'{c} {n}' for c, n in counts.items())});"
            f" embedded in {embed_s:.1f} s; KMeans ARI {ctx['kmeans_ari']:.3f}; "
            f"CV accuracy with all annotated {ctx['cv_all_annotated']:.3f}",
            flush=True,
        )
        runs = {"random": [], "suggest": []}
        seconds = {"random": 0.0, "suggest": 0.0}
        for seed in args.seeds:
            t0 = time.perf_counter()
            runs["random"].append(
                random_clicks(table, truth, names, args.clicks, seed, args.method)
            )
            t1 = time.perf_counter()
            acc, per_class, n_rounds = suggested_clicks(
                table, truth, names, args.clicks, seed, args.method, args.round
            )
            seconds["random"] += t1 - t0
            seconds["suggest"] += time.perf_counter() - t1
            runs["suggest"].append(acc)
            runs.setdefault("suggest_per_class", []).append(per_class)
            print(
                f"    draw {seed}: random "
                + " ".join(f"{runs['random'][-1][n]:.3f}" for n in args.clicks)
                + " | suggest "
                + " ".join(f"{acc[n]:.3f}" for n in args.clicks)
                + f"  ({n_rounds} rounds)",
                flush=True,
            )
        summary = {}
        for strategy in ("random", "suggest"):
            for n in args.clicks:
                values = np.array([r[n] for r in runs[strategy]])
                summary[f"{strategy}_{n}"] = {
                    "mean": float(values.mean()),
                    "sd": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
                    "min": float(values.min()),
                    "all": values.tolist(),
                }
                rows.append((name, n, strategy, summary[f"{strategy}_{n}"]))
        top = max(args.clicks)
        picked = {c: np.mean([p[top][c] for p in runs["suggest_per_class"]]) for c in names}
        print(
            f"    suggest, {top * len(names)} clicks: per class (mean) "
            + ", ".join(f"{c} {v:.1f}" for c, v in picked.items())
        )
        print(
            f"    time: random {seconds['random']:.1f} s, suggest {seconds['suggest']:.1f} s "
            f"({len(args.seeds)} draws)"
        )
        results["tasks"][name] = {
            "segments": len(table),
            "classes": counts,
            "embed_s": embed_s,
            **ctx,
            "runs": runs,
            "summary": summary,
            "seconds": seconds,
        }

    print(f"\n  accuracy on the segments not annotated, mean ± sd over {len(args.seeds)} draws")
    print(f"  {'task':8s} {'clicks/class':>12s} {'random':>16s} {'suggest':>16s}")
    for name in args.tasks:
        s = results["tasks"][name]["summary"]
        for n in args.clicks:
            cells = [
                f"{s[f'{st}_{n}']['mean']:.3f} ± {s[f'{st}_{n}']['sd']:.3f}"
                for st in ("random", "suggest")
            ]
            print(f"  {name:8s} {n:12d} {cells[0]:>16s} {cells[1]:>16s}")
    if "cells" in results["tasks"] and 10 in args.clicks:
        s = results["tasks"]["cells"]["summary"]
        for st in ("random", "suggest"):
            mean, low = s[f"{st}_10"]["mean"], s[f"{st}_10"]["min"]
            met = "MET" if mean >= GOAL else "NOT MET"
            print(
                f"  goal >= {GOAL} with 10 clicks per class on the generated cells, {st}: "
                f"{mean:.3f} (worst draw {low:.3f}): {met}"
            )
    total = time.perf_counter() - start
    results["total_s"] = total
    path = write_json("classify_clicks", results)
    print(f"  total {total:.0f} s; figures in {path}")


if __name__ == "__main__":
    main()
