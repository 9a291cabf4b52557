"""2D maps of embeddings: a PCA preview (instant) and UMAP (the map users explore); and
neighbourhood measures (how two maps agree, how well nearest neighbours share a class).

Both maps return an ``(N, 2)`` float array aligned with the input rows.  Rows with NaN/Inf
(should a caller pass any) get NaN coordinates instead of breaking the fit of the others.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "MapModel",
    "nearest_neighbour_class_agreement",
    "neighbour_agreement",
    "pca_map",
    "umap_map",
    "warm_up_umap",
]


class MapModel:
    """A fitted 2D map: ``coords`` of the fitted rows and ``transform(new_rows)`` for new ones
    (used by live embedding to place new segments without a refit)."""

    def __init__(self, method: str, model, coords: np.ndarray, mean: np.ndarray, std: np.ndarray):
        self.method, self._model, self.coords = method, model, coords
        self._mean, self._std = mean, std

    def transform(self, emb: np.ndarray) -> np.ndarray:
        emb = np.asarray(emb, np.float64)
        out = np.full((len(emb), 2), np.nan)
        ok = np.isfinite(emb).all(axis=1)
        if ok.any():
            out[ok] = self._model.transform((emb[ok] - self._mean) / self._std)
        return out


def _standardise(emb: np.ndarray):
    emb = np.asarray(emb, np.float64)
    ok = np.isfinite(emb).all(axis=1)
    mean = emb[ok].mean(0) if ok.any() else np.zeros(emb.shape[1])
    std = emb[ok].std(0) if ok.any() else np.ones(emb.shape[1])
    std = np.where(std > 0, std, 1.0)
    return (emb - mean) / std, ok, mean, std


def pca_map(emb: np.ndarray, *, seed: int = 0) -> MapModel:
    """PCA to 2D of standardised embeddings (milliseconds for 10,000 x 512)."""
    from sklearn.decomposition import PCA

    z, ok, mean, std = _standardise(emb)
    coords = np.full((len(z), 2), np.nan)
    n_ok = int(ok.sum())
    model = PCA(n_components=min(2, n_ok, z.shape[1]) or 1, random_state=seed)
    if n_ok >= 2:
        fitted = model.fit_transform(z[ok])
        coords[ok, : fitted.shape[1]] = fitted
        coords[ok, fitted.shape[1] :] = 0.0
    elif n_ok == 1:
        coords[ok] = 0.0
        model = _Constant()
    return MapModel("pca", model, coords, mean, std)


def umap_map(
    emb: np.ndarray, *, seed: int = 0, n_neighbors: int = 15, min_dist: float = 0.1
) -> MapModel:
    """UMAP to 2D of standardised embeddings (``n_neighbors`` shrinks for tiny inputs; fewer
    than 4 rows fall back to PCA)."""
    z, ok, mean, std = _standardise(emb)
    n_ok = int(ok.sum())
    if n_ok < 4:
        return pca_map(emb, seed=seed)
    import umap

    model = umap.UMAP(
        n_components=2,
        n_neighbors=min(n_neighbors, n_ok - 1),
        min_dist=min_dist,
        random_state=seed,
        n_jobs=1,
    )
    coords = np.full((len(z), 2), np.nan)
    coords[ok] = model.fit_transform(z[ok])
    return MapModel("umap", model, coords, mean, std)


def warm_up_umap(*, large: bool = True) -> None:
    """Import umap and run small fits so numba's JIT compilation is done before the user's map
    is needed.  Call it from a background thread.

    UMAP computes neighbours exactly below 4,096 rows and with pynndescent above, and each path
    compiles on first use; ``large`` also warms the second path with a fit on 4,200
    low-dimensional rows.
    """
    rng = np.random.default_rng(0)
    umap_map(rng.normal(size=(40, 8)))
    if large:
        umap_map(rng.normal(size=(4200, 4)))


class _Constant:
    def transform(self, z):
        return np.zeros((len(z), 2))


def neighbour_agreement(a: np.ndarray, b: np.ndarray, *, k: int = 10) -> float:
    """Mean fraction of each point's ``k`` nearest neighbours shared by two maps of the same
    rows (1: same neighbourhoods; about k/N for unrelated maps)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if a.shape != b.shape or len(a) < 2:
        raise ValueError("both maps need the same rows (at least 2)")
    k = min(k, len(a) - 1)

    def knn(x):
        d = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1) if len(x) <= 4000 else None
        if d is None:
            from sklearn.neighbors import NearestNeighbors

            idx = NearestNeighbors(n_neighbors=k + 1).fit(x).kneighbors(x, return_distance=False)
            return [set(row[1:]) for row in idx]
        np.fill_diagonal(d, np.inf)
        return [set(row) for row in np.argpartition(d, k, axis=1)[:, :k]]

    na, nb = knn(a), knn(b)
    return float(np.mean([len(x & y) / k for x, y in zip(na, nb, strict=True)]))


def nearest_neighbour_class_agreement(emb: np.ndarray, classes: np.ndarray) -> float:
    """Fraction of rows whose nearest other row (Euclidean, after standardising each column)
    has the same class: a first look at what embeddings hold (about 1/K for K balanced classes
    when they hold nothing).

    Parameters
    ----------
    emb : (N, D) ndarray
        N >= 2 rows; float32 stays float32.
    classes : (N,) array
        Any comparable values (class ids, names).

    Returns
    -------
    float
        In [0, 1].  Ties go to the lowest row index.

    Examples
    --------
    >>> emb = np.array([[0.0, 0.0], [0.1, 0.0], [5.0, 5.0], [5.1, 5.0]])
    >>> nearest_neighbour_class_agreement(emb, np.array([1, 1, 2, 2]))
    1.0
    """
    emb = np.asarray(emb)
    if not np.issubdtype(emb.dtype, np.floating):
        emb = emb.astype(np.float64)
    classes = np.asarray(classes)
    if emb.ndim != 2 or len(emb) < 2:
        raise ValueError(f"emb must be (N, D) with N >= 2, got shape {emb.shape}")
    if classes.shape != (len(emb),):
        raise ValueError(
            f"one class per row is needed: emb has {len(emb)} rows, classes shape {classes.shape}"
        )
    z = (emb - emb.mean(0)) / (emb.std(0) + 1e-8)
    d = ((z[:, None] - z[None]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    return float((classes[d.argmin(1)] == classes).mean())
