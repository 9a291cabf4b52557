"""The classifier file's schema: what its JSON record and its arrays must hold, per method.

:func:`_check_record` checks every field of the record (:func:`_format`: the format's name and
version; then the method, unique class names, the parameters the method needs, ``info``),
:func:`_check_shapes` every array's dtype and shape (from its ``.npy`` header, before it is
read) against the class count, the feature columns and the other arrays, and
:func:`_check_values` the values read (finite, ``scale`` > 0, class ids in range, a forest's
trees well formed: :func:`_check_trees`).  Each raises :class:`_Invalid`;
``_classifier_file`` reads the archive and adds the file's name.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["CLASSIFIER_FORMAT", "MAX_CLASSES", "MAX_FEATURES", "MAX_TREES"]

#: The file format's name and newest version (2: ``log_columns``; 3: feature columns without
#: embeddings, ``info.features`` "measurements"; older versions are read too).  A file is
#: written with the oldest version that holds it (see :func:`format_of`), so a classifier that
#: reads embeddings stays readable by napari-segrep versions that know format 2.
CLASSIFIER_FORMAT = {"name": "napari-segrep classifier", "version": 3}
#: At most this many classes (training refuses more: see ``_cost._check_cost``).
MAX_CLASSES = 1000
#: At most this many feature columns (embeddings of up to 2048 dimensions plus measurements).
MAX_FEATURES = 65_536
#: At most this many trees in a forest.
MAX_TREES = 10_000
_METHODS = ("logistic", "random_forest", "knn")
#: What ``info.features`` may say (the features a classifier reads; ``"auto"`` records the
#: one it chose).
_FEATURES = ("embedding", "embedding+geometry", "measurements")
#: Per method: each array's kind ("f": real floating point, "i": integer) and shape, in
#: symbols: K classes, C logistic rows (1 for two classes, else K), F feature columns, n
#: stored training rows, M tree nodes, T1 trees + 1.
_SCHEMA = {
    "logistic": {
        "mean": ("f", ("F",)),
        "scale": ("f", ("F",)),
        "coef": ("f", ("C", "F")),
        "intercept": ("f", ("C",)),
    },
    "knn": {
        "mean": ("f", ("F",)),
        "scale": ("f", ("F",)),
        "train_z": ("f", ("n", "F")),
        "train_y": ("i", ("n",)),
    },
    "random_forest": {
        "mean": ("f", ("F",)),
        "scale": ("f", ("F",)),
        "tree_left": ("i", ("M",)),
        "tree_right": ("i", ("M",)),
        "tree_feature": ("i", ("M",)),
        "tree_threshold": ("f", ("M",)),
        "tree_value": ("f", ("M", "K")),
        "tree_offsets": ("i", ("T1",)),
    },
}
#: The segments it was trained on (both or neither: files written before 0.4 lack them).
_EXAMPLES = {"examples": ("f", ("e", "F")), "example_classes": ("i", ("e",))}
#: The parameters each method records: name -> (required, check).
_PARAMS = {
    "logistic": {"C": (False, "positive")},
    "knn": {"k": (True, "count")},
    "random_forest": {"n_trees": (True, "trees")},
}


class _Invalid(ValueError):
    """What is wrong, without the file's name (added once, by :func:`read_classifier_file`),
    nor the fix: for a classifier file whose contents are wrong, :data:`_FIX`."""


#: What to do about a classifier file that holds something it should not.
_FIX = "the file is damaged or was not written by napari-segrep: train and save it again"


def _format(record: dict) -> int:
    """The record's format version; an :class:`_Invalid` when it is not ours."""
    fmt = record.get("format")
    if not isinstance(fmt, dict) or fmt.get("name") != CLASSIFIER_FORMAT["name"]:
        raise _Invalid("not a napari-segrep classifier (its record names another format)")
    version = fmt.get("version")
    if not _is_int(version) or version < 1:
        raise _Invalid(f"the format version {version!r} is not a positive whole number")
    if version > CLASSIFIER_FORMAT["version"]:
        raise _Invalid(
            f"written by a newer napari-segrep (classifier format {version}): update "
            "napari-segrep to read it"
        )
    return version


def format_of(feature_columns) -> dict:
    """The format record of a file of a classifier reading ``feature_columns``: version 3
    when none is an embedding column (measurements alone), else 2."""
    if any(c.startswith("emb_") for c in feature_columns):
        return {**CLASSIFIER_FORMAT, "version": 2}
    return dict(CLASSIFIER_FORMAT)


# ---------------------------------------------------------------------- the record
def _check_record(record: dict) -> dict:
    """Every field of the JSON record checked; returns it with ``params``, ``info`` and
    ``log_columns`` filled in where a field is optional."""
    version = _format(record)
    method = record.get("method")
    if method not in _METHODS:
        raise _Invalid(f"unknown classifier method {method!r} (known: {', '.join(_METHODS)})")
    classes = _names(record.get("classes"), "classes")
    if not 2 <= len(classes) <= MAX_CLASSES:
        raise _Invalid(f"{len(classes)} classes: a classifier has 2 to {MAX_CLASSES}")
    columns = _names(record.get("feature_columns"), "feature_columns")
    if not 1 <= len(columns) <= MAX_FEATURES:
        raise _Invalid(f"{len(columns)} feature columns: a classifier reads 1 to {MAX_FEATURES}")
    info = record.get("info", {})
    alone = isinstance(info, dict) and info.get("features") == "measurements"
    if not alone and not any(c.startswith("emb_") for c in columns):
        raise _Invalid("feature_columns names no embedding column (emb_0, emb_1, ...)")
    if alone and any(c.startswith("emb_") for c in columns):
        raise _Invalid(
            'feature_columns names embedding columns, but info.features is "measurements"'
        )
    logs = _names(record.get("log_columns", []) if version >= 2 else [], "log_columns")
    if version < 2 and "log_columns" in record:
        raise _Invalid("log_columns in a format 1 file: the file was not written by napari-segrep")
    if not set(logs) <= set(columns) or any(c.startswith("emb_") for c in logs):
        raise _Invalid("log_columns must name measurement columns among feature_columns")
    params = record.get("params", {})
    if not isinstance(params, dict):
        raise _Invalid(f"params must be a JSON object, not {type(params).__name__}")
    allowed = _PARAMS[method]
    for key in params:
        if key not in allowed:
            raise _Invalid(f"unknown parameter {key!r} for a {method} classifier")
    for key, (required, check) in allowed.items():
        if key not in params:
            if required:
                raise _Invalid(f"a {method} classifier needs the parameter {key!r}")
            continue
        _check_param(key, params[key], check)
    cv = record.get("cv_score")
    if cv is not None and not (_is_real(cv) and 0.0 <= cv <= 1.0):
        raise _Invalid(f"cv_score {cv!r} is not an accuracy between 0 and 1 (or null)")
    info = record.get("info", {})
    if not isinstance(info, dict):
        raise _Invalid(f"info must be a JSON object, not {type(info).__name__}")
    _check_info(info, classes)
    return {
        **record,
        "classes": classes,
        "feature_columns": columns,
        "log_columns": logs,
        "params": params,
        "info": info,
    }


def _names(value, field: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _Invalid(f"{field} must be a list of names (text)")
    if len(set(value)) != len(value):
        seen, repeated = set(), []
        for v in value:
            if v in seen and v not in repeated:
                repeated.append(v)
            seen.add(v)
        shown = ", ".join(repr(v) for v in repeated[:5])
        raise _Invalid(f"{field} repeats {shown}: each must be named once")
    return list(value)


def _check_param(key: str, value, check: str) -> None:
    if check == "positive":
        if not (_is_real(value) and value > 0):
            raise _Invalid(f"parameter {key}={value!r} must be a positive number")
    elif check == "count":
        if not (_is_int(value) and value >= 1):
            raise _Invalid(f"parameter {key}={value!r} must be a whole number >= 1")
    elif not (_is_int(value) and 1 <= value <= MAX_TREES):
        raise _Invalid(f"parameter {key}={value!r} must be a whole number from 1 to {MAX_TREES}")


def _check_info(info: dict, classes: list[str]) -> None:
    """The ``info`` fields napari-segrep reads (the others are descriptions, kept as they are)."""
    counts = info.get("n_annotations")
    if counts is not None:
        known = set(classes)
        if not isinstance(counts, dict) or not all(
            k in known and _is_int(v) and v >= 0 for k, v in counts.items()
        ):
            raise _Invalid("info.n_annotations must map class names to counts")
    seed = info.get("seed")
    if seed is not None and not (_is_int(seed) and 0 <= seed < 2**32):
        raise _Invalid(f"info.seed {seed!r} is not a whole number from 0 to 2^32 - 1")
    if "features" in info and info["features"] not in _FEATURES:
        raise _Invalid(f"info.features {info['features']!r} is not one of {', '.join(_FEATURES)}")
    scores = info.get("features_cv")
    if scores is not None and not (
        isinstance(scores, dict)
        and all(
            k in _FEATURES and (v is None or (_is_real(v) and 0.0 <= v <= 1.0))
            for k, v in scores.items()
        )
    ):
        raise _Invalid("info.features_cv must map features to accuracies between 0 and 1")
    for key in ("geometry_weight", "size_weight"):
        weight = info.get(key)
        if weight is not None and not (_is_real(weight) and weight > 0):
            raise _Invalid(f"info.{key} {weight!r} is not a positive number")
    encoder = info.get("encoder")
    if encoder is not None and not (
        isinstance(encoder, dict) and isinstance(encoder.get("sha256", ""), str)
    ):
        raise _Invalid("info.encoder must be a JSON object (with a sha256 text)")
    if "crop_size" in info and not (_is_int(info["crop_size"]) and info["crop_size"] > 0):
        raise _Invalid(f"info.crop_size {info['crop_size']!r} is not a positive whole number")
    layers = info.get("layers")
    if layers is not None and not (
        isinstance(layers, dict) and all(_is_int(v) and v >= 0 for v in layers.values())
    ):
        raise _Invalid("info.layers must map layer names to counts")
    _check_normalization(info.get("normalization"))


def _check_normalization(record) -> None:
    """``info.normalization`` as ``embed_segments`` records it (the widget re-embeds another
    image with it): null, or an object whose ``mode`` is text and, for fixed values, ``low``
    and ``high`` lists of as many finite numbers."""
    if record is None:
        return
    if not isinstance(record, dict) or not isinstance(record.get("mode", "image"), str):
        raise _Invalid("info.normalization must be a JSON object with a mode (text)")
    if record.get("mode", "image") in ("image", "segment", "none"):
        return
    low, high = record.get("low"), record.get("high")
    if not (
        isinstance(low, list)
        and isinstance(high, list)
        and 0 < len(low) == len(high)
        and all(_is_real(v) for v in low + high)
    ):
        raise _Invalid("info.normalization: fixed values need low and high, lists of numbers")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# ---------------------------------------------------------------------- the arrays
def _check_shapes(record: dict, headers: dict) -> None:
    """Every array's kind and shape (from its header) against the schema: ``K``, ``C`` and
    ``F`` come from the record, the other symbols must agree between the arrays."""
    k = len(record["classes"])
    sizes = {
        "K": k,
        "C": 1 if k == 2 else k,
        "F": len(record["feature_columns"]),
        "T1": record["params"].get("n_trees", 0) + 1,
    }
    found = {}
    for name, (_, shape, dtype) in headers.items():
        kind, symbols = _SCHEMA[record["method"]].get(name) or _EXAMPLES[name]
        if (
            dtype.names is not None
            or dtype.subdtype is not None
            or dtype.kind not in ("f" if kind == "f" else "iu")
        ):
            wanted = "real floating-point" if kind == "f" else "integer"
            raise _Invalid(f"{name} has dtype {dtype}: it must hold {wanted} numbers")
        if kind == "f" and dtype.itemsize > 8:
            raise _Invalid(f"{name} has dtype {dtype}: float16, float32 or float64 only")
        if len(shape) != len(symbols):
            raise _Invalid(f"{name} has {len(shape)} dimension(s), not {len(symbols)}")
        for axis, (symbol, size) in enumerate(zip(symbols, shape, strict=True)):
            want = sizes.get(symbol, found.get(symbol))
            if want is None:
                found[symbol] = size
            elif size != want:
                raise _Invalid(
                    f"{name} has shape {shape}, its axis {axis} should be {want} "
                    f"({_SYMBOLS[symbol]})"
                )
    if found.get("n", 1) < 1 or found.get("e", 1) < 1:
        raise _Invalid("the classifier stores no training rows")
    if "M" in found:
        n_trees = sizes["T1"] - 1
        if found["M"] < n_trees:
            raise _Invalid(f"{found['M']} tree nodes for {n_trees} trees: a tree is never empty")
        if "e" in found and found["M"] > n_trees * (2 * found["e"] - 1):
            raise _Invalid(
                f"{found['M']} tree nodes: {n_trees} trees grown on {found['e']} segments have "
                f"at most {n_trees * (2 * found['e'] - 1)}"
            )
    if "n" in found and "e" in found and found["n"] != found["e"]:
        raise _Invalid(
            f"train_z has {found['n']} rows but examples {found['e']}: they are the same segments"
        )


_SYMBOLS = {
    "K": "the number of classes",
    "C": "1 for two classes, else the number of classes",
    "F": "the number of feature columns",
    "T1": "the number of trees + 1",
    "n": "as train_z's rows",
    "M": "as the other tree arrays",
    "e": "as examples' rows",
}


def _as_int64(array: np.ndarray, name: str) -> np.ndarray:
    if array.dtype.kind == "u" and array.size and array.max() > np.iinfo(np.int64).max:
        raise _Invalid(f"{name} holds values beyond int64")
    return array.astype(np.int64, copy=False)


def _check_values(record: dict, arrays: dict[str, np.ndarray]) -> None:
    for name, array in arrays.items():
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise _Invalid(f"the classifier's {name} holds NaN or infinite values")
    if not (arrays["scale"] > 0).all():
        bad = np.flatnonzero(~(arrays["scale"] > 0))
        column = record["feature_columns"][bad[0]]
        raise _Invalid(
            f"scale is not positive for {len(bad)} feature column(s) ({column}...): every "
            "feature is divided by its scale"
        )
    k = len(record["classes"])
    for name in ("train_y", "example_classes"):
        if (
            name in arrays
            and len(arrays[name])
            and not ((arrays[name] >= 0).all() and (arrays[name] < k).all())
        ):
            raise _Invalid(f"{name} holds class ids outside 0..{k - 1}")
    if record["method"] == "random_forest":
        _check_trees(arrays, len(record["feature_columns"]))


def _check_trees(a: dict[str, np.ndarray], n_features: int) -> None:
    """Each tree (``tree_offsets[t]`` to ``tree_offsets[t + 1]``): a leaf has both children
    -1; an inner node has both children inside its tree and after it (so every path from the
    root ends at a leaf: no cycle), and a feature index in range; a leaf's values are class
    probabilities (>= 0, summing to 1)."""
    offsets, left, right = a["tree_offsets"], a["tree_left"], a["tree_right"]
    n_nodes = len(left)
    if offsets[0] != 0 or offsets[-1] != n_nodes or not (np.diff(offsets) > 0).all():
        raise _Invalid(
            f"tree_offsets must rise strictly from 0 to {n_nodes} (the node count): each tree "
            "has at least one node"
        )
    sizes = np.diff(offsets)
    tree = np.repeat(np.arange(len(sizes)), sizes)
    local = np.arange(n_nodes) - offsets[tree]
    end = sizes[tree]
    leaf = left == -1
    if not (leaf == (right == -1)).all():
        raise _Invalid("a tree node has one child only (tree_left and tree_right disagree)")
    inner = ~leaf
    for name, child in (("tree_left", left), ("tree_right", right)):
        c, at = child[inner], local[inner]
        if not ((c > at) & (c < end[inner])).all():
            raise _Invalid(
                f"{name} points outside its tree, or back to a node before it (a cycle): "
                "every child comes after its parent in the same tree"
            )
    feature = a["tree_feature"][inner]
    if not ((feature >= 0) & (feature < n_features)).all():
        raise _Invalid(f"tree_feature holds feature indices outside 0..{n_features - 1}")
    values = a["tree_value"][leaf]
    if not ((values >= 0).all() and np.allclose(values.sum(axis=1), 1.0, rtol=0, atol=1e-6)):
        raise _Invalid("tree_value: a leaf's values must be class probabilities summing to 1")
