"""Table operations on embedding tables (one row per segment, a ``label`` column first).

pandas/numpy only.  The widgets call these instead of editing tables themselves.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

__all__ = ["embedding_matrix", "export_frame", "pair_by_label", "replace_rows"]


def embedding_matrix(table: pd.DataFrame) -> np.ndarray:
    """The ``emb_*`` columns as an ``(N, D)`` array."""
    return table.filter(regex=r"^emb_").to_numpy()


def replace_rows(
    table: pd.DataFrame, rows: pd.DataFrame, *, drop: Sequence[int] = ()
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """``table`` with the rows of ``rows``' labels replaced, new labels added and ``drop``'s
    labels removed; every other row stays as it was.

    Columns of ``table`` that ``rows`` lacks are filled with 0 in the new rows (e.g. ``cluster``:
    unassigned), or ``""`` for text columns (``class_annotation``: not annotated).  The result is sorted by label (stable) with a fresh index.

    Returns
    -------
    (merged, keep, order)
        ``keep``: which rows of ``table`` survive (bool, aligned with ``table``); ``order``: the
        permutation that sorted ``concat(table[keep], rows)`` into ``merged``, so arrays aligned
        with the rows (map coordinates, say) can follow: ``concat(a[keep], a_new)[order]``.
    """
    if "label" not in table or "label" not in rows:
        raise ValueError("both tables need a 'label' column")
    replaced = np.union1d(rows["label"].to_numpy(), np.asarray(drop, dtype=np.int64))
    keep = ~np.isin(table["label"].to_numpy(), replaced)
    missing = [c for c in table.columns if c not in rows]
    if missing:  # text columns (a class annotation) get "", numbers 0
        rows = rows.assign(**{c: "" if table[c].dtype == object else 0 for c in missing})
    merged = pd.concat([table[keep], rows[table.columns]], ignore_index=True)
    order = np.argsort(merged["label"].to_numpy(), kind="stable")
    return merged.iloc[order].reset_index(drop=True), keep, order


def pair_by_label(
    labels_a: Sequence[int], values_a: np.ndarray, labels_b: Sequence[int], values_b: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Rows of ``values_a`` and ``values_b`` for the labels both have, in ``labels_b``'s order
    (e.g. the same segments' points in two maps)."""
    labels_a, labels_b = np.asarray(labels_a), np.asarray(labels_b)
    values_a, values_b = np.asarray(values_a), np.asarray(values_b)
    if len(labels_a) != len(values_a) or len(labels_b) != len(values_b):
        raise ValueError("each label needs one row of values")
    row_of = {int(k): i for i, k in enumerate(labels_a)}
    shared = [j for j, k in enumerate(labels_b) if int(k) in row_of]
    a_rows = [row_of[int(labels_b[j])] for j in shared]
    return values_a[a_rows], values_b[shared]


def export_frame(table: pd.DataFrame, coords: np.ndarray, *, map_method: str) -> pd.DataFrame:
    """The exported table: ``label``, geometry (and ``frame``, ``cluster``...), ``map_0``,
    ``map_1``, ``map_method``, ``cluster`` (0 when not clustered), then ``emb_*``."""
    coords = np.asarray(coords, float)
    if coords.shape != (len(table), 2):
        raise ValueError(f"coords must be ({len(table)}, 2), got {coords.shape}")
    emb_cols = [c for c in table.columns if c.startswith("emb_")]
    front = table.drop(columns=emb_cols)
    front["map_0"], front["map_1"] = coords[:, 0], coords[:, 1]
    front["map_method"] = map_method
    if "cluster" not in front:
        front["cluster"] = 0
    return pd.concat([front, table[emb_cols]], axis=1)
