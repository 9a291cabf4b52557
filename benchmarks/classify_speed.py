"""How fast is retraining the object classifier?  Train + predict on 10,000 segments.

Every annotation a user adds retrains the classifier and re-predicts every segment, so that
round trip must feel immediate.  Synthetic embeddings stand in for ``embed_segments``' output:
10,000 rows x 512-d (resnet18's size), 4 classes (a 16-d latent with one centre per class,
mapped to 512-d by a random matrix, plus noise, through a ReLU: correlated, non-negative, and
not trivially separable, like pooled ResNet features), ``label`` + ``emb_*`` columns.  Annotated:
150 and 1,000 random segments.  Timed: ``train_classifier(table, annotations, method=...)``
(one fit and a stratified 5-fold cross-validation: 6 fits) then ``.predict(table)``.

- **First call**: in a fresh process (the data built first, untimed), so it includes importing
  scikit-learn: what the first click of a session costs.
- **Warm**: the same after one untimed call, repeated, interleaved with the baselines (A B C A B
  C ...); best and median.  Logistic also with BLAS and OpenMP limited to one thread for the
  call (``threadpoolctl.threadpool_limits(1)``): ``logistic 1 thread``.
- **Baselines, same run, same data**: scikit-learn alone with its defaults,
  ``StandardScaler`` + ``LogisticRegression(C=1, max_iter=2000)`` (scikit-learn's default
  solver, lbfgs; the package fits with newton-cg) fitted on the annotated rows and
  ``predict_proba`` on all rows (``plain``), and the same plus a stratified 5-fold
  cross-validation (``plain+cv``: the work ``train_classifier`` does, done the obvious way);
  and the target, 1 s.  Ratios: warm medians.

    python benchmarks/classify_speed.py            # ~2 min on 2 idle CPU cores
    python benchmarks/classify_speed.py --quick    # smoke run: 2,000 rows, 2 repeats
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from _common import command_line, environment, interleaved_timings, stats, write_json

ONE_THREAD = " 1 thread"  # a variant: the call under threadpool_limits(1)
TARGET_S = 1.0  # retrain + predict, logistic, after warm-up (issue 4/6)
METHODS = ("logistic", "random_forest", "knn")
CLASSES = np.array(["interphase", "prophase", "metaphase", "apoptotic"], dtype=object)


def make_table(n: int = 10_000, dim: int = 512, *, seed: int = 0):
    """``(table, truth)``: synthetic embeddings of ``n`` segments in 4 classes."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    latent_dim = 16
    y = rng.integers(0, len(CLASSES), n)
    centres = rng.normal(0.0, 1.0, (len(CLASSES), latent_dim))
    latent = rng.normal(0.0, 1.0, (n, latent_dim)) + centres[y]
    mix = rng.normal(0.0, 1.0 / np.sqrt(latent_dim), (latent_dim, dim))
    x = np.maximum(latent @ mix + rng.normal(0.0, 0.5, (n, dim)), 0.0).astype(np.float32)
    table = pd.DataFrame(x, columns=[f"emb_{i}" for i in range(dim)])
    table.insert(0, "label", np.arange(1, n + 1, dtype=np.int64))
    return table, CLASSES[y]


def annotate(table, truth, count: int, *, seed: int = 1):
    """``(annotations, rows)``: ``count`` random segments with their true class."""
    rows = np.random.default_rng(seed).permutation(len(table))[:count]
    labels = table["label"].to_numpy()[rows].astype(int)
    return dict(zip(labels, truth[rows], strict=True)), rows


def retrain_and_predict(table, annotations, method: str, split: dict | None = None):
    """``train_classifier`` + ``predict``; ``method`` + ``ONE_THREAD``: the same with BLAS and
    OpenMP limited to one thread (``threadpoolctl``) for the call."""
    import napari_segrep as sr

    method, limited = method.removesuffix(ONE_THREAD), method.endswith(ONE_THREAD)
    t0 = time.perf_counter()
    if limited:
        from threadpoolctl import threadpool_limits

        context = threadpool_limits(1)
    else:
        context = contextlib.nullcontext()
    with context:
        clf = sr.train_classifier(table, annotations, method=method, seed=0)
        t1 = time.perf_counter()
        pred = clf.predict(table)
    if split is not None:
        split.setdefault("train", []).append(t1 - t0)
        split.setdefault("predict", []).append(time.perf_counter() - t1)
    return pred


def sklearn_baseline(x_all, rows, y, *, cv: bool):
    """scikit-learn alone: scale + logistic fit on the annotated rows (+ the same 5-fold CV),
    probabilities of all rows."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    def model():
        return make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))

    x = x_all[rows]
    if cv:
        folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=0)
        cross_val_score(model(), x, y, cv=folds)
    return model().fit(x, y).predict_proba(x_all)


def time_count(table, truth, x_all, count: int, methods, repeats: int):
    """Warm timings of every method and both baselines with ``count`` annotations; logistic
    also with BLAS/OpenMP limited to one thread."""
    if "logistic" in methods:
        methods = [*methods, "logistic" + ONE_THREAD]
    annotations, rows = annotate(table, truth, count)
    splits: dict[str, dict] = {m: {} for m in methods}
    fns = {m: (lambda m=m: retrain_and_predict(table, annotations, m, splits[m])) for m in methods}
    fns["plain"] = lambda: sklearn_baseline(x_all, rows, truth[rows], cv=False)
    fns["plain+cv"] = lambda: sklearn_baseline(x_all, rows, truth[rows], cv=True)
    times = interleaved_timings(fns, repeats=repeats, warmup=1)
    plain, plain_cv = stats(times["plain"]), stats(times["plain+cv"])
    scored = np.ones(len(table), bool)
    scored[rows] = False
    out = []
    for method in methods:
        pred = retrain_and_predict(table, annotations, method)
        out.append(
            {
                "method": method,
                "annotations": count,
                "warm": stats(times[method]),
                "train_median_s": float(np.median(splits[method]["train"][1:])),
                "predict_median_s": float(np.median(splits[method]["predict"][1:])),
                "plain": plain,
                "plain_cv": plain_cv,
                "accuracy_not_annotated": float((pred["class"].to_numpy() == truth)[scored].mean()),
            }
        )
    return out, (plain, plain_cv)


def cold(method: str, count: int, n: int) -> dict:
    """The first call in this (fresh) process; the data are built first, untimed."""
    table, truth = make_table(n)
    annotations, _ = annotate(table, truth, count)
    import napari_segrep as sr

    _ = sr.train_classifier  # the lazy attribute: napari-segrep's own import, no sklearn
    before = sorted(m for m in sys.modules if m.split(".")[0] == "sklearn")
    t0 = time.perf_counter()
    if method == "sklearn":
        import sklearn.linear_model  # noqa: F401
        import sklearn.model_selection  # noqa: F401

        imported = time.perf_counter() - t0
        x = table.filter(like="emb_").to_numpy(np.float64)
        _, rows = annotate(table, truth, count)
        sklearn_baseline(x, rows, truth[rows], cv=False)
    else:
        retrain_and_predict(table, annotations, method)
        imported = None
    return {"seconds": time.perf_counter() - t0, "import_s": imported, "sklearn_before": before}


def run_cold(method: str, count: int, n: int) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--cold", f"{method}:{count}"]
    cmd += ["--rows", str(n)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--annotations", nargs="+", type=int, default=[150, 1000])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--cold", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cold:
        method, count = args.cold.split(":")
        print(json.dumps(cold(method, int(count), args.rows)))
        return
    if args.quick:
        args.rows, args.repeats, args.annotations = 2000, 2, [150]

    start = time.perf_counter()
    env = environment()
    print(f"classify_speed  ({command_line()})")
    print(
        f"  {args.rows} segments x 512-d synthetic embeddings, 4 classes; CPU, "
        f"{env['cpu_count']} cores, load {env['loadavg_1min']:.1f}; warm: median (best) of "
        f"{args.repeats} after 1 warm-up, interleaved"
    )

    # first calls, each in a fresh process: nothing imported yet
    first = {}
    for count in args.annotations:
        for method in [*args.methods, "sklearn"]:
            first[(method, count)] = run_cold(method, count, args.rows)
            if first[(method, count)]["sklearn_before"]:
                print(f"  note: scikit-learn was imported before the first call of {method}")

    table, truth = make_table(args.rows)
    x_all = table.filter(like="emb_").to_numpy(np.float64)
    results = {"args": vars(args), "environment": env, "runs": []}
    lines: list = []
    for count in args.annotations:
        rows_out, baseline = time_count(table, truth, x_all, count, args.methods, args.repeats)
        for row in rows_out:
            row["first_call_s"] = first.get((row["method"], count), {}).get("seconds")
        results["runs"].extend(rows_out)
        cold_sk = first[("sklearn", count)]
        results[f"sklearn_first_call_{count}"] = cold_sk
        lines.extend([*rows_out, ("baseline", count, *baseline, cold_sk)])

    print(
        f"\n  {'method':18s} {'annot.':>6s} {'first call':>10s} {'warm median':>11s} "
        f"{'(best)':>7s} {'train':>6s} {'predict':>7s} {'/plain':>7s} {'/plain+cv':>9s} "
        f"{'/1 s':>5s} {'acc.':>6s}"
    )
    for row in lines:
        if isinstance(row, tuple):
            _, count, plain, plain_cv, cold_sk = row
            print(
                f"  {'sklearn plain':18s} {count:6d} {cold_sk['seconds']:9.2f}s "
                f"{plain['median_s']:10.3f}s {plain['best_s']:6.3f}s   (first call: "
                f"{cold_sk['import_s']:.2f} s of it importing scikit-learn)"
            )
            print(
                f"  {'sklearn +cv':18s} {count:6d} {'':>10s} {plain_cv['median_s']:10.3f}s "
                f"{plain_cv['best_s']:6.3f}s"
            )
            continue
        w = row["warm"]["median_s"]
        first_s = "-" if row["first_call_s"] is None else f"{row['first_call_s']:.2f}s"
        print(
            f"  {row['method']:18s} {row['annotations']:6d} {first_s:>10s} "
            f"{w:10.3f}s {row['warm']['best_s']:6.3f}s {row['train_median_s']:5.3f}s "
            f"{row['predict_median_s']:6.3f}s {w / row['plain']['median_s']:6.1f}x "
            f"{w / row['plain_cv']['median_s']:8.2f}x {w / TARGET_S:5.2f} "
            f"{row['accuracy_not_annotated']:6.3f}"
        )
    for row in results["runs"]:
        if row["method"].startswith("logistic"):
            w = row["warm"]["median_s"]
            verdict = "MET" if w <= TARGET_S else "NOT MET"
            first_s = row["first_call_s"]
            print(
                f"  target <= {TARGET_S:.0f} s, {row['method']}, {row['annotations']} "
                f"annotations, warm median: {w:.3f} s ({w / TARGET_S:.2f} of the target): "
                f"{verdict}" + ("" if first_s is None else f"; first call {first_s:.2f} s")
            )
    total = time.perf_counter() - start
    results["total_s"] = total
    path = write_json("classify_speed", results)
    print(f"  total {total:.0f} s; figures in {path}")


if __name__ == "__main__":
    main()
