"""What the widget tests share about Embed segments: a Run, waited for until its map shows."""

from __future__ import annotations

TIMEOUT_MS = 120_000


def run_and_wait(qtbot, widget):
    """``widget.run()`` (Embed segments), then wait until the job has ended and its map (one
    layer's, or a group's) is on screen; returns the worker."""
    worker = widget.run()
    with qtbot.waitSignal(worker.finished, timeout=TIMEOUT_MS):
        pass
    qtbot.waitUntil(lambda: widget.job is None, timeout=TIMEOUT_MS)
    view = widget.multi.view if widget.group is not None else widget.map_view
    qtbot.waitUntil(lambda: view.settled, timeout=TIMEOUT_MS)  # features, points shown
    return worker
