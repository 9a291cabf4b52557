"""A parts folder's manifest: what it holds (the settings, every input pair with its size and
modification time, the sha256 of what a merge wrote), how one is checked before use and how
two are compared (is it the same run?).

:mod:`napari_segrep.analysis.parts` reads and writes it, and re-exports :class:`BadManifest`,
:func:`input_record` and :func:`manifest_differences`.  Headless and torch-free.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from pathlib import Path

__all__ = ["BadManifest", "input_record", "manifest_differences"]

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_INPUT_FIELDS = {
    "name": str,
    "image": str,
    "labels": str,
    "image_size": int,
    "image_mtime_ns": int,
    "labels_size": int,
    "labels_mtime_ns": int,
}


class BadManifest(ValueError):
    """A parts folder's manifest that napari-segrep wrote but that does not hold what it must
    (edited, damaged): the message names the file, the problem and the way out."""


def input_record(
    name: str, image: str | os.PathLike, labels: str | os.PathLike, *, sha256: bool = False
) -> dict:
    """One input pair as the manifest and the provenance sidecar record it: ``name``, both
    absolute paths, their sizes in bytes and modification times (ns), and with ``sha256``
    their SHA-256 hashes (reads every byte)."""
    from ..io import file_sha256

    record: dict = {"name": str(name)}
    for role, path in (("image", image), ("labels", labels)):
        stat = os.stat(path)
        record[role] = str(Path(path).resolve())
        record[f"{role}_size"] = int(stat.st_size)
        record[f"{role}_mtime_ns"] = int(stat.st_mtime_ns)
        if sha256:
            record[f"{role}_sha256"] = file_sha256(path)
    return record


def manifest_differences(
    old: dict, new: dict, *, done: Iterable[str] = (), shown: int = 3
) -> list[str]:
    """What differs between two manifests, in words (empty: the same run).  Settings are
    compared key by key; the inputs' names, paths and order must be the same; sizes and
    modification times only matter for the images in ``done`` (those already embedded: a
    file fixed after a failure may change)."""
    out = []
    old_settings, new_settings = old.get("settings", {}), new.get("settings", {})
    for key in sorted(set(old_settings) | set(new_settings)):
        a, b = old_settings.get(key), new_settings.get(key)
        if a != b:
            out.append(f"{key} {_short(a)} then, {_short(b)} now")
    done = set(done)
    keys = ("name", "image", "labels")
    stamps = ("image_size", "image_mtime_ns", "labels_size", "labels_mtime_ns")

    def identity(record):
        more = stamps if record.get("name") in done else ()
        return tuple(record.get(k) for k in (*keys, *more))

    old_inputs = {r["name"]: identity(r) for r in old.get("inputs", [])}
    new_inputs = {r["name"]: identity(r) for r in new.get("inputs", [])}
    added = [n for n in new_inputs if n not in old_inputs]
    removed = [n for n in old_inputs if n not in new_inputs]
    changed = [n for n in new_inputs if n in old_inputs and new_inputs[n] != old_inputs[n]]
    for what, names in (("added", added), ("removed", removed), ("changed", changed)):
        if names:
            more = f" and {len(names) - shown} more" if len(names) > shown else ""
            out.append(f"images {what}: {', '.join(names[:shown])}{more}")
    if not (added or removed or changed) and list(old_inputs) != list(new_inputs):
        out.append("the images are in another order")
    return out


def _short(value) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def _manifest_problem(record: dict) -> str | None:
    """What is wrong with a manifest of ours (its ``kind`` says so), or None."""
    if not isinstance(record.get("settings"), dict):
        return "'settings' is not an object"
    inputs = record.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        return "'inputs' is not a list of inputs"
    names = set()
    for i, item in enumerate(inputs):
        if not isinstance(item, dict):
            return f"inputs[{i}] is not an object"
        problem = _field_problem(item, _INPUT_FIELDS, f"inputs[{i}]")
        if problem:
            return problem
        if item["name"] in names:
            return f"inputs[{i}] repeats the name {item['name']!r}"
        names.add(item["name"])
    merge = record.get("merge", {})
    if not isinstance(merge, dict) or not all(
        isinstance(v, list) and all(isinstance(h, str) and _SHA256.match(h) for h in v)
        for v in merge.values()
    ):
        return "'merge' is not an object of sha256 lists"
    return None


def _field_problem(record: dict, fields: dict, where: str) -> str | None:
    for key, kind in fields.items():
        value = record.get(key)
        if not isinstance(value, kind) or isinstance(value, bool):
            return f"{where}.{key} is {_short(value)}, not {'an integer' if kind is int else 'a string'}"
        if kind is int and value < 0:
            return f"{where}.{key} is negative"
    return None
