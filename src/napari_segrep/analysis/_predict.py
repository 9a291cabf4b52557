"""The classifiers' prediction in numpy, from the arrays a fitted scikit-learn model leaves
(the same code for a model just trained and one loaded from a file; tested equal to
scikit-learn's ``predict_proba``).  The arrays each method needs, with their shapes and
dtypes, are listed in ``_classifier_schema``, which checks a file's before they get here."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

__all__ = ["forest_arrays", "predict_proba"]


def predict_proba(
    method: str, arrays: Mapping[str, np.ndarray], params: Mapping, x: np.ndarray, n_classes: int
) -> np.ndarray:
    """``(N, n_classes)`` probabilities of the rows of ``x`` (raw embeddings), standardised
    with the fitted mean and scale."""
    z = (x - arrays["mean"]) / arrays["scale"]
    if method == "logistic":
        return _logistic_proba(z, arrays["coef"], arrays["intercept"])
    if method == "knn":
        return _knn_proba(z, arrays["train_z"], arrays["train_y"], n_classes, params["k"])
    return _forest_proba(z, arrays, n_classes)


def _softmax(logits: np.ndarray) -> np.ndarray:
    logits = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(logits)
    return e / e.sum(axis=1, keepdims=True)


def _logistic_proba(z: np.ndarray, coef: np.ndarray, intercept: np.ndarray) -> np.ndarray:
    logits = z @ coef.T + intercept
    if coef.shape[0] == 1:  # two classes: one logit for the second
        p = 1.0 / (1.0 + np.exp(-logits[:, 0]))
        return np.stack([1.0 - p, p], axis=1)
    return _softmax(logits)


def _knn_proba(z, train_z, train_y, n_classes: int, k: int) -> np.ndarray:
    k = min(k, len(train_z))
    out = np.zeros((len(z), n_classes))
    step = max(1, min(4096, 2**22 // max(len(train_z), 1)))  # <= 32 MB of distances a chunk
    for start in range(0, len(z), step):  # bounded memory for large tables
        chunk = z[start : start + step]
        d2 = (chunk**2).sum(1)[:, None] - 2.0 * chunk @ train_z.T + (train_z**2).sum(1)[None, :]
        votes = train_y[np.argpartition(d2, k - 1, axis=1)[:, :k]]
        for c in range(n_classes):
            out[start : start + len(chunk), c] = (votes == c).mean(axis=1)
    return out


def forest_arrays(forest, n_classes: int) -> dict[str, np.ndarray]:
    """The trees of a fitted scikit-learn forest as concatenated node arrays."""
    lefts, rights, feats, thresholds, values, offsets = [], [], [], [], [], [0]
    for tree in forest.estimators_:
        t = tree.tree_
        value = t.value[:, 0, :].astype(np.float64)
        value /= np.maximum(value.sum(axis=1, keepdims=True), 1e-300)
        full = np.zeros((t.node_count, n_classes))
        full[:, tree.classes_.astype(int)] = value  # a tree may have seen fewer classes
        lefts.append(t.children_left.astype(np.int64))
        rights.append(t.children_right.astype(np.int64))
        feats.append(t.feature.astype(np.int64))
        thresholds.append(t.threshold.astype(np.float64))
        values.append(full)
        offsets.append(offsets[-1] + t.node_count)
    return {
        "tree_left": np.concatenate(lefts),
        "tree_right": np.concatenate(rights),
        "tree_feature": np.concatenate(feats),
        "tree_threshold": np.concatenate(thresholds),
        "tree_value": np.concatenate(values),
        "tree_offsets": np.asarray(offsets, np.int64),
    }


def _forest_proba(z: np.ndarray, a: Mapping[str, np.ndarray], n_classes: int) -> np.ndarray:
    # scikit-learn compares float32 features with the thresholds: so do we
    z32 = z.astype(np.float32).astype(np.float64)
    left, right, feature = a["tree_left"], a["tree_right"], a["tree_feature"]
    threshold, value, offsets = a["tree_threshold"], a["tree_value"], a["tree_offsets"]
    out = np.zeros((len(z), n_classes))
    rows = np.arange(len(z))
    for start in offsets[:-1]:
        node = np.full(len(z), start, np.int64)
        active = left[node] != -1
        while active.any():
            n = node[active]
            go_left = z32[rows[active], feature[n]] <= threshold[n]
            node[active] = start + np.where(go_left, left[n], right[n])
            active = left[node] != -1
        out += value[node]
    return out / (len(offsets) - 1)
