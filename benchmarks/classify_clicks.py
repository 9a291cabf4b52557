"""How many clicks does the object classifier need, and does it beat the regionprops peer?

A simulated user annotates segments with their true class; each **mode** is fitted on those
and classifies every segment; the accuracy is measured on **all the segments not annotated**.
Every mode sees the same clicks.  Tasks (``_classify_tasks.py``), each one image embedded once
by ``embed_segments`` with its defaults (the **untrained** resnet18, seed 0: no ImageNet
weights are downloaded here, so these figures are a floor for what pretrained weights give)
and measured once by ``add_measurements``:

- ``cells``: the package's generated three-class cells sample (round, elongated, spotty), 600
  cells at 1024 x 1024;
- ``ihc``: real tissue (scikit-image's immunohistochemistry image), nuclei segmented and classed
  DAB-positive/negative by colour deconvolution, a measurement independent of the embeddings;
- ``nuclei``: generated nuclei in four cell-cycle-like states (600);
- ``digits``: scikit-learn's handwritten digits drawn as segments, 10 classes (597).

Modes (:data:`MODES`: ``mode(task, annotated, draw) -> (class of every row, details)``; a new
one, e.g. a refined encoder's, is one more function):

- ``embedding``: ``train_classifier`` (``--method``, logistic by default) on the frozen
  embeddings with its default features (plus log area);
- ``embedding+geometry``: the same with the measurement columns of ``add_measurements``;
- ``measurements``: the same on the measurement columns alone;
- ``auto``: ``features="auto"`` (the three above, chosen by cross-validation on the clicks);
- ``auto+method``: ``features="auto", method="auto"``: the logistic regression on each of the
  three, or the random forest on the measurements, chosen by cross-validation on the clicks;
- ``refined`` / ``refined+geometry``: ``refine_encoder`` from the frozen encoder on the clicks
  (its defaults: ``epochs="auto"``, seed = the draw), the image embedded again with the encoder
  it keeps (the refined one when the held-out check passes, else the frozen one: what the user
  ends with), then the ``embedding`` / ``embedding+geometry`` classifier; one refinement per
  draw and click count serves both, and the details record the check and the refined
  encoder's accuracy whatever the check (``forced``);
- ``peer``: what napari-feature-classifier and APOC do, written here without our package:
  ``skimage.measure.regionprops_table(labels, intensity_image=image)`` with the properties
  ``area, perimeter, eccentricity, solidity, extent, axis_major_length, axis_minor_length,
  intensity_mean, intensity_std`` (mean and std for every channel: RGB gives 3 of each), the
  raw image (no normalisation), into scikit-learn's ``RandomForestClassifier(n_estimators=100,
  random_state=draw)``, all its other settings left at scikit-learn's defaults, no scaling.

Clicks: ``random``, n segments of every class per draw for n in ``--clicks`` (5, 10, 20), the
first n of one random order of each class's segments (so the 5-click set is part of the
10-click set), over ``--seeds`` draws (0 1 2).  With ``--suggest``, also the ``suggest``
strategy for the ``embedding`` mode: the first 2 of every class, then rounds of train,
predict, annotate the ``--round`` segment(s) ``suggest_next`` proposes (smallest margin)
until n x (number of classes) clicks in all (the total matches ``random``'s, not per class;
it takes the hardest segments out of the scored pool, so its accuracy is a little
flattering).

Per task, context: KMeans on the standardised embeddings (k = the number of classes, 10
inits), adjusted Rand index against the truth, and the default classifier's cross-validated
accuracy with every segment annotated (5 folds).  The final table: task x clicks x mode,
mean ± sd over the draws; per (task, clicks) the best of our modes against the peer (WIN /
LOSE by the difference of the means) and ``auto`` against the best fixed mode.

    python benchmarks/classify_clicks.py                  # 4 tasks, 3 draws (36 refinements)
    python benchmarks/classify_clicks.py --modes embedding embedding+geometry measurements \
        auto auto+method peer                            # without refining: ~4 min, 1 core
    python benchmarks/classify_clicks.py --tasks cells --seeds 0 1 --modes embedding peer
    python benchmarks/classify_clicks.py --suggest        # also the suggest strategy
    python benchmarks/classify_clicks.py --quick          # smoke run: small cells, 2 draws
"""

from __future__ import annotations

import argparse
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import _classify_tasks
import numpy as np
from _common import command_line, environment, write_json

import napari_segrep as sr
from napari_segrep.analysis.classify import suggest_next

GOAL = 0.9  # accuracy with 10 clicks per class on the generated cells (issue 4/6)
#: The peer's regionprops properties (intensity ones per channel).
PEER_PROPERTIES = (
    "area",
    "perimeter",
    "eccentricity",
    "solidity",
    "extent",
    "axis_major_length",
    "axis_minor_length",
    "intensity_mean",
    "intensity_std",
)
PEER = "peer"
#: features and method chosen together by cross-validation
ANY_METHOD = "auto+method"
#: the encoder refined from the clicks (``refine_encoder``), as the user ends with it
REFINED = "refined"


@dataclass
class Task:
    """One task as every mode sees it: the image and labels, the measured embedding table
    (one row per segment), the true class of every row and the class names; ``cache``: what
    a mode computes once per task (the peer's regionprops)."""

    name: str
    image: np.ndarray
    labels: np.ndarray
    table: object
    truth: np.ndarray
    names: list[str]
    cache: dict = field(default_factory=dict)


Mode = Callable[[Task, np.ndarray, int], tuple[np.ndarray, dict]]


def load(name: str, quick: bool) -> tuple[Task, float]:
    """The task with its table embedded and measured; the seconds embedding took."""
    image, labels, classes, names = _classify_tasks.load(name, quick)
    t0 = time.perf_counter()
    table = sr.embed_segments(image, labels, device="cpu")
    seconds = time.perf_counter() - t0
    table = sr.add_measurements(table, image, labels)
    truth = np.array([classes[int(lab)] for lab in table["label"]], dtype=object)
    return Task(name, image, labels, table, truth, list(names)), seconds


def annotations_of(task: Task, annotated: np.ndarray) -> dict:
    rows = np.flatnonzero(annotated)
    labels = task.table["label"].to_numpy()[rows].astype(int)
    return dict(zip(labels, task.truth[rows], strict=True))


def ours(features: str, method: str) -> Mode:
    """``train_classifier(features=...)`` on the annotated rows, predicting every row."""

    def mode(task: Task, annotated: np.ndarray, draw: int):
        clf = sr.train_classifier(
            task.table, annotations_of(task, annotated), method=method, features=features, seed=draw
        )
        details = {"features": clf.info["features"]}
        if "features_cv" in clf.info:
            details["features_cv"] = clf.info["features_cv"]
        return clf.predict(task.table)["class"].to_numpy(), details

    return mode


def peer_features(task: Task) -> np.ndarray:
    """The peer's regionprops of every segment, in the table's row order (computed once)."""
    if "peer" not in task.cache:
        import pandas as pd
        from skimage.measure import regionprops_table

        props = pd.DataFrame(
            regionprops_table(
                task.labels,
                intensity_image=task.image,  # (Y, X) or (Y, X, 3): per channel
                properties=("label", *PEER_PROPERTIES),
            )
        ).set_index("label")
        task.cache["peer"] = props.loc[task.table["label"].to_numpy()].to_numpy(np.float64)
    return task.cache["peer"]


def peer(task: Task, annotated: np.ndarray, draw: int):
    """regionprops + random forest (see the module's docstring), independent of our package."""
    from sklearn.ensemble import RandomForestClassifier

    x = peer_features(task)
    forest = RandomForestClassifier(n_estimators=100, random_state=draw)
    forest.fit(x[annotated], task.truth[annotated].astype(str))
    return forest.predict(x).astype(object), {"n_features": int(x.shape[1])}


def any_method() -> Mode:
    """``features="auto", method="auto"``: the features and the method (logistic or forest)
    chosen together by cross-validation on the clicks."""

    def mode(task: Task, annotated: np.ndarray, draw: int):
        clf = sr.train_classifier(
            task.table, annotations_of(task, annotated), method="auto", features="auto", seed=draw
        )
        details = {"features": clf.info["features"], "method": clf.method}
        return clf.predict(task.table)["class"].to_numpy(), details

    return mode


def refinement(task: Task, annotated: np.ndarray, draw: int) -> dict:
    """``refine_encoder`` from the frozen encoder on these clicks (once per clicks and draw,
    shared by the refined modes): the table the user ends with (re-embedded when the refined
    encoder was kept, else the frozen one) and the refined encoder's table all the same."""
    key = ("refined", draw, annotated.tobytes())
    if key not in task.cache:
        t0 = time.perf_counter()
        result = sr.refine_encoder(
            task.image, task.labels, annotations_of(task, annotated), seed=draw, device="cpu"
        )
        seconds = time.perf_counter() - t0
        refined = sr.embed_segments(task.image, task.labels, result.refined_encoder, device="cpu")
        measured = task.table[[c for c in task.table.columns if not c.startswith("emb_")]]
        refined = measured.merge(
            refined[["label", *(c for c in refined.columns if c.startswith("emb_"))]], on="label"
        )
        task.cache[key] = {
            "kept": refined if result.accepted else task.table,
            "refined": refined,
            "details": {
                "accepted": result.accepted,
                "before": result.accuracy_before,
                "after": result.accuracy_after,
                "refine_s": seconds,
                "steps": len(result.history),
            },
        }
    return task.cache[key]


def refined(features: str) -> Mode:
    """The classifier (logistic, ``features``) on the table the user ends with after
    ``refine_encoder``; the details add the refined encoder's accuracy, kept or not."""

    def mode(task: Task, annotated: np.ndarray, draw: int):
        done = refinement(task, annotated, draw)
        ann = annotations_of(task, annotated)
        kept = sr.train_classifier(done["kept"], ann, features=features, seed=draw)
        forced = sr.train_classifier(done["refined"], ann, features=features, seed=draw)
        forced_acc = score(task, forced.predict(done["refined"])["class"].to_numpy(), annotated)
        details = {**done["details"], "forced": forced_acc}
        return kept.predict(done["kept"])["class"].to_numpy(), details

    return mode


def modes_for(method: str) -> dict[str, Mode]:
    """Every mode by name; ours first, the peer last."""
    modes: dict[str, Mode] = {
        f: ours(f, method) for f in ("embedding", "embedding+geometry", "measurements", "auto")
    }
    modes[ANY_METHOD] = any_method()
    modes[REFINED] = refined("embedding")
    modes[REFINED + "+geometry"] = refined("embedding+geometry")
    modes[PEER] = peer
    return modes


MODES = tuple(modes_for("logistic"))


def context(task: Task, method: str) -> dict:
    """KMeans ARI on the standardised embeddings; cross-validated accuracy, all annotated."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score

    x = task.table.filter(like="emb_").to_numpy(np.float64)
    z = (x - x.mean(0)) / np.maximum(x.std(0), 1e-12)
    found = KMeans(len(task.names), n_init=10, random_state=0).fit_predict(z)
    everything = annotations_of(task, np.ones(len(task.truth), bool))
    clf = sr.train_classifier(task.table, everything, method=method, seed=0)
    return {
        "kmeans_ari": float(adjusted_rand_score(task.truth, found)),
        "cv_all_annotated": float(clf.cv_score_),
    }


def class_orders(truth, names, seed: int) -> list[np.ndarray]:
    """Every class's row positions, in one random order per draw."""
    rng = np.random.default_rng(seed)
    return [rng.permutation(np.flatnonzero(truth == c)) for c in names]


def clicked(task: Task, n: int, draw: int) -> np.ndarray:
    """The rows annotated with n random clicks per class in this draw."""
    annotated = np.zeros(len(task.truth), bool)
    for order in class_orders(task.truth, task.names, draw):
        annotated[order[:n]] = True
    return annotated


def score(task: Task, predicted: np.ndarray, annotated: np.ndarray) -> float:
    return float((predicted == task.truth)[~annotated].mean())


def suggested_clicks(task: Task, clicks, seed, method, round_size):
    """Start with 2 random per class, then annotate ``suggest_next``'s proposals (the
    ``embedding`` mode)."""
    k = len(task.names)
    annotated = np.zeros(len(task.truth), bool)
    for order in class_orders(task.truth, task.names, seed):
        annotated[order[:2]] = True
    targets = sorted(n * k for n in clicks)
    out, rounds = {}, 0
    while True:
        ann = annotations_of(task, annotated)
        pred = sr.train_classifier(task.table, ann, method=method, seed=seed).predict(task.table)
        rounds += 1
        total = int(annotated.sum())
        if total in targets:
            out[total // k] = score(task, pred["class"].to_numpy(), annotated)
        if total >= targets[-1]:
            return out, rounds
        step = min(round_size, min(t for t in targets if t > total) - total)
        chosen = suggest_next(pred, n=step, exclude=annotated)
        annotated[pred.index.get_indexer(chosen.index)] = True


def stats(values) -> dict:
    values = np.asarray(values, np.float64)
    return {
        "mean": float(values.mean()),
        "sd": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
        "min": float(values.min()),
        "all": values.tolist(),
    }


def run_task(task: Task, modes: dict[str, Mode], args) -> dict:
    """Every mode on every draw's clicks: accuracies, details and seconds per mode."""
    runs = {m: {n: [] for n in args.clicks} for m in modes}
    details = {m: {n: [] for n in args.clicks} for m in modes}
    seconds = dict.fromkeys(modes, 0.0)
    suggest = []
    for draw in args.seeds:
        line = []
        for n in args.clicks:
            annotated = clicked(task, n, draw)
            for name, mode in modes.items():
                t0 = time.perf_counter()
                predicted, info = mode(task, annotated, draw)
                seconds[name] += time.perf_counter() - t0
                runs[name][n].append(score(task, predicted, annotated))
                details[name][n].append(info)
            line.append(f"{n}: " + " ".join(f"{runs[m][n][-1]:.3f}" for m in modes))
        if args.suggest:
            acc, n_rounds = suggested_clicks(task, args.clicks, draw, args.method, args.round)
            suggest.append(acc)
            line.append("suggest " + " ".join(f"{acc[n]:.3f}" for n in args.clicks))
        print(f"    draw {draw}: " + " | ".join(line), flush=True)
    out = {
        "modes": list(modes),
        "summary": {m: {n: stats(runs[m][n]) for n in args.clicks} for m in modes},
        "details": details,
        "seconds": seconds,
    }
    if suggest:
        out["suggest"] = {n: stats([s[n] for s in suggest]) for n in args.clicks}
    return out


def verdicts(summary: dict, n: int) -> tuple[str, str, float, str, float]:
    """(best of our modes, WIN/LOSE vs the peer, the difference, best fixed mode, auto minus
    it); ties count as WIN (>=)."""
    ours_ = [m for m in summary if m != PEER]
    best = max(ours_, key=lambda m: summary[m][n]["mean"])
    diff = summary[best][n]["mean"] - summary[PEER][n]["mean"] if PEER in summary else np.nan
    fixed = [m for m in ours_ if m not in ("auto", ANY_METHOD)]
    best_fixed = max(fixed, key=lambda m: summary[m][n]["mean"]) if fixed else ""
    auto_gap = (
        summary["auto"][n]["mean"] - summary[best_fixed][n]["mean"]
        if "auto" in summary and best_fixed
        else np.nan
    )
    return best, "WIN" if diff >= 0 else "LOSE", float(diff), best_fixed, float(auto_gap)


def print_table(results: dict, args) -> None:
    names = list(results["tasks"])
    modes = results["tasks"][names[0]]["modes"]
    width = max(17, *(len(m) + 1 for m in modes))
    print(f"\n  accuracy on the segments not annotated, mean ± sd over {len(args.seeds)} draws")
    header = f"  {'task':8s} {'clicks':>6s} " + " ".join(f"{m:>{width}s}" for m in modes)
    print(header + ("   best of ours vs peer" if PEER in modes else ""))
    for name in names:
        s = results["tasks"][name]["summary"]
        for n in args.clicks:
            cells = [f"{s[m][n]['mean']:.3f} ± {s[m][n]['sd']:.3f}" for m in modes]
            row = f"  {name:8s} {n:6d} " + " ".join(f"{c:>{width}s}" for c in cells)
            if PEER in modes and len(modes) > 1:
                best, verdict, diff, _, _ = verdicts(s, n)
                row += f"   {verdict} {diff:+.3f} ({best})"
            print(row)
    if "auto" in modes and len(modes) > 2:
        print("\n  auto vs the best fixed mode of ours (mean), and what auto chose (all draws)")
        for name in names:
            task = results["tasks"][name]
            for n in args.clicks:
                _, _, _, fixed, gap = verdicts(task["summary"], n)
                picks = [d["features"] for d in task["details"]["auto"][n]]
                counts = {f: picks.count(f) for f in dict.fromkeys(picks)}
                chose = ", ".join(f"{f} {c}" for f, c in counts.items())
                print(f"  {name:8s} {n:6d}  auto - {fixed} = {gap:+.3f}   chose: {chose}")
    if REFINED in modes:
        print(
            "\n  refined: how often the held-out check kept the refined encoder, the refined "
            "encoder's accuracy whatever the check (embedding features), seconds per refinement"
        )
        for name in names:
            task = results["tasks"][name]
            for n in args.clicks:
                done = task["details"][REFINED][n]
                kept = sum(d["accepted"] for d in done)
                forced = np.mean([d["forced"] for d in done])
                secs = np.mean([d["refine_s"] for d in done])
                frozen = task["summary"]["embedding"][n]["mean"] if "embedding" in modes else np.nan
                print(
                    f"  {name:8s} {n:6d}  kept {kept}/{len(done)}; refined encoder {forced:.3f} "
                    f"(frozen {frozen:.3f}, {forced - frozen:+.3f}); {secs:.0f} s"
                )
    if any("suggest" in results["tasks"][t] for t in names):
        print("\n  suggest (embedding mode), mean ± sd")
        for name in names:
            for n, v in results["tasks"][name].get("suggest", {}).items():
                print(f"  {name:8s} {n:6d} {v['mean']:.3f} ± {v['sd']:.3f}")
    if "cells" in names and 10 in args.clicks and "embedding" in modes:
        v = results["tasks"]["cells"]["summary"]["embedding"][10]
        met = "MET" if v["mean"] >= GOAL else "NOT MET"
        print(
            f"  goal >= {GOAL} with 10 clicks per class on the generated cells (embedding): "
            f"{v['mean']:.3f} (worst draw {v['min']:.3f}): {met}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--tasks", nargs="+", default=list(_classify_tasks.TASKS), choices=_classify_tasks.TASKS
    )
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--clicks", nargs="+", type=int, default=[5, 10, 20])
    parser.add_argument("--method", default="logistic", choices=sr.analysis.classify.METHODS)
    parser.add_argument(
        "--suggest", action="store_true", help="also the suggest strategy (embedding mode)"
    )
    parser.add_argument(
        "--round", type=int, default=1, help="suggestions annotated per round (default 1)"
    )
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.tasks, args.seeds, args.clicks = ["cells"], args.seeds[:2], [5, 10]
        args.modes = [m for m in args.modes if not m.startswith(REFINED)]  # a smoke run
    warnings.filterwarnings("ignore", category=UserWarning)
    start = time.perf_counter()
    env = environment()
    print(f"classify_clicks  ({command_line()})")
    print(
        f"  our modes: {args.method} classifier on embed_segments' defaults (untrained "
        f"resnet18, seed 0; no ImageNet weights); peer: regionprops + random forest (100 "
        f"trees); draws {args.seeds}; CPU, {env['torch_threads']} torch threads, load "
        f"{env['loadavg_1min']:.1f}"
    )
    every = modes_for(args.method)
    modes = {m: every[m] for m in args.modes}
    results = {"args": vars(args), "environment": env, "tasks": {}}
    for name in args.tasks:
        task, embed_s = load(name, args.quick)
        counts = {c: int((task.truth == c).sum()) for c in task.names}
        ctx = context(task, args.method)
        print(
            f"\n  {name}: {len(task.truth)} segments "
            f"({', '.join(f'{c} {n}' for c, n in counts.items())}); embedded in {embed_s:.1f} s;"
            f" KMeans ARI {ctx['kmeans_ari']:.3f}; CV accuracy with all annotated "
            f"{ctx['cv_all_annotated']:.3f}\n    modes: {', '.join(modes)}",
            flush=True,
        )
        out = run_task(task, modes, args)
        print(
            "    time per mode ("
            + f"{len(args.seeds)} draws x {len(args.clicks)} click counts): "
            + ", ".join(f"{m} {s:.1f} s" for m, s in out["seconds"].items())
        )
        results["tasks"][name] = {
            "segments": len(task.truth),
            "classes": counts,
            "embed_s": embed_s,
            **ctx,
            **out,
        }
    print_table(results, args)
    total = time.perf_counter() - start
    results["total_s"] = total
    every = list(args.tasks) == list(_classify_tasks.TASKS)
    path = write_json("classify_clicks" + ("" if every else "_" + "_".join(args.tasks)), results)
    print(f"  total {total:.0f} s; figures in {path}")


if __name__ == "__main__":
    main()
