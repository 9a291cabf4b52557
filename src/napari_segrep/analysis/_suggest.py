"""Which segments to annotate next: :func:`suggest_next`, the rows a classifier is least sure
of (smallest margin), leaving out those already annotated (``exclude``: a row mask, the
annotations, labels or key tuples)."""

from __future__ import annotations

import numpy as np

from ._annotations import segment_keys

__all__ = ["suggest_next"]


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
