"""Fitting a classifier's arrays: the features standardised and weighted (the size column
by how well size alone separates the annotated classes, :func:`_size_weight`; the measurement
block as much as the embeddings, :func:`_geometry_weight`), the fit with scikit-learn kept as
the arrays prediction needs (:func:`_fit`), and its cross-validated accuracy
(:func:`_cv_score`)."""

from __future__ import annotations

import warnings

import numpy as np

from ._predict import forest_arrays, predict_proba


def _geometry_weight(n_embedding: int, n_geometry: int) -> float:
    """The weight of each standardised measurement column: ``sqrt(D / G)``, so that the ``G``
    measurement columns together have the variance of the ``D`` embedding columns."""
    return float(np.sqrt(n_embedding / max(n_geometry, 1)))


def _fit(
    method: str,
    x: np.ndarray,
    y: np.ndarray,
    n_classes: int,
    params: dict,
    seed: int,
    weights: np.ndarray | None = None,
    size_at: tuple[int, ...] = (),
):
    """Fit with scikit-learn and keep what prediction needs as arrays.

    ``weights``: per column, multiplies the standardised values; kept in ``scale`` (divided
    by it), so prediction, fresh or loaded, standardises and weights in one step.
    ``size_at``: the columns of the segments' size (log area), weighted by how much the
    classes of ``y`` differ in it (:func:`_size_weight`)."""
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale < 1e-12] = 1.0
    if size_at:
        weights = np.ones(x.shape[1]) if weights is None else weights.copy()
        for i in size_at:
            weights[i] = _size_weight(x[:, i], y, x.shape[1] - len(size_at))
    if weights is not None:
        scale = scale / weights
    z = (x - mean) / scale
    arrays = {"mean": mean, "scale": scale}
    if method == "logistic":
        from sklearn.linear_model import LogisticRegression

        # newton-cg: the optimum lbfgs finds, in 10 ms instead of 20-200 ms for a few dozen
        # annotations of 512-d embeddings (scipy's L-BFGS-B costs ~3 ms an iteration here)
        model = LogisticRegression(C=params["C"], solver="newton-cg", max_iter=2000)
        with warnings.catch_warnings():  # y are class ids, whatever their number
            warnings.filterwarnings("ignore", message="The number of unique classes")
            model.fit(z, y)
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


#: The most a size column weighs, in units of sqrt(D) (see _size_weight).
_SIZE_WEIGHT_CAP = 4.0


def _size_weight(values: np.ndarray, y: np.ndarray, n_embedding: int) -> float:
    """The weight of a size column (log area) among ``n_embedding`` standardised embedding
    dimensions.

    1 (one more dimension) unless size alone separates the annotated classes: thresholds
    between the classes (in the order of their mean size) class at least 95% of the
    annotations right, and the classes differ more than chance would make them (Fisher's F
    test of ``B / W``, p < 0.01; ``B``, ``W``: the between- and within-class sums of
    squares).  Then ``sqrt(D) * min(B / W, 4)``: size counts as much as all the embedding
    dimensions together, or more, and a segment larger than the crop, downscaled to fit it,
    is classed by its size, not by an embedding that cannot show it.

    Measured (``benchmarks/classify_geometry.py``, ``classify_clicks.py``): classes defined by
    size gain (logistic 0.94 -> 0.99, k-NN 0.86 -> 0.98); where size only correlates with the
    class (the generated cells' three kinds differ in mean area but overlap), weighting it up
    cost accuracy (0.985 -> 0.853 on a draw of 5 clicks per class), which this rule avoids:
    no task loses."""
    from scipy.stats import f as fisher

    classes, index, counts = np.unique(y, return_inverse=True, return_counts=True)
    n, k = len(values), len(classes)
    sums = np.bincount(index, weights=values, minlength=k)
    centred = values - values.mean()
    total = float(centred @ centred)
    if n <= k or total <= 1e-12 * n:
        return 1.0
    between = float(counts @ (sums / counts - values.mean()) ** 2)
    within = max(total - between, 0.0)
    ratio = np.inf if within <= 1e-12 * total else between / within
    if ratio <= fisher.ppf(0.99, k - 1, n - k) * (k - 1) / (n - k):
        return 1.0
    errors = 0
    order = np.argsort(sums / counts)
    for low, high in zip(order[:-1], order[1:], strict=True):
        a, b = np.sort(values[index == low]), np.sort(values[index == high])
        cuts = np.concatenate([[-np.inf], a, b])  # "<= cut: the smaller class"
        wrong = (len(a) - np.searchsorted(a, cuts, "right")) + np.searchsorted(b, cuts, "right")
        errors += int(wrong.min())
    if errors > 0.05 * n:
        return 1.0
    return float(max(1.0, np.sqrt(n_embedding) * min(ratio, _SIZE_WEIGHT_CAP)))


def _cv_score(method, x, y, n_classes, params, seed, weights=None, size_at=()) -> float | None:
    """Stratified k-fold accuracy of the same fit, k = min(5, the smallest class's count)."""
    from sklearn.model_selection import StratifiedKFold

    folds = int(min(5, np.bincount(y).min()))
    if folds < 2:
        return None
    correct = 0
    split = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for train, test in split.split(x, y):  # every class in every training part (>= 2 each)
        arrays = _fit(method, x[train], y[train], n_classes, params, seed, weights, size_at)
        proba = predict_proba(method, arrays, params, x[test], n_classes)
        correct += int((proba.argmax(axis=1) == y[test]).sum())
    return correct / len(y)
