"""Nearest segments in embedding space ("more like this") and the most typical segments of a
selection, exact.

One float32 matrix-vector product per query shortlists the candidates; the shortlist's
distances are then computed again in float64, the way :func:`scipy.spatial.distance.cdist`
computes them, so the order is exact (ties broken by row number).  The shortlist is provably
large enough: it keeps every row whose float32 distance, less a bound on its rounding error,
could still be among the ``k`` smallest.

numpy only (a table is read through its own pandas methods): no torch, no scikit-learn.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ._annotations import embedding_columns

__all__ = ["METRICS", "NeighbourIndex", "nearest_segments", "typical_segments"]

#: The distances :class:`NeighbourIndex` knows (``scipy.spatial.distance.cdist``'s definitions).
METRICS = ("cosine", "euclidean")
_U32 = float(np.finfo(np.float32).eps) / 2  # unit roundoff of float32


class NeighbourIndex:
    """Embeddings kept ready for repeated exact nearest-neighbour queries.

    The matrix is converted to C-contiguous float32 once and the row norms are kept (float64),
    so each query costs one BLAS matrix-vector product plus O(N) selection.

    Parameters
    ----------
    table_or_embeddings : DataFrame or (N, D) array_like
        A table with ``emb_*`` columns (``embed_segments``' output), or the embeddings.
    metric : {"cosine", "euclidean"}
        ``"cosine"``: ``1 - u.v / (|u| |v|)`` (a zero vector is at distance 1 from everything);
        ``"euclidean"``: ``|u - v|``.
    columns : sequence of str, optional
        The table's columns to use instead of its ``emb_*`` columns.

    Notes
    -----
    Rows with a NaN or infinite value are never returned as neighbours, and cannot be queried.

    Examples
    --------
    >>> import numpy as np
    >>> from napari_segrep.analysis.neighbours import NeighbourIndex
    >>> emb = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [1.0, 0.05]])
    >>> index = NeighbourIndex(emb, metric="cosine")
    >>> rows, dist = index.query(0, k=2)
    >>> rows.tolist()
    [3, 1]
    >>> index.typical([0, 1, 3], k=1)[0].tolist()
    [3]
    """

    def __init__(self, table_or_embeddings, *, metric: str = "cosine", columns=None):
        if metric not in METRICS:
            raise ValueError(f"metric={metric!r} is not known: use one of {', '.join(METRICS)}")
        self.metric = metric
        self.table = None
        data = table_or_embeddings
        if hasattr(data, "columns") and hasattr(data, "iloc"):  # a DataFrame
            self.table = data
            cols = list(columns) if columns is not None else embedding_columns(data)
            if not cols:
                raise ValueError(
                    "the table has no emb_* columns: give embed_segments' table, pass "
                    "columns=[...], or give the embeddings as an (N, D) array"
                )
            data = data[cols].to_numpy(np.float32)
        elif columns is not None:
            raise ValueError("columns= only applies to a table (DataFrame)")
        x = np.ascontiguousarray(np.asarray(data, dtype=np.float32))
        if x.ndim != 2:
            raise ValueError(f"embeddings must be 2D (N, D), got shape {x.shape}")
        self._x = x
        self._valid = np.isfinite(x).all(axis=1)
        norms = np.sqrt(np.einsum("ij,ij->i", x, x, dtype=np.float64))
        norms[~self._valid] = np.inf
        self._norms = norms
        self._sq_norms = norms**2
        self._inv_norms = np.where(norms > 0, 1.0 / np.where(norms > 0, norms, 1.0), 0.0)
        finite = norms[self._valid]
        self._max_norm = float(finite.max()) if finite.size else 0.0

    def __len__(self) -> int:
        return self._x.shape[0]

    @property
    def dim(self) -> int:
        """The embedding dimension ``D``."""
        return self._x.shape[1]

    def query(
        self, row: int, *, k: int = 10, exclude_self: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` rows nearest to row ``row``.

        Parameters
        ----------
        row : int
            A row position, ``0 <= row < N``.
        k : int
            How many neighbours; fewer come back when there are fewer rows.
        exclude_self : bool
            Leave ``row`` itself out (other rows equal to it stay).

        Returns
        -------
        rows : (k,) int64 ndarray
            Row positions, nearest first; equal distances in ascending row order.
        distances : (k,) float64 ndarray
        """
        row = self._check_row(row)
        if not self._valid[row]:
            raise ValueError(f"row {row} has non-finite embedding values: it cannot be queried")
        exclude = [row] if exclude_self else []
        return self._nearest(self._x[row].astype(np.float64), k=k, exclude=exclude)

    def query_vector(
        self, vector, *, k: int = 10, exclude: Sequence[int] = ()
    ) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` rows nearest to ``vector`` ((D,) array_like), leaving out rows ``exclude``.
        Returns ``(rows, distances)`` as :meth:`query` does."""
        q = np.asarray(vector, dtype=np.float64).reshape(-1)
        if q.shape[0] != self.dim:
            raise ValueError(f"vector has {q.shape[0]} values, the embeddings {self.dim}")
        if not np.isfinite(q).all():
            raise ValueError("the query vector has non-finite values")
        return self._nearest(q, k=k, exclude=[self._check_row(r) for r in exclude])

    def typical(self, rows: Sequence[int], *, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` rows of a selection nearest to the selection's centroid: its most typical
        members.

        The centroid is the mean of the selected embeddings (for ``"cosine"``, the mean of the
        unit vectors).  Only rows of the selection are returned; ``(rows, distances)`` as
        :meth:`query`.
        """
        sel = np.unique([self._check_row(r) for r in np.asarray(rows).reshape(-1)])
        sel = sel[self._valid[sel]]
        if sel.size == 0:
            raise ValueError("the selection has no rows with finite embeddings")
        x = self._x[sel].astype(np.float64)
        if self.metric == "cosine":
            x /= np.where(self._norms[sel] > 0, self._norms[sel], 1.0)[:, None]
        centroid = x.mean(axis=0)
        found, dist = _exact_order(x, np.arange(sel.size), centroid, self.metric, k)
        return sel[found], dist

    # ------------------------------------------------------------------ internals
    def _check_row(self, row) -> int:
        n = len(self)
        if isinstance(row, (bool, np.bool_)) or not isinstance(row, (int, np.integer)):
            raise TypeError(f"a row is an integer position, got {row!r}")
        if not 0 <= row < n:
            raise IndexError(f"row {row} is out of range: the table has {n} rows (0..{n - 1})")
        return int(row)

    def _approx(self, q: np.ndarray, q_norm: float) -> tuple[np.ndarray, float]:
        """Every row's distance to ``q`` (for "euclidean", squared) from one float32
        matrix-vector product, and a bound on its error that holds for every row."""
        d = self._x.shape[1]
        dot = self._x @ q.astype(np.float32)  # the one BLAS product (float32)
        # |error of dot_i| <= (D + 2) u |x_i| |q|: float32 accumulation, q rounded to float32
        if self.metric == "cosine":
            approx = 1.0 - dot * self._inv_norms * (1.0 / q_norm if q_norm > 0 else 0.0)
            return approx, (d + 10) * _U32
        approx = self._sq_norms + (q_norm**2 - 2.0 * dot)  # squared distance
        err = 2 * (d + 2) * _U32 * self._max_norm * q_norm
        return approx, err + 8 * _U32 * (self._max_norm**2 + q_norm**2)

    def _nearest(self, q: np.ndarray, *, k: int, exclude: Sequence[int]):
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        n = len(self)
        q_norm = float(np.sqrt(q @ q))
        with np.errstate(invalid="ignore"):  # non-finite rows: set aside below
            approx, err = self._approx(q, q_norm)
        out = ~self._valid
        out[list(exclude)] = True
        approx[out] = np.inf
        k = min(int(k), n - int(out.sum()))
        if k == 0:
            return np.empty(0, np.int64), np.empty(0, np.float64)
        # every row whose distance could be below the k-th smallest (plus its error)
        bound = np.partition(approx, k - 1)[k - 1] + 2 * err
        shortlist = np.flatnonzero(approx <= bound)
        return _exact_order(self._x[shortlist], shortlist, q, self.metric, k)


def _exact_order(x: np.ndarray, rows: np.ndarray, q: np.ndarray, metric: str, k: int):
    """Distances from ``q`` to the rows ``x`` (float64, as cdist computes them), the ``k``
    smallest by (distance, row)."""
    x = x.astype(np.float64)
    if metric == "cosine":
        denom = np.linalg.norm(x, axis=1) * np.linalg.norm(q)
        safe = np.where(denom > 0, denom, 1.0)
        dist = np.where(denom > 0, 1.0 - (x @ q) / safe, 1.0)
        dist = np.clip(dist, 0.0, 2.0)
    else:
        dist = np.sqrt(((x - q) ** 2).sum(axis=1))
    order = np.lexsort((rows, dist))[:k]
    return rows[order].astype(np.int64), dist[order]


def _result_frame(index: NeighbourIndex, rows: np.ndarray, dist: np.ndarray):
    table = index.table
    keep = [c for c in table.columns if c not in set(embedding_columns(table))]
    out = table.iloc[rows][keep].copy()
    out["distance"] = dist
    return out


def nearest_segments(
    table_or_embeddings,
    query_row: int,
    *,
    k: int = 10,
    metric: str = "cosine",
    exclude_self: bool = True,
):
    """The ``k`` segments nearest to one segment in embedding space ("more like this"), exact.

    Parameters
    ----------
    table_or_embeddings : DataFrame, (N, D) array_like or NeighbourIndex
        ``embed_segments``' table (its ``emb_*`` columns), the embeddings themselves, or a
        :class:`NeighbourIndex` built once for many queries (then ``metric`` is the index's).
    query_row : int
        Row position of the segment asked about, ``0 <= query_row < N``.
    k : int
        How many neighbours (fewer when the table has fewer rows).
    metric : {"cosine", "euclidean"}
        As in :func:`scipy.spatial.distance.cdist`.
    exclude_self : bool
        Leave the queried row out of the answer.

    Returns
    -------
    DataFrame or (rows, distances)
        For a table: its rows in order of distance (nearest first, equal distances by row
        position), all columns but ``emb_*``, the table's index kept, and a ``distance``
        column.  For an array: ``rows`` (k,) int64 positions and ``distances`` (k,) float64.

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> import napari_segrep as sr
    >>> table = pd.DataFrame({"label": [1, 2, 3, 4], "emb_0": [0.0, 5.0, 1.0, 2.0],
    ...                       "emb_1": [0.0, 0.0, 0.0, 0.0]})
    >>> sr.nearest_segments(table, 0, k=2, metric="euclidean")
       label  distance
    2      3       1.0
    3      4       2.0
    >>> rows, dist = sr.nearest_segments(table[["emb_0", "emb_1"]].to_numpy(), 1, k=1,
    ...                                  metric="euclidean")
    >>> rows.tolist(), dist.tolist()
    ([3], [3.0])
    """
    index = _as_index(table_or_embeddings, metric)
    rows, dist = index.query(query_row, k=k, exclude_self=exclude_self)
    if index.table is None:
        return rows, dist
    return _result_frame(index, rows, dist)


def typical_segments(table_or_embeddings, rows: Sequence[int], *, k: int = 10, metric="cosine"):
    """The ``k`` segments of a selection nearest to its centroid in embedding space: the most
    typical members of a selection (a cluster, a class, a lasso).

    Parameters
    ----------
    table_or_embeddings : DataFrame, (N, D) array_like or NeighbourIndex
        As in :func:`nearest_segments`.
    rows : sequence of int
        Row positions of the selection.
    k : int
        How many (at most the selection's size).
    metric : {"cosine", "euclidean"}
        For ``"cosine"`` the centroid is the mean of the unit vectors.

    Returns
    -------
    DataFrame or (rows, distances)
        As :func:`nearest_segments`; distances are to the centroid.

    Examples
    --------
    >>> import numpy as np
    >>> from napari_segrep.analysis.neighbours import typical_segments
    >>> emb = np.array([[0.0], [1.0], [2.0], [10.0]])
    >>> typical_segments(emb, [0, 1, 2], k=2, metric="euclidean")[0].tolist()
    [1, 0]
    """
    index = _as_index(table_or_embeddings, metric)
    found, dist = index.typical(rows, k=k)
    if index.table is None:
        return found, dist
    return _result_frame(index, found, dist)


def _as_index(data, metric: str) -> NeighbourIndex:
    if isinstance(data, NeighbourIndex):
        return data
    return NeighbourIndex(data, metric=metric)
