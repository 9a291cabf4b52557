"""Files: reading images, pairing image and label files, atomic writes (several files together),
hashes, output checks, run folders.  The pairing rule lives in :mod:`napari_segrep._pairing`
(re-exported here: :func:`pair_files`, :class:`FilePairs`, :data:`IMAGE_SUFFIXES`).

The rule: nothing the user owns is lost.  Outputs are written to temporaries, checked, then
replaced (pairs together or not at all); an output is never an input; an existing file is only
replaced when the caller says so; a training run never writes into another run's folder.

Headless and torch-free (numpy, tifffile and imageio, imported when needed).  Errors are
``ValueError``/``OSError`` with a message that names the file and the fix; the CLI and the
widgets decide how to show them.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import secrets
import shutil
import socket
import stat
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

from ._pairing import IMAGE_SUFFIXES, FilePairs, pair_files

__all__ = [
    "IMAGE_SUFFIXES",
    "FilePairs",
    "RUN_LOCK_NAME",
    "atomic_write",
    "atomic_write_files",
    "check_free_space",
    "check_output_paths",
    "check_writable_dir",
    "claim_run_dir",
    "file_sha256",
    "free_run_dir",
    "leftover_temporaries",
    "fsync_dir",
    "lock_holder",
    "pair_files",
    "read_image",
    "run_dir_conflict",
    "same_file",
    "take_lock",
    "write_failure",
]

_NO_SPACE = {errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC)}


def read_image(path: str | os.PathLike):
    """Read TIFF with tifffile, PNG/JPEG (and anything else imageio knows) with imageio.

    Raises ``FileNotFoundError`` when ``path`` does not exist, ``ValueError`` when the file
    cannot be read as an image.
    """
    import numpy as np

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            return np.asarray(tifffile.imread(path))
        import imageio.v3 as iio

        return np.asarray(iio.imread(path))
    except Exception as exc:  # noqa: BLE001 - any reader failure is a user-facing error
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ValueError(f"cannot read {path} as an image: {reason}") from None


def atomic_write(
    path: str | os.PathLike, write: Callable[[IO[Any]], object], *, mode: str = "wb"
) -> Path:
    """Call ``write(file_object)`` on a temporary file beside ``path``, then ``os.replace`` it.

    Either the complete new file is at ``path`` afterwards, or (on any error) the previous file is
    untouched and no temporary file is left behind.  See :func:`atomic_write_files`.
    """
    return atomic_write_files({path: write}, mode=mode)[0]


def atomic_write_files(
    writes: Mapping[str | os.PathLike, Callable[[IO[Any]], object]], *, mode: str = "wb"
) -> list[Path]:
    """Write several files together: all are replaced, or none; returns the targets.

    Each ``write(file_object)`` fills a temporary file in its target's folder (flushed, fsynced);
    only when all are complete (and no target is a directory: checked first) are they moved into
    place with ``os.replace``.  On any failure before that, nothing is replaced and no temporary
    is left; should a replace itself fail, those already done are put back from hard-link
    backups.  New files get the user's normal permissions (``0o666 & ~umask``), replaced ones
    keep theirs.  A file-system failure (disk full...) is raised as one ``OSError`` naming the
    file, even when the writer wrapped it (``torch.save`` does).
    """
    targets = [Path(p) for p in writes]
    for target in targets:
        check_writable_dir(_parent(target))
        if target.is_dir():
            raise ValueError(f"{target} is a directory: choose another output name")
    temps: list[tuple[Path, Path]] = []
    try:
        for target, write in zip(targets, writes.values(), strict=True):
            fd, tmp = _new_temporary(target)
            temps.append((tmp, target))
            try:
                with os.fdopen(fd, mode) as fh:
                    write(fh)
                    fh.flush()
                    os.fsync(fh.fileno())
            except Exception as exc:
                failure = write_failure(target, exc)
                if failure is None:
                    raise
                raise failure from exc
            with contextlib.suppress(OSError):  # a replaced file keeps its permissions
                os.chmod(tmp, stat.S_IMODE(os.stat(target).st_mode))
        _replace_all(temps)
    finally:
        for tmp, _ in temps:
            _unlink(tmp)
    for directory in {_parent(t) for t in targets}:
        fsync_dir(directory)
    return targets


def write_failure(
    path: str | os.PathLike, error: BaseException, *, what: str = ""
) -> OSError | None:
    """``error``, raised while writing ``path``, as one ``OSError`` that names the file, the
    reason, a full disk where that is the likely cause, and whether the previous file is kept.
    None when no file-system error is behind ``error``."""
    cause = _os_error(error)
    if cause is None:
        return None
    path = Path(path)
    reason = cause.strerror or str(cause)
    if cause.errno in _NO_SPACE:
        reason += " (disk full?)"
    kept = f"the previous {what or 'file'} is kept" if path.exists() else "nothing was written"
    failure = OSError(f"could not write {f'the {what} ' if what else ''}{path}: {reason}; {kept}")
    failure.errno = cause.errno
    return failure


def _os_error(error: BaseException) -> OSError | None:
    """The first ``OSError`` with a reason in ``error``'s chain (itself, causes, contexts)."""
    seen, todo, first = set(), [error], None
    while todo:
        exc = todo.pop(0)
        if exc is None or id(exc) in seen:
            continue
        seen.add(id(exc))
        if isinstance(exc, OSError):
            if exc.strerror:
                return exc
            first = first or exc
        todo += [exc.__cause__, exc.__context__]
    return first


def leftover_temporaries(target: str | os.PathLike) -> list[Path]:
    """The files :func:`atomic_write_files` leaves beside ``target`` when its process is killed
    mid-write: its temporaries ``.{name}.{8 hex}.tmp`` and hard-link backups
    ``.{name}.{8 hex}.bak`` (those names only; nothing else is listed)."""
    import re

    target = Path(target)
    pattern = re.compile(rf"^\.{re.escape(target.name)}\.[0-9a-f]{{8}}\.(tmp|bak)$")
    try:
        names = os.listdir(_parent(target))
    except OSError:
        return []
    return sorted(_parent(target) / n for n in names if pattern.match(n))


def _new_temporary(target: Path) -> tuple[int, Path]:
    """A new hidden file beside ``target``, created with mode 0o666 so that the kernel applies
    the user's umask (``mkstemp`` would make it 0o600)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    while True:
        tmp = _parent(target) / f".{target.name}.{secrets.token_hex(4)}.tmp"
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue


def _replace_all(temps: list[tuple[Path, Path]]) -> None:
    backups: dict[Path, Path] = {}
    existed = {target for _, target in temps if os.path.lexists(target)}
    done: list[Path] = []
    try:
        if len(temps) > 1:
            for target in filter(Path.is_file, existed):
                backup = _parent(target) / f".{target.name}.{secrets.token_hex(4)}.bak"
                with contextlib.suppress(OSError):  # no hard links here: no way back for it
                    os.link(target, backup)
                    backups[target] = backup
        for tmp, target in temps:
            os.replace(tmp, target)
            done.append(target)
    except BaseException:
        for target in reversed(done):
            with contextlib.suppress(OSError):
                if target in backups:
                    os.replace(backups.pop(target), target)
                elif target not in existed:
                    os.unlink(target)
        raise
    finally:
        for backup in backups.values():
            _unlink(backup)


def fsync_dir(directory: Path) -> None:
    """Make the renames in ``directory`` durable, where the platform can."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _parent(path: Path) -> Path:
    return path.parent if str(path.parent) else Path(".")


def check_writable_dir(directory: str | os.PathLike) -> None:
    """Raise ``ValueError`` naming ``directory`` unless a file can be created in it.

    Tested by creating (and removing) a file, which also catches read-only mounts, where
    ``os.access`` answers yes for root.
    """
    directory = Path(directory)
    if not directory.exists():
        raise ValueError(f"output directory {directory} does not exist: create it first")
    if not directory.is_dir():
        raise ValueError(f"output location {directory} is not a directory")
    try:
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as exc:
        raise ValueError(
            f"output directory {directory} is not writable ({exc.strerror}): choose another "
            "output path or fix its permissions"
        ) from None


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file (streamed)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether ``a`` and ``b`` are one existing file (through symlinks, hard links, and case on
    case-insensitive file systems)."""
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist
        return False


def check_output_paths(
    outputs: Iterable[str | os.PathLike],
    *,
    inputs: Mapping[str, str | os.PathLike | None] | None = None,
    overwrite: bool = False,
    overwrite_hint: str = "choose another name, or allow replacing it",
) -> None:
    """Raise ``ValueError`` (one line naming the file and the fix) unless every output can be
    written without destroying anything: its folder exists and is writable, it is not a
    directory, it is not one of ``inputs`` (a mapping role -> path, symlinks and hard links
    included; never allowed, whatever ``overwrite`` says), and it does not exist unless
    ``overwrite``.  Checks only: meant to run before any work."""
    inputs = {role: path for role, path in (inputs or {}).items() if path is not None}
    for out in map(Path, outputs):
        if out.is_dir():
            raise ValueError(f"output {out} is a directory: give a file name (e.g. {out}/out.csv)")
        check_writable_dir(_parent(out))
        for role, path in inputs.items():
            if same_file(out, path):
                raise ValueError(
                    f"output {out} is the input {role} {path}: writing it would destroy the "
                    "input; choose another output name"
                )
        if os.path.lexists(out) and not overwrite:
            raise ValueError(f"{out} exists: {overwrite_hint}")


def check_free_space(
    directory: str | os.PathLike, needed_bytes: int, *, what: str = "the output"
) -> None:
    """Raise ``OSError`` naming ``directory`` when it has less than ``needed_bytes`` free (when
    the platform can tell)."""
    try:
        free = shutil.disk_usage(directory).free
    except OSError:
        return
    if free < needed_bytes:
        mb = 1 << 20
        raise OSError(
            f"not enough free space in {directory} for {what}: {free / mb:.0f} MB free, about "
            f"{needed_bytes / mb:.0f} MB needed; free some space or choose another folder"
        )


RUN_LOCK_NAME = ".napari-segrep.lock"  #: in a run folder while a run writes ("PID HOSTNAME")


def run_dir_conflict(
    directory: str | os.PathLike,
    *,
    resume: str | os.PathLike | None = None,
    checkpoint_name: str = "last.pt",
    others: Iterable[str] = (),
) -> Path | None:
    """The file of another run in ``directory`` that a new run would replace, or None:
    ``directory/checkpoint_name`` unless ``resume`` is that very file (the same run continues,
    and may replace its other files too), else the first of the file names ``others``."""
    directory = Path(directory)
    checkpoint = directory / checkpoint_name
    if resume is not None and same_file(resume, checkpoint):
        return None
    for path in (checkpoint, *(directory / name for name in others)):
        if os.path.lexists(path):
            return path
    return None


@contextlib.contextmanager
def claim_run_dir(
    directory: str | os.PathLike,
    *,
    resume: str | os.PathLike | None = None,
    checkpoint_name: str = "last.pt",
    needed_bytes: int = 0,
    others: Iterable[str] = (),
) -> Iterator[Path]:
    """Hold ``directory`` for one training run: created if needed, writable, with room for a
    checkpoint of ``needed_bytes``, holding no other run's checkpoint (``resume`` of that very
    checkpoint continues the run) nor, for a new run, any of the entries ``others`` it would
    replace, and not in use by another training.  A lock file
    (:data:`RUN_LOCK_NAME`, created exclusively, holding the pid) marks it in use until the
    ``with`` block ends, by any exit; a lock left by a process that has ended is taken over.
    Raises ``ValueError`` naming the folder and the way out, ``OSError`` when space is short.
    """
    directory = Path(directory)
    with contextlib.suppress(OSError):  # if it fails, check_writable_dir says why
        directory.mkdir(parents=True, exist_ok=True)
    check_writable_dir(directory)
    lock = take_lock(directory)
    try:
        conflict = run_dir_conflict(
            directory, resume=resume, checkpoint_name=checkpoint_name, others=others
        )
        if conflict is not None and conflict.name != checkpoint_name:
            raise ValueError(
                f"{conflict} exists and belongs to another run: choose a new checkpoint folder"
            )
        if conflict is not None:
            raise ValueError(
                f"{directory} already holds a training run ({conflict}): continue it with "
                f"resume={str(conflict)!r} (--resume-checkpoint {conflict}), or choose a new "
                "checkpoint folder"
            )
        if needed_bytes:
            check_free_space(directory, needed_bytes, what="a checkpoint")
        yield directory
    finally:
        _unlink(lock)


def free_run_dir(directory: str | os.PathLike, *, resume: str | os.PathLike | None = None) -> Path:
    """``directory`` when a run may start there (see :func:`run_dir_conflict`; not in use),
    else the first of ``directory-2``, ``directory-3``... that does not exist."""
    directory = Path(directory)
    if not directory.exists():
        return directory
    if directory.is_dir() and not os.path.lexists(directory / RUN_LOCK_NAME):
        if run_dir_conflict(directory, resume=resume) is None:
            return directory
    n = next(n for n in range(2, 1 << 62) if not os.path.lexists(f"{directory}-{n}"))
    return directory.with_name(f"{directory.name}-{n}")


def take_lock(directory: Path, *, name: str = RUN_LOCK_NAME, user: str = "training") -> Path:
    """Create ``directory/name`` exclusively (pid, host); a stale one is taken over."""
    lock = directory / name
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            pid = lock_holder(lock)
            if pid is not None:
                raise ValueError(
                    f"{directory} is in use by another {user} (process {pid}): wait for it to "
                    f"end or choose another folder (if none runs, delete {lock})"
                ) from None
            _unlink(lock)  # left by a process that ended without removing it
            continue
        with os.fdopen(fd, "w") as fh:
            fh.write(f"{os.getpid()} {socket.gethostname()}\n")
        return lock
    raise ValueError(f"cannot take the lock {lock}: delete it if no {user} uses the folder")


def lock_holder(lock: Path) -> int | str | None:
    """The pid holding ``lock`` ("?" while it is being written or unreadable), or None when
    that process has ended (a stale lock).  A lock from another machine counts as held."""
    try:
        pid_text, _, host = lock.read_text().strip().partition(" ")
        pid = int(pid_text)
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return "?"
    if (host and host != socket.gethostname()) or os.name == "nt":
        return pid  # no way to ask (and on Windows os.kill would terminate it)
    with contextlib.suppress(PermissionError):  # another user's live process
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
    return pid
