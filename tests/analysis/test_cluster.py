"""Clusters: ids from 1, 0 for noise and rows that are not finite; config errors are named."""

from __future__ import annotations

import numpy as np
import pytest

from napari_segrep.analysis.cluster import cluster_embeddings

from .conftest import blobs


def _purity(ids, truth):
    return sum(np.bincount(truth[ids == c]).max() for c in np.unique(ids)) / len(ids)


@pytest.mark.parametrize("method", ["kmeans", "hdbscan"])
def test_cluster_embeddings__ids_from_one_and_recover_blobs(method):
    emb, truth = blobs()
    emb[7] = np.inf
    ids = cluster_embeddings(emb, method=method, k=3, min_cluster_size=5)
    assert ids.dtype == np.int64 and ids[7] == 0
    ok = np.arange(90) != 7
    assert ids[ok].min() >= (0 if method == "hdbscan" else 1)
    assert _purity(ids[ok], truth[ok]) > 0.95


def test_cluster_embeddings__bad_config():
    emb, _ = blobs()
    with pytest.raises(ValueError, match="kmeans"):
        cluster_embeddings(emb, method="dbscan")
    with pytest.raises(ValueError, match="k must"):
        cluster_embeddings(emb, k=0)
    assert (cluster_embeddings(np.full((3, 4), np.nan)) == 0).all()
