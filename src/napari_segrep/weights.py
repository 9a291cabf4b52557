"""Pretrained weights: where torchvision's ImageNet weights lie, and their explicit download.

``SegmentEncoder(weights="imagenet")`` reads torchvision's ImageNet weights from the local
torch hub cache only: nothing is fetched behind the user's back.  This module fetches them when
the user asks (``napari-segrep weights download imagenet``, or the "Download ImageNet weights"
button of the widgets), into that same cache, so torchvision finds them too.

The rule, as everywhere: nothing the user owns is lost, and no file is left half-written.  The
download streams into ``<file>.part-<random>`` beside its destination, its SHA-256 is checked
(torchvision's file names carry the first hex digits of it, torch.hub's convention), the file
must load with ``torch.load(weights_only=True)`` as a dict of tensors, and only then is it moved
into place with ``os.replace``.  On any failure, cancel or Ctrl-C the temporary file is removed
and an existing file is left as it was.

Cheap to import (standard library only): :func:`weights_info` does not import torch either
(the cache folder follows ``torch.hub.get_dir()``'s rule; when torch is loaded, it is asked).

Examples
--------
>>> from napari_segrep.weights import weights_info
>>> info = weights_info("resnet18")
>>> info.path.name, info.size_text
('resnet18-f37072fd.pth', '45 MB')
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .io import fsync_dir

__all__ = [
    "IMAGENET_FILES",
    "MIRROR_ENV",
    "TORCHVISION_URL",
    "WeightsInfo",
    "download_command",
    "download_weights",
    "format_size",
    "imagenet_backbones",
    "weights_info",
]

#: Where torchvision publishes its weights.
TORCHVISION_URL = "https://download.pytorch.org/models/"

#: Backbone -> (file name, size in bytes) of torchvision's IMAGENET1K_V1 weights.  The same
#: names as the engine's registry (a test checks they agree with torchvision's own URLs);
#: kept here so that answering "are they there?" needs no torch.
IMAGENET_FILES: dict[str, tuple[str, int]] = {
    "resnet18": ("resnet18-f37072fd.pth", 46_830_571),
    "resnet34": ("resnet34-b627a593.pth", 87_319_819),
    "resnet50": ("resnet50-0676ba61.pth", 102_530_333),
}

#: Environment variable naming a mirror: a base URL (``https://``, ``http://`` or ``file://``)
#: under which the file name (e.g. ``resnet18-f37072fd.pth``) is found.
MIRROR_ENV = "SEGREP_WEIGHTS_URL"

# torch.hub's check_hash convention: "<name>-<first hex digits of the sha256>.<ext>"
_HASH_IN_NAME = re.compile(r"-([a-f0-9]*)\.")
_CHUNK = 1 << 16


@dataclass(frozen=True)
class WeightsInfo:
    """What is known about one backbone's ImageNet weights before downloading them.

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
        Whether a file lies at ``path`` now.
    size : int or None
        Approximate size in bytes (None: unknown).
    sha256_prefix : str or None
        The first hex digits of the file's SHA-256, from its name (None: the name has none).
    """

    backbone: str
    url: str
    path: Path
    present: bool
    size: int | None
    sha256_prefix: str | None

    @property
    def filename(self) -> str:
        return self.path.name

    @property
    def size_text(self) -> str:
        """The approximate size for people: ``"45 MB"`` (``"size unknown"`` when unknown)."""
        return format_size(self.size) if self.size else "size unknown"


def imagenet_backbones() -> list[str]:
    """The built-in backbones that have ImageNet weights."""
    return list(IMAGENET_FILES)


def download_command(backbone: str = "resnet18") -> str:
    """The command line that downloads ``backbone``'s ImageNet weights (for messages)."""
    extra = "" if backbone == "resnet18" else f" --backbone {backbone}"
    return f"napari-segrep weights download imagenet{extra}"


def format_size(n_bytes: float) -> str:
    """``46830571`` -> ``"45 MB"`` (binary megabytes, as download tools show them)."""
    return f"{n_bytes / 2**20:.0f} MB"


def weights_info(backbone: str = "resnet18", *, url: str | None = None) -> WeightsInfo:
    """Where ``backbone``'s ImageNet weights come from and go, and whether they are there.

    Parameters
    ----------
    backbone : str
        A backbone with ImageNet weights (``resnet18``, ``resnet34``, ``resnet50``, or one
        registered with an ``imagenet_url``).
    url : str, optional
        Download from here instead (a mirror; the full URL of the file).  Without it, the
        ``SEGREP_WEIGHTS_URL`` environment variable (a base URL) is used when set, otherwise
        torchvision's URL.

    Raises
    ------
    ValueError
        Unknown backbone, or one without ImageNet weights.
    """
    source, path, size = _source_and_path(backbone)
    filename = path.name
    if url is None:
        mirror = os.environ.get(MIRROR_ENV, "").strip()
        url = f"{mirror.rstrip('/')}/{filename}" if mirror else source
    match = _HASH_IN_NAME.search(filename)
    prefix = match.group(1) if match and match.group(1) else None
    return WeightsInfo(backbone, url, path, path.is_file(), size, prefix)


def _source_and_path(backbone: str) -> tuple[str, Path, int | None]:
    """(torchvision's URL, the cache path, the size or None) of ``backbone``'s weights.

    The built-in backbones come from :data:`IMAGENET_FILES`, never from the engine: a widget
    asks in napari's GUI thread, maybe while a background thread is importing the engine, and
    must not wait for that import.  Other names are looked up in the engine's registry."""
    if backbone not in IMAGENET_FILES:
        from .engine import backbones as registry  # a registered backbone (imports torch)

        spec = registry.get_backbone(backbone)  # ValueError naming the choices
        path = registry.imagenet_cache_path(backbone)  # ValueError when it has none
        return str(spec.imagenet_url), path, None
    filename, size = IMAGENET_FILES[backbone]
    return TORCHVISION_URL + filename, _hub_dir() / "checkpoints" / filename, size


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
    url: str | None = None,
    sha256: str | None = None,
    force: bool = False,
    progress: Callable[[int, int | None], object] | None = None,
    should_stop: Callable[[], bool] | None = None,
    timeout: float = 30.0,
) -> Path:
    """Download torchvision's ImageNet weights of ``backbone`` into the torch hub cache.

    The file streams into a temporary file beside its destination, is checked (SHA-256, and
    that it loads with ``torch.load(weights_only=True)`` as a dict of tensors), then moved into
    place atomically.  On any failure (network, checksum, cancel, Ctrl-C, full disk) the
    temporary file is removed and nothing at the destination changes.

    Parameters
    ----------
    backbone : str
        ``resnet18`` (default), ``resnet34``, ``resnet50`` (or a registered backbone with an
        ``imagenet_url``).
    url : str, optional
        The file's URL on a mirror (``https://``, ``http://`` or ``file://``).  Default: the
        ``SEGREP_WEIGHTS_URL`` environment variable (a base URL, the file name is appended)
        when set, else torchvision's URL.
    sha256 : str, optional
        Expected SHA-256 of the file, in full or its first hex digits (at least 8).  Default:
        the digits in torchvision's file name (e.g. ``f37072fd`` of ``resnet18-f37072fd.pth``).
    force : bool
        Download even when the file is already in the cache (it is replaced only once the new
        one is verified).  Otherwise an existing file is returned without downloading.
    progress : callable(done_bytes, total_bytes or None), optional
        Called when the download starts and after every chunk.
    should_stop : callable() -> bool, optional
        Polled between chunks; when true, the download stops and
        :class:`~napari_segrep.errors.Cancelled` is raised (nothing written).
    timeout : float
        Seconds to wait for the server (connecting, and each read).

    Returns
    -------
    Path
        The weights file in the torch hub cache (``weights_info(backbone).path``).

    Raises
    ------
    ConnectionError
        The server could not be reached, answered with an HTTP error, or the connection broke;
        the message names the host, the reason and the fixes (connection/proxy, a mirror, or
        copying the file from a machine with internet).
    ValueError
        Bad arguments, a checksum mismatch, or a file that is not torch weights (an error page,
        a truncated file); nothing was written.
    OSError
        The cache folder cannot be created or written (named, with the reason).
    napari_segrep.errors.Cancelled
        ``should_stop()`` became true.
    """
    info = weights_info(backbone, url=url)
    dest = info.path
    if dest.is_file() and not force:
        return dest
    expected = _expected_sha256(sha256, info)
    folder = dest.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OSError(
            f"cannot create the torch cache folder {folder}: {exc.strerror or exc}; make it "
            "writable, or set TORCH_HOME to a writable folder"
        ) from None
    tmp = _new_partial(dest)
    try:
        got = _stream_to(tmp, info, progress, should_stop, timeout)
        if expected is not None and not got.startswith(expected):
            raise ValueError(
                f"checksum mismatch for {info.url}: expected a SHA-256 starting with {expected}, "
                f"got {got}; nothing was written (a corrupted download, or the server sent "
                "another file: try again, or check the URL)"
            )
        _check_loads(tmp, info.url)
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(folder)
    return dest


def _expected_sha256(sha256: str | None, info: WeightsInfo) -> str | None:
    if sha256 is None:
        return info.sha256_prefix
    text = str(sha256).strip().lower()
    if not re.fullmatch(r"[0-9a-f]{8,64}", text):
        raise ValueError(
            f"sha256 {sha256!r} is not a SHA-256: give its 64 hex digits, or at least the first 8"
        )
    return text


def _new_partial(dest: Path) -> Path:
    """A new ``<dest>.part-<random>``, created with mode 0o666 so the user's umask applies."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    while True:
        tmp = dest.with_name(f"{dest.name}.part-{secrets.token_hex(4)}")
        try:
            os.close(os.open(tmp, flags, 0o666))
            return tmp
        except FileExistsError:
            continue
        except OSError as exc:
            raise OSError(
                f"cannot write into the torch cache folder {dest.parent}: "
                f"{exc.strerror or exc}; make it writable, or set TORCH_HOME to a writable folder"
            ) from None


def _stream_to(tmp: Path, info: WeightsInfo, progress, should_stop, timeout: float) -> str:
    """Stream ``info.url`` into ``tmp``; return the hex SHA-256 of what was received."""
    from http.client import HTTPException

    from .errors import Cancelled
    from .io import write_failure

    digest = hashlib.sha256()
    done = 0
    response = _open(info, timeout)
    with response:
        total = _content_length(response)
        if progress is not None:
            progress(0, total)
        with open(tmp, "wb") as fh:
            while True:
                if should_stop is not None and should_stop():
                    raise Cancelled(f"download of {info.filename} cancelled; nothing was written")
                try:
                    chunk = _read_chunk(response)
                except (OSError, HTTPException) as exc:  # a reset connection, a timeout
                    raise _connection_error(info, exc, during=True) from None
                if not chunk:
                    break
                try:
                    fh.write(chunk)
                except OSError as exc:
                    raise (write_failure(info.path, exc, what="weights") or exc) from None
                digest.update(chunk)
                done += len(chunk)
                if progress is not None:
                    progress(done, total)
            try:
                fh.flush()
                os.fsync(fh.fileno())
            except OSError as exc:
                raise (write_failure(info.path, exc, what="weights") or exc) from None
    if total is not None and done != total:
        raise _connection_error(
            info, f"the connection ended after {done} of {total} bytes", during=True
        )
    return digest.hexdigest()


def _open(info: WeightsInfo, timeout: float):
    """``urlopen(info.url)``; failures become one clear error."""
    from urllib.error import HTTPError, URLError
    from urllib.request import Request, urlopen

    from ._version import __version__

    scheme = info.url.partition("://")[0].lower() if "://" in info.url else ""
    if scheme not in ("http", "https", "file"):
        raise ValueError(
            f"cannot download from {info.url!r}: use an http://, https:// or file:// URL "
            f"(for {MIRROR_ENV}: the folder that holds {info.filename})"
        )
    request = Request(info.url, headers={"User-Agent": f"napari-segrep/{__version__}"})
    try:
        return urlopen(request, timeout=timeout)  # noqa: S310 - the schemes are checked above
    except HTTPError as exc:
        exc.close()
        raise _connection_error(info, f"HTTP {exc.code} {exc.reason}") from None
    except URLError as exc:
        raise _connection_error(info, exc.reason) from None
    except OSError as exc:  # a timeout while connecting, a file:// path that is missing
        raise _connection_error(info, exc) from None


def _read_chunk(response) -> bytes:
    read1 = getattr(response, "read1", None)  # what has arrived: a slow server stays cancellable
    return read1(_CHUNK) if read1 is not None else response.read(_CHUNK)


def _content_length(response) -> int | None:
    try:
        value = int(response.headers.get("Content-Length", ""))
    except (TypeError, ValueError, AttributeError):
        return None
    return value if value >= 0 else None


def _connection_error(info: WeightsInfo, reason, *, during: bool = False) -> ConnectionError:
    """One line: what failed (host, reason) and the fixes."""
    from urllib.parse import urlsplit

    parts = urlsplit(info.url)
    where = parts.netloc or parts.path or info.url
    if isinstance(reason, BaseException):
        reason = getattr(reason, "strerror", None) or str(reason) or type(reason).__name__
    head = (
        f"the download of {info.filename} from {where} failed: {reason}"
        if during
        else f"could not download {info.filename} from {where}: {reason}"
    )
    return ConnectionError(
        f"{head}; nothing was written. Check the internet connection and proxy settings "
        f"(HTTPS_PROXY) and try again, or use a mirror ({MIRROR_ENV} or --url), or copy "
        f"{info.filename} from a machine with internet to {info.path}"
    )


def _check_loads(path: Path, url: str) -> None:
    """``path`` must load with ``torch.load(weights_only=True)`` as a non-empty dict of
    tensors; otherwise a ``ValueError`` (an HTML error page, a truncated file...)."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any reason: it is not a weights file
        reason = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise ValueError(
            f"what {url} sent is not a torch weights file ({reason}); nothing was written"
        ) from None
    if (
        not isinstance(state, dict)
        or not state
        or not all(isinstance(v, torch.Tensor) for v in state.values())
    ):
        raise ValueError(
            f"what {url} sent is not a dict of tensors (a state dict); nothing was written"
        )
