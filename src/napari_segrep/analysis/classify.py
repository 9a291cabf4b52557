"""Object classifiers on segment embeddings: a few annotated segments -> a class for all.

:func:`train_classifier` fits a classifier on the annotated rows of an embedding table (from
``embed_segments``, or several concatenated with an ``image`` column), on the embeddings alone
or with the segments' measurements (``features="embedding+geometry"``, columns from
:func:`~napari_segrep.analysis.measure.add_measurements`);
:meth:`SegmentClassifier.predict` classifies every row of a table, with probabilities and the
margin between the two most likely classes (small margin: the model is unsure; label those
next).  The fitted model is kept as plain arrays and predicts with numpy, the same code for a
model just trained and one loaded from a file, so :meth:`SegmentClassifier.save` writes arrays
and JSON (no pickle) and :func:`load_classifier` executes nothing it reads.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ._annotations import annotated_rows, describe_rows, embedding_columns, segment_keys
from ._predict import REQUIRED, forest_arrays, predict_proba
from .measure import SHAPE_COLUMNS, geometry_columns

__all__ = [
    "CLASSIFIER_FORMAT",
    "FEATURES",
    "METHODS",
    "SegmentClassifier",
    "load_classifier",
    "segment_keys",
    "suggest_next",
    "train_classifier",
]

METHODS = ("logistic", "random_forest", "knn")
FEATURES = ("embedding", "embedding+geometry")
_ADD_MEASUREMENTS = (
    "add them with napari_segrep.add_measurements(table, image, labels) "
    "(or napari-segrep embed --measure)"
)
#: The file format's name and version, checked on load.
CLASSIFIER_FORMAT = {"name": "napari-segrep classifier", "version": 1}


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
        The table columns it reads (``emb_0 ... emb_{D-1}``, then with
        ``features="embedding+geometry"`` the measurement columns, ``area`` first).
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

    # ------------------------------------------------------------------ predict
    def predict_proba(self, table, *, force: bool = False) -> np.ndarray:
        """``(N, n_classes)`` class probabilities of every row of ``table``."""
        x = self._features(table, force=force)
        return predict_proba(self.method, self.arrays, self.params, x, len(self.classes_))

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
            likely),
            ``probability`` (its probability), ``margin`` (its probability minus the next
            one's: small = unsure), and ``prob_<class>`` for every class.
        """
        import pandas as pd

        proba = self.predict_proba(table, force=force)
        order = np.argsort(-proba, axis=1, kind="stable")
        rows = np.arange(len(proba))
        best = proba[rows, order[:, 0]] if len(proba) else np.zeros(0)
        second = proba[rows, order[:, 1]] if len(proba) else np.zeros(0)
        out = pd.DataFrame(index=table.index)
        for key in segment_keys(table):
            out[key] = table[key].to_numpy()
        classes = np.asarray(self.classes_, dtype=object)
        out["class"] = classes[order[:, 0]] if len(proba) else np.zeros(0, object)
        out["probability"] = best
        out["margin"] = best - second
        for i, name in enumerate(self.classes_):
            out[f"prob_{name}"] = proba[:, i]
        return out

    def _features(self, table, *, force: bool = False) -> np.ndarray:
        if not force:
            self.check_encoder(table)
        trained = [c for c in self.feature_columns if c.startswith("emb_")]
        found = embedding_columns(table)
        if len(found) != len(trained) or any(c not in table.columns for c in trained):
            raise ValueError(
                f"the table has {len(found)}-d embeddings, this classifier was trained on "
                f"{len(trained)}-d embeddings: embed the segments with the model "
                f"the classifier was trained on (its encoder: "
                f"{_describe_encoder(self.info.get('encoder'))})"
            )
        missing = [c for c in self.feature_columns if c not in table.columns]
        if missing:
            raise ValueError(
                f"the table lacks {len(missing)} measurement column(s) this classifier was "
                f"trained on ({', '.join(missing)}): {_ADD_MEASUREMENTS}"
            )
        x = table[self.feature_columns].to_numpy(np.float64)
        bad = ~np.isfinite(x).all(axis=1)
        if bad.any():
            raise ValueError(
                f"{int(bad.sum())} row(s) have NaN or infinite {_what(self.feature_columns)} "
                f"({describe_rows(table, bad)}): embed those segments again, or drop the rows"
            )
        return x

    def check_encoder(self, table) -> None:
        """Raise ``ValueError`` when ``table`` records an encoder (``attrs["encoder"]``) other
        than the one this classifier was trained on; nothing when either is not recorded."""
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
            "format": CLASSIFIER_FORMAT,
            "method": self.method,
            "classes": list(self.classes_),
            "feature_columns": list(self.feature_columns),
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
    """Read a classifier written by :meth:`SegmentClassifier.save`.

    Only arrays of numbers and one JSON record are read (``np.load(allow_pickle=False)``): a
    file holding pickled objects is refused, nothing in it is executed.
    """
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            contents = {k: archive[k] for k in archive.files}
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such classifier file") from None
    except (ValueError, OSError) as exc:
        raise ValueError(
            f"{path} is not a napari-segrep classifier (an .npz archive of arrays and JSON; "
            f"files holding pickled objects are refused): {exc}"
        ) from None
    meta = _record(contents.pop("meta", None))
    if meta is None:
        raise ValueError(f"{path} is not a napari-segrep classifier (no valid record)")
    fmt = meta["format"]
    if fmt.get("version", 0) > CLASSIFIER_FORMAT["version"]:
        raise ValueError(
            f"{path} was written by a newer napari-segrep (classifier format "
            f"{fmt.get('version')}): update napari-segrep to read it"
        )
    if meta.get("method") not in METHODS:
        raise ValueError(f"{path}: unknown classifier method {meta.get('method')!r}")
    arrays = {k.removeprefix("array_"): v for k, v in contents.items()}
    missing = sorted(set(REQUIRED[meta["method"]]) - set(arrays))
    if missing:
        raise ValueError(f"{path}: the classifier file is incomplete (no {', '.join(missing)})")
    for name, value in arrays.items():
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            raise ValueError(f"{path}: the classifier's {name} holds NaN or infinite values")
    return SegmentClassifier(
        method=meta["method"],
        classes_=[str(c) for c in meta["classes"]],
        feature_columns=[str(c) for c in meta["feature_columns"]],
        arrays=arrays,
        params=dict(meta.get("params") or {}),
        cv_score_=meta.get("cv_score"),
        info=dict(meta.get("info") or {}),
    )


def _record(meta: np.ndarray | None) -> dict | None:
    """The JSON record of a classifier file, or None when it is not one."""
    try:
        record = json.loads(meta.tobytes().decode())
        ours = record["format"]["name"] == CLASSIFIER_FORMAT["name"]
    except (AttributeError, KeyError, ValueError, UnicodeDecodeError, TypeError):
        return None
    return record if ours else None


def is_classifier_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a napari-segrep classifier (its record only is read)."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            return "meta" in archive.files and _record(archive["meta"]) is not None
    except (ValueError, OSError):
        return False


# ---------------------------------------------------------------------- training
def train_classifier(
    table,
    annotations,
    *,
    method: str = "logistic",
    features: str = "embedding",
    seed: int = 0,
    k: int = 5,
    n_trees: int = 100,
    C: float = 1.0,
) -> SegmentClassifier:
    """Fit a classifier of segments on the annotated rows of an embedding table.

    Parameters
    ----------
    table : DataFrame
        From ``embed_segments``: ``label`` and ``emb_0 ... emb_{D-1}``; several images'
        tables concatenated need an ``image`` column, a stack's a ``frame`` column (labels
        repeat across them).
    annotations : mapping or DataFrame
        ``{label: class name}``, or a DataFrame with ``label`` (and ``image``/``frame`` where
        the table has them) and ``class``.
    method : {"logistic", "random_forest", "knn"}
        Logistic regression (the default; L2, ``C``), a random forest (``n_trees``) or
        k-nearest neighbours (``k``), all on standardised embeddings.
    features : {"embedding", "embedding+geometry"}
        ``"embedding+geometry"``: the embeddings plus the table's measurements (``area``,
        the shape columns and every ``intensity_mean_<c>``/``intensity_std_<c>``, from
        :func:`~napari_segrep.analysis.measure.add_measurements`), standardised like the
        embeddings; the measurement block is weighted so that its total variance matches the
        embeddings' (each of its ``G`` columns times ``sqrt(D / G)``, ``D`` embedding
        dimensions), else a few columns among hundreds count for little.
    seed : int
        For the forest and the cross-validation folds.

    Returns
    -------
    SegmentClassifier
        With ``cv_score_``: stratified cross-validated accuracy on the annotations (up to 5
        folds; every class has at least 2 annotations).

    Raises
    ------
    ValueError
        Unknown method or features; ``"embedding+geometry"`` on a table without
        measurements; annotations naming labels that are not in the table; a single class; a
        class with fewer than 2 annotations; annotated rows whose features are not finite.
    """
    if method not in METHODS:
        raise ValueError(f"method={method!r}: choose one of {', '.join(METHODS)}")
    if features not in FEATURES:
        raise ValueError(f"features={features!r}: choose one of {', '.join(FEATURES)}")
    if method == "knn" and (isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1):
        raise ValueError(f"k must be a positive integer, got {k!r}")
    columns = embedding_columns(table)
    if not columns:
        raise ValueError(
            "the table has no embedding columns (emb_0, emb_1, ...): pass a table from "
            "embed_segments"
        )
    weights = None
    if features == "embedding+geometry":
        missing = [c for c in ("area", *SHAPE_COLUMNS) if c not in table.columns]
        if missing:
            raise ValueError(
                f'features="embedding+geometry" needs measurement columns the table lacks '
                f"({', '.join(missing)}): {_ADD_MEASUREMENTS}"
            )
        geometry = geometry_columns(table)
        weights = np.ones(len(columns) + len(geometry))
        weights[len(columns) :] = _geometry_weight(len(columns), len(geometry))
        columns = columns + geometry
    rows, names = annotated_rows(table, annotations)
    classes = sorted(set(names))
    if len(classes) < 2:
        only = f" (only {classes[0]!r})" if classes else ""
        raise ValueError(f"annotations need at least 2 classes{only}: annotate another class")
    y = np.searchsorted(classes, names)
    counts = np.bincount(y, minlength=len(classes))
    few = [f"{c!r} ({n})" for c, n in zip(classes, counts, strict=True) if n < 2]
    if few:
        raise ValueError(
            f"every class needs at least 2 annotated segments; {', '.join(few)} "
            "have fewer: annotate more"
        )
    x = table[columns].to_numpy(np.float64)[rows]
    bad = ~np.isfinite(x).all(axis=1)
    if bad.any():
        sub = table.iloc[rows]
        raise ValueError(
            f"{int(bad.sum())} annotated row(s) have NaN or infinite {_what(columns)} "
            f"({describe_rows(sub, bad)}): embed those segments again, or remove their annotations"
        )
    params = {"logistic": {"C": float(C)}, "knn": {"k": int(k)}}.get(
        method, {"n_trees": int(n_trees)}
    )
    from threadpoolctl import threadpool_limits  # installed with scikit-learn (its dependency)

    # one BLAS thread: these fits are small (tens of ms), and more threads only contend, most
    # with napari's GUI thread when the widget retrains after every click (measured 1.35x
    # faster on an idle 2-core machine, and 40x when another process keeps a core busy)
    with threadpool_limits(limits=1):
        arrays = _fit(method, x, y, len(classes), params, seed, weights)
        cv_score = _cv_score(method, x, y, len(classes), params, seed, weights)
    # what it was trained on (features as in the table, class ids): saved with it, so a
    # classifier can be improved later by training on these plus new annotations
    arrays["examples"] = x.astype(np.float32)
    arrays["example_classes"] = y.astype(np.int64)
    info = {
        "n_annotations": {c: int(n) for c, n in zip(classes, counts, strict=True)},
        "seed": int(seed),
        "features": features,
    }
    if weights is not None:
        info["geometry_weight"] = float(weights[-1])
    for key in ("encoder", "normalization", "crop_size"):
        if key in getattr(table, "attrs", {}):
            info[key] = table.attrs[key]
    model = SegmentClassifier(method, classes, columns, arrays, params, info=info)
    model.cv_score_ = cv_score
    return model


def _geometry_weight(n_embedding: int, n_geometry: int) -> float:
    """The weight of each standardised measurement column: ``sqrt(D / G)``, so that the ``G``
    measurement columns together have the variance of the ``D`` embedding columns."""
    return float(np.sqrt(n_embedding / max(n_geometry, 1)))


def _what(columns) -> str:
    return "embeddings" if all(c.startswith("emb_") for c in columns) else "features"


def _fit(
    method: str,
    x: np.ndarray,
    y: np.ndarray,
    n_classes: int,
    params: dict,
    seed: int,
    weights: np.ndarray | None = None,
):
    """Fit with scikit-learn and keep what prediction needs as arrays.

    ``weights``: per column, multiplies the standardised values; kept in ``scale`` (divided
    by it), so prediction, fresh or loaded, standardises and weights in one step."""
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale < 1e-12] = 1.0
    if weights is not None:
        scale = scale / weights
    z = (x - mean) / scale
    arrays = {"mean": mean, "scale": scale}
    if method == "logistic":
        from sklearn.linear_model import LogisticRegression

        # newton-cg: the optimum lbfgs finds, in 10 ms instead of 20-200 ms for a few dozen
        # annotations of 512-d embeddings (scipy's L-BFGS-B costs ~3 ms an iteration here)
        model = LogisticRegression(C=params["C"], solver="newton-cg", max_iter=2000).fit(z, y)
        arrays["coef"] = model.coef_.astype(np.float64)
        arrays["intercept"] = model.intercept_.astype(np.float64)
    elif method == "knn":
        arrays["train_z"] = z
        arrays["train_y"] = y.astype(np.int64)
    else:
        from sklearn.ensemble import RandomForestClassifier

        forest = RandomForestClassifier(n_estimators=params["n_trees"], random_state=seed)
        forest.fit(z, y)
        arrays.update(forest_arrays(forest, n_classes))
    return arrays


def _cv_score(method, x, y, n_classes, params, seed, weights=None) -> float | None:
    """Stratified k-fold accuracy of the same fit, k = min(5, the smallest class's count)."""
    from sklearn.model_selection import StratifiedKFold

    folds = int(min(5, np.bincount(y).min()))
    if folds < 2:
        return None
    correct = 0
    split = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for train, test in split.split(x, y):  # every class in every training part (>= 2 each)
        arrays = _fit(method, x[train], y[train], n_classes, params, seed, weights)
        proba = predict_proba(method, arrays, params, x[test], n_classes)
        correct += int((proba.argmax(axis=1) == y[test]).sum())
    return correct / len(y)


def suggest_next(predictions, *, n: int = 10, exclude=None):
    """The ``n`` rows of ``predictions`` (from :meth:`SegmentClassifier.predict`) the model is
    least sure of (smallest ``margin``, ties in table order), leaving out the segments in
    ``exclude``, typically those already annotated.  Annotating these first reaches a good
    model with fewer clicks than annotating at random (``benchmarks/classify_clicks.py``).

    Parameters
    ----------
    predictions : DataFrame
        ``margin`` and the segment keys (``label``, after ``image``/``frame`` when the table
        has them).
    n : int
        How many rows at most.
    exclude : optional
        The segments to leave out, as any of: a boolean row mask (one value per row of
        ``predictions``, True = leave out); the annotations (``{label: class}``: its keys; or
        a DataFrame with the key columns, e.g. ``image`` and ``label``); labels (integers,
        when the table is of one image); ``(image, label)`` tuples (``(image, frame,
        label)``...: the key columns in order).  Keys that are not in ``predictions`` leave
        nothing out.  ``ValueError`` says what is expected when it is none of these.

    Returns
    -------
    DataFrame
        The chosen rows of ``predictions``, least sure first.
    """
    margin = predictions["margin"].to_numpy(np.float64)
    keep = np.ones(len(margin), bool)
    if exclude is not None:
        keep &= ~_excluded_rows(predictions, exclude)
    candidates = np.flatnonzero(keep)
    order = candidates[np.argsort(margin[candidates], kind="stable")]
    return predictions.iloc[order[: max(int(n), 0)]]


def _excluded_rows(predictions, exclude) -> np.ndarray:
    """``exclude`` of :func:`suggest_next` as a boolean row mask of ``predictions``."""
    import pandas as pd

    n = len(predictions)
    keys = [c for c in segment_keys(predictions) if c in predictions.columns]
    expected = (
        f"exclude must be a boolean row mask ({n} values, True = leave out), or the segments "
        f"to leave out: annotations ({{label: class}}, or a DataFrame with {', '.join(keys)}), "
        f"labels, or ({', '.join(keys)}) tuples"
    )
    if isinstance(exclude, dict):
        exclude = list(exclude)
    if isinstance(exclude, pd.DataFrame):
        missing = [k for k in keys if k not in exclude.columns]
        if missing or not keys:
            raise ValueError(f"{expected}; the DataFrame lacks {', '.join(missing or ['label'])}")
        return _rows_with_keys(predictions, keys, exclude[keys].itertuples(index=False))
    values = exclude.to_numpy() if isinstance(exclude, pd.Series) else exclude
    if isinstance(values, np.ndarray) and values.dtype == bool or _all_bools(values):
        mask = np.asarray(values, bool)
        if mask.shape != (n,):
            raise ValueError(f"{expected}; got a boolean mask of shape {mask.shape}")
        return mask
    items = list(values) if not isinstance(values, (str, bytes)) else [values]
    if not items:
        return np.zeros(n, bool)
    if "label" not in keys:
        raise ValueError(f"{expected}; predictions has no label column, so only a mask works")
    if all(isinstance(v, tuple) for v in items):
        if any(len(v) != len(keys) for v in items):
            raise ValueError(f"{expected}; got a tuple of {len(items[0])} values")
        return _rows_with_keys(predictions, keys, items)
    if all(_is_whole(v) for v in items):
        if len(keys) > 1:
            raise ValueError(
                f"{expected}; labels alone are ambiguous: the predictions hold several "
                f"{keys[0]}s (labels repeat across them)"
            )
        return np.isin(predictions["label"].to_numpy(), np.asarray([int(v) for v in items]))
    raise ValueError(f"{expected}; got {type(exclude).__name__} of other values")


def _rows_with_keys(predictions, keys: list[str], wanted) -> np.ndarray:
    """Rows of ``predictions`` whose key tuple is among ``wanted``."""
    wanted = {tuple(_plain_key(v) for v in key) for key in wanted}
    rows = predictions[keys].itertuples(index=False)
    return np.fromiter(
        (tuple(_plain_key(v) for v in row) in wanted for row in rows), bool, len(predictions)
    )


def _plain_key(value):
    """A key value comparable across NumPy and Python types (3 == np.int64(3))."""
    return value.item() if isinstance(value, np.generic) else value


def _all_bools(values) -> bool:
    try:
        items = list(values)
    except TypeError:
        return False
    return bool(items) and all(isinstance(v, (bool, np.bool_)) for v in items)


def _is_whole(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _describe_encoder(encoder: dict | None) -> str:
    if not encoder:
        return "not recorded"
    parts = [
        f"{k} {str(v)[:12] if k == 'sha256' else v}"
        for k, v in encoder.items()
        if k in ("backbone", "in_channels", "weights", "sha256")
    ]
    return ", ".join(parts)
