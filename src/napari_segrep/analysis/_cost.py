"""The cost of fitting a classifier, estimated before any fitting: :func:`estimated_cost` (the
memory a fit needs at its peak, the size of the classifier's arrays) and :func:`_check_cost`,
which refuses, naming the estimate, a fit beyond the limits."""

from __future__ import annotations

from ._classifier_file import MAX_ARRAY_BYTES
from ._classifier_schema import MAX_CLASSES

__all__ = ["MAX_FIT_BYTES", "estimated_cost"]

#: The working memory a fit may need, at most (estimated before fitting; see _check_cost).
MAX_FIT_BYTES = 4 * 1024**3
#: How to make a fit smaller (the end of the messages that refuse one).
_SMALLER = (
    "use fewer classes or annotations, fewer trees (n_trees, --n-trees), or the logistic "
    "method (the smallest)"
)


def estimated_cost(method: str, n_rows: int, n_features: int, n_classes: int, n_trees: int = 100):
    """``(fit_bytes, model_bytes)``: the memory a fit needs at its peak and the size of the
    classifier's arrays, estimated from the problem's size (checked against the real sizes
    in ``benchmarks/``: within a factor 2).

    Logistic: scikit-learn's multinomial newton-cg holds a few ``(rows, classes)`` and
    ``(classes, features)`` arrays; k-NN: the standardised rows; a random forest: every node's
    class probabilities, ``trees x nodes x classes`` (a fully grown tree on a bootstrap sample
    of ``n`` rows has about ``1.3 n`` nodes), once in scikit-learn's trees and once here."""
    f8 = 8
    rows_logits = 1 if n_classes == 2 else n_classes
    examples = n_rows * (n_features * 4 + f8)
    if method == "logistic":
        model = f8 * (2 * n_features + rows_logits * (n_features + 1))
        fit = f8 * (
            2 * n_rows * n_features + 4 * n_rows * rows_logits + 6 * rows_logits * n_features
        )
    elif method == "knn":
        model = f8 * (2 * n_features + n_rows * (n_features + 1))
        fit = 2 * f8 * n_rows * n_features
    else:
        nodes = n_trees * max(int(1.3 * n_rows), 1)
        model = f8 * (2 * n_features + nodes * (n_classes + 4) + n_trees + 1)
        fit = 2 * model
    return fit + model + examples, model + examples


def _check_cost(method: str, n_rows: int, n_features: int, n_classes: int, n_trees: int) -> None:
    """Refuse, before any fitting and naming the estimate, what would run for many minutes
    and take gigabytes: more than :data:`MAX_CLASSES` classes, or a fit or classifier beyond
    :data:`MAX_FIT_BYTES` / :data:`MAX_ARRAY_BYTES`."""
    if n_classes > MAX_CLASSES:
        fit, _ = estimated_cost(method, n_rows, n_features, n_classes, n_trees)
        raise ValueError(
            f"the annotations name {n_classes:,} classes ({n_rows:,} annotated segments, "
            f"{n_rows / n_classes:.1f} per class): at most {MAX_CLASSES:,} are supported "
            f"(this fit would need about {fit / 1024**3:.1f} GiB and a long time, and every "
            "prediction a probability column per class); check that the class column holds "
            "classes, not one name per segment, or merge rare classes"
        )
    fit, model = estimated_cost(method, n_rows, n_features, n_classes, n_trees)
    if fit > MAX_FIT_BYTES or model > MAX_ARRAY_BYTES:
        raise ValueError(
            f"a {method} classifier of {n_classes} classes on {n_rows:,} annotated segments "
            f"x {n_features} features would need about {fit / 1024**3:.1f} GiB to fit and "
            f"{model / 1024**3:.1f} GiB to keep (limits {MAX_FIT_BYTES / 1024**3:.0f} and "
            f"{MAX_ARRAY_BYTES / 1024**3:.0f} GiB): {_SMALLER}"
        )
