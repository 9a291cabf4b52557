"""Tables as AnnData (``.h5ad``) for the scverse ecosystem (scanpy, squidpy...).

One segment per observation: ``obs`` holds every column that is not an embedding or a map
coordinate (``image``, ``label``, ``frame``, geometry, ``cluster``, classes...),
``obsm["X_segrep"]`` the embeddings (``emb_*``), ``obsm["X_umap"]`` the map when the table has
one (``umap_0/1``, or the widget's ``map_0/1``; ``X_pca`` for a PCA map), and
``uns["napari_segrep"]`` the provenance record (as JSON text) and the table's column order, so
:func:`read_h5ad` gives back the very table that was written.  ``X`` is left empty (the
embeddings are not expression values): scanpy takes them with
``sc.pp.neighbors(adata, use_rep="X_segrep")``.

anndata is an optional dependency (``pip install "napari-segrep[anndata]"``).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["check_anndata", "h5ad_bytes", "is_h5ad", "read_h5ad"]

ATTRS = ("encoder", "normalization", "crop_size")  # what read_table restores into df.attrs
_INSTALL = 'pip install "napari-segrep[anndata]" (or: pip install anndata)'


def is_h5ad(path: str | os.PathLike) -> bool:
    """Whether a table path is AnnData (``.h5ad``)."""
    return Path(path).suffix.lower() == ".h5ad"


def check_anndata() -> None:
    """``ValueError`` naming the install command when anndata is missing (call before work)."""
    try:
        import anndata  # noqa: F401
    except ImportError:
        raise ValueError(f"writing or reading .h5ad tables needs anndata: {_INSTALL}") from None


def _split(df: pd.DataFrame) -> tuple[list[str], list[str], list[str], str]:
    """obs columns, embedding columns, map columns and the map's obsm key: ``umap_0/1``, or
    the widget's ``map_0/1`` (``X_umap``, or ``X_pca`` when ``map_method`` says so)."""
    emb = [c for c in df.columns if isinstance(c, str) and c.startswith("emb_")]
    key = "X_umap"
    for pair in (["umap_0", "umap_1"], ["map_0", "map_1"]):
        if all(c in df.columns for c in pair):
            mapped = pair
            methods = set(df["map_method"]) if "map_method" in df.columns else set()
            if pair[0] == "map_0" and methods == {"pca"}:
                key = "X_pca"
            break
    else:
        mapped = []
    obs = [c for c in df.columns if c not in emb and c not in mapped]
    return obs, emb, mapped, key


def h5ad_bytes(df: pd.DataFrame, *, provenance: dict | None = None) -> bytes:
    """The ``.h5ad`` file of ``df``, rendered in memory (for an atomic write with its sidecar).

    Parameters
    ----------
    df : DataFrame
        A segment table (``label``, geometry, ``emb_0 ... emb_{D-1}``, optionally ``image``,
        ``umap_0/1``, ``cluster``...).
    provenance : dict, optional
        Stored as JSON text in ``uns["napari_segrep"]["provenance"]``.
    """
    check_anndata()
    import anndata as ad

    obs_cols, emb_cols, map_cols, map_key = _split(df)
    obs = df[obs_cols].copy()
    obs.index = pd.Index([str(i) for i in range(len(df))])  # AnnData wants unique str names
    obs.columns = [str(c) for c in obs.columns]
    obsm = {"X_segrep": df[emb_cols].to_numpy(np.float32)}
    if map_cols:
        obsm[map_key] = df[map_cols].to_numpy()
    uns = {
        "napari_segrep": {
            "columns": json.dumps([str(c) for c in df.columns]),
            "map_columns": json.dumps(map_cols),
            "provenance": json.dumps(provenance or {}, sort_keys=True, default=str),
        }
    }
    adata = ad.AnnData(obs=obs, obsm=obsm, uns=uns)
    with tempfile.TemporaryDirectory(prefix="segrep-h5ad-") as tmp:
        path = Path(tmp) / "table.h5ad"
        adata.write_h5ad(path)
        return path.read_bytes()


def read_h5ad(path: str | os.PathLike) -> pd.DataFrame:
    """The table that :func:`h5ad_bytes` wrote, columns in their order; another AnnData file
    is read as its ``obs`` plus ``emb_*`` from ``obsm["X_segrep"]`` (when present) and
    ``umap_0/1`` from ``obsm["X_umap"]``.  ``ValueError`` when the file is not AnnData."""
    check_anndata()
    import anndata as ad

    try:
        adata = ad.read_h5ad(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such table") from None
    except (OSError, ValueError, KeyError) as exc:
        raise ValueError(f"{path} is not a readable AnnData (.h5ad) file: {exc}") from None
    df = adata.obs.reset_index(drop=True)
    for col in df.columns:  # anndata stores strings as categoricals
        if isinstance(df[col].dtype, pd.CategoricalDtype):
            df[col] = df[col].astype(df[col].cat.categories.dtype)
    parts = [df]
    if "X_segrep" in adata.obsm:
        emb = np.asarray(adata.obsm["X_segrep"])
        parts.append(pd.DataFrame(emb, columns=[f"emb_{i}" for i in range(emb.shape[1])]))
    ours = _our_record(adata.uns.get("napari_segrep", {}), path)
    map_cols = ours["map_columns"] or ["umap_0", "umap_1"]
    key = next((k for k in ("X_umap", "X_pca") if k in adata.obsm), None)
    if key is not None:
        coords = np.asarray(adata.obsm[key])[:, :2]
        parts.append(pd.DataFrame(coords, columns=map_cols))
    out = pd.concat(parts, axis=1)
    order = ours["columns"]
    if order is not None and set(order) == set(out.columns):
        out = out[order]
    record = ours["provenance"]
    out.attrs = {key: record[key] for key in ATTRS if record.get(key)}
    return out


def _our_record(uns, path) -> dict:
    """What :func:`h5ad_bytes` put in ``uns["napari_segrep"]``, parsed and checked like a
    sidecar (``columns``, ``map_columns``: lists of names; ``provenance``: a record, {} when
    none was written); ``ValueError`` naming the file when it is damaged."""
    from ._sidecar import check_record, parse_json

    fix = "the file is damaged: write it again (napari-segrep embed -o ...h5ad)"
    source = f"uns['napari_segrep'] of {path}"
    if not isinstance(uns, dict):
        raise ValueError(f"{source} is not a mapping: {fix}")

    def parsed(key: str, default: str):
        value = uns.get(key, default)
        if isinstance(value, np.ndarray) and value.shape == ():  # h5py may give 0-d arrays
            value = value.item()
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        if not isinstance(value, str):
            raise ValueError(f"{source}: {key} must be JSON text: {fix}")
        try:
            return parse_json(value, f"{source}: {key}")
        except ValueError as exc:
            raise ValueError(f"{exc}: {fix}") from None

    out: dict = {}
    for key in ("columns", "map_columns"):
        value = parsed(key, "null")
        if value is not None and not (
            isinstance(value, list) and all(isinstance(v, str) for v in value)
        ):
            raise ValueError(f"{source}: {key} must be a list of column names: {fix}")
        out[key] = value
    if out["map_columns"] is None:
        out["map_columns"] = ["umap_0", "umap_1"]
    elif len(out["map_columns"]) not in (0, 2):
        raise ValueError(f"{source}: map_columns must name 2 columns: {fix}")
    record = parsed("provenance", "{}")
    if not isinstance(record, dict):
        raise ValueError(f"{source}: provenance must be a JSON object: {fix}")
    check_record(record, source=f"{source}: provenance", fix=fix)
    out["provenance"] = record
    return out
