"""Tables to files: CSV plus a JSON provenance sidecar, both written atomically."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pandas as pd

from ..engine.checkpoint import atomic_write, check_writable_dir

__all__ = ["sidecar_path", "write_table"]


def sidecar_path(csv_path: str | os.PathLike) -> Path:
    """``OUT.csv`` -> ``OUT.json``."""
    return Path(csv_path).with_suffix(".json")


def write_table(
    df: pd.DataFrame, path: str | os.PathLike, *, provenance: dict | None = None
) -> Path:
    """Write ``df`` to ``path`` as CSV (no index) and ``provenance`` to the ``.json`` beside it.

    Both files go through a temporary file and ``os.replace``: an error (disk full, bad value)
    leaves any previous files intact and no partial file behind.  The CSV is rendered in memory
    first so nothing is replaced unless both can be written.

    Returns
    -------
    Path
        The CSV path.
    """
    path = Path(path)
    check_writable_dir(path.parent if str(path.parent) else Path("."))
    buffer = io.StringIO()
    df.to_csv(buffer, index=False)
    text = buffer.getvalue().encode()
    sidecar = json.dumps(provenance or {}, indent=2, sort_keys=True, default=str).encode() + b"\n"
    atomic_write(path, lambda fh: fh.write(text))
    atomic_write(sidecar_path(path), lambda fh: fh.write(sidecar))
    return path
