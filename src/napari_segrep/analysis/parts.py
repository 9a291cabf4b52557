"""The parts folder of a resumable collection embedding: one Parquet file per finished image.

``OUT.parts/`` (beside the output ``OUT``) holds

- ``manifest.json``: what is embedded and how (the settings, every input with its size and
  modification time) and, once the parts are being merged, the sha256 of every ``OUT`` and
  sidecar that merge wrote (so that a rerun after a kill between their two renames knows them
  for its own and finishes the job);
- one part per finished image (``000012-cell_7.parquet``: the index in the input list, then
  the file stem made safe) with its record (``000012-cell_7.json``: the image it holds, its
  row count, byte size and sha256, the encoder's fingerprint), written together, atomically,
  when that image is done (by whichever process embedded it: no shared file is rewritten);
- ``.lock`` while a run uses it.

A part counts as done only if it checks out (:meth:`PartsFolder.verify`): its record is
well-formed and names this image and this run's encoder, and the file's size and sha256 are
the recorded ones.  Anything else (a part edited, copied under another image's name, from
another encoder, a stray file) is not counted: the run embeds that image again.  Reading a part
back checks its content too (the image, one row per label, finite values).  Once all are done
the caller merges the parts, writes ``OUT`` and removes what it wrote here
(:meth:`PartsFolder.finish`: a file it did not write is kept, and so is the folder then).

What a manifest holds, how it is checked and compared: :mod:`napari_segrep.analysis._manifest`
(its public names re-exported here).  Headless and torch-free (pandas, pyarrow).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..io import (
    atomic_write,
    atomic_write_files,
    check_writable_dir,
    fsync_dir,
    lock_holder,
    take_lock,
)
from ._manifest import (
    BadManifest,
    _field_problem,
    _manifest_problem,
    input_record,
    manifest_differences,
)

__all__ = [
    "MANIFEST_NAME",
    "BadManifest",
    "PartsFolder",
    "Start",
    "input_record",
    "manifest_differences",
    "parts_dir",
]

MANIFEST_NAME = "manifest.json"
_KIND = "napari-segrep embed parts"
_RECORD_KIND = "napari-segrep embed part"
_LOCK_NAME = ".lock"
_PART = re.compile(r"^(\d{6,})-.*\.parquet$")
_RECORD = re.compile(r"^(\d{6,})-.*\.json$")
_TEMPORARY = re.compile(r"^\..+\.[0-9a-f]{8}\.(tmp|bak)$")  # io.atomic_write_files' names
_ATTRS_KEY = b"napari_segrep_attrs"
_RECORD_FIELDS = {
    "index": int,
    "image": str,
    "part": str,
    "rows": int,
    "size": int,
    "sha256": str,
    "encoder_sha256": str,
}


def parts_dir(output: str | os.PathLike) -> Path:
    """The parts folder of the output table ``OUT``: ``OUT.parts`` beside it."""
    output = Path(output)
    return output.with_name(f"{output.name}.parts")


@dataclass
class Start:
    """What :meth:`PartsFolder.start` found: the parts that check out (index -> file), the
    ones that do not (one reason each, naming the file; their images are embedded again),
    and whether the folder held this same run (False: a new or replaced folder)."""

    good: dict[int, Path] = field(default_factory=dict)
    bad: list[str] = field(default_factory=list)
    resumed: bool = False


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
    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST_NAME

    def manifest(self) -> dict | None:
        """The folder's manifest, or None when there is none (or it is not ours).

        Raises
        ------
        BadManifest
            It is ours (its ``kind``) but does not hold what a manifest must (wrong JSON types,
            missing keys), naming the file and the way out.
        """
        try:
            record = json.loads(self.manifest_path.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(record, dict) or record.get("kind") != _KIND:
            return None
        problem = _manifest_problem(record)
        if problem is not None:
            raise BadManifest(
                f"{self.manifest_path} is damaged ({problem}): delete the folder {self.path} "
                "or pass --overwrite to start over"
            )
        return record

    def _names(self, manifest: dict) -> list[str]:
        return [r["name"] for r in manifest["inputs"]]

    def check(self, manifest: dict, *, overwrite: bool, output_flag: str = "-o") -> int:
        """Before any work, without writing: whether a run with ``manifest`` may use this
        folder.  Returns the number of parts it would keep (unverified: :meth:`start` checks
        each): those of this same run, with or without ``overwrite`` (which replaces only a
        folder of other settings or inputs, or a damaged one).

        Raises
        ------
        ValueError
            The path is something else than a parts folder of ours, is in use, or (without
            ``overwrite``) holds a run with other settings or inputs (naming the differences and
            the way out) or a damaged manifest (:class:`BadManifest`).
        """
        return self._state(manifest, overwrite=overwrite, output_flag=output_flag)[1]

    def _state(self, manifest: dict, *, overwrite: bool, output_flag: str = "-o"):
        """``(stored manifest of this same run or None, parts it holds)``; raises as
        :meth:`check`."""
        if not os.path.lexists(self.path):
            return None, 0
        try:
            stored = self.manifest() if self.path.is_dir() else None
            bad = None
        except BadManifest as exc:
            stored, bad = None, exc
        if stored is None and bad is None:
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
        if bad is not None:
            if overwrite:
                return None, 0
            raise bad
        names = self._names(stored)
        done = self.done()
        differences = manifest_differences(
            stored, manifest, done={names[i] for i in done if i < len(names)}
        )
        if differences:
            if overwrite:
                return None, 0
            raise ValueError(
                f"{self.path} holds an unfinished embedding of other settings or inputs "
                f"({'; '.join(differences)}): pass --overwrite to start over, or choose "
                f"another {output_flag}"
            )
        return stored, sum(1 for i in done if i < len(names))

    def start(self, manifest: dict, *, overwrite: bool, encoder_sha256: str) -> Start:
        """:meth:`check`; then create the folder (or, when it holds another run and
        ``overwrite`` allows it, empty it of that run's files), take its lock (until
        :meth:`release`), remove the temporaries of a killed run, check every part
        (:meth:`verify`) and write the manifest (keeping the merge record of this same run)."""
        stored, _ = self._state(manifest, overwrite=overwrite)
        if stored is None and os.path.lexists(self.path):
            self._clear()
        with contextlib.suppress(FileExistsError):
            self.path.mkdir()
        check_writable_dir(self.path)
        self._take_lock()
        for entry in os.scandir(self.path):  # a part being written when the run was killed
            if _TEMPORARY.match(entry.name) and entry.is_file():
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
        names = [r["name"] for r in manifest["inputs"]]
        start = Start(resumed=stored is not None)
        if stored is not None:
            start.good, start.bad = self.verify(names, encoder_sha256=encoder_sha256)
        # (re)written: the current sizes and times of images not embedded yet (a fixed file)
        record = {"kind": _KIND, **manifest}
        if stored is not None and stored.get("merge"):
            record["merge"] = stored["merge"]
        self._write_manifest(record)
        return start

    def _write_manifest(self, record: dict) -> None:
        text = json.dumps(record, indent=2, sort_keys=True, default=str)
        atomic_write(self.manifest_path, lambda fh: fh.write(text.encode() + b"\n"))

    # --- what the merge wrote -----------------------------------------------------------------
    def record_merge(self, files: dict[Path, bytes]) -> None:
        """Before the merge replaces ``OUT`` and its sidecar: add the sha256 of each one's new
        content to the manifest, so that a rerun knows them for this run's own."""
        record = self.manifest()
        if record is None:  # pragma: no cover - start() wrote it and the lock guards it
            raise ValueError(f"{self.manifest_path} disappeared during the run")
        merge = dict(record.get("merge", {}))
        for path, data in files.items():
            digest = hashlib.sha256(data).hexdigest()
            merge[path.name] = sorted({*merge.get(path.name, []), digest})
        record["merge"] = merge
        self._write_manifest(record)

    def wrote(self, path: str | os.PathLike) -> bool:
        """Whether the file at ``path`` (beside this folder) is one that a merge of this
        folder's run wrote: its sha256 is recorded in the manifest.  False when it does not
        exist or the manifest cannot say."""
        path = Path(path)
        try:
            record = self.manifest()
        except BadManifest:
            return False
        hashes = (record or {}).get("merge", {}).get(path.name, [])
        if not hashes or not path.is_file():
            return False
        from ..io import file_sha256

        return file_sha256(path) in hashes

    # --- parts --------------------------------------------------------------------------------
    def part_path(self, index: int, name: str) -> Path:
        """Where image ``index`` (called ``name``) goes: ``000012-<name, made safe>.parquet``."""
        safe = re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)).strip("._")[:80] or "image"
        return self.path / f"{index:06d}-{safe}.parquet"

    def record_path(self, index: int, name: str) -> Path:
        """The record of image ``index``'s part: ``000012-<name, made safe>.json``."""
        return self.part_path(index, name).with_suffix(".json")

    def done(self) -> dict[int, Path]:
        """The parts written with their record: index -> file (not checked: see
        :meth:`verify`)."""
        out = {}
        with contextlib.suppress(FileNotFoundError):
            names = set(os.listdir(self.path))
            for name in names:
                match = _RECORD.match(name)
                part = name[: -len(".json")] + ".parquet"
                if match and part in names:
                    out[int(match.group(1))] = self.path / part
        return out

    def verify(self, names: list[str], *, encoder_sha256: str) -> tuple[dict[int, Path], list[str]]:
        """Which parts of the images ``names`` (in input order) check out: a well-formed record
        naming that image, at that index, embedded by the encoder ``encoder_sha256``, and a
        part file of the recorded size and sha256.  Returns ``(good: index -> file, bad: one
        reason per part that is there but does not check out)``; files of other names are
        not looked at (not counted)."""
        from ..io import file_sha256

        good, bad = {}, []
        for index, name in enumerate(names):
            part, record_file = self.part_path(index, name), self.record_path(index, name)
            if not part.exists() and not record_file.exists():
                continue
            try:
                record = self._record(record_file)
                problem = self._record_problem(record, index, name, part, encoder_sha256)
                if problem is None and file_sha256(part) != record["sha256"]:
                    problem = "changed since it was written (its sha256 is not the recorded one)"
            except (OSError, ValueError) as exc:
                problem = str(exc)
            if problem is None:
                good[index] = part
            else:
                bad.append(f"{part.name}: {problem}")
        return good, bad

    @staticmethod
    def _record(record_file: Path) -> dict:
        try:
            record = json.loads(record_file.read_text())
        except FileNotFoundError:
            raise ValueError(
                "it has no record (not written by this run, or it was stopped while writing)"
            ) from None
        except (OSError, ValueError):
            raise ValueError(f"its record {record_file.name} is not readable JSON") from None
        if not isinstance(record, dict) or record.get("kind") != _RECORD_KIND:
            raise ValueError(f"its record {record_file.name} is not a napari-segrep part record")
        problem = _field_problem(record, _RECORD_FIELDS, record_file.name)
        if problem is not None:
            raise ValueError(f"its record is damaged ({problem})")
        return record

    @staticmethod
    def _record_problem(record, index, name, part, encoder_sha256) -> str | None:
        if record["index"] != index or record["image"] != name or record["part"] != part.name:
            return (
                f"its record is of image {record['image']!r} (number {record['index']}), not "
                f"{name!r} (number {index})"
            )
        if record["encoder_sha256"] != encoder_sha256:
            return (
                f"embedded by another encoder (sha256 {record['encoder_sha256'][:12]}..., this "
                f"run's {encoder_sha256[:12]}...)"
            )
        if not part.is_file():
            return "the part file is missing"
        if part.stat().st_size != record["size"]:
            return "changed since it was written (its size is not the recorded one)"
        return None

    def write(self, index: int, name: str, df: pd.DataFrame) -> Path:
        """Write image ``index``'s table and its record together, atomically (complete files
        or none); ``attrs`` (encoder, crop size, normalisation) kept in the Parquet metadata.
        ``ValueError`` when the table is not that image's or holds NaN/Inf (never written)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        part = self.part_path(index, name)
        _check_content(df, name, where=f"the table of image {name!r}")
        encoder = (df.attrs.get("encoder") or {}).get("sha256")
        if not isinstance(encoder, str):
            raise ValueError(f"the table of image {name!r} has no encoder fingerprint in its attrs")
        table = pa.Table.from_pandas(df, preserve_index=False)
        attrs = json.dumps(df.attrs, sort_keys=True, default=str).encode()
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), _ATTRS_KEY: attrs})
        buffer = io.BytesIO()
        pq.write_table(table, buffer)
        data = buffer.getvalue()
        record = {
            "kind": _RECORD_KIND,
            "index": int(index),
            "image": str(name),
            "part": part.name,
            "rows": len(df),
            "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
            "encoder_sha256": encoder,
        }
        text = json.dumps(record, indent=2, sort_keys=True).encode() + b"\n"
        atomic_write_files(
            {
                part: lambda fh: fh.write(data),
                self.record_path(index, name): lambda fh: fh.write(text),
            }
        )
        return part

    def read(self, index: int, name: str, *, encoder_sha256: str) -> pd.DataFrame:
        """Image ``index``'s part back, with its ``attrs``, checked (record, size, sha256, the
        ``image`` column, one row per label, finite values); ``ValueError`` naming the part and
        the fix otherwise."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        part = self.part_path(index, name)
        fix = "run the same command again (that image is embedded again)"
        try:
            record = self._record(self.record_path(index, name))
            problem = self._record_problem(record, index, name, part, encoder_sha256)
            data = part.read_bytes() if problem is None else b""
            if problem is None and hashlib.sha256(data).hexdigest() != record["sha256"]:
                problem = "changed since it was written (its sha256 is not the recorded one)"
            if problem is None:
                table = pq.read_table(pa.BufferReader(data))
                df = table.to_pandas()
                df.attrs = json.loads((table.schema.metadata or {}).get(_ATTRS_KEY, b"{}"))
                if len(df) != record["rows"]:
                    problem = f"holds {len(df)} rows, its record {record['rows']}"
                else:
                    _check_content(df, name, where="it")
        except (OSError, ValueError) as exc:
            problem = str(exc)
        if problem is not None:
            raise ValueError(f"the part {part} does not check out ({problem}): {fix}")
        return df

    def read_all(self, names: list[str], *, encoder_sha256: str) -> list[pd.DataFrame]:
        """Every image's part, in input order, each checked (:meth:`read`)."""
        return [self.read(i, name, encoder_sha256=encoder_sha256) for i, name in enumerate(names)]

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

    def _ours(self, names: list[str] | None) -> list[Path]:
        """The files a run writes here: the parts and records of ``names`` (None: any of
        their form), temporaries; the manifest and lock last."""
        found = set(os.listdir(self.path))
        if names is None:
            files = [n for n in found if _PART.match(n) or _RECORD.match(n)]
        else:
            files = [
                p.name
                for i, name in enumerate(names)
                for p in (self.record_path(i, name), self.part_path(i, name))
                if p.name in found
            ]
        files += [n for n in found if _TEMPORARY.match(n)]
        files += [n for n in (MANIFEST_NAME, _LOCK_NAME) if n in found]
        return [self.path / n for n in files]

    def _clear(self) -> None:
        """Empty the folder of another run's files (``--overwrite``): parts, records,
        temporaries, manifest; anything else stays."""
        for path in self._ours(None):
            if path.name != _LOCK_NAME:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)

    def finish(self) -> list[str]:
        """After the merge: delete the files this run wrote here (its parts and records,
        temporaries, then the manifest and the lock) and the folder.  Returns the names of the
        files it did not write, which are kept, and with them the folder (empty: all gone)."""
        try:
            record = self.manifest()
        except BadManifest:  # pragma: no cover - start() wrote it and the lock guards it
            record = None
        names = None if record is None else self._names(record)
        for path in self._ours(names):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        left = sorted(os.listdir(self.path))
        if not left:
            with contextlib.suppress(FileNotFoundError):
                self.path.rmdir()
            fsync_dir(self.path.parent)
        return left


def _check_content(df: pd.DataFrame, name: str, *, where: str) -> None:
    """``ValueError`` unless ``df`` is image ``name``'s table: every ``image`` value is
    ``name``, one row per label (per frame in a stack), every ``emb_*`` value finite."""
    if "image" not in df.columns or (len(df) and not (df["image"].astype(str) == name).all()):
        others = sorted(set(map(str, df.get("image", pd.Series(dtype=str)))) - {name})
        raise ValueError(f"{where} holds rows of image {others[:3] or '?'}, not {name!r}")
    keys = [c for c in ("frame", "label") if c in df.columns]
    if "label" in keys and df.duplicated(keys).any():
        raise ValueError(f"{where} holds a label twice")
    emb = df[[c for c in df.columns if str(c).startswith("emb_")]].to_numpy(dtype=np.float64)
    if not np.isfinite(emb).all():
        raise ValueError(f"{where} holds NaN or Inf embedding values")
