"""The HTTP download machinery behind :func:`~napari_segrep.weights.download_weights`: a new
``<file>.part-<random>`` beside the destination, the file streamed into it (its SHA-256 computed
on the way, more bytes than the file has refused, a stall given up on), and the check that what
arrived loads with ``torch.load(weights_only=True)`` as a dict of tensors.  Every failure becomes
one error that says what failed and the fixes.

What it knows of the file it fetches is passed in (a :class:`FileToFetch`: a
:class:`~napari_segrep.weights.WeightsInfo` is one); it never imports ``weights``.  Standard
library only at import (``torch`` is imported by :func:`check_loads` only).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import threading
import time
from pathlib import Path
from typing import Protocol

__all__ = ["MIRROR_ENV", "FileToFetch", "check_loads", "new_partial", "stream_to"]

#: Environment variable naming a mirror: a base URL (``https://``, ``http://`` or ``file://``)
#: under which the file name (e.g. ``resnet18-f37072fd.pth``) is found.
MIRROR_ENV = "SEGREP_WEIGHTS_URL"

_CHUNK = 1 << 16
#: A download that brings less than this in ``timeout`` seconds has stalled.
_STALL_BYTES = 1 << 16


class FileToFetch(Protocol):
    """What the machinery needs to know of the file it fetches (a
    :class:`~napari_segrep.weights.WeightsInfo` has it)."""

    @property
    def url(self) -> str: ...

    @property
    def filename(self) -> str: ...

    @property
    def path(self) -> Path: ...

    @property
    def size(self) -> int | None: ...


def new_partial(dest: Path) -> Path:
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


class _StallWatch:
    """Gives up on a download that makes no progress: when less than ``_STALL_BYTES`` arrive in
    ``timeout`` seconds (counted from the request on), it shuts the connection's sockets down,
    which wakes a read blocked in another thread, and says so in :attr:`stalled`.

    Per-read socket timeouts alone never trip on a server that sends a byte every few seconds,
    in its headers or its body."""

    def __init__(self, timeout: float) -> None:
        self.timeout = float(timeout)
        self.stalled = False
        self._sockets: list = []
        self._lock = threading.Lock()
        self._mark = time.monotonic()
        self._since_mark = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="weights-stall", daemon=True)

    def __enter__(self) -> _StallWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join()

    def connected(self, sock) -> None:
        """A socket of this download (one per connection: redirects open more)."""
        with self._lock:
            self._sockets.append(sock)
            if self.stalled:
                _shut_down(sock)

    def received(self, n_bytes: int) -> None:
        with self._lock:
            self._since_mark += n_bytes
            if self._since_mark >= _STALL_BYTES:
                self._mark, self._since_mark = time.monotonic(), 0

    def _watch(self) -> None:
        while True:
            with self._lock:
                left = self._mark + self.timeout - time.monotonic()
                if left <= 0:
                    self.stalled = True
                    for sock in self._sockets:
                        _shut_down(sock)
                    return
            if self._done.wait(left):
                return


def _shut_down(sock) -> None:
    import socket

    with contextlib.suppress(OSError):
        # the plain socket's shutdown, also under TLS: it wakes a blocked read at once
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


def stream_to(
    tmp: Path, info: FileToFetch, progress, should_stop, timeout: float, *, limit: int
) -> str:
    """Stream ``info.url`` into ``tmp``, at most ``limit`` bytes; return the hex SHA-256 of
    what was received."""
    from http.client import HTTPException

    from .errors import Cancelled
    from .io import write_failure

    digest = hashlib.sha256()
    done = 0
    with _StallWatch(timeout) as watch:
        response = _open(info, timeout, watch)
        with response:
            total = _content_length(response)
            if total is not None and total > limit:
                raise _too_large(info, f"announces {total:,} bytes", limit)
            if progress is not None:
                progress(0, total)
            with open(tmp, "wb") as fh:
                while True:
                    if should_stop is not None and should_stop():
                        raise Cancelled(
                            f"download of {info.filename} cancelled; nothing was written"
                        )
                    try:
                        chunk = _read_chunk(response)
                    except (OSError, HTTPException) as exc:  # a reset connection, a timeout
                        if watch.stalled or isinstance(exc, TimeoutError):
                            raise _stalled(info, watch) from None
                        raise _connection_error(info, exc, during=True) from None
                    if watch.stalled:
                        raise _stalled(info, watch)
                    if not chunk:
                        break
                    if done + len(chunk) > limit:
                        raise _too_large(info, f"sent more than {limit:,} bytes", limit)
                    watch.received(len(chunk))
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


def _too_large(info: FileToFetch, what: str, limit: int) -> ValueError:
    expected = (
        f"torchvision's {info.filename} has {info.size:,}"
        if info.size
        else f"at most {limit:,} are accepted for {info.filename}"
    )
    return ValueError(
        f"{info.url} {what}, {expected}: refused, nothing was written (the server sends "
        "another file: check the URL or the mirror)"
    )


def _stalled(info: FileToFetch, watch: _StallWatch, *, during: bool = True) -> ConnectionError:
    return _connection_error(
        info,
        f"it stalled (less than {_STALL_BYTES // 1024} KiB in {watch.timeout:g} s; --timeout "
        "sets the limit)",
        during=during,
    )


def _open(info: FileToFetch, timeout: float, watch: _StallWatch):
    """Open ``info.url`` (its connections reported to ``watch``); failures become one clear
    error."""
    from http.client import HTTPException
    from urllib.error import HTTPError, URLError
    from urllib.request import Request

    from ._version import __version__

    scheme = info.url.partition("://")[0].lower() if "://" in info.url else ""
    if scheme not in ("http", "https", "file"):
        raise ValueError(
            f"cannot download from {info.url!r}: use an http://, https:// or file:// URL "
            f"(for {MIRROR_ENV}: the folder that holds {info.filename})"
        )
    request = Request(info.url, headers={"User-Agent": f"napari-segrep/{__version__}"})
    try:
        return _opener(watch).open(request, timeout=timeout)
    except HTTPError as exc:
        exc.close()
        if 300 <= exc.code < 400:  # urllib's redirect loop (or too many redirects)
            reason = f"HTTP {exc.code}: the server redirects in a loop (or too many times)"
        else:
            reason = f"HTTP {exc.code} {exc.reason}"
        raise _connection_error(info, reason) from None
    except (URLError, OSError, HTTPException) as exc:  # a timeout, a missing file:// path...
        if watch.stalled:
            raise _stalled(info, watch, during=False) from None
        raise _connection_error(info, getattr(exc, "reason", exc)) from None


def _opener(watch: _StallWatch):
    """urllib's opener (proxies, redirects, TLS as ``urlopen``), whose HTTP(S) connections
    report their sockets to ``watch``."""
    import http.client
    import urllib.request

    def watched(base):
        class Connection(base):
            def connect(self) -> None:
                super().connect()
                watch.connected(self.sock)

        return Connection

    class HTTPHandler(urllib.request.HTTPHandler):
        def http_open(self, req):
            return self.do_open(watched(http.client.HTTPConnection), req)

    handlers: list = [HTTPHandler()]
    if hasattr(http.client, "HTTPSConnection"):

        class HTTPSHandler(urllib.request.HTTPSHandler):
            def https_open(self, req):
                return self.do_open(
                    watched(http.client.HTTPSConnection),
                    req,
                    context=self._context,
                )

        handlers.append(HTTPSHandler())
    return urllib.request.build_opener(*handlers)


def _read_chunk(response) -> bytes:
    read1 = getattr(response, "read1", None)  # what has arrived: a slow server stays cancellable
    return read1(_CHUNK) if read1 is not None else response.read(_CHUNK)


def _content_length(response) -> int | None:
    try:
        value = int(response.headers.get("Content-Length", ""))
    except (TypeError, ValueError, AttributeError):
        return None
    return value if value >= 0 else None


def _connection_error(info: FileToFetch, reason, *, during: bool = False) -> ConnectionError:
    """One line: what failed (host, reason) and the fixes."""
    from urllib.parse import urlsplit

    parts = urlsplit(info.url)
    where = parts.netloc or parts.path or info.url
    if isinstance(reason, BaseException):
        reason = getattr(reason, "strerror", None) or str(reason) or type(reason).__name__
    reason = " ".join(str(reason).split())  # one line, whatever the library said
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


def check_loads(path: Path, url: str) -> dict:
    """``path`` must load with ``torch.load(weights_only=True)`` as a non-empty dict of
    tensors, returned; otherwise a ``ValueError`` (an HTML error page, a truncated file...)."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any reason: it is not a weights file
        # (torch's own message advises weights_only=False, which could run code: never shown)
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        reason = (
            f"it holds pickled Python objects ({found.group(1)}), never loaded: they could run code"
            if found
            else "cut short, empty, or another file"
        )
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
    return state
