"""Pretrained weights: where each weight set's file lies, and its explicit download.

``SegmentEncoder(weights="imagenet")`` (torchvision's ImageNet weights of a ResNet) and
``SegmentEncoder("vit_small_patch14_reg4_dinov2", weights="dinov2")`` (Meta's DINOv2 weights)
read their file from the local torch hub cache only: nothing is fetched behind the user's back.
This module fetches them when the user asks (``napari-segrep weights download imagenet`` or
``... dinov2``, or the widgets' "Download ... weights" button), into that same cache, where
torch.hub would put them too.  What each file is (name, URL, size, SHA-256, licence) is written
once, in :mod:`napari_segrep.catalogue`.

The rule, as everywhere: nothing the user owns is lost, and no file is left half-written.  The
download streams into ``<file>.part-<random>`` beside its destination, its SHA-256 is checked
(torchvision's file names carry the first hex digits of it, torch.hub's convention), the file
must load with ``torch.load(weights_only=True)`` as a dict of tensors, and only then is it moved
into place with ``os.replace``.  A file whose publisher gives no SHA-256 (DINOv2's) must also
load into its backbone (every tensor and shape, on torch's meta device: no memory), and its
SHA-256 is reported.  On any failure, cancel or Ctrl-C the temporary file is removed
and an existing file is left as it was.  The download refuses more bytes than the file has
(declared or received, with a small margin), and gives up when it stalls (less than 64 KiB in
``timeout`` seconds, from the request on: an answer that never comes, headers or a body that
drip).  The machinery (streaming, limits, stalls, errors) is in ``_download``.

A file found in the cache is checked too (:attr:`WeightsInfo.damaged`): its size, then its SHA-256
against the digits in its name, once per version of the file (the verdict is remembered by
path, size and times).  A damaged file (truncated, empty, an error page saved by hand, another
file under torchvision's name) is named with the fix, and :func:`download_weights` replaces it.

Cheap to import (standard library only): :func:`weights_info` does not import torch either
(the cache folder follows ``torch.hub.get_dir()``'s rule; when torch is loaded, it is asked).

Examples
--------
>>> from napari_segrep.weights import weights_info
>>> info = weights_info("resnet18")
>>> info.path.name, info.size_text
('resnet18-f37072fd.pth', '45 MB')
>>> info.damaged is None  # missing (None), or there and torchvision's own file (None)
True
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from . import catalogue as _catalogue
from ._download import MIRROR_ENV, check_loads, new_partial, stream_to
from .catalogue import TORCHVISION_URL, download_command
from .io import file_sha256, fsync_dir

__all__ = [
    "IMAGENET_FILES",
    "MIRROR_ENV",
    "PUBLISHED",
    "TORCHVISION_URL",
    "UNKNOWN_SIZE_LIMIT",
    "PublishedFile",
    "WeightsInfo",
    "damaged_message",
    "download_command",
    "download_weights",
    "file_problem",
    "format_size",
    "size_limit",
    "weights_info",
]


class PublishedFile(NamedTuple):
    """A weights file as its publisher serves it.

    Attributes
    ----------
    filename : str
        Its name (torchvision's: ``<model>-<first 8 hex digits of its SHA-256>.pth``).
    size : int
        Its size in bytes.
    sha256 : str or None
        Its SHA-256, in full or its first hex digits; None: not published.
    """

    filename: str
    size: int
    sha256: str | None = None


#: File name -> the published file, from :mod:`napari_segrep.catalogue` (what the checks of a
#: file in the cache and of a download expect; tests publish their stand-in files here).
PUBLISHED: dict[str, PublishedFile] = {
    name: PublishedFile(name, ws.size or 0, ws.sha256)
    for name, (ws, _) in _catalogue.published_files().items()
}

#: 2D backbone -> its torchvision IMAGENET1K_V1 file (derived from the catalogue; a test checks
#: them against torchvision's own URLs).
IMAGENET_FILES: dict[str, PublishedFile] = {
    name: PUBLISHED[_catalogue.weight_set(name, "imagenet").filename]
    for name in _catalogue.weights_backbones("imagenet")
    if _catalogue.get_entry(name).spatial_dims == 2
}

#: Built-in backbones that read another one's file: the 3D ResNets inflate their 2D ResNet's
#: ImageNet weights, the fast volume modes use them as they are (derived from the catalogue).
BUILT_FROM: dict[str, str] = {
    name: source
    for source in IMAGENET_FILES
    for name in _catalogue.weights_backbones("imagenet")
    if name not in IMAGENET_FILES
    and _catalogue.weight_set(name, "imagenet").filename == IMAGENET_FILES[source].filename
}

#: The most a download of a file of unknown size may bring (a registered backbone's weights).
UNKNOWN_SIZE_LIMIT = 2**31


@dataclass(frozen=True)
class WeightsInfo:
    """What is known about one backbone's weight set, and the file in the cache.

    Attributes
    ----------
    backbone : str
    url : str
        Where :func:`download_weights` fetches them: torchvision's URL, or a mirror's when
        ``SEGREP_WEIGHTS_URL`` is set (or a ``url`` was given).
    path : Path
        Where they must lie: the torch hub cache (``$TORCH_HOME/hub/checkpoints``, by default
        ``~/.cache/torch/hub/checkpoints``), where ``SegmentEncoder(weights="imagenet")`` and
        torchvision look for them.
    present : bool
        Whether a file lies at ``path`` now (whole or damaged: see ``damaged``).
    size : int or None
        The published file's size in bytes (None: unknown).
    sha256_prefix : str or None
        The published file's SHA-256, its first hex digits (those in its name) or all of them
        (None: unknown).
    damaged : str or None
        Why the file at ``path`` is not the published one (``"it is empty"``, ``"it has 1,234
        bytes, torchvision's file has 46,830,571"``, ``"its SHA-256 starts with ..."``); None
        when there is no file, or it is the published one (see :func:`file_problem`).
    weights : str
        The weight set: ``"imagenet"``, ``"dinov2"``.
    licence, publisher : str
        The file's licence (``"BSD-3-Clause"``, ``"Apache-2.0"``) and who publishes it.
    """

    backbone: str
    url: str
    path: Path
    present: bool
    size: int | None
    sha256_prefix: str | None
    damaged: str | None = None
    weights: str = "imagenet"
    licence: str = ""
    publisher: str = "torchvision"
    approx_size: int | None = None

    @property
    def label(self) -> str:
        """``"ImageNet"``, ``"DINOv2"``: the weight set's name in messages."""
        return _catalogue.label_of(self.weights)

    @property
    def filename(self) -> str:
        return self.path.name

    @property
    def usable(self) -> bool:
        """Whether the weights are in the cache and whole (present and not damaged)."""
        return self.present and self.damaged is None

    @property
    def size_text(self) -> str:
        """The approximate size for people: ``"45 MB"`` (``"size unknown"`` when unknown)."""
        if self.size:
            return format_size(self.size)
        return f"about {format_size(self.approx_size)}" if self.approx_size else "size unknown"


def damaged_message(info: WeightsInfo) -> str:
    """One line for a damaged file in the cache: which file, why, and the fix."""
    return (
        f"the {info.label} weights file {info.path} is damaged ({info.damaged}): download it "
        f"again with `{download_command(info.backbone, info.weights)} --force`, or copy "
        f"{info.publisher}'s {info.filename} there again from a machine with internet"
    )


def format_size(n_bytes: float) -> str:
    """``46830571`` -> ``"45 MB"`` (binary megabytes, as download tools show them); under a
    megabyte in KB or bytes (``"12 KB"``, ``"19 B"``): a damaged file is often tiny."""
    if n_bytes < 2**10:
        return f"{n_bytes:.0f} B"
    if n_bytes < 2**20:
        return f"{n_bytes / 2**10:.0f} KB"
    return f"{n_bytes / 2**20:.0f} MB"


def size_limit(size: int | None) -> int:
    """The most bytes a download of a file of ``size`` bytes may bring: the size and a margin
    (2% and 1 MiB), or :data:`UNKNOWN_SIZE_LIMIT` when the size is unknown.  A file in the
    cache whose size is off by more than the margin is damaged without being hashed."""
    if size is None:
        return UNKNOWN_SIZE_LIMIT
    return size + size // 50 + 2**20


def weights_info(
    backbone: str = "resnet18", *, weights: str = "imagenet", url: str | None = None
) -> WeightsInfo:
    """Where ``backbone``'s weight set ``weights`` comes from and goes, whether it is there,
    and whether the file there is whole.

    The file is checked with :func:`file_problem` (its size, then its SHA-256: about 0.1 s for
    45 MB, once per version of the file).

    Parameters
    ----------
    backbone : str
        A backbone of :mod:`napari_segrep.catalogue` (or one registered with an
        ``imagenet_url``).
    weights : str
        Its weight set: ``"imagenet"`` (the ResNets), ``"dinov2"``
        (``vit_small_patch14_reg4_dinov2``).
    url : str, optional
        Download from here instead (a mirror; the full URL of the file).  Without it, the
        ``SEGREP_WEIGHTS_URL`` environment variable (a base URL) is used when set, otherwise
        the publisher's URL.

    Raises
    ------
    ValueError
        Unknown backbone, or one without that weight set.
    """
    source, path, published, ws = _source_and_path(backbone, weights)
    filename = path.name
    if url is None:
        mirror = os.environ.get(MIRROR_ENV, "").strip()
        url = f"{mirror.rstrip('/')}/{filename}" if mirror else source
    prefix = published.sha256
    size = published.size if published.size > 0 else None
    present, damaged = path.is_file(), None
    if present:
        try:
            damaged = file_problem(path, size=size, sha256=prefix, publisher=ws.publisher)
        except FileNotFoundError:  # removed meanwhile
            present = False
    return WeightsInfo(
        backbone,
        url,
        path,
        present,
        size,
        prefix,
        damaged,
        ws.name,
        ws.licence,
        ws.publisher,
        ws.approx_size or None,
    )


def _source_and_path(
    backbone: str, weights: str = "imagenet"
) -> tuple[str, Path, PublishedFile, _catalogue.WeightSet]:
    """(the publisher's URL, the cache path, the published file, the weight set) of
    ``backbone``'s weight set ``weights`` (a size of 0 and a sha256 of None where unknown).

    The catalogue's backbones are answered from :mod:`napari_segrep.catalogue` and
    :data:`PUBLISHED`, never from the engine: a widget asks in napari's GUI thread, maybe while
    a background thread is importing the engine, and must not wait for that import.  Other
    names are looked up in the engine's registry (a plugin's backbone)."""
    try:
        entry = _catalogue.get_entry(backbone)
    except ValueError:
        from .engine import backbones as registry  # a registered backbone (imports torch)

        ws = registry.get_backbone(backbone).weight_set(weights)  # ValueError naming the choices
    else:
        ws = _catalogue.weight_set(entry.name, weights)  # ValueError naming the sets it has
    published = PUBLISHED.get(ws.filename, PublishedFile(ws.filename, ws.size or 0, ws.sha256))
    return ws.url, _hub_dir() / "checkpoints" / ws.filename, published, ws


# (path, size, mtime, ctime, inode, device, expected size, expected sha256) -> the verdict
_verdicts: dict[tuple, str | None] = {}
_verdicts_lock = threading.Lock()
_RACY_NS = 2 * 10**9


def file_problem(
    path: str | os.PathLike,
    *,
    size: int | None = None,
    sha256: str | None = None,
    publisher: str = "torchvision",
) -> str | None:
    """Why the file at ``path`` is not the published one of ``size`` bytes whose SHA-256
    starts with ``sha256``; None when it is (or nothing is known to check it against).

    The size is checked first (a file off by more than :func:`size_limit`'s margin is damaged
    without reading it), then the SHA-256.  The verdict is remembered for this version of the
    file (path, size, modification and change times, inode; not for a file changed in the
    last 2 s), so asking again costs a ``stat``.

    Parameters
    ----------
    path : path-like
        An existing file.
    size : int, optional
        The published file's size in bytes.
    sha256 : str, optional
        The published file's SHA-256, in full or its first hex digits.
    publisher : str
        Who publishes it (named in the verdict: ``"torchvision's file has ..."``).

    Returns
    -------
    str or None
        A phrase for messages (``"it is empty"``, ``"it has 1,234 bytes, torchvision's file has
        46,830,571"``, ``"its SHA-256 starts with 0c1d2e3f, torchvision's with f37072fd"``,
        ``"it cannot be read: Permission denied"``), or None.

    Raises
    ------
    FileNotFoundError
        There is no file at ``path``.
    """
    path = Path(path)
    st = path.stat()
    key = (
        str(path.absolute()),
        st.st_size,
        st.st_mtime_ns,
        st.st_ctime_ns,
        st.st_ino,
        st.st_dev,
        size,
        sha256,
        publisher,
    )
    with _verdicts_lock:
        if key in _verdicts:
            return _verdicts[key]
    verdict = _file_problem(path, st.st_size, size, sha256, publisher)
    # A file changed in the last seconds may change again within the same tick of the file
    # system's clock, unseen by stat: its verdict is not remembered (git's "racy" rule).
    if time.time_ns() - max(st.st_mtime_ns, st.st_ctime_ns) > _RACY_NS:
        with _verdicts_lock:
            _verdicts[key] = verdict
    return verdict


def _file_problem(
    path: Path, actual: int, size: int | None, sha256: str | None, publisher: str
) -> str | None:
    if actual == 0:
        return "it is empty"
    if size is not None and abs(actual - size) > size_limit(size) - size:
        return f"it has {actual:,} bytes, {publisher}'s file has {size:,}{_looks_like(path)}"
    if not sha256:
        return None
    try:
        digest = file_sha256(path)
    except OSError as exc:
        return f"it cannot be read: {exc.strerror or exc}"
    expected = sha256.lower()
    if digest.startswith(expected):
        return None
    return (
        f"its SHA-256 starts with {digest[: len(expected)]}, {publisher}'s with "
        f"{expected}{_looks_like(path)}"
    )


def _looks_like(path: Path) -> str:
    """``"; it looks like a web page"`` when the file starts like one (a proxy's login page
    saved as weights), else ``""``."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(512).lstrip().lower()
    except OSError:
        return ""
    return "; it looks like a web page" if head.startswith(b"<") else ""


def _hub_dir() -> Path:
    """``torch.hub.get_dir()`` without importing torch: asked when torch is loaded (it honours
    ``torch.hub.set_dir``), otherwise its rule: ``$TORCH_HOME/hub``, ``$TORCH_HOME`` defaulting
    to ``$XDG_CACHE_HOME/torch``, ``$XDG_CACHE_HOME`` to ``~/.cache``."""
    hub = sys.modules.get("torch.hub")  # (possibly still importing: then it has no get_dir)
    if hub is not None and callable(getattr(hub, "get_dir", None)):
        return Path(hub.get_dir())
    cache = os.getenv("XDG_CACHE_HOME", "~/.cache")
    home = os.path.expanduser(os.getenv("TORCH_HOME", os.path.join(cache, "torch")))
    return Path(home) / "hub"


def download_weights(
    backbone: str = "resnet18",
    *,
    weights: str = "imagenet",
    url: str | None = None,
    sha256: str | None = None,
    force: bool = False,
    progress: Callable[[int, int | None], object] | None = None,
    should_stop: Callable[[], bool] | None = None,
    timeout: float = 30.0,
) -> Path:
    """Download ``backbone``'s weight set ``weights`` (torchvision's ImageNet weights by
    default) into the torch hub cache.

    The file streams into a temporary file beside its destination, is checked (SHA-256, and
    that it loads with ``torch.load(weights_only=True)`` as a dict of tensors; a file whose
    publisher gives no SHA-256 must also load into the backbone), then moved into place
    atomically.  On any failure (network, checksum, cancel, Ctrl-C, full disk, too many
    bytes, a stall) the temporary file is removed and nothing at the destination changes.

    Parameters
    ----------
    backbone : str
        ``resnet18`` (default), ``resnet34``, ``resnet50``, ``vit_small_patch14_reg4_dinov2``
        (or a registered backbone with an ``imagenet_url``).
    weights : str
        The weight set: ``"imagenet"`` (default), ``"dinov2"``.
    url : str, optional
        The file's URL on a mirror (``https://``, ``http://`` or ``file://``).  Default: the
        ``SEGREP_WEIGHTS_URL`` environment variable (a base URL, the file name is appended)
        when set, else the publisher's URL.
    sha256 : str, optional
        Expected SHA-256 of the file, in full or its first hex digits (at least 8); it must
        agree with the catalogue's (for torchvision's files, the digits in the file name: the
        file is saved under that name).  Default: the catalogue's (e.g. ``f37072fd`` of
        ``resnet18-f37072fd.pth``; none for DINOv2's, whose publisher gives none).
    force : bool
        Download even when whole weights are already in the cache (they are replaced only once
        the new file is verified).  Otherwise a whole file is returned without downloading; a
        damaged one (:attr:`WeightsInfo.damaged`) is downloaded again and replaced.
    progress : callable(done_bytes, total_bytes or None), optional
        Called when the download starts and after every chunk.
    should_stop : callable() -> bool, optional
        Polled between chunks; when true, the download stops and
        :class:`~napari_segrep.errors.Cancelled` is raised (nothing written).
    timeout : float
        Seconds without progress before the download gives up: from the request on, less than
        64 KiB arriving in ``timeout`` seconds (no answer, or headers or a body that drip) is a
        stall.

    Returns
    -------
    Path
        The weights file in the torch hub cache (``weights_info(backbone).path``).

    Raises
    ------
    ConnectionError
        The server could not be reached, answered with an HTTP error or a redirect loop, the
        connection broke, or the download stalled; the message names the host, the reason and
        the fixes (connection/proxy, a mirror, or copying the file from a machine with
        internet).
    ValueError
        Bad arguments, a checksum mismatch, more bytes than the file has (announced or sent:
        refused before reading, or stopped at :func:`size_limit`), or a file that is not torch
        weights (an error page, a truncated file); nothing was written.
    OSError
        The cache folder cannot be created or written (named, with the reason).
    napari_segrep.errors.Cancelled
        ``should_stop()`` became true.
    """
    if not timeout > 0:
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
    info = weights_info(backbone, weights=weights, url=url)
    dest = info.path
    expected = _expected_sha256(sha256, info)
    if info.size:
        limit = size_limit(info.size)
    else:  # the publisher does not say: half as much again as the file is about
        limit = info.approx_size * 3 // 2 if info.approx_size else UNKNOWN_SIZE_LIMIT
    if info.usable and not force:
        return dest
    folder = dest.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OSError(
            f"cannot create the torch cache folder {folder}: {exc.strerror or exc}; make it "
            "writable, or set TORCH_HOME to a writable folder"
        ) from None
    tmp = new_partial(dest)
    try:
        got = stream_to(tmp, info, progress, should_stop, timeout, limit=limit)
        if expected is not None and not got.startswith(expected):
            raise ValueError(
                f"checksum mismatch for {info.url}: expected a SHA-256 starting with {expected}, "
                f"got {got}; nothing was written (a corrupted download, or the server sent "
                "another file: try again, or check the URL)"
            )
        state = check_loads(tmp, info.url)
        if expected is None:  # nothing to compare its bytes with: it must fit its backbone
            from .engine.backbones import check_weights_fit

            check_weights_fit(state, backbone, weights, source=info.url)
        del state
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(folder)
    return dest


def _expected_sha256(sha256: str | None, info: WeightsInfo) -> str | None:
    """The digits the download must start with: ``sha256`` (checked: hex, 8 digits or more,
    agreeing with the published digits) or the published ones."""
    published = info.sha256_prefix
    if sha256 is None:
        return published
    text = str(sha256).strip().lower()
    if not re.fullmatch(r"[0-9a-f]{8,64}", text):
        raise ValueError(
            f"sha256 {sha256!r} is not a SHA-256: give its 64 hex digits, or at least the first 8"
        )
    if published and not (text.startswith(published) or published.startswith(text)):
        raise ValueError(
            f"sha256 {sha256!r} disagrees with {info.publisher}'s {info.filename}, whose SHA-256 "
            f"starts with {published[:8]}: the cache keeps that file under that name only; "
            "check the digits (or leave the option out)"
        )
    return text if published is None or len(text) > len(published) else published
