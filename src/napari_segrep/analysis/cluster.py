"""Clustering of embeddings: KMeans and HDBSCAN.  Cluster ids start at 1; 0 = unassigned
(HDBSCAN noise, or rows with NaN)."""

from __future__ import annotations

import numpy as np

__all__ = ["cluster_embeddings"]


def cluster_embeddings(
    emb: np.ndarray, *, method: str = "kmeans", k: int = 5, min_cluster_size: int = 5, seed: int = 0
) -> np.ndarray:
    """Cluster rows of ``emb`` (standardised first).

    Parameters
    ----------
    emb : (N, D) ndarray
    method : {"kmeans", "hdbscan"}
    k : int
        Clusters for KMeans (reduced to N when N < k).
    min_cluster_size : int
        For HDBSCAN.

    Returns
    -------
    (N,) int64 ndarray
        Cluster ids from 1; 0 for HDBSCAN noise and rows that are not finite.
    """
    emb = np.asarray(emb, np.float64)
    out = np.zeros(len(emb), np.int64)
    ok = np.isfinite(emb).all(axis=1) if emb.ndim == 2 else np.zeros(0, bool)
    if method not in ("kmeans", "hdbscan"):
        raise ValueError(f"method={method!r}: choose 'kmeans' or 'hdbscan'")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    n = int(ok.sum())
    if n == 0:
        return out
    z = emb[ok]
    z = (z - z.mean(0)) / np.where(z.std(0) > 0, z.std(0), 1.0)
    if method == "kmeans":
        from sklearn.cluster import KMeans

        ids = KMeans(n_clusters=min(k, n), n_init=4, random_state=seed).fit_predict(z)
        out[ok] = ids + 1
    else:
        from sklearn.cluster import HDBSCAN

        if n < 2:
            return out
        ids = HDBSCAN(min_cluster_size=max(2, min(min_cluster_size, n)), copy=True).fit_predict(z)
        out[ok] = np.where(ids >= 0, ids + 1, 0)
    return out
