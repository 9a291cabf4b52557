"""Object classifiers on segment embeddings: a few annotated segments -> a class for all.

:func:`train_classifier` fits a classifier on the annotated rows of an embedding table (from
``embed_segments``, or several concatenated with an ``image`` column), on the embeddings (by
default with the segment's size, log area: a segment larger than the crop is downscaled, and
its embedding cannot show how large it is) or with the segments' measurements
(``features="embedding+geometry"``, columns from
:func:`~napari_segrep.analysis.measure.add_measurements`), on the measurements alone
(``"measurements"``), or on whichever of the three cross-validates best on the annotations
(``"auto"``);
:meth:`SegmentClassifier.predict` classifies every row of a table, with probabilities and the
margin between the two most likely classes (small margin: the model is unsure; label those
next).  The fitted model is kept as plain arrays and predicts with numpy, the same code for a
model just trained and one loaded from a file, so :meth:`SegmentClassifier.save` writes arrays
and JSON (no pickle) and :func:`load_classifier` executes nothing it reads, and checks every
field and array against the method's schema before use (``_classifier_file``).  The fit's
maths (standardised, weighted features; scikit-learn's fit kept as arrays; cross-validation)
live in ``_fitting``, the cost estimated before a fit in ``_cost``, and :func:`suggest_next`
(which segments to annotate next) in ``_suggest``.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import astuple, dataclass, field
from pathlib import Path

import numpy as np

from ._annotations import annotated_rows, describe_rows, embedding_columns, segment_keys
from ._classifier_file import MAX_ARRAY_BYTES, is_classifier_file, read_classifier_file
from ._classifier_schema import CLASSIFIER_FORMAT, MAX_CLASSES, MAX_TREES, format_of
from ._cost import _SMALLER, _check_cost
from ._fitting import _cv_score, _fit, _geometry_weight, _size_weight
from ._predict import predict_proba
from ._suggest import suggest_next
from .measure import geometry_columns, missing_measurements

__all__ = [
    "AUTO_ORDER",
    "CLASSIFIER_FORMAT",
    "FEATURES",
    "MAX_CLASSES",
    "MEASURED_FEATURES",
    "AUTO_METHODS",
    "METHODS",
    "SegmentClassifier",
    "is_classifier_file",
    "load_classifier",
    "segment_keys",
    "suggest_next",
    "train_classifier",
]

METHODS = ("logistic", "random_forest", "knn")
#: ``method="auto"``'s candidates, in the order that breaks ties (the first of the best wins):
#: the logistic regression (smooth probabilities, fast) before the forest.
AUTO_METHODS = ("logistic", "random_forest")
FEATURES = ("embedding", "embedding+geometry", "measurements", "auto")
#: The features that read the measurement columns of ``add_measurements`` (a classifier
#: records one of these or ``"embedding"`` in ``info["features"]``, never ``"auto"``).
MEASURED_FEATURES = ("embedding+geometry", "measurements")
#: ``features="auto"``'s candidates, in the order that breaks ties of cross-validated accuracy
#: (the first of the best wins): see :func:`train_classifier`.
AUTO_ORDER = ("embedding+geometry", "embedding", "measurements")
_ADD_MEASUREMENTS = (
    "add them with napari_segrep.add_measurements(table, image, labels) "
    "(or napari-segrep embed --measure)"
)
#: The table columns the default features read on a log scale, when the table has them: the
#: segment's area in pixels (``embed_segments`` writes it).  A segment larger than the crop is
#: downscaled to fit, so its embedding alone does not say how large it is.
SIZE_COLUMNS = ("area",)


@dataclass(eq=False)
class SegmentClassifier:
    """A classifier of segments from their embeddings (see :func:`train_classifier`).

    Attributes
    ----------
    classes_ : list of str
        The class names, in the order of the probability columns.
    cv_score_ : float or None
        Cross-validated accuracy on the annotations (stratified, up to 5 folds).
    method : str
    feature_columns : list of str
        The table columns it reads (``emb_0 ... emb_{D-1}``, then ``area`` (the segment's
        size, see ``log_columns``), or with ``features="embedding+geometry"`` the measurement
        columns, ``area`` first; with ``"measurements"`` those alone).
    log_columns : list of str
        The feature columns read on a log scale (``["area"]`` by default: a segment larger
        than the crop is downscaled, so its embedding does not say how large it is).
    info : dict
        What it was trained on: the number of annotations per class, the seed, the encoder and
        normalisation the table recorded (``table.attrs``), when known.
    """

    method: str
    classes_: list[str]
    feature_columns: list[str]
    arrays: dict[str, np.ndarray]
    params: dict = field(default_factory=dict)
    cv_score_: float | None = None
    info: dict = field(default_factory=dict)
    log_columns: list[str] = field(default_factory=list)

    # ------------------------------------------------------------------ predict
    def predict_proba(self, table, *, force: bool = False) -> np.ndarray:
        """``(N, n_classes)`` class probabilities of every row of ``table``.

        Raises ``ValueError`` naming the rows whose features are so far from the training
        annotations that their probabilities are not finite numbers (never returned)."""
        x = self._features(table, force=force)
        with np.errstate(over="ignore", under="ignore", invalid="ignore", divide="ignore"):
            proba = predict_proba(self.method, self.arrays, self.params, x, len(self.classes_))
        bad = ~np.isfinite(proba).all(axis=1)
        if bad.any():
            raise ValueError(
                f"{int(bad.sum())} row(s) get no finite probabilities "
                f"({describe_rows(table, bad)}): their {_what(self.feature_columns)} are far "
                "outside the range of the annotated segments; check those rows"
            )
        return proba

    def predict(self, table, *, force: bool = False):
        """Classify every row of ``table``.

        A table that records its encoder (``table.attrs["encoder"]``, set by
        ``embed_segments`` and read back from an export's JSON sidecar by
        :func:`~napari_segrep.analysis.export.read_table`) must come from the encoder this
        classifier was trained on (same ``sha256``): another encoder's embeddings mean other
        things, and the predictions would be silently wrong.  ``force=True`` predicts anyway.

        Returns
        -------
        DataFrame
            ``label`` (after ``image``/``frame`` when the table has them), ``class`` (the most
            likely; ties: the first in ``classes_``),
            ``probability`` (its probability), ``margin`` (its probability minus the next
            one's: small = unsure), and ``prob_<class>`` for every class.
        """
        import pandas as pd

        proba = self.predict_proba(table, force=force)
        best = proba.argmax(axis=1) if len(proba) else np.zeros(0, np.int64)
        top = proba[np.arange(len(proba)), best]
        second = np.partition(proba, -2, axis=1)[:, -2] if len(proba) else np.zeros(0)
        head = {key: table[key].to_numpy() for key in segment_keys(table)}
        head["class"] = np.asarray(self.classes_, dtype=object)[best]
        head["probability"] = top
        head["margin"] = top - second
        probabilities = pd.DataFrame(
            proba, index=table.index, columns=[f"prob_{name}" for name in self.classes_]
        )
        return pd.concat([pd.DataFrame(head, index=table.index), probabilities], axis=1)

    def _features(self, table, *, force: bool = False) -> np.ndarray:
        if not force:
            self.check_encoder(table)
        trained = [c for c in self.feature_columns if c.startswith("emb_")]
        found = embedding_columns(table)
        # measurements alone (no emb_ column) read no embeddings: any table's will do
        if trained and (len(found) != len(trained) or any(c not in table.columns for c in trained)):
            raise ValueError(
                f"the table has {len(found)}-d embeddings, this classifier was trained on "
                f"{len(trained)}-d embeddings: embed the segments with the model "
                f"the classifier was trained on (its encoder: "
                f"{_describe_encoder(self.info.get('encoder'))})"
            )
        missing = [c for c in self.feature_columns if c not in table.columns]
        if missing:
            how = (
                "embed the segments with napari-segrep (embed_segments writes area)"
                if set(missing) <= set(SIZE_COLUMNS)
                else _ADD_MEASUREMENTS
            )
            raise ValueError(
                f"the table lacks {len(missing)} measurement column(s) this classifier was "
                f"trained on ({', '.join(missing)}): {how}"
            )
        x = table[self.feature_columns].to_numpy(np.float64)
        bad = ~np.isfinite(x).all(axis=1)
        if bad.any():
            raise ValueError(
                f"{int(bad.sum())} row(s) have NaN or infinite {_what(self.feature_columns)} "
                f"({describe_rows(table, bad)}): embed those segments again, or drop the rows"
            )
        return _log_scale(x, self.feature_columns, self.log_columns, table, "drop the rows")

    def check_encoder(self, table) -> None:
        """Raise ``ValueError`` when ``table`` records an encoder (``attrs["encoder"]``) other
        than the one this classifier was trained on; nothing when either is not recorded, or
        when the classifier reads no embeddings (``features="measurements"``)."""
        if not any(c.startswith("emb_") for c in self.feature_columns):
            return
        mine = self.info.get("encoder") or {}
        theirs = getattr(table, "attrs", {}).get("encoder") or {}
        if mine.get("sha256") and theirs.get("sha256") and mine["sha256"] != theirs["sha256"]:
            raise ValueError(
                "the table was embedded with another encoder than this classifier was trained "
                f"on (table: {_describe_encoder(theirs)}; classifier: "
                f"{_describe_encoder(mine)}): embed the segments with the classifier's encoder, "
                "or train a classifier on this table; force=True (--force) predicts anyway"
            )

    # ------------------------------------------------------------------ save
    def save(self, path: str | os.PathLike, *, overwrite: bool | None = None) -> Path:
        """Write the classifier to ``path`` (conventionally ``*.segclf``): a NumPy ``.npz``
        archive of arrays and one JSON record, written to a temporary then moved into place.

        ``overwrite``: None (default) replaces an existing file only when it is a
        napari-segrep classifier, never another file; False refuses any existing file; True
        replaces it.
        """
        from ..io import atomic_write

        path = Path(path)
        if overwrite is not True and os.path.lexists(path) and not path.is_dir():
            if overwrite is False or not is_classifier_file(path):
                mine = "" if overwrite is False else " and is not a napari-segrep classifier"
                raise ValueError(f"{path} exists{mine}: choose another file name")
        data = self.to_bytes()
        return atomic_write(path, lambda fh: fh.write(data))

    def to_bytes(self) -> bytes:
        """The file :meth:`save` writes, in memory (to write it together with other files)."""
        meta = {
            "format": format_of(self.feature_columns),
            "method": self.method,
            "classes": list(self.classes_),
            "feature_columns": list(self.feature_columns),
            "log_columns": list(self.log_columns),
            "params": self.params,
            "cv_score": self.cv_score_,
            "info": self.info,
        }
        payload = {f"array_{k}": np.ascontiguousarray(v) for k, v in self.arrays.items()}
        payload["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **payload)
        return buffer.getvalue()


def load_classifier(path: str | os.PathLike) -> SegmentClassifier:
    """Read a classifier written by :meth:`SegmentClassifier.save`, checked before use.

    Only arrays of numbers and one JSON record are read (no pickle: nothing in the file is
    executed).  Every field and array is checked against the method's schema first (see
    :mod:`napari_segrep.analysis._classifier_file`): the sizes the arrays declare before any
    is read (at most 2 GiB), types, shapes against the classes and feature columns, finite
    values, a positive scale, a forest's trees well formed, unique class names.

    Raises
    ------
    FileNotFoundError
        No such file.
    ValueError
        Naming the file and what is wrong: not a classifier, written by a newer version,
        damaged, or a field or array that does not hold what its method needs.
    """
    record, arrays = read_classifier_file(path)
    return SegmentClassifier(
        method=record["method"],
        classes_=list(record["classes"]),
        feature_columns=list(record["feature_columns"]),
        arrays=arrays,
        params=dict(record["params"]),
        cv_score_=None if record.get("cv_score") is None else float(record["cv_score"]),
        info=dict(record["info"]),
        log_columns=list(record["log_columns"]),
    )


# ---------------------------------------------------------------------- training
def train_classifier(
    table,
    annotations,
    *,
    method: str = "logistic",
    features: str = "embedding",
    size: bool = True,
    seed: int = 0,
    k: int = 5,
    n_trees: int = 100,
    C: float = 1.0,
) -> SegmentClassifier:
    """Fit a classifier of segments on the annotated rows of an embedding table.

    Parameters
    ----------
    table : DataFrame
        From ``embed_segments``: ``label``, ``area`` and ``emb_0 ... emb_{D-1}``; several
        images' tables concatenated need an ``image`` column, a stack's a ``frame`` column
        (labels repeat across them).
    annotations : mapping or DataFrame
        ``{label: class name}``, or a DataFrame with ``label`` (and ``image``/``frame`` where
        the table has them) and ``class``.
    method : {"logistic", "random_forest", "knn", "auto"}
        Logistic regression (the default; L2, ``C``), a random forest (``n_trees``) or
        k-nearest neighbours (``k``), all on standardised features.  ``"auto"``: the logistic
        regression or the forest, whichever cross-validates better on the annotations (with
        ``features="auto"``: the logistic regression on each of the features, the forest on
        the measurements alone (where the table has them), as the regionprops + random forest
        classifiers do; ties go to the logistic regression, then in ``features``' order); the
        classifier records the method it chose, and ``info["method_cv"]`` each method's best
        score.
    features : {"embedding", "embedding+geometry", "measurements", "auto"}
        ``"embedding"``: the embeddings, and with ``size`` the segment's area.
        ``"embedding+geometry"``: the embeddings plus the table's measurements (``area``,
        the shape columns and every ``intensity_mean_<c>``/``intensity_std_<c>``, from
        :func:`~napari_segrep.analysis.measure.add_measurements`), standardised like the
        embeddings; the measurement block is weighted so that its total variance matches the
        embeddings' (each of its ``G`` columns times ``sqrt(D / G)``, ``D`` embedding
        dimensions), else a few columns among hundreds count for little.
        ``"measurements"``: the measurements alone (the same columns, standardised, no
        embeddings): what regionprops-based classifiers use; it needs no particular encoder.
        ``"auto"``: each of ``"embedding+geometry"``, ``"embedding"`` and ``"measurements"``
        (only ``"embedding"`` when the table has no measurements) is cross-validated on the
        annotations, on the same folds, and the most accurate is fitted; ties go to the first
        in that order (:data:`AUTO_ORDER`).  The classifier records the features chosen in
        ``info["features"]`` (so a saved one predicts with the same columns) and every
        candidate's cross-validated accuracy in ``info["features_cv"]``.
    size : bool
        With ``features="embedding"`` (and ``"auto"``'s embedding candidate): add
        ``log(area)`` when the table has an ``area`` column (``embed_segments`` writes it),
        standardised.  A segment larger than the crop
        is downscaled to fit it, so its embedding alone does not say how large it is; this
        column does.  It counts as one more embedding dimension, and as much as all of them
        together where size alone separates the annotated classes (thresholds class 95% of
        them right, Fisher's F p < 0.01): ``sqrt(D) * min(B / W, 4)``, ``B`` and ``W`` its
        between- and within-class sums of squares (see ``_size_weight``).  A random forest,
        which ignores weights, gets it only there.  ``False``: the embeddings alone.
    seed : int
        For the forest and the cross-validation folds, 0 to 2^32 - 1.
    k, n_trees, C : int, int, float
        Neighbours (knn, >= 1), trees (random_forest, 1 to 10,000), inverse L2 strength
        (logistic, > 0).

    Returns
    -------
    SegmentClassifier
        With ``cv_score_``: stratified cross-validated accuracy on the annotations (up to 5
        folds; every class has at least 2 annotations).

    Raises
    ------
    ValueError
        Unknown method or features, a parameter out of range; ``"embedding+geometry"`` or
        ``"measurements"`` on a table without measurements; annotations naming labels that
        are not in the table; a single class; a class with fewer than 2 annotations; more than 1,000 classes, or a
        fit that would need more than 4 GiB of memory or make a classifier of more than 2 GiB
        (both estimated before fitting, the estimate in the message); annotated rows whose
        features are not finite (or whose area is not positive).
    """
    _check_arguments(method, features, seed=seed, k=k, n_trees=n_trees, C=C)
    if not embedding_columns(table) and features != "measurements":
        raise ValueError(
            "the table has no embedding columns (emb_0, emb_1, ...): pass a table from "
            "embed_segments"
        )
    missing = missing_measurements(table)
    if features in MEASURED_FEATURES and missing:
        raise ValueError(
            f'features="{features}" needs measurement columns the table lacks '
            f"({', '.join(missing)}): {_ADD_MEASUREMENTS}"
        )
    if features == "auto":  # measurements alone or added only where the table has them
        candidates = [f for f in AUTO_ORDER if not missing or f not in MEASURED_FEATURES]
    else:
        candidates = [features]
    methods = list(AUTO_METHODS) if method == "auto" else [method]
    rows, names = annotated_rows(table, annotations)
    classes = sorted(set(names))
    if len(classes) < 2:
        only = f" (only {classes[0]!r})" if classes else ""
        raise ValueError(f"annotations need at least 2 classes{only}: annotate another class")
    widest = max(len(_feature_columns(table, f, size)[0]) for f in candidates)
    for m in methods:
        _check_cost(m, len(rows), widest, len(classes), n_trees)
    y = np.searchsorted(classes, names)
    counts = np.bincount(y, minlength=len(classes))
    few = [f"{c!r} ({n})" for c, n in zip(classes, counts, strict=True) if n < 2]
    if few:
        shown = ", ".join(few[:10]) + (f" and {len(few) - 10} more" if len(few) > 10 else "")
        raise ValueError(
            f"every class needs at least 2 annotated segments; {shown} have fewer: annotate more"
        )
    pairs = [(m, f) for m in methods for f in candidates]  # in the order that breaks ties
    if len(methods) > 1 and len(candidates) > 1:
        # a forest among hundreds of embedding columns is slow and no better than the logistic
        # regression there (benchmarks/classify_clicks.py); it earns its place on the
        # measurements, where thresholds on a few columns are what separates the classes
        forest_on = "measurements" if "measurements" in candidates else candidates[0]
        pairs = [(m, f) for m, f in pairs if m != "random_forest" or f == forest_on]
    designs = {(m, f): _design(table, f, size, m, rows, y) for m, f in pairs}
    all_params = {
        m: {"logistic": {"C": float(C)}, "knn": {"k": int(k)}}.get(m, {"n_trees": int(n_trees)})
        for m in methods
    }
    from threadpoolctl import threadpool_limits  # installed with scikit-learn (its dependency)

    # one BLAS thread: these fits are small (tens of ms), and more threads only contend, most
    # with napari's GUI thread when the widget retrains after every click (measured 1.35x
    # faster on an idle 2-core machine, and 40x when another process keeps a core busy)
    with threadpool_limits(limits=1):
        scores = {
            (m, f): _cv_score(m, d.x, y, len(classes), all_params[m], seed, d.weights, d.size_at)
            for (m, f), d in designs.items()
        }  # the same folds for every candidate (they depend on y and the seed only)
        method, chosen = max(pairs, key=lambda p: (scores[p] or 0.0, -pairs.index(p)))
        params = all_params[method]
        d = designs[method, chosen]
        arrays = _fit(method, d.x, y, len(classes), params, seed, d.weights, d.size_at)
    columns, log_columns, raw, x, weights, size_at = astuple(d)
    # what it was trained on (features as in the table, class ids): saved with it, so a
    # classifier can be improved later by training on these plus new annotations
    arrays["examples"] = raw.astype(np.float32)
    arrays["example_classes"] = y.astype(np.int64)
    total = sum(a.nbytes for a in arrays.values())
    if total > MAX_ARRAY_BYTES:  # the estimate let it through: never save what cannot load
        raise ValueError(
            f"the {method} classifier of {len(classes)} classes on {len(rows)} annotations "
            f"holds {total / 1024**3:.1f} GiB of arrays, more than a classifier file may "
            f"({MAX_ARRAY_BYTES / 1024**3:.0f} GiB): {_SMALLER}"
        )
    info = {
        "n_annotations": {c: int(n) for c, n in zip(classes, counts, strict=True)},
        "seed": int(seed),
        "features": chosen,
    }
    if features == "auto":
        info["features_cv"] = {f: scores[p] for p in pairs if p[0] == method for f in p[1:]}
    if len(methods) > 1:
        info["method_cv"] = {m: max(scores[p] or 0.0 for p in pairs if p[0] == m) for m in methods}
    if weights is not None:
        info["geometry_weight"] = float(weights[-1])
    for i in size_at:
        info["size_weight"] = _size_weight(x[:, i], y, len(columns) - len(size_at))
    for key in ("encoder", "normalization", "crop_size"):
        if key in getattr(table, "attrs", {}):
            info[key] = table.attrs[key]
    model = SegmentClassifier(
        method, classes, columns, arrays, params, info=info, log_columns=log_columns
    )
    model.cv_score_ = scores[method, chosen]
    return model


def _feature_columns(table, features: str, size: bool) -> tuple[list[str], list[str]]:
    """The table columns ``features`` reads, and those of them read on a log scale."""
    if features == "measurements":
        return geometry_columns(table), []
    columns = embedding_columns(table)
    if features == "embedding+geometry":
        return columns + geometry_columns(table), []
    log_columns = [c for c in SIZE_COLUMNS if c in table.columns] if size else []
    return columns + log_columns, log_columns


@dataclass
class _Design:
    """One choice of features on the annotated rows: the columns, their values as read
    (``raw``) and as fitted (``x``: log-scaled), the column weights and the size columns."""

    columns: list[str]
    log_columns: list[str]
    raw: np.ndarray
    x: np.ndarray
    weights: np.ndarray | None
    size_at: tuple[int, ...]


def _design(table, features: str, size: bool, method: str, rows, y) -> _Design:
    """The features of the annotated ``rows`` (classes ``y``); a ``ValueError`` naming the
    rows whose features are not finite (or whose area is not positive)."""
    columns, log_columns = _feature_columns(table, features, size)
    weights = None
    if features == "embedding+geometry":
        n_embedding = len(embedding_columns(table))
        weights = np.ones(len(columns))
        weights[n_embedding:] = _geometry_weight(n_embedding, len(columns) - n_embedding)
    raw = table[columns].to_numpy(np.float64)[rows]
    bad = ~np.isfinite(raw).all(axis=1)
    if bad.any():
        sub = table.iloc[rows]
        raise ValueError(
            f"{int(bad.sum())} annotated row(s) have NaN or infinite {_what(columns)} "
            f"({describe_rows(sub, bad)}): embed those segments again, or remove their annotations"
        )
    x = _log_scale(raw.copy(), columns, log_columns, table.iloc[rows], "remove their annotations")
    if method == "random_forest" and log_columns:
        # a forest ignores weights: it gets the size column where size separates the classes
        # (where it does not, one more column changed its random splits, for no gain)
        at = [columns.index(c) for c in log_columns]
        n_embedding = len(columns) - len(at)
        if all(_size_weight(x[:, i], y, n_embedding) == 1.0 for i in at):
            keep = [i for i in range(len(columns)) if i not in at]
            columns, log_columns = [columns[i] for i in keep], []
            raw, x = raw[:, keep], x[:, keep]
    size_at = tuple(columns.index(c) for c in log_columns)
    return _Design(columns, log_columns, raw, x, weights, size_at)


def _check_arguments(method, features, *, seed, k, n_trees, C) -> None:
    """A ``ValueError`` naming the first argument out of range, before any work."""
    if method not in (*METHODS, "auto"):
        raise ValueError(f"method={method!r}: choose one of {', '.join(METHODS)} or auto")
    if features not in FEATURES:
        raise ValueError(f"features={features!r}: choose one of {', '.join(FEATURES)}")

    def whole(value) -> bool:
        return isinstance(value, (int, np.integer)) and not isinstance(value, bool)

    if not (whole(seed) and 0 <= seed < 2**32):
        raise ValueError(f"seed must be a whole number from 0 to {2**32 - 1}, got {seed!r}")
    if method == "knn" and not (whole(k) and k >= 1):
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if method == "random_forest" and not (whole(n_trees) and 1 <= n_trees <= MAX_TREES):
        raise ValueError(f"n_trees must be a whole number from 1 to {MAX_TREES}, got {n_trees!r}")
    if method == "logistic" and not (
        isinstance(C, (int, float, np.number)) and np.isfinite(C) and C > 0
    ):
        raise ValueError(f"C must be a positive number, got {C!r}")


def _log_scale(x: np.ndarray, columns, log_columns, table, fix: str) -> np.ndarray:
    """``x`` (the rows of ``table``, as read from ``columns``) with the ``log_columns`` on a
    log scale; a ``ValueError`` naming the rows where one of them is not positive."""
    where = [columns.index(c) for c in log_columns]
    if not where:
        return x
    values = x[:, where]
    bad = ~(values > 0).all(axis=1)
    if bad.any():
        raise ValueError(
            f"{int(bad.sum())} row(s) have a {' or '.join(log_columns)} that is not positive "
            f"({describe_rows(table, bad)}): a segment has at least one pixel; {fix}"
        )
    x[:, where] = np.log(values)
    return x


def _what(columns) -> str:
    return "embeddings" if all(c.startswith("emb_") for c in columns) else "features"


def _describe_encoder(encoder: dict | None) -> str:
    if not encoder:
        return "not recorded"
    parts = [
        f"{k} {str(v)[:12] if k == 'sha256' else v}"
        for k, v in encoder.items()
        if k in ("backbone", "in_channels", "weights", "sha256")
    ]
    return ", ".join(parts)
