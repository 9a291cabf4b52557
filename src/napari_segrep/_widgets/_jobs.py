"""Run an engine call in a napari ``thread_worker`` with progress in the widget and cancel.

The engine reports through plain callables (``progress(done, total)``, ``should_stop()``); here
they become a Qt signal (delivered in the GUI thread, where the widget's progress bar is
updated) and a ``threading.Event``.

Progress is shown in a bar of the widget that started the job, at most
:data:`PROGRESS_INTERVAL_S` apart, not in napari's activity dock: while any napari progress is
open, napari animates an "in progress" GIF in its status bar, and with software OpenGL (Xvfb,
VMs, remote desktops: llvmpipe) every frame re-composes the whole window on the CPU.  Measured
in ``benchmarks/first_session.py``: 1.2-1.6 s of CPU per 6 s of embedding taken from the
embedding on 2 cores (ratio to headless 1.6-2.0x; 1.0-1.1x without).

Closing napari with work in flight: a worker thread that outlives its Qt objects aborts the
whole process (Qt's RuntimeError "wrapped C/C++ object ... has been deleted" inside the worker,
then ``Fatal Python error: Aborted``).  So :func:`watch_close` makes closing the window cancel
every running job and wait until it has ended (an embedding stops within a batch); a job started
with ``ask_before_close=True`` (training) is left to its widget's own close guard.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

from magicgui.widgets import ProgressBar
from napari.qt.threading import create_worker
from qtpy.QtCore import QEvent, QObject, Signal

from ._common import unless_deleted

__all__ = [
    "PROGRESS_INTERVAL_S",
    "CloseGuard",
    "Job",
    "cancel_all",
    "start_job",
    "wait_for",
    "watch_close",
]

#: The least time between two progress reports reaching the GUI (the first and the last always do).
PROGRESS_INTERVAL_S = 0.25


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
    progress_bar: ProgressBar | None = None,
    ask_before_close: bool = False,
) -> Job:
    """Start ``call(progress, should_stop)`` in a worker thread.

    ``on_result``/``on_error``/``on_done`` run in the GUI thread.  ``progress(done, total)``
    drives ``progress_bar`` (shown while the job runs, labelled ``desc``; None: no bar), at
    most every :data:`PROGRESS_INTERVAL_S` (the first and the last report always get through);
    ``Job.cancel()`` makes ``should_stop()`` true.  ``call`` may also call
    ``progress.message(obj)`` to deliver ``obj`` to ``on_message`` in the GUI thread (e.g.
    training step records; not thinned out).
    """
    stop = threading.Event()
    relay = _Relay()
    if progress_bar is not None:
        _show(progress_bar, desc)
        relay.progressed.connect(
            unless_deleted(lambda done, total: _set(progress_bar, done, total))
        )
    if on_message is not None:
        relay.message.connect(on_message)
    last_report = [-float("inf")]

    def report(done: int, total: int) -> None:
        now = time.monotonic()
        if done == 0 or done >= total or now - last_report[0] >= PROGRESS_INTERVAL_S:
            last_report[0] = now
            try:
                relay.progressed.emit(int(done), int(total))
            except RuntimeError:  # Qt is gone (the application is shutting down): stop
                stop.set()

    def message(obj) -> None:
        try:
            relay.message.emit(obj)
        except RuntimeError:  # as above
            stop.set()

    report.message = message  # type: ignore[attr-defined]

    def finished() -> None:
        _running.discard(job)
        if progress_bar is not None:
            unless_deleted(_hide)(progress_bar)
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


def _show(bar: ProgressBar, desc: str) -> None:
    # a determinate range from the start: an empty one animates (a repaint every frame)
    bar.min, bar.max, bar.value = 0, 1, 0
    bar.native.setFormat(f"{desc}: %p%")
    bar.visible = True


def _set(bar: ProgressBar, done: int, total: int) -> None:
    if total > 0:
        bar.max = total
        bar.value = min(done, total)


def _hide(bar: ProgressBar) -> None:
    bar.visible = False


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


class CloseGuard(QObject):
    """An event filter for napari's window that asks ``question`` before it closes while
    ``widget.job`` runs; on yes, calls ``widget.stop()`` (which must save what is worth
    keeping, e.g. a checkpoint) and waits for the job before letting the window close."""

    def __init__(self, widget, title: str, question: str) -> None:
        super().__init__()
        self._widget = weakref.ref(widget)
        self._title, self._question = title, question
        #: Answer used instead of the dialog (tests, scripts): True, False or None to ask.
        self.answer: bool | None = None

    def eventFilter(self, obj, event) -> bool:  # noqa: N802 - Qt's name
        widget = self._widget()
        if event.type() != QEvent.Type.Close or widget is None or widget.job is None:
            return False
        answer = self.answer
        if answer is None:
            from qtpy.QtWidgets import QMessageBox

            reply = QMessageBox.question(None, self._title, self._question)
            answer = reply == QMessageBox.StandardButton.Yes
        if not answer:
            event.ignore()
            return True
        widget.stop()
        if widget.job is not None:  # until it has finished and its results were delivered
            wait_for([widget.job], timeout_s=120.0)
        return False
