"""Run an engine call in a napari ``thread_worker`` with progress in the activity dock and cancel.

The engine reports through plain callables (``progress(done, total)``, ``should_stop()``); here
they become a Qt signal (delivered in the GUI thread, where the napari progress bar is updated)
and a ``threading.Event``.

Closing napari with work in flight: a worker thread that outlives its Qt objects aborts the
whole process (Qt's RuntimeError "wrapped C/C++ object ... has been deleted" inside the worker,
then ``Fatal Python error: Aborted``).  So :func:`watch_close` makes closing the window cancel
every running job and wait until it has ended (an embedding stops within a batch); a job started
with ``ask_before_close=True`` (training) is left to its widget's own close guard.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from napari.qt.threading import create_worker
from napari.utils import progress as napari_progress
from qtpy.QtCore import QEvent, QObject, Signal

from ._common import unless_deleted

__all__ = ["Job", "cancel_all", "start_job", "wait_for", "watch_close"]


class _Relay(QObject):
    progressed = Signal(int, int)
    message = Signal(object)


class Job:
    """A running engine call: ``worker`` (the napari worker), ``cancel()``, ``cancelled``."""

    def __init__(self, worker, stop: threading.Event, relay: _Relay, ask: bool = False) -> None:
        self.worker, self._stop, self._relay = worker, stop, relay
        self.ask_before_close = ask

    def cancel(self) -> None:
        self._stop.set()

    @property
    def cancelled(self) -> bool:
        return self._stop.is_set()


def start_job(
    call: Callable[[Callable[[int, int], None], Callable[[], bool]], Any],
    *,
    desc: str,
    on_result: Callable[[Any], None],
    on_error: Callable[[BaseException], None],
    on_done: Callable[[], None] | None = None,
    on_message: Callable[[Any], None] | None = None,
    ask_before_close: bool = False,
) -> Job:
    """Start ``call(progress, should_stop)`` in a worker thread.

    ``on_result``/``on_error``/``on_done`` run in the GUI thread.  ``progress(done, total)``
    drives a napari progress bar (activity dock); ``Job.cancel()`` makes ``should_stop()`` true.
    ``call`` may also call ``progress.message(obj)`` to deliver ``obj`` to ``on_message`` in the
    GUI thread (e.g. training step records).
    """
    stop = threading.Event()
    relay = _Relay()
    bar = napari_progress(total=0, desc=desc)

    def on_progress(done: int, total: int) -> None:
        if bar.total != total:
            bar.total = total
        bar.update(done - bar.n)

    relay.progressed.connect(on_progress)
    if on_message is not None:
        relay.message.connect(on_message)

    def report(done: int, total: int) -> None:
        relay.progressed.emit(int(done), int(total))

    report.message = relay.message.emit  # type: ignore[attr-defined]

    def finished() -> None:
        _running.discard(job)
        bar.close()
        if on_done is not None:
            on_done()

    worker = create_worker(
        call,
        report,
        stop.is_set,
        _start_thread=False,
        _connect={
            "returned": unless_deleted(on_result),
            "errored": unless_deleted(on_error),
            "finished": unless_deleted(finished),
        },
    )
    job = Job(worker, stop, relay, ask_before_close)
    _running.add(job)
    worker.start()
    return job


#: Jobs whose worker has not finished yet.
_running: set[Job] = set()


def cancel_all(*, timeout_s: float = 60.0) -> None:
    """Cancel every running job (except those that ask before closing) and process events
    until they have ended, so no worker outlives the window."""
    jobs = [job for job in _running if not job.ask_before_close]
    for job in jobs:
        job.cancel()
    wait_for(jobs, timeout_s=timeout_s)


def wait_for(jobs, *, timeout_s: float) -> None:
    """Process events until ``jobs`` have finished and delivered their results (or until
    ``timeout_s``)."""
    from qtpy.QtWidgets import QApplication

    end = time.monotonic() + timeout_s
    while any(job in _running for job in jobs) and time.monotonic() < end:
        QApplication.processEvents()
        time.sleep(0.01)


class _CloseWatcher(QObject):
    def eventFilter(self, obj, event) -> bool:  # noqa: N802 - Qt's name
        if event.type() == QEvent.Type.Close:
            cancel_all()
        return False


_watcher: _CloseWatcher | None = None
_watched: set[int] = set()


def watch_close(window) -> None:
    """Make closing ``window`` (napari's main window) cancel and wait for running jobs."""
    global _watcher
    if _watcher is None:
        _watcher = _CloseWatcher()
    if id(window) not in _watched:  # an id, not a reference: no cycle to the viewer
        window.installEventFilter(_watcher)
        _watched.add(id(window))
