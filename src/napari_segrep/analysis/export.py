"""Tables to files and back: CSV, Parquet or AnnData, each with its JSON provenance sidecar
(``OUT.csv`` + ``OUT.csv.json``), replaced together or not at all.

Text is read back exactly as it was written: the name-like columns of a CSV (``image``,
``class``, ``class_annotation``, ``class_predicted``...) stay text, so an image ``000`` stays
``000`` and a class ``NA`` stays a class, never a missing value.  A sidecar is checked before it
is used (:mod:`napari_segrep.analysis._sidecar`).
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
import time
import warnings
from pathlib import Path

import pandas as pd

from .._version import __version__
from ..io import atomic_write_files, file_sha256
from ._anndata import ATTRS, check_anndata, h5ad_bytes, is_h5ad, read_h5ad
from ._sidecar import (
    PACKAGE,
    check_record,
    find_sidecar,
    is_our_sidecar,
    read_sidecar,
    sidecar_path,
)

__all__ = [
    "TEXT_COLUMNS",
    "check_sidecar_free",
    "check_table_outputs",
    "check_table_path",
    "find_sidecar",
    "formula_cells",
    "is_our_sidecar",
    "provenance",
    "read_sidecar",
    "read_table",
    "sidecar_path",
    "table_files",
    "write_table",
]

#: The columns of our tables that hold names (read from a CSV as text, exactly as written).
TEXT_COLUMNS = ("image", "class", "class_annotation", "class_predicted", "map_method", "name")
#: What pandas reads as a missing value by default: still so in the columns of numbers.
_MISSING = (
    "", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
    "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null",
)  # fmt: skip
#: A text cell starting with one of these may be run as a formula by a spreadsheet (OWASP).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def table_files(
    df: pd.DataFrame, path: str | os.PathLike, *, provenance: dict | None = None
) -> dict[Path, bytes]:
    """``{OUT.csv: the CSV (no index), OUT.csv.json: the provenance}``, rendered in memory,
    for :func:`napari_segrep.io.atomic_write_files` (alone, or with other files of the same
    run).  ``OUT.parquet`` is written as Parquet (pyarrow): smaller, exact floats, faster to
    read; ``OUT.h5ad`` as AnnData (:mod:`napari_segrep.analysis._anndata`, optional
    dependency).

    The sidecar is :func:`sidecar_record`: ``provenance`` (or, without it, what ``df.attrs``
    records), marked as napari-segrep's and checked as :func:`read_table` checks it.  A CSV
    whose text cells could run as spreadsheet formulas is written as it is, with a warning
    (:func:`formula_cells`).
    """
    path = Path(path)
    sidecar = sidecar_path(path)
    record = sidecar_record(df, provenance)
    if is_h5ad(path):
        data = h5ad_bytes(df, provenance=record)
    elif is_parquet(path):
        buffer = io.BytesIO()
        plain = df.copy(deep=False)  # pandas stores attrs as JSON too: NumPy numbers made plain
        plain.attrs = json.loads(json.dumps(df.attrs, default=_plain))
        plain.to_parquet(buffer, index=False)
        data = buffer.getvalue()
    else:
        _warn_formulas(df, path)
        text = io.StringIO()
        # a carriage return in a name must be quoted, or a reader takes it for a line end
        quoting = csv.QUOTE_NONNUMERIC if _has_carriage_return(df) else csv.QUOTE_MINIMAL
        df.to_csv(text, index=False, quoting=quoting)
        data = text.getvalue().encode()
    side = json.dumps(record, indent=2, sort_keys=True, allow_nan=False).encode() + b"\n"
    return {path: data, sidecar: side}


def sidecar_record(df: pd.DataFrame, provenance: dict | None = None) -> dict:
    """The JSON sidecar written with ``df``: ``provenance`` when given (see
    :func:`provenance`), else the package, its version, the time, ``n_segments`` and what
    ``df.attrs`` records (``encoder``, ``normalization``, ``crop_size``), so that
    :func:`read_table` gives them back.  Always marked ``"package": "napari-segrep"`` (ours:
    replaced by the next write), made plain JSON (NumPy numbers as numbers) and checked.
    ``ValueError`` when a key napari-segrep reads has the wrong type."""
    if provenance is None:
        record = {
            "package_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": "write_table",
            "n_segments": len(df),
            **{key: df.attrs[key] for key in ATTRS if df.attrs.get(key) is not None},
        }
    else:
        record = dict(provenance)
    record["package"] = PACKAGE
    try:
        record = json.loads(json.dumps(record, default=_plain, allow_nan=False))
    except ValueError as exc:  # NaN/Inf: never written
        raise ValueError(f"the table's provenance cannot be written as JSON: {exc}") from None
    check_record(record, source="the provenance", fix="pass a record of the right types")
    return record


def _plain(value):
    """NumPy scalars and arrays as JSON numbers and lists; anything else as its text."""
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def check_table_path(path: str | os.PathLike) -> None:
    """Before any work: ``ValueError`` when a table cannot be written at ``path`` in its
    format (``.h5ad`` without anndata installed: the message gives the install command)."""
    if is_h5ad(path):
        check_anndata()


def check_sidecar_free(path: str | os.PathLike) -> Path:
    """Before any work: the sidecar path of the table ``path``, or ``ValueError`` when a file
    is there that napari-segrep did not write (it is never replaced, whatever ``overwrite``
    says: the message says to choose another output name or move that file)."""
    path = Path(path)
    sidecar = sidecar_path(path)
    if os.path.lexists(sidecar) and not sidecar.is_dir() and not is_our_sidecar(sidecar):
        raise ValueError(
            f"{sidecar} exists and was not written by napari-segrep (it would become the "
            f"provenance of {path.name}): choose another output name, or move that file"
        )
    return sidecar


def check_table_outputs(outputs) -> None:
    """Before any work, for every table among ``outputs`` (a path whose sidecar is listed
    too): its format can be written (:func:`check_table_path`) and its sidecar's place holds
    no file of someone else (:func:`check_sidecar_free`).  ``ValueError`` naming the file."""
    listed = {Path(p) for p in outputs}
    for path in map(Path, outputs):
        check_table_path(path)
        try:
            sidecar = sidecar_path(path)
        except ValueError:
            continue  # not a table: its own checks say what is wrong with it
        if sidecar in listed:
            check_sidecar_free(path)


def is_parquet(path: str | os.PathLike) -> bool:
    """Whether a table path is Parquet (``.parquet``/``.pq``); anything else is CSV."""
    return Path(path).suffix.lower() in (".parquet", ".pq")


def write_table(
    df: pd.DataFrame,
    path: str | os.PathLike,
    *,
    provenance: dict | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``df`` to ``path`` (CSV without index; Parquet for ``.parquet``, AnnData for
    ``.h5ad``) and its provenance to the sidecar ``path + ".json"`` (``cells.csv.json``).

    The two files are replaced together or not at all (temporaries, fsync, then ``os.replace``):
    an error (disk full, a directory in the way, bad value) leaves any previous files intact and
    no partial file behind.  New files get the user's normal permissions.

    Parameters
    ----------
    df : DataFrame
        The table; its ``attrs`` (``encoder``, ``normalization``, ``crop_size``, as
        ``embed_segments`` records them) go into the sidecar when ``provenance`` is None, and
        :func:`read_table` puts them back.
    path : str or PathLike
        The table file.
    provenance : dict, optional
        The sidecar's record (:func:`provenance`); marked as napari-segrep's.
    overwrite : bool
        False (default): ``ValueError`` when the table or its sidecar exists.  True: replace
        them.  A file at the sidecar's place that napari-segrep did not write is never
        replaced (``ValueError``: choose another name, or move that file).

    Returns
    -------
    Path
        The table's path.

    Warns
    -----
    UserWarning
        A CSV with text cells that a spreadsheet could run as formulas (they start with
        ``=``, ``+``, ``-``, ``@``, a tab or a carriage return: CSV injection): written as
        they are.
    """
    path = Path(path)
    sidecar = check_sidecar_free(path)
    if not overwrite:
        for existing in (path, sidecar):
            if os.path.lexists(existing) and not existing.is_dir():  # a directory: said below
                raise ValueError(
                    f"{existing} exists: pass overwrite=True to replace it, or choose another name"
                )
    files = table_files(df, path, provenance=provenance)
    atomic_write_files({target: _writer(data) for target, data in files.items()})
    return path


def read_table(path: str | os.PathLike) -> pd.DataFrame:
    """Read a table written by :func:`write_table` (or any CSV with a ``label`` column);
    ``.parquet`` as Parquet, ``.h5ad`` as AnnData.

    A CSV's name columns (:data:`TEXT_COLUMNS`, and any column that is not numbers) are read as
    text exactly as written (``000``, ``NA``, ``None`` and an empty cell stay so); the others
    as numbers.  What the sidecar (``path + ".json"``, or an earlier version's ``OUT.json``)
    records about the embedding (``encoder``, ``normalization``, ``crop_size``) goes back into
    ``df.attrs``, as ``embed_segments`` left it, so a classifier can check the table's
    encoder.  A table without a sidecar (or with someone else's JSON there) is read as is.

    Raises
    ------
    FileNotFoundError
        No such table.
    ValueError
        The table cannot be read in its format, or its sidecar is damaged (too large, not
        JSON, nested too deeply, a key of the wrong type): the message names the file and the
        fix.
    """
    path = Path(path)
    try:
        if is_h5ad(path):
            df = read_h5ad(path)  # its own errors; attrs from the provenance it holds
        elif is_parquet(path):
            df = pd.read_parquet(path)
            df.attrs = {}  # what the sidecar says, below
        else:
            df = _read_csv(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such table") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is not a readable CSV table: {exc}") from None
    except (OSError, ValueError) as exc:  # pyarrow: not a Parquet file, or a damaged one
        if is_h5ad(path):
            raise
        raise ValueError(f"{path} is not a readable Parquet table: {exc}") from None
    sidecar = find_sidecar(path)
    record = None if sidecar is None else read_sidecar(sidecar, table=path)
    for key in ATTRS:
        if record is not None and record.get(key):
            df.attrs[key] = record[key]
    return df


def _read_csv(path: Path) -> pd.DataFrame:
    """A CSV table: names as text exactly as written, everything else as pandas reads it."""
    columns = pd.read_csv(path, nrows=0).columns
    text = [c for c in columns if c in TEXT_COLUMNS]
    df = pd.read_csv(
        path,
        dtype=dict.fromkeys(text, str),
        keep_default_na=False,
        na_values={c: list(_MISSING) for c in columns if c not in text},
    )
    other = [c for c in df.columns if c not in text and df[c].dtype == object]
    if other:  # text that is not one of ours (a user's column): as written too
        exact = pd.read_csv(path, usecols=other, dtype=str, keep_default_na=False)
        for column in other:
            df[column] = exact[column]
    return df


def _text_columns(df: pd.DataFrame) -> list:
    """The columns of ``df`` that may hold text (object, string or categorical)."""
    return [
        c
        for c in df.columns
        if df[c].dtype.kind in "OSU"
        or isinstance(df[c].dtype, (pd.StringDtype, pd.CategoricalDtype))
    ]


def _has_carriage_return(df: pd.DataFrame) -> bool:
    def has(value) -> bool:
        return isinstance(value, str) and "\r" in value

    columns = _text_columns(df)
    return any(map(has, df.columns)) or any(df[c].map(has).any() for c in columns)


def formula_cells(df: pd.DataFrame) -> list[tuple[str, int, str]]:
    """``(column, row, text)`` of every text cell (and column name, row -1) of ``df`` that a
    spreadsheet could run as a formula: it starts with ``=``, ``+``, ``-``, ``@``, a tab or a
    carriage return and is not a plain number (OWASP's CSV injection)."""
    found = [(str(c), -1, str(c)) for c in df.columns if _formula_like(c)]
    for column in _text_columns(df):
        values = df[column]
        risky = values.map(_formula_like).to_numpy(bool)
        found += [(str(column), int(i), str(values.iloc[i])) for i in risky.nonzero()[0]]
    return found


def _formula_like(value) -> bool:
    if not isinstance(value, str) or not value.startswith(FORMULA_STARTS):
        return False
    try:
        float(value)  # "-1", "+2.5": a number to any spreadsheet, never a formula
    except ValueError:
        return True
    return value[:1] in ("\t", "\r")


def _warn_formulas(df: pd.DataFrame, path: Path) -> None:
    cells = formula_cells(df)
    if not cells:
        return
    column, row, text = cells[0]
    where = f"column name {text!r}" if row < 0 else f"{column} {text!r} in row {row + 1}"
    if len(where) > 80:
        where = where[:77] + "..."
    warnings.warn(
        f"{path.name}: {len(cells)} text cell(s) start with =, +, -, @, a tab or a carriage "
        f"return (first: {where}); a spreadsheet may run them as formulas. They are written "
        "as they are: import the CSV with text columns, or rename them (Parquet and h5ad are "
        "never run)",
        UserWarning,
        stacklevel=_caller_level(),
    )


def _caller_level() -> int:
    """``stacklevel`` for ``warnings.warn`` that points at the first caller outside this
    module (the user's ``write_table`` line, or the CLI's)."""
    level, frame = 2, sys._getframe(2)
    while frame is not None and frame.f_code.co_filename == __file__:
        level, frame = level + 1, frame.f_back
    return level


def _writer(data: bytes):
    return lambda fh: fh.write(data)


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
    layout: dict | None = None,
    **extra,
) -> dict:
    """The JSON sidecar of an embedding table, the same from the CLI and from napari.

    ``normalization`` is what ``embed_segments`` recorded in ``df.attrs["normalization"]``;
    ``layout`` what the inputs' axes are (``Layout.describe()``: ``axes``, ``spacing``,
    ``spacing_source``, where the spacing came from; for a collection, one per image name or
    the one of every image); ``extra`` adds keys (image shape, layer names, map method...).  Torch's version is read
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
        "layout": layout,
    }
    out.update(extra)
    return out
