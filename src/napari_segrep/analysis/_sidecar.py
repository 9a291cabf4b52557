"""A table's JSON sidecar: its name, whose it is, and reading it safely.

Every table napari-segrep writes (``OUT.csv``, ``OUT.parquet``, ``OUT.h5ad``) has its
provenance beside it in ``OUT.csv.json`` (the table's whole name plus ``.json``), so tables of
one stem in several formats each keep their own.  Earlier versions wrote ``OUT.json`` (shared
by ``OUT.csv`` and ``OUT.parquet``): it is still read when the new name is absent and the old
file is one of ours.

A sidecar is read as data, never trusted: its size is checked before it is read, its nesting
before it is used, and the types of every key napari-segrep uses (``encoder``,
``normalization``, ``crop_size``, ``images``...) before anything is built from it.  A problem is
one ``ValueError`` naming the file, the key and the fix.

Standard library only.
"""

from __future__ import annotations

import json
import numbers
import os
from pathlib import Path

__all__ = [
    "MAX_SIDECAR_BYTES",
    "MAX_SIDECAR_DEPTH",
    "PACKAGE",
    "check_record",
    "find_sidecar",
    "is_our_sidecar",
    "legacy_sidecar_path",
    "parse_json",
    "read_sidecar",
    "sidecar_path",
]

PACKAGE = "napari-segrep"  #: the ``package`` a sidecar of ours records
#: A sidecar lists every image of a collection (about 0.4 kB each): 256 MB is over 500,000
#: images; anything larger is refused before it is read.
MAX_SIDECAR_BYTES = 256 << 20
#: Our records nest 4 levels at most (``images`` -> one image -> its fields); deeper is refused.
MAX_SIDECAR_DEPTH = 32


def sidecar_path(table_path: str | os.PathLike) -> Path:
    """``OUT.csv`` -> ``OUT.csv.json`` (``OUT.parquet`` -> ``OUT.parquet.json``...).

    Raises ``ValueError`` when ``table_path`` names no file (``.``, ``..``, ``/``, ``""``) or
    ends in ``.json``, the sidecars' own ending.
    """
    path = Path(table_path)
    if path.name in ("", ".", ".."):
        raise ValueError(
            f"output {str(table_path)!r} is a folder, not a file name: give the table a file "
            f"name, e.g. {path / 'cells.csv'}"
        )
    if path.suffix.lower() == ".json":
        raise ValueError(
            f"output {path} ends in .json, which napari-segrep keeps for the JSON sidecars: name "
            "the table OUT.csv, OUT.parquet or OUT.h5ad (its provenance goes to OUT.csv.json...)"
        )
    return path.with_name(path.name + ".json")


def legacy_sidecar_path(table_path: str | os.PathLike) -> Path | None:
    """The sidecar name of earlier versions (``OUT.csv`` -> ``OUT.json``), or None when it
    is the table itself."""
    path = Path(table_path)
    if path.name in ("", ".", "..") or path.suffix.lower() == ".json":
        return None
    return path.with_suffix(".json")


def find_sidecar(table_path: str | os.PathLike) -> Path | None:
    """The sidecar that describes ``table_path``: ``OUT.csv.json`` when it is there (whatever
    it holds: :func:`read_sidecar` says whether it can be used), else an earlier version's
    ``OUT.json`` when it is one of ours, else None."""
    try:
        sidecar = sidecar_path(table_path)
    except ValueError:
        return None
    if os.path.lexists(sidecar):
        return sidecar
    legacy = legacy_sidecar_path(table_path)
    if legacy is not None and legacy != sidecar and is_our_sidecar(legacy):
        return legacy
    return None


def parse_json(data: bytes | str, source: str):
    """``json.loads`` that never raises anything but ``ValueError`` (naming ``source``): not
    JSON, not UTF-8, or nested deeper than :data:`MAX_SIDECAR_DEPTH` (checked without
    recursion, so a 200,000-deep file is one clear error)."""
    try:
        value = json.loads(data)
    except RecursionError:
        raise ValueError(f"{source} is nested deeper than {MAX_SIDECAR_DEPTH} levels") from None
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
        raise ValueError(f"{source} is not valid JSON ({exc})") from None
    if _depth(value) > MAX_SIDECAR_DEPTH:
        raise ValueError(f"{source} is nested deeper than {MAX_SIDECAR_DEPTH} levels")
    return value


def _depth(value) -> int:
    """How deeply lists and dicts nest in ``value`` (iteratively: no recursion limit)."""
    deepest, todo = 0, [(value, 1)]
    while todo:
        item, level = todo.pop()
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, list):
            deepest = max(deepest, level)
            if level > MAX_SIDECAR_DEPTH:
                return level
            todo.extend((v, level + 1) for v in item if isinstance(v, (list, dict)))
    return deepest


def _load(sidecar: Path):
    """The JSON in ``sidecar``; ``ValueError`` when it is too large, not JSON or too deep;
    ``OSError`` when it cannot be read."""
    size = sidecar.stat().st_size
    if size > MAX_SIDECAR_BYTES:
        raise ValueError(
            f"{sidecar} is {_size(size)}, more than a sidecar can be ({_size(MAX_SIDECAR_BYTES)})"
        )
    return parse_json(sidecar.read_bytes(), str(sidecar))


def _size(n: int) -> str:
    return f"{n / 2**20:.0f} MB" if n >= 2**20 else f"{n} bytes"


def is_our_sidecar(sidecar: str | os.PathLike) -> bool:
    """Whether ``sidecar`` is a provenance record that napari-segrep wrote (a JSON object
    whose ``package`` is napari-segrep; never raises)."""
    try:
        record = _load(Path(sidecar))
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and record.get("package") == PACKAGE


def read_sidecar(
    sidecar: str | os.PathLike, *, table: str | os.PathLike | None = None, fix: str = ""
) -> dict | None:
    """The record in ``sidecar``, checked: None when it is valid JSON but not ours (someone
    else's file, ignored), else a dict whose keys napari-segrep uses have the right types.

    Raises ``ValueError`` naming the file, the problem and the fix (``fix``, or: delete it to
    read ``table`` without its provenance, or restore it) when it is too large, not JSON,
    nested too deeply or holds a key of the wrong type; ``FileNotFoundError`` when it is
    missing.
    """
    sidecar = Path(sidecar)
    what = f"the sidecar of {Path(table).name}" if table is not None else "the sidecar"
    fix = fix or (
        f"delete it to read {Path(table).name} without its provenance, or restore it"
        if table is not None
        else "delete it, or restore it"
    )
    try:
        record = _load(sidecar)
    except FileNotFoundError:
        raise
    except OSError as exc:  # a directory, no permission...
        raise ValueError(f"{sidecar} cannot be read ({exc.strerror}): {fix}") from None
    except ValueError as exc:
        raise ValueError(f"{exc}; {what} is damaged: {fix}") from None
    if not isinstance(record, dict) or record.get("package") != PACKAGE:
        return None
    check_record(record, source=str(sidecar), fix=f"{what} is damaged: {fix}")
    return record


def check_record(record: dict, *, source: str, fix: str) -> None:
    """``ValueError`` (``source: 'key' must be ...; fix``) unless every key of a provenance
    record that napari-segrep reads has the type it expects.  Other keys are not looked at."""

    def wrong(key: str, expected: str, value) -> ValueError:
        return ValueError(f"{source}: {key} must be {expected}, not {_describe(value)}; {fix}")

    encoder = record.get("encoder")
    if encoder is not None:
        if not isinstance(encoder, dict):
            raise wrong("'encoder'", "an object (the encoder's configuration) or null", encoder)
        for key, check, expected in (
            ("sha256", _is_text, "text"),
            ("backbone", _is_text, "text"),
            ("in_channels", _is_int, "a whole number"),
            ("seed", _is_int, "a whole number"),
        ):
            if encoder.get(key) is not None and not check(encoder[key]):
                raise wrong(f"'encoder.{key}'", expected, encoder[key])
    _check_normalization(record.get("normalization"), wrong)
    for key in ("crop_size", "batch_size", "n_segments", "channel_axis"):
        value = record.get(key)
        if value is not None and not _is_int(value):
            raise wrong(f"{key!r}", "a whole number or null", value)
    if record.get("crop_size") is not None and record["crop_size"] < 1:
        raise wrong("'crop_size'", "at least 1", record["crop_size"])
    normalize = record.get("normalize")
    if normalize is not None and not _is_text(normalize):
        if not (
            isinstance(normalize, list)
            and len(normalize) == 2
            and all(_is_number(v) or _is_numbers(v) for v in normalize)
        ):
            raise wrong("'normalize'", "image, segment, null or [low, high]", normalize)
    images = record.get("images")
    if images is not None:
        if not isinstance(images, list):
            raise wrong("'images'", "a list of the images", images)
        for i, image in enumerate(images):
            if not isinstance(image, dict):
                raise wrong(f"'images[{i}]'", "an object (name, image, labels)", image)
            for key in ("name", "image", "labels"):
                if not _is_text(image.get(key)):
                    raise wrong(f"'images[{i}].{key}'", "text", image.get(key))
    inputs = record.get("inputs")
    if isinstance(inputs, dict):
        for key in ("image", "labels"):
            if inputs.get(key) is not None and not _is_text(inputs[key]):
                raise wrong(f"'inputs.{key}'", "text (a file path)", inputs[key])


def _check_normalization(value, wrong) -> None:
    """One normalisation (``{"mode": ..., "low": [...], "high": [...]}``) or, for a
    collection, one per image name (each a normalisation or null)."""
    if value is None:
        return
    if not isinstance(value, dict):
        raise wrong("'normalization'", "an object or null", value)
    single = _is_text(value.get("mode"))
    for name, one in [("", value)] if single else value.items():
        key = "'normalization'" if single else f"'normalization[{name!r}]'"
        if one is None:
            continue
        if not isinstance(one, dict) or not _is_text(one.get("mode")):
            raise wrong(key, "an object with a text 'mode' (or null)", one)
        for bound in ("low", "high"):
            if one.get(bound) is not None and not _is_numbers(one[bound]):
                raise wrong(f"{key[:-1]}.{bound}'", "a list of numbers", one[bound])
        if one["mode"] == "fixed" and not all(_is_numbers(one.get(b)) for b in ("low", "high")):
            raise wrong(f"{key[:-1]}.low/high'", "lists of numbers for mode fixed", one)


def _is_text(value) -> bool:
    return isinstance(value, str)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _is_numbers(value) -> bool:
    return isinstance(value, list) and all(_is_number(v) for v in value)


def _describe(value) -> str:
    """A value, briefly, for an error message (one line)."""
    kind = {dict: "an object", list: "a list", str: "text", bool: "true/false"}.get(type(value))
    if value is None:
        return "null"
    if kind is None:
        kind = "a number" if _is_number(value) else type(value).__name__
    text = json.dumps(value, default=str) if not isinstance(value, (dict, list)) else ""
    if len(text) > 40:
        text = text[:37] + "..."
    return f"{kind} {text}".strip()
