"""Run an engine call in a napari ``thread_worker`` with progress in the activity dock and cancel.

The engine reports through plain callables (``progress(done, total)``, ``should_stop()``); here
they become a Qt signal (delivered in the GUI thread, where the napari progress bar is updated)
and a ``threading.Event``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from napari.qt.threading import create_worker
from napari.utils import progress as napari_progress
from qtpy.QtCore import QObject, Signal

__all__ = ["Job", "start_job"]


class _Relay(QObject):
    progressed = Signal(int, int)
    message = Signal(object)


class Job:
    """A running engine call: ``worker`` (the napari worker), ``cancel()``, ``cancelled``."""

    def __init__(self, worker, stop: threading.Event, relay: _Relay) -> None:
        self.worker, self._stop, self._relay = worker, stop, relay

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
        bar.close()
        if on_done is not None:
            on_done()

    worker = create_worker(
        call,
        report,
        stop.is_set,
        _start_thread=False,
        _connect={
            "returned": _unless_deleted(on_result),
            "errored": _unless_deleted(on_error),
            "finished": _unless_deleted(finished),
        },
    )
    job = Job(worker, stop, relay)
    worker.start()
    return job


def _unless_deleted(callback: Callable) -> Callable:
    """``callback`` for a worker signal, made harmless once napari is closing: when the widget
    it updates has been deleted, Qt raises RuntimeError ("wrapped C/C++ object ... has been
    deleted"), which in a slot would abort the whole process."""

    def guarded(*args) -> None:
        try:
            callback(*args)
        except RuntimeError as exc:
            if "has been deleted" not in str(exc):
                raise

    return guarded
