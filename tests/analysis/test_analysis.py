"""Maps and clusters: index-aligned, NaN-safe, ids from 1; CSV + sidecar export."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from napari_segrep.analysis.cluster import cluster_embeddings
from napari_segrep.analysis.export import write_table
from napari_segrep.analysis.reduce import pca_map, umap_map


def _blobs(n_per=30, d=16, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 8, (3, d))
    emb = np.concatenate([c + rng.normal(0, 1, (n_per, d)) for c in centres])
    return emb, np.repeat([0, 1, 2], n_per)


def _purity(ids, truth):
    return sum(np.bincount(truth[ids == c]).max() for c in np.unique(ids)) / len(ids)


def test_pca_map__aligned_nan_safe_and_transforms_new_rows():
    emb, truth = _blobs()
    emb[5] = np.nan
    m = pca_map(emb)
    assert m.coords.shape == (90, 2) and np.isnan(m.coords[5]).all()
    assert np.isfinite(np.delete(m.coords, 5, axis=0)).all()
    np.testing.assert_allclose(m.transform(emb[:4]), m.coords[:4], atol=1e-9)
    assert np.isnan(m.transform(emb[5:6])).all()


def test_umap_map__separates_blobs_and_places_new_points_near_their_kin():
    emb, truth = _blobs()
    m = umap_map(emb, seed=0)
    assert m.method == "umap" and m.coords.shape == (90, 2)
    centroids = np.stack([m.coords[truth == c].mean(0) for c in range(3)])
    new = m.transform(emb[:3] + 0.01)
    nearest = np.argmin(((new[:, None] - centroids[None]) ** 2).sum(-1), axis=1)
    assert (nearest == 0).all()
    assert umap_map(emb[:3]).method == "pca"  # too few rows for UMAP


@pytest.mark.parametrize("method", ["kmeans", "hdbscan"])
def test_cluster_embeddings__ids_from_one_and_recover_blobs(method):
    emb, truth = _blobs()
    emb[7] = np.inf
    ids = cluster_embeddings(emb, method=method, k=3, min_cluster_size=5)
    assert ids.dtype == np.int64 and ids[7] == 0
    ok = np.arange(90) != 7
    assert ids[ok].min() >= (0 if method == "hdbscan" else 1)
    assert _purity(ids[ok], truth[ok]) > 0.95


def test_cluster_embeddings__bad_config():
    emb, _ = _blobs()
    with pytest.raises(ValueError, match="kmeans"):
        cluster_embeddings(emb, method="dbscan")
    with pytest.raises(ValueError, match="k must"):
        cluster_embeddings(emb, k=0)
    assert (cluster_embeddings(np.full((3, 4), np.nan)) == 0).all()


def test_write_table__round_trip_and_atomic(tmp_path):
    df = pd.DataFrame(
        {"label": np.array([3, 9], np.int64), "emb_0": np.array([0.1, 0.25], np.float32)}
    )
    path = write_table(df, tmp_path / "t.csv", provenance={"n": 2})
    back = pd.read_csv(path)
    assert back["label"].tolist() == [3, 9]
    np.testing.assert_allclose(back["emb_0"], df["emb_0"], rtol=1e-7)
    assert json.loads((tmp_path / "t.json").read_text()) == {"n": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.csv", "t.json"]
    with pytest.raises(ValueError, match="does not exist"):
        write_table(df, tmp_path / "missing" / "t.csv")
