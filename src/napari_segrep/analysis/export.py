"""Tables to files: CSV plus a JSON provenance sidecar, replaced together or not at all."""

from __future__ import annotations

import io
import json
import os
import time
from pathlib import Path

import pandas as pd

from .._version import __version__
from ..io import atomic_write_files, file_sha256
from ._anndata import ATTRS, check_anndata, h5ad_bytes, is_h5ad, read_h5ad

__all__ = [
    "check_table_path",
    "is_our_sidecar",
    "provenance",
    "read_table",
    "sidecar_path",
    "table_files",
    "write_table",
]


def sidecar_path(csv_path: str | os.PathLike) -> Path:
    """``OUT.csv`` -> ``OUT.json``.

    Raises ``ValueError`` when that is the table's own path (``OUT.json``): the sidecar would
    replace the table.
    """
    path = Path(csv_path)
    if path.suffix.lower() == ".json":
        raise ValueError(
            f"output {path} would be replaced by its own JSON sidecar: name the table OUT.csv "
            "(its provenance goes to OUT.json)"
        )
    return path.with_suffix(".json")


def table_files(
    df: pd.DataFrame, path: str | os.PathLike, *, provenance: dict | None = None
) -> dict[Path, bytes]:
    """``{OUT.csv: the CSV (no index), OUT.json: the provenance}``, rendered in memory, for
    :func:`napari_segrep.io.atomic_write_files` (alone, or with other files of the same run).
    ``OUT.parquet`` is written as Parquet (pyarrow): smaller, exact floats, faster to read;
    ``OUT.h5ad`` as AnnData (:mod:`napari_segrep.analysis._anndata`, optional dependency)."""
    if is_h5ad(path):
        data = h5ad_bytes(df, provenance=provenance)
    elif is_parquet(path):
        buffer = io.BytesIO()
        df.to_parquet(buffer, index=False)
        data = buffer.getvalue()
    else:
        text = io.StringIO()
        df.to_csv(text, index=False)
        data = text.getvalue().encode()
    sidecar = json.dumps(provenance or {}, indent=2, sort_keys=True, default=str).encode() + b"\n"
    return {Path(path): data, sidecar_path(path): sidecar}


def check_table_path(path: str | os.PathLike) -> None:
    """Before any work: ``ValueError`` when a table cannot be written at ``path`` in its format
    (``.h5ad`` without anndata installed: the message gives the install command)."""
    if is_h5ad(path):
        check_anndata()


def is_parquet(path: str | os.PathLike) -> bool:
    """Whether a table path is Parquet (``.parquet``/``.pq``); anything else is CSV."""
    return Path(path).suffix.lower() in (".parquet", ".pq")


def write_table(
    df: pd.DataFrame,
    path: str | os.PathLike,
    *,
    provenance: dict | None = None,
    overwrite: bool | None = None,
) -> Path:
    """Write ``df`` to ``path`` as CSV (no index) and ``provenance`` to the ``.json`` beside it.

    The two files are replaced together or not at all (temporaries, fsync, then ``os.replace``):
    an error (disk full, a directory in the way, bad value) leaves any previous files intact and
    no partial file behind.  New files get the user's normal permissions.

    Parameters
    ----------
    overwrite : bool or None
        False: refuse (``ValueError``) when the CSV or its sidecar exists.  True: replace both.
        None (default, for a caller that has asked about the CSV): replace the CSV, and the
        sidecar only when it is one of ours (a napari-segrep provenance record), never another
        JSON file of that name.

    Returns
    -------
    Path
        The CSV path.
    """
    path = Path(path)
    files = table_files(df, path, provenance=provenance)
    sidecar = sidecar_path(path)
    if overwrite is not True:
        for existing in (path, sidecar) if overwrite is False else (sidecar,):
            if existing.is_dir():
                continue  # atomic_write_files says that it is a directory
            if os.path.lexists(existing) and not (overwrite is None and is_our_sidecar(existing)):
                mine = "" if overwrite is False else " and was not written by napari-segrep"
                raise ValueError(f"{existing} exists{mine}: choose another output name")
    atomic_write_files({target: _writer(data) for target, data in files.items()})
    return path


def read_table(path: str | os.PathLike) -> pd.DataFrame:
    """Read a table written by :func:`write_table` (or any CSV with a ``label`` column);
    ``.parquet`` as Parquet, ``.h5ad`` as AnnData.

    What the JSON sidecar records about the embedding (``encoder``, ``normalization``,
    ``crop_size``) goes
    back into ``df.attrs``, as ``embed_segments`` left it, so a classifier can check the
    table's encoder.  A CSV without a sidecar (or with someone else's JSON) is read as is.
    """
    path = Path(path)
    try:
        if is_h5ad(path):
            df = read_h5ad(path)  # its own errors; attrs from the provenance it holds
        elif is_parquet(path):
            df = pd.read_parquet(path)
            df.attrs = {}  # what the sidecar says, below
        else:
            df = pd.read_csv(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such table") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is not a readable CSV table: {exc}") from None
    except (OSError, ValueError) as exc:  # pyarrow: not a Parquet file, or a damaged one
        if is_h5ad(path):
            raise
        raise ValueError(f"{path} is not a readable Parquet table: {exc}") from None
    try:
        sidecar = sidecar_path(path)
    except ValueError:
        return df
    if is_our_sidecar(sidecar):
        record = json.loads(sidecar.read_text())
        for key in ATTRS:
            if record.get(key):
                df.attrs[key] = record[key]
    return df


def _writer(data: bytes):
    return lambda fh: fh.write(data)


def is_our_sidecar(sidecar: Path) -> bool:
    """Whether ``sidecar`` is a provenance record that napari-segrep wrote."""
    try:
        record = json.loads(sidecar.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and record.get("package") == "napari-segrep"


def provenance(
    *,
    command: str,
    encoder_config: dict,
    n_segments: int,
    normalization: dict | None,
    crop_size: int,
    batch_size: int,
    channel_axis: int | None,
    device: str,
    inputs: dict,
    checkpoint: str | os.PathLike | None = None,
    seconds: float | None = None,
    **extra,
) -> dict:
    """The JSON sidecar of an embedding table, the same from the CLI and from napari.

    ``normalization`` is what ``embed_segments`` recorded in ``df.attrs["normalization"]``;
    ``extra`` adds keys (image shape, layer names, map method...).  Torch's version is read
    from the installed package's metadata (torch is never imported here).
    """
    import sys

    torch = sys.modules.get("torch")  # loaded by whoever embedded; never imported here
    torch_version = getattr(torch, "__version__", None)
    if torch_version is None:
        from importlib.metadata import PackageNotFoundError, version

        try:
            torch_version = version("torch")
        except PackageNotFoundError:  # pragma: no cover - torch is a dependency
            pass
    out = {
        "package": "napari-segrep",
        "package_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": command,
        "inputs": inputs,
        "n_segments": int(n_segments),
        "encoder": encoder_config,
        "checkpoint": str(checkpoint) if checkpoint else None,
        "checkpoint_sha256": file_sha256(checkpoint) if checkpoint else None,
        "normalization": normalization,
        "crop_size": crop_size,
        "batch_size": batch_size,
        "channel_axis": channel_axis,
        "seed": encoder_config.get("seed"),
        "device": str(device),
        "torch_version": torch_version,
        "seconds": None if seconds is None else round(float(seconds), 3),
    }
    out.update(extra)
    return out
