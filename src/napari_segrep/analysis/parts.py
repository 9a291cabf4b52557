"""The parts folder of a resumable collection embedding: one Parquet file per finished image.

``OUT.parts/`` (beside the output ``OUT``) holds ``manifest.json`` (what is embedded and how:
the settings and every input with its size and modification time), one part per finished
image (``000012-cell_7.parquet``: the index in the input list, then the file stem made safe),
written atomically when that image is done, and ``.lock`` while a run uses it.  A rerun with
the same manifest skips the finished images; once all are done the caller merges the parts,
writes ``OUT`` and removes the folder.

Headless and torch-free (pandas, pyarrow).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from ..io import atomic_write, check_writable_dir, fsync_dir, lock_holder, take_lock

__all__ = ["MANIFEST_NAME", "PartsFolder", "input_record", "manifest_differences", "parts_dir"]

MANIFEST_NAME = "manifest.json"
_KIND = "napari-segrep embed parts"
_LOCK_NAME = ".lock"
_PART = re.compile(r"^(\d{6,})-.*\.parquet$")
_ATTRS_KEY = b"napari_segrep_attrs"


def parts_dir(output: str | os.PathLike) -> Path:
    """The parts folder of the output table ``OUT``: ``OUT.parts`` beside it."""
    output = Path(output)
    return output.with_name(f"{output.name}.parts")


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


class PartsFolder:
    """One run's parts folder (see the module docstring).

    Parameters
    ----------
    path : path-like
        The folder, ``OUT.parts`` (:func:`parts_dir`).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    # --- the manifest -------------------------------------------------------------------------
    def manifest(self) -> dict | None:
        """The folder's manifest, or None when there is none (or it is not ours)."""
        try:
            record = json.loads((self.path / MANIFEST_NAME).read_text())
        except (OSError, ValueError):
            return None
        return record if isinstance(record, dict) and record.get("kind") == _KIND else None

    def check(self, manifest: dict, *, overwrite: bool, output_flag: str = "-o") -> int:
        """Before any work, without writing: whether a run with ``manifest`` may use this
        folder.  Returns the number of finished parts it would keep (0 with ``overwrite``).

        Raises
        ------
        ValueError
            The path is something else than a parts folder of ours, or holds a run with other
            settings or inputs (naming the differences and the way out), or is in use.
        """
        if not os.path.lexists(self.path):
            return 0
        if not self.path.is_dir() or self.manifest() is None:
            raise ValueError(
                f"{self.path} exists and is not a napari-segrep parts folder: move it away or "
                f"choose another {output_flag}"
            )
        holder = self._lock_holder()
        if holder is not None:
            raise ValueError(
                f"{self.path} is in use by another embedding (process {holder}): wait for it to "
                f"end or choose another {output_flag} (if none runs, delete "
                f"{self.path / _LOCK_NAME})"
            )
        if overwrite:
            return 0
        stored = self.manifest()
        names = [r.get("name") for r in stored.get("inputs", [])]
        done = {names[i] for i in self.done() if i < len(names)}
        differences = manifest_differences(stored, manifest, done=done)
        if differences:
            raise ValueError(
                f"{self.path} holds an unfinished embedding of other settings or inputs "
                f"({'; '.join(differences)}): pass --overwrite to start over, or choose "
                f"another {output_flag}"
            )
        return len(self.done())

    def start(self, manifest: dict, *, overwrite: bool) -> int:
        """:meth:`check`, then create the folder (or, with ``overwrite``, empty it first), take
        its lock (until :meth:`release`) and write the manifest.  Returns the finished parts
        kept."""
        kept = self.check(manifest, overwrite=overwrite)
        if overwrite and os.path.lexists(self.path):
            self.remove()
        with contextlib.suppress(FileExistsError):
            self.path.mkdir()
        check_writable_dir(self.path)
        self._take_lock()
        for stale in self.path.glob(".*.tmp"):  # a part being written when the run was killed
            with contextlib.suppress(OSError):
                stale.unlink()
        # (re)written: the current sizes and times of images not embedded yet (a fixed file)
        text = json.dumps({"kind": _KIND, **manifest}, indent=2, sort_keys=True, default=str)
        atomic_write(self.path / MANIFEST_NAME, lambda fh: fh.write(text.encode() + b"\n"))
        return kept

    # --- parts --------------------------------------------------------------------------------
    def part_path(self, index: int, name: str) -> Path:
        """Where image ``index`` (called ``name``) goes: ``000012-<name, made safe>.parquet``."""
        safe = re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)).strip("._")[:80] or "image"
        return self.path / f"{index:06d}-{safe}.parquet"

    def done(self) -> dict[int, Path]:
        """The finished parts: index -> file."""
        out = {}
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(self.path):
                match = _PART.match(entry.name)
                if match and entry.is_file():
                    out[int(match.group(1))] = Path(entry.path)
        return out

    def write(self, index: int, name: str, df: pd.DataFrame) -> Path:
        """Write image ``index``'s table atomically (a complete file or none), ``attrs``
        (encoder, crop size, normalisation) kept in the Parquet metadata."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.Table.from_pandas(df, preserve_index=False)
        attrs = json.dumps(df.attrs, sort_keys=True, default=str).encode()
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), _ATTRS_KEY: attrs})
        return atomic_write(self.part_path(index, name), lambda fh: pq.write_table(table, fh))

    def read(self, path: Path) -> pd.DataFrame:
        """A part back, with its ``attrs``; ``ValueError`` naming the file if it is damaged."""
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except (OSError, ValueError) as exc:
            raise ValueError(
                f"the part {path} cannot be read ({exc}): delete it and run the same command "
                "again (that image is embedded again)"
            ) from None
        df = table.to_pandas()
        df.attrs = json.loads((table.schema.metadata or {}).get(_ATTRS_KEY, b"{}"))
        return df

    def read_all(self, indices: Iterable[int]) -> list[pd.DataFrame]:
        """The parts of ``indices``, in that order (``ValueError`` naming a missing one)."""
        done = self.done()
        missing = [i for i in indices if i not in done]
        if missing:
            raise ValueError(f"parts missing in {self.path} for images {missing[:5]}")
        return [self.read(done[i]) for i in indices]

    # --- lock and removal ---------------------------------------------------------------------
    def _take_lock(self) -> None:
        take_lock(self.path, name=_LOCK_NAME, user="embedding")

    def _lock_holder(self) -> int | str | None:
        """The live process holding the lock, or None (no lock, this process, or ended)."""
        holder = lock_holder(self.path / _LOCK_NAME)
        return None if holder == os.getpid() else holder

    def release(self) -> None:
        """Give the lock back (the parts stay)."""
        lock = self.path / _LOCK_NAME
        with contextlib.suppress(OSError, ValueError):
            if int(lock.read_text().split()[0]) == os.getpid():
                lock.unlink()

    def remove(self) -> None:
        """Delete the folder: only the files a run writes there (parts, manifest, lock,
        temporaries); ``OSError`` naming the folder when anything else is left in it."""
        for entry in list(os.scandir(self.path)):
            ours = entry.name in (MANIFEST_NAME, _LOCK_NAME) or _PART.match(entry.name)
            if (ours or entry.name.endswith(".tmp")) and entry.is_file():
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
        for _ in range(3):  # a slow file system may list a file just deleted
            try:
                self.path.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError:
                time.sleep(0.1)
        else:
            raise OSError(
                f"{self.path} holds files napari-segrep did not write: they were kept; "
                "remove the folder yourself"
            )
        fsync_dir(self.path.parent)
