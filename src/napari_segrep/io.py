"""Files: reading images, pairing image and label files, atomic writes, hashes, output checks.

Headless and torch-free (numpy, tifffile and imageio, imported when needed).  Errors are
``ValueError``/``OSError`` with a message that names the file and the fix; the CLI and the
widgets decide how to show them.
"""

from __future__ import annotations

import glob
import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

__all__ = [
    "IMAGE_SUFFIXES",
    "atomic_write",
    "check_writable_dir",
    "file_sha256",
    "pair_files",
    "read_image",
]

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")


def read_image(path: str | os.PathLike):
    """Read TIFF with tifffile, PNG/JPEG (and anything else imageio knows) with imageio.

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    ValueError
        The file cannot be read as an image.
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


def pair_files(
    images: str | None = None,
    labels: str | None = None,
    *,
    data_dir: str | os.PathLike | None = None,
) -> list[tuple[Path, Path]]:
    """Match image and label files by file stem.

    Either two glob patterns, or ``data_dir`` holding ``images/`` and ``labels/``.  A label file
    may carry a ``_labels``/``_label``/``_mask``/``_masks`` suffix on the stem.  Raises
    ``ValueError`` listing unmatched files, or when nothing matched.
    """
    if data_dir is not None:
        root = Path(data_dir)
        if not (root / "images").is_dir() or not (root / "labels").is_dir():
            raise ValueError(f"--data {root} must contain the folders images/ and labels/")
        images, labels = str(root / "images" / "*"), str(root / "labels" / "*")
    if not images or not labels:
        raise ValueError("give both --images and --labels patterns, or --data DIR")

    def files(pattern: str) -> list[Path]:
        return sorted(
            Path(f)
            for f in glob.glob(pattern, recursive=True)
            if Path(f).suffix.lower() in IMAGE_SUFFIXES and Path(f).is_file()
        )

    image_files, label_files = files(images), files(labels)
    if not image_files:
        raise ValueError(
            f"no image file matched {images!r} (looked for {', '.join(IMAGE_SUFFIXES)})"
        )
    if not label_files:
        raise ValueError(f"no label file matched {labels!r}")

    def key(path: Path) -> str:
        stem = path.stem
        for suffix in ("_labels", "_label", "_masks", "_mask"):
            if stem.endswith(suffix):
                return stem[: -len(suffix)]
        return stem

    by_key = {key(p): p for p in label_files}
    pairs = [(p, by_key[key(p)]) for p in image_files if key(p) in by_key]
    unmatched_images = [p.name for p in image_files if key(p) not in by_key]
    matched_keys = {key(p) for p in image_files}
    unmatched_labels = [p.name for p in label_files if key(p) not in matched_keys]
    if unmatched_images or unmatched_labels:
        raise ValueError(
            "image and label files must pair up by name; unmatched images: "
            f"{unmatched_images or 'none'}; unmatched labels: {unmatched_labels or 'none'}"
        )
    return pairs


def atomic_write(
    path: str | os.PathLike, write: Callable[[IO[Any]], object], *, mode: str = "wb"
) -> Path:
    """Call ``write(file_object)`` on a temporary file beside ``path``, then ``os.replace`` it.

    Either the complete new file is at ``path`` afterwards, or (on any error) the previous file is
    untouched and no temporary file is left behind.
    """
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    check_writable_dir(directory)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, mode) as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


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
