"""Embedding-table operations: the matrix, live row replacement, pairing by label, export."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from napari_segrep.analysis.tables import (
    embedding_matrix,
    export_frame,
    pair_by_label,
    replace_rows,
)


def _table(labels, *, seed=0, dim=3, cluster=None):
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels, np.int64)
    data = {
        "label": labels,
        "centroid_y": rng.random(len(labels)) * 100,
        "area": rng.integers(10, 100, len(labels)),
    }
    if cluster is not None:
        data["cluster"] = np.asarray(cluster, np.int64)
    for i in range(dim):
        data[f"emb_{i}"] = rng.normal(size=len(labels)).astype(np.float32)
    return pd.DataFrame(data)


# ----------------------------------------------------------------------------- embedding_matrix
def test_embedding_matrix__only_emb_columns_in_order():
    table = _table([1, 2], dim=3).assign(my_emb_x=9.0)  # "emb_" not at the start: not included
    m = embedding_matrix(table)
    assert m.shape == (2, 3) and m.dtype == np.float32
    np.testing.assert_array_equal(m, table[["emb_0", "emb_1", "emb_2"]].to_numpy())


def test_embedding_matrix__no_embedding_columns_gives_zero_width():
    assert embedding_matrix(pd.DataFrame({"label": [1, 2]})).shape == (2, 0)


# ----------------------------------------------------------------------------- replace_rows
def test_replace_rows__keeps_untouched_rows_bitwise_and_replaces_the_others():
    table = _table([1, 2, 3, 4], seed=0, cluster=[1, 1, 2, 2])
    rows = _table([2, 4], seed=1, cluster=[5, 6])
    merged, keep, order = replace_rows(table, rows)
    assert merged["label"].tolist() == [1, 2, 3, 4]
    assert list(merged.columns) == list(table.columns)
    assert (merged.dtypes == table.dtypes).all()
    pd.testing.assert_frame_equal(merged.iloc[[0, 2]], table.iloc[[0, 2]])  # bitwise: exact
    pd.testing.assert_frame_equal(merged.iloc[[1, 3]].reset_index(drop=True), rows)
    assert keep.tolist() == [True, False, True, False]
    assert merged.index.tolist() == [0, 1, 2, 3]


def test_replace_rows__adds_removes_and_sorts_by_label():
    table = _table([2, 5, 9])
    rows = _table([7, 1], seed=3)  # new labels, given unsorted
    merged, keep, order = replace_rows(table, rows, drop=[5])
    assert merged["label"].tolist() == [1, 2, 7, 9]
    assert keep.tolist() == [True, False, True]
    assert merged.index.tolist() == [0, 1, 2, 3]
    pd.testing.assert_frame_equal(
        merged.set_index("label").loc[[2, 9]], table.set_index("label").loc[[2, 9]]
    )
    pd.testing.assert_frame_equal(merged.set_index("label").loc[[7, 1]], rows.set_index("label"))


def test_replace_rows__dropping_a_label_that_is_absent_changes_nothing():
    table = _table([1, 2])
    merged, keep, _ = replace_rows(table, table.iloc[:0], drop=[42])
    pd.testing.assert_frame_equal(merged, table)
    assert keep.all()


def test_replace_rows__fills_columns_the_new_rows_lack_with_zero():
    table = _table([1, 3], cluster=[4, 4])
    rows = _table([2], seed=5)  # no cluster column: a new segment is unassigned
    merged, _, _ = replace_rows(table, rows)
    assert merged["cluster"].tolist() == [4, 0, 4]
    assert merged["cluster"].dtype == np.int64
    assert list(merged.columns) == list(table.columns)


def test_replace_rows__empty_new_rows_without_the_extra_columns_only_drop():
    """An empty embedding result (no changed segment) lacks ``cluster`` too: rows are only
    dropped."""
    table = _table([1, 2, 3], cluster=[1, 2, 3])
    empty = _table([], seed=9)
    merged, keep, _ = replace_rows(table, empty, drop=[2])
    assert merged["label"].tolist() == [1, 3] and merged["cluster"].tolist() == [1, 3]
    assert (merged.dtypes == table.dtypes).all()
    assert keep.tolist() == [True, False, True]


def test_replace_rows__keep_and_order_let_an_aligned_array_follow():
    table = _table([10, 20, 30, 40])
    coords = np.array([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0], [4.0, 4.0]])  # one point per row
    rows = _table([25, 5, 30], seed=2)
    new_coords = np.array([[25.0, 25.0], [5.0, 5.0], [30.5, 30.5]])
    merged, keep, order = replace_rows(table, rows, drop=[20])
    followed = np.concatenate([coords[keep], new_coords])[order]
    assert merged["label"].tolist() == [5, 10, 25, 30, 40]
    np.testing.assert_array_equal(
        followed, [[5.0, 5.0], [1.0, 1.0], [25.0, 25.0], [30.5, 30.5], [4.0, 4.0]]
    )


def test_replace_rows__needs_label_columns():
    table = _table([1])
    with pytest.raises(ValueError, match="'label' column"):
        replace_rows(table, table.drop(columns="label"))
    with pytest.raises(ValueError, match="'label' column"):
        replace_rows(table.drop(columns="label"), table)


# ----------------------------------------------------------------------------- pair_by_label
def test_pair_by_label__pairs_in_b_order_and_skips_labels_one_side_lacks():
    labels_a = [1, 2, 3, 4]
    values_a = np.array([[1.0], [2.0], [3.0], [4.0]])
    labels_b = [4, 9, 2, 1]  # 9 is not in a; 3 is not in b
    values_b = np.array([[40.0], [90.0], [20.0], [10.0]])
    a, b = pair_by_label(labels_a, values_a, labels_b, values_b)
    np.testing.assert_array_equal(a, [[4.0], [2.0], [1.0]])
    np.testing.assert_array_equal(b, [[40.0], [20.0], [10.0]])


def test_pair_by_label__nothing_shared_gives_empty_arrays():
    a, b = pair_by_label([1], np.ones((1, 2)), [2], np.ones((1, 2)))
    assert a.shape == (0, 2) and b.shape == (0, 2)


def test_pair_by_label__one_row_per_label():
    with pytest.raises(ValueError, match="one row of values"):
        pair_by_label([1, 2], np.ones((3, 2)), [1], np.ones((1, 2)))
    with pytest.raises(ValueError, match="one row of values"):
        pair_by_label([1], np.ones((1, 2)), [1, 2], np.ones((1, 2)))


# ----------------------------------------------------------------------------- export_frame
def test_export_frame__column_order_and_cluster_default():
    table = _table([3, 7], dim=2)
    coords = np.array([[0.5, 1.5], [2.5, 3.5]])
    out = export_frame(table, coords, map_method="umap")
    assert list(out.columns) == [
        "label",
        "centroid_y",
        "area",
        "map_0",
        "map_1",
        "map_method",
        "cluster",
        "emb_0",
        "emb_1",
    ]
    assert out["cluster"].tolist() == [0, 0] and out["map_method"].tolist() == ["umap"] * 2
    np.testing.assert_array_equal(out[["map_0", "map_1"]].to_numpy(), coords)
    pd.testing.assert_frame_equal(out[["label", "centroid_y", "area"]], table.iloc[:, :3])
    pd.testing.assert_frame_equal(out[["emb_0", "emb_1"]], table[["emb_0", "emb_1"]])
    assert "cluster" not in table and "map_0" not in table  # the input is left as it was


def test_export_frame__keeps_existing_clusters_where_they_are():
    table = _table([3, 7], dim=1, cluster=[2, 1])
    out = export_frame(table, np.zeros((2, 2)), map_method="pca")
    assert list(out.columns) == [
        "label",
        "centroid_y",
        "area",
        "cluster",
        "map_0",
        "map_1",
        "map_method",
        "emb_0",
    ]
    assert out["cluster"].tolist() == [2, 1]


def test_export_frame__coords_must_match_the_rows():
    with pytest.raises(ValueError, match=r"coords must be \(2, 2\)"):
        export_frame(_table([1, 2]), np.zeros((3, 2)), map_method="umap")
