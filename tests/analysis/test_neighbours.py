"""nearest_segments / NeighbourIndex / typical_segments: exact order, checked against a direct
computation (scipy's cdist and a full sort)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy.spatial.distance import cdist

import napari_segrep as sr
from napari_segrep.analysis.neighbours import NeighbourIndex, typical_segments

from .conftest import blobs


def direct(emb, row, k, metric, exclude_self=True):
    """The k nearest by a full sort of cdist's distances (ties by row)."""
    x = np.asarray(emb, np.float32).astype(np.float64)
    dist = cdist(x[row : row + 1], x, metric=metric)[0]
    rows = np.arange(len(x))
    if exclude_self:
        dist, rows = np.delete(dist, row), np.delete(rows, row)
    order = np.lexsort((rows, dist))[:k]
    return rows[order], dist[order]


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_nearest_segments__order_equals_a_full_sort_of_cdist(metric):
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((2000, 64)).astype(np.float32)
    index = NeighbourIndex(emb, metric=metric)
    for row in (0, 7, 1999):
        rows, dist = sr.nearest_segments(emb, row, k=25, metric=metric)
        want_rows, want_dist = direct(emb, row, 25, metric)
        np.testing.assert_array_equal(rows, want_rows)
        np.testing.assert_allclose(dist, want_dist, rtol=1e-12, atol=1e-12)
        again = index.query(row, k=25)
        np.testing.assert_array_equal(again[0], rows)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_nearest_segments__near_duplicates_are_ordered_exactly(metric):
    """Neighbours closer than float32's rounding of a dot product: still cdist's order."""
    rng = np.random.default_rng(1)
    base = rng.standard_normal(512).astype(np.float32) * 10
    emb = base + rng.standard_normal((300, 512)).astype(np.float32) * 1e-4
    rows, dist = sr.nearest_segments(emb, 0, k=50, metric=metric)
    want_rows, want_dist = direct(emb, 0, 50, metric)
    np.testing.assert_array_equal(rows, want_rows)
    np.testing.assert_allclose(dist, want_dist, rtol=1e-9, atol=1e-14)  # 1 - cos: cancels


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_nearest_segments__equal_distances_in_row_order(metric):
    emb = np.array([[1.0, 0.0], [3.0, 1.0], [0.0, 2.0], [3.0, 1.0], [2.0, 0.0], [3.0, 1.0]])
    rows, dist = sr.nearest_segments(emb, 3, k=5, metric=metric)
    assert rows[:2].tolist() == [1, 5] and dist[0] == dist[1] < 1e-12
    if metric == "cosine":  # [1, 0] and [2, 0] point the same way
        assert rows[2:4].tolist() == [0, 4] and dist[2] == dist[3]


@settings(max_examples=60, deadline=None)
@given(
    emb=arrays(
        np.float64,
        st.tuples(st.integers(2, 40), st.integers(1, 6)),
        elements=st.integers(-5, 5).map(float),
    ),
    k=st.integers(1, 45),
    data=st.data(),
)
def test_nearest_segments__property_euclidean_exact_on_integer_data(emb, k, data):
    """Integer coordinates: every distance is exact, so the order (ties by row) must be too."""
    row = data.draw(st.integers(0, len(emb) - 1))
    exclude = data.draw(st.booleans())
    rows, dist = sr.nearest_segments(emb, row, k=k, metric="euclidean", exclude_self=exclude)
    want_rows, want_dist = direct(emb, row, k, "euclidean", exclude_self=exclude)
    np.testing.assert_array_equal(rows, want_rows)
    np.testing.assert_array_equal(dist, want_dist)


@settings(max_examples=60, deadline=None)
@given(
    emb=arrays(
        np.float32,
        st.tuples(st.integers(2, 40), st.integers(1, 8)),
        elements=st.floats(-100, 100, width=32),
    ),
    k=st.integers(1, 45),
    data=st.data(),
)
def test_nearest_segments__property_cosine_matches_cdist(emb, k, data):
    assume((np.linalg.norm(emb.astype(np.float64), axis=1) > 1e-3).all())  # cdist: 0 -> NaN
    row = data.draw(st.integers(0, len(emb) - 1))
    rows, dist = sr.nearest_segments(emb, row, k=k, metric="cosine")
    want_rows, want_dist = direct(emb, row, k, "cosine")
    assert len(rows) == min(k, len(emb) - 1) and row not in rows
    full = cdist(emb[row : row + 1].astype(np.float64), emb.astype(np.float64), "cosine")[0]
    np.testing.assert_allclose(dist, full[rows], atol=1e-12)  # the distances of those rows
    np.testing.assert_allclose(dist, want_dist, atol=1e-12)  # and the k smallest
    assert (np.diff(dist) >= -1e-12).all()


def test_nearest_segments__table_in_table_out():
    emb, _ = blobs(n_per=20, d=8)
    table = pd.DataFrame({"label": np.arange(1, 61), "area": np.arange(60) * 2.0})
    table = pd.concat([table, pd.DataFrame(emb, columns=[f"emb_{i}" for i in range(8)])], axis=1)
    table.index = table.index + 100
    out = sr.nearest_segments(table, 4, k=6, metric="euclidean")
    rows, dist = sr.nearest_segments(emb, 4, k=6, metric="euclidean")
    assert list(out.columns) == ["label", "area", "distance"]
    np.testing.assert_array_equal(out.index, rows + 100)
    np.testing.assert_array_equal(out["label"], rows + 1)
    np.testing.assert_allclose(out["distance"], dist)
    assert (out["label"] <= 20).all()  # its own blob


def test_nearest_segments__k_beyond_the_rows_and_exclude_self():
    emb = np.array([[0.0, 1.0], [1.0, 1.0], [5.0, 1.0]])
    rows, _ = sr.nearest_segments(emb, 1, k=10, metric="euclidean")
    assert rows.tolist() == [0, 2]
    rows, dist = sr.nearest_segments(emb, 1, k=10, metric="euclidean", exclude_self=False)
    assert rows.tolist() == [1, 0, 2] and dist[0] == 0.0
    one = sr.nearest_segments(emb[:1], 0, k=3)
    assert one[0].shape == (0,) and one[1].shape == (0,)


def test_nearest_segments__non_finite_rows_never_returned_and_bad_input_refused():
    emb = np.array([[0.0, 1.0], [np.nan, 1.0], [0.1, 1.0], [3.0, np.inf]])
    rows, _ = sr.nearest_segments(emb, 0, k=5, metric="euclidean")
    assert rows.tolist() == [2]
    with pytest.raises(ValueError, match="non-finite"):
        sr.nearest_segments(emb, 1)
    with pytest.raises(IndexError, match="out of range"):
        sr.nearest_segments(emb, 4)
    with pytest.raises(ValueError, match="metric='manhattan' is not known"):
        sr.nearest_segments(emb, 0, metric="manhattan")
    with pytest.raises(ValueError, match="k must be"):
        sr.nearest_segments(emb, 0, k=0)
    with pytest.raises(ValueError, match="no emb_"):
        sr.nearest_segments(pd.DataFrame({"label": [1, 2]}), 0)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_typical_segments__nearest_to_the_selections_centroid(metric):
    emb, _ = blobs(n_per=30, d=8, seed=2)
    selection = [3, 40, 41, 42, 50, 77, 88]
    rows, dist = typical_segments(emb, selection, k=4, metric=metric)
    x = emb[selection]
    if metric == "cosine":
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
    want = cdist(x.mean(axis=0, keepdims=True), x, metric=metric)[0]
    order = np.lexsort((selection, want))[:4]
    np.testing.assert_array_equal(rows, np.asarray(selection)[order])
    np.testing.assert_allclose(dist, want[order], atol=1e-12)
    assert set(rows) <= set(selection)


def test_neighbour_index__query_vector_leaves_out_rows():
    emb = np.array([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0], [3.0, 0.0]])
    index = NeighbourIndex(emb, metric="euclidean")
    rows, dist = index.query_vector([2.2, 0.0], k=2, exclude=[2])
    assert rows.tolist() == [3, 1] and dist == pytest.approx([0.8, 1.2])
    with pytest.raises(ValueError, match="has 3 values"):
        index.query_vector([1.0, 2.0, 3.0])
