"""A real HTTP server on 127.0.0.1 standing in for download.pytorch.org in the weights tests
(tests/test_weights.py, tests/cli/test_weights.py, tests/widgets/test_weights_widget.py).

It serves bytes per path: whole, slowly in chunks (down to a drip of one byte at a time), cut
short (with or without a Content-Length), endlessly, with a false Content-Length, with headers
that drip, with an HTTP error or a redirect; and it records the requests.  Stand-in weights are
real ``torch.save`` files of small state dicts, named like torchvision's; :func:`publish` makes
one "torchvision's file" for a test (its size and SHA-256 are what the checks expect).
"""

from __future__ import annotations

import hashlib
import io
import socket
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

#: torchvision's file name of resnet18's ImageNet weights (what the cache path ends with).
RESNET18_FILE = "resnet18-f37072fd.pth"


@dataclass
class Route:
    """What the server answers for one path."""

    body: bytes
    status: int = 200
    chunk: int = 1 << 16  # bytes per write
    delay_s: float = 0.0  # pause after each chunk (a slow server)
    send: int | None = None  # send only this many bytes, then close (None: all)
    content_length: bool | int = True  # a Content-Length header: of the body, this one, none
    endless: bool = False  # send the body again and again until the client goes
    headers: dict[str, str] | None = None  # more headers (Location: ...)
    drip_headers_s: float = 0.0  # send the status line and headers a byte at a time, so slowly


class WeightsServer:
    """``routes[path] = Route(...)``; ``url(path)``; ``requests`` (paths asked for)."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.requests: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                server.requests.append(self.path)
                route = server.routes.get(self.path)
                if route is None:
                    self.send_error(404, "Not Found")
                    return
                try:
                    self._answer(route)
                except (BrokenPipeError, ConnectionResetError):  # the client stopped reading
                    pass

            def _answer(self, route: Route) -> None:
                if route.drip_headers_s:
                    head = f"HTTP/1.0 {route.status} OK\r\n\r\n".encode()
                    for i in range(len(head)):
                        self.wfile.write(head[i : i + 1])
                        self.wfile.flush()
                        time.sleep(route.drip_headers_s)
                else:
                    self.send_response(route.status)
                    self.send_header("Content-Type", "application/octet-stream")
                    if route.content_length is True:
                        self.send_header("Content-Length", str(len(route.body)))
                    elif route.content_length is not False:
                        self.send_header("Content-Length", str(route.content_length))
                    for name, value in (route.headers or {}).items():
                        self.send_header(name, value)
                    self.end_headers()
                body = route.body if route.send is None else route.body[: route.send]
                while True:
                    for start in range(0, len(body), route.chunk):
                        self.wfile.write(body[start : start + route.chunk])
                        self.wfile.flush()
                        if route.delay_s:
                            time.sleep(route.delay_s)
                    if not route.endless or not body:
                        return

            def log_message(self, *args) -> None:  # quiet
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def url(self, path: str) -> str:
        return f"{self.base}{path}"

    def start(self) -> WeightsServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def state_dict_bytes(n_values: int = 200_000, seed: int = 0) -> bytes:
    """A real ``torch.save`` of a small dict of tensors (a stand-in for torchvision's file)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    state = {
        "conv1.weight": torch.randn(n_values // 27, 3, 3, 3, generator=g),
        "fc.bias": torch.zeros(10),
    }
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def free_port() -> int:
    """A port on 127.0.0.1 where nothing listens (connections are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def leftovers(folder) -> list[str]:
    """Temporary download files left in ``folder`` (there must never be any)."""
    if not folder.exists():
        return []
    return sorted(p.name for p in folder.iterdir() if ".part-" in p.name)


def publish(monkeypatch, data: bytes, backbone: str = "resnet18") -> None:
    """For this test, ``data`` is torchvision's ImageNet weights file of ``backbone``: its size
    and SHA-256 are what the checks of files in the cache and of downloads expect (the real
    file, 45 MB and more, is never fetched in tests).  Its name stays torchvision's."""
    from napari_segrep import weights

    published = weights.IMAGENET_FILES[backbone]
    replaced = weights.PublishedFile(published.filename, len(data), sha256(data))
    monkeypatch.setitem(weights.PUBLISHED, published.filename, replaced)
    monkeypatch.setitem(weights.IMAGENET_FILES, backbone, replaced)


def use_temporary_torch_cache(tmp_path, monkeypatch):
    """The torch cache in a fresh folder (``TORCH_HOME``), no mirror set, and no proxy for
    127.0.0.1; returns the folder where the weights go (``<TORCH_HOME>/hub/checkpoints``)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("SEGREP_WEIGHTS_URL", raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    return tmp_path / "torch" / "hub" / "checkpoints"
