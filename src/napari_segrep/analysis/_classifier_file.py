"""The classifier file (``.segclf``): read, and checked against its method's schema before use.

A classifier file is a zip archive (``np.savez_compressed``) of ``.npy`` members: ``meta``, the
JSON record as bytes, and ``array_<name>`` for every array prediction needs.  Nothing in it is
executed (no pickle), and nothing is believed: :func:`read_classifier_file` checks, in this
order and before anything is used,

1. the file's size, then every member's ``.npy`` header (dtype, shape) and the total of the
   sizes they declare, before any array is read (a few compressed megabytes can declare
   gigabytes of zeros);
2. every field of the JSON record (types, ranges, the method, unique class names, the
   parameters the method needs, a ``cv_score`` between 0 and 1 or None);
3. every array's dtype (real floating point or integers; never complex, object, structured)
   and shape against the class count, the feature columns and the other arrays;
4. after reading: every value finite, ``scale`` > 0, class ids in range, a forest's trees
   well formed (children in range and strictly after their parent, so every path ends at a
   leaf; leaves that hold class probabilities).

Anything else is a ``ValueError`` naming the file and what is wrong.  This module reads the
archive (1); the schema and its checks (2 to 4) are in ``_classifier_schema``.
"""

from __future__ import annotations

import json
import math
import os
import zipfile
import zlib
from pathlib import Path

import numpy as np

from ._classifier_schema import (
    _EXAMPLES,
    _FIX,
    _SCHEMA,
    _as_int64,
    _check_record,
    _check_shapes,
    _check_values,
    _format,
    _Invalid,
)

__all__ = ["MAX_ARRAY_BYTES", "is_classifier_file", "read_classifier_file"]

#: The arrays of one classifier, as declared by their headers, at most (training refuses a
#: classifier that would be larger, so every file napari-segrep writes is read back).
MAX_ARRAY_BYTES = 2 * 1024**3
#: The file itself, at most (its arrays compress; more than this is not a classifier).
MAX_FILE_BYTES = MAX_ARRAY_BYTES + 64 * 1024**2
#: The JSON record, at most.
MAX_META_BYTES = 16 * 1024**2
_MAX_MEMBERS = 16


def read_classifier_file(path: str | os.PathLike) -> tuple[dict, dict[str, np.ndarray]]:
    """The checked record and arrays of the classifier file at ``path``.

    Returns
    -------
    record : dict
        The JSON record, every field checked (``params`` and ``info`` dicts,
        ``log_columns`` a list: empty in a version 1 file).
    arrays : dict of str to ndarray
        Named as in the record's method's schema, floats as float64 (``examples`` keeps its
        float32), integers as int64.

    Raises
    ------
    FileNotFoundError
        No file at ``path``.
    ValueError
        Anything else, naming ``path``: not a classifier (another archive, a pickle, a
        folder), a newer format, a damaged archive, or a field or array that does not hold
        what the method's schema says.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such classifier file") from None
    if path.is_dir():
        raise ValueError(f"{path} is a folder, not a napari-segrep classifier file")
    if not path.is_file():  # a pipe or a device would be read forever
        raise ValueError(f"{path} is not a regular file, so not a napari-segrep classifier")
    if size > MAX_FILE_BYTES:
        raise ValueError(
            f"{path} is {size / 1024**3:.1f} GiB: a napari-segrep classifier is at most "
            f"{MAX_FILE_BYTES / 1024**3:.1f} GiB, so this is not one"
        )
    try:
        with zipfile.ZipFile(path) as archive:
            return _read(archive)
    except _Invalid as exc:
        text = str(exc)
        if not text.startswith(("not a napari-segrep classifier", "written by a newer")):
            text = f"{text} ({_FIX})"
        raise ValueError(f"{path}: {text}") from None
    except (zipfile.BadZipFile, zlib.error, EOFError, RuntimeError, NotImplementedError) as exc:
        raise ValueError(
            f"{path} is not a napari-segrep classifier, or is damaged (it should be an .npz "
            f"archive of arrays and JSON; files holding pickled objects are refused): {exc}"
        ) from None
    except OSError as exc:
        raise OSError(exc.errno, f"cannot read the classifier: {exc.strerror}", str(path)) from None


def is_classifier_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a napari-segrep classifier (its record only is read, size-checked)."""
    try:
        if not Path(path).is_file():
            return False
        with zipfile.ZipFile(path) as archive:
            _format(_record(archive, _headers(archive)))
            return True
    except (ValueError, OSError, zipfile.BadZipFile, zlib.error, EOFError, RuntimeError):
        return False
    except NotImplementedError:  # a compression zipfile does not know
        return False


# ---------------------------------------------------------------------- reading
def _read(archive: zipfile.ZipFile) -> tuple[dict, dict[str, np.ndarray]]:
    headers = _headers(archive)
    record = _check_record(_record(archive, headers))
    method = record["method"]
    expected = dict(_SCHEMA[method])
    present = {name.removeprefix("array_") for name in headers if name != "meta"}
    if present & set(_EXAMPLES):
        expected.update(_EXAMPLES)
    missing = sorted(set(expected) - present)
    if missing:
        raise _Invalid(f"the classifier file is incomplete (no {', '.join(missing)})")
    unknown = sorted(present - set(expected))
    if unknown:
        raise _Invalid(
            f"unexpected array(s) {', '.join(unknown)} in a {method} classifier: the file was "
            "not written by napari-segrep"
        )
    _check_shapes(record, {name: headers[f"array_{name}"] for name in expected})
    arrays = {}
    for name, (kind, _) in expected.items():
        info, _, dtype = headers[f"array_{name}"]
        with archive.open(info) as fh:
            array = np.lib.format.read_array(fh, allow_pickle=False)
        if kind == "i":
            array = _as_int64(array, name)
        elif name != "examples" or dtype.itemsize > 4:
            array = array.astype(np.float64, copy=False)
        arrays[name] = np.ascontiguousarray(array)
    _check_values(record, arrays)
    return record, arrays


def _headers(archive: zipfile.ZipFile) -> dict[str, tuple[zipfile.ZipInfo, tuple, np.dtype]]:
    """Every member's ``.npy`` header, read without reading the array: ``name -> (zip info,
    shape, dtype)``; the declared sizes add up to at most :data:`MAX_ARRAY_BYTES`."""
    infos = archive.infolist()
    if len(infos) > _MAX_MEMBERS:
        raise _Invalid(f"{len(infos)} members: a classifier file has at most {_MAX_MEMBERS}")
    out, total = {}, 0
    for info in infos:
        name = info.filename.removesuffix(".npy")
        if not info.filename.endswith(".npy") or name in out:
            raise _Invalid(
                f"member {info.filename!r} is not an array of a classifier (or is repeated)"
            )
        with archive.open(info) as fh:
            try:
                version = np.lib.format.read_magic(fh)
                if version == (1, 0):
                    shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
                elif version == (2, 0):
                    shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
                else:
                    raise ValueError(f"npy format {version}")
            except ValueError as exc:
                raise _Invalid(f"member {info.filename!r} is not a plain array ({exc})") from None
        if dtype.hasobject:
            raise _Invalid(
                f"{name} holds Python objects (dtype {dtype}): a classifier holds numbers "
                "only, and pickled objects are never loaded"
            )
        if not all(isinstance(d, int) and d >= 0 for d in shape):
            raise _Invalid(f"{name} has an invalid shape {shape}")
        nbytes = math.prod(shape) * dtype.itemsize
        total += nbytes
        if total > MAX_ARRAY_BYTES:
            raise _Invalid(
                f"its arrays declare more than {MAX_ARRAY_BYTES / 1024**3:.0f} GiB ({name}: "
                f"shape {shape}, {dtype}), more than a napari-segrep classifier holds: refused "
                "before reading them"
            )
        out[name] = (info, shape, dtype)
    return out


def _record(archive: zipfile.ZipFile, headers) -> dict:
    """The JSON record (``meta``), parsed; an :class:`_Invalid` when it is not one."""
    if "meta" not in headers:
        raise _Invalid("not a napari-segrep classifier (no record)")
    info, shape, dtype = headers["meta"]
    if dtype != np.uint8 or len(shape) != 1 or shape[0] > MAX_META_BYTES:
        raise _Invalid("not a napari-segrep classifier (its record is not JSON text)")
    with archive.open(info) as fh:
        raw = np.lib.format.read_array(fh, allow_pickle=False)
    try:
        record = json.loads(raw.tobytes().decode())
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise _Invalid("not a napari-segrep classifier (its record is not JSON)") from None
    if not isinstance(record, dict):
        raise _Invalid("not a napari-segrep classifier (its record is not a JSON object)")
    return record
