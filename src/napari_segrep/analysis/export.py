"""Tables to files: CSV plus a JSON provenance sidecar, both written atomically."""

from __future__ import annotations

import io
import json
import os
import time
from pathlib import Path

import pandas as pd

from .._version import __version__
from ..io import atomic_write, check_writable_dir, file_sha256

__all__ = ["provenance", "sidecar_path", "write_table"]


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
