"""UMAP in a separate, low-priority process: the napari process never compiles or runs it.

Why: numba's compile lock is process-wide.  Compiling UMAP (tens of seconds on a cold cache) in
a thread of napari's process blocks any napari code that needs numba (measured: 30-55 s GUI
freezes on the first selection) and competes for the CPU and the GIL with the embedding.  In
its own process, at the lowest priority, it takes only idle CPU, and closing napari just ends
it.

One process per session (:func:`map_process`), started on first use (from the GUI thread, whose
end, on Linux, ends the child too);
its loop is :func:`napari_segrep.analysis._worker.serve`, in a fresh interpreter.  Requests run in order;
results reach the GUI thread through a Qt signal.  ``RemoteMap`` is the fitted map as the GUI
sees it: ``coords`` now, ``transform(rows)`` (live mode) by a blocking call from a worker thread.
"""

from __future__ import annotations

import atexit
import itertools
import pickle
import queue
import threading
from collections.abc import Callable

import numpy as np
from qtpy.QtCore import QObject, Signal

from ._common import unless_deleted

__all__ = ["MapProcess", "RemoteMap", "map_process"]


# ---------------------------------------------------------------------- the napari side
class _Relay(QObject):
    done = Signal(object, object)  # callback, (ok, value)


def _deliver(callback: Callable, answer: tuple) -> None:
    """Run an answer's callback in the GUI thread (harmless once its widget is deleted)."""
    unless_deleted(callback)(*answer)


class MapProcess:
    """The session's map process.  ``submit(name, *args, on_done=cb)``: ``cb(ok, value)`` runs
    in the GUI thread; ``call(name, *args)`` waits for the answer (not from the GUI thread)."""

    def __init__(self) -> None:
        import subprocess
        import sys

        # A fresh interpreter, not multiprocessing: no fork of a process holding Qt, torch and
        # threads, and no re-import of the user's __main__ script (spawn does that).
        self._process = subprocess.Popen(
            [sys.executable, "-m", "napari_segrep.analysis._worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        self._ids = itertools.count()
        self._pending: dict[int, Callable] = {}
        self._lock = threading.Lock()
        self._pauses = 0
        self._relay = _Relay()
        self._relay.done.connect(_deliver)
        self._reader = threading.Thread(
            target=self._read, name="napari-segrep map results", daemon=True
        )
        self._reader.start()
        self._outbox: queue.SimpleQueue = queue.SimpleQueue()
        threading.Thread(target=self._write, name="napari-segrep map requests", daemon=True).start()
        atexit.register(self.close)

    def submit(self, name: str, *args, on_done: Callable[[bool, object], None]) -> int:
        """Queue ``name(*args)`` in the child; ``on_done(ok, value)`` later in the GUI thread."""

        def deliver(ok, value) -> None:
            try:
                self._relay.done.emit(on_done, (ok, value))
            except RuntimeError:  # the relay is gone: napari is closing
                pass

        return self._send(name, args, deliver)

    def call(self, name: str, *args, timeout: float | None = None):
        """``name(*args)`` in the child, waiting for the answer (worker threads only)."""
        answer: dict = {}
        ready = threading.Event()

        def deliver(ok, value) -> None:
            answer["ok"], answer["value"] = ok, value
            ready.set()

        self._send(name, args, deliver)
        if not ready.wait(timeout):
            raise TimeoutError(f"the map process did not answer {name!r} in time")
        if not answer["ok"]:
            raise RuntimeError(f"map process: {answer['value']}")
        return answer["value"]

    @property
    def alive(self) -> bool:
        return self._process.poll() is None

    def pause(self) -> Callable[[], None]:
        """Stop the child until the returned ``release()`` has been called (once per
        ``pause()``; the child runs again when every pause is released).  POSIX only; elsewhere
        the child just keeps its low priority.

        For an embedding: even at the lowest priority, a UMAP compile in the child slowed a
        2-thread embedding in napari's process by 7-30% (it takes the core whenever torch's
        threads wait, and they then wait for it).  A stopped child costs nothing; a pending
        fit simply waits.  The child dies with napari even while stopped (see the worker)."""
        import signal

        with self._lock:
            self._pauses += 1
            if self._pauses == 1:
                self._signal(getattr(signal, "SIGSTOP", None))
        released = threading.Event()

        def release() -> None:
            if released.is_set():
                return
            released.set()
            with self._lock:
                self._pauses -= 1
                if self._pauses == 0:
                    self._signal(getattr(signal, "SIGCONT", None))

        return release

    def _signal(self, signum) -> None:
        if signum is None or self._process.poll() is not None:
            return
        try:
            self._process.send_signal(signum)
        except OSError:  # it has just ended
            pass

    def close(self) -> None:
        """End the child now (its work is not needed any more); what is pending fails."""
        self._outbox.put(None)
        if self._process.poll() is None:
            self._process.kill()
        try:
            self._process.wait(timeout=5)
        except Exception:  # noqa: BLE001 - nothing more to do at exit
            pass
        for stream in (self._process.stdin, self._process.stdout):
            try:
                stream.close()
            except OSError:
                pass

    def _send(self, name: str, args: tuple, deliver: Callable) -> int:
        """Queue a request; the writer thread sends it (a large table would block the caller
        while the child is busy and the pipe is full: never the GUI thread's problem)."""
        with self._lock:
            request_id = next(self._ids)
            self._pending[request_id] = deliver
        self._outbox.put((request_id, name, args))
        return request_id

    def _write(self) -> None:
        while True:
            request = self._outbox.get()
            if request is None:
                return
            try:
                pickle.dump(request, self._process.stdin, protocol=pickle.HIGHEST_PROTOCOL)
                self._process.stdin.flush()
            except (OSError, ValueError):
                with self._lock:
                    deliver = self._pending.pop(request[0], None)
                if deliver is not None:
                    deliver(False, "the map process has ended")

    def _read(self) -> None:
        while True:
            try:
                request_id, ok, value = pickle.load(self._process.stdout)
            except (EOFError, OSError, ValueError, pickle.UnpicklingError):
                break
            with self._lock:
                deliver = self._pending.pop(request_id, None)
            if deliver is not None:
                deliver(ok, value)
        with self._lock:  # the child ended: nobody waits forever
            pending, self._pending = self._pending, {}
        for deliver in pending.values():
            deliver(False, "the map process has ended")


class RemoteMap:
    """A map fitted in the map process: ``method``, ``coords``, ``transform(new_rows)``."""

    _keys = itertools.count(1)

    def __init__(self, process: MapProcess, key: int, method: str, coords: np.ndarray) -> None:
        self._process, self.key = process, key
        self.method, self.coords = method, np.asarray(coords, float)

    @classmethod
    def next_key(cls) -> int:
        return next(cls._keys)

    def transform(self, emb: np.ndarray) -> np.ndarray:
        return np.asarray(self._process.call("transform", self.key, np.asarray(emb)), float)


_process: MapProcess | None = None
_process_lock = threading.Lock()


def map_process() -> MapProcess:
    """The session's map process (started, or restarted if it died)."""
    global _process
    with _process_lock:
        if _process is None or not _process.alive:
            _process = MapProcess()
            _process.submit("warm_up", on_done=lambda ok, value: None)
        return _process
