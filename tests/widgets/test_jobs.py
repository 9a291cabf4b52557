"""Jobs report progress in their widget's bar, thinned out, never through napari's activity
dock (whose animation re-composes the window on every frame with software OpenGL)."""

from __future__ import annotations

import time

from ..conftest import require_napari

require_napari()

from napari.utils import progress as napari_progress  # noqa: E402

from napari_segrep._widgets._common import progress_bar  # noqa: E402
from napari_segrep._widgets._jobs import PROGRESS_INTERVAL_S, start_job  # noqa: E402

TIMEOUT_MS = 60_000


def test_start_job__progress_in_the_widget_bar_thinned_out_no_activity_dock(
    make_napari_viewer, qtbot
):
    viewer = make_napari_viewer()
    bar = progress_bar()
    viewer.window.add_dock_widget(bar, name="bar")
    total, seconds = 2000, 1.0
    napari_bars: list = []
    napari_progress._all_instances.events.changed.connect(lambda e: napari_bars.extend(e.added))
    results: list = []

    def call(progress, should_stop):
        for done in range(total + 1):
            progress(done, total)
            time.sleep(seconds / total)
        return "ok"

    job = start_job(
        call,
        desc="Counting",
        progress_bar=bar,
        on_result=results.append,
        on_error=lambda exc: results.append(exc),
    )
    seen: list = []
    job._relay.progressed.connect(lambda done, tot: seen.append(done))
    shown = not bar.native.isHidden() and "Counting" in bar.native.format()
    qtbot.waitUntil(lambda: results == ["ok"], timeout=TIMEOUT_MS)
    qtbot.waitUntil(lambda: bar.native.isHidden(), timeout=TIMEOUT_MS)  # hidden when done
    assert shown
    assert seen[-1] == total and bar.value == total and bar.max == total
    # ~1 s of reports, 2,001 of them: a few reach the GUI (the first one may precede `seen`)
    elapsed_reports = len(seen)
    assert 2 <= elapsed_reports <= seconds / PROGRESS_INTERVAL_S * 2 + 2, seen
    assert napari_bars == []  # no napari progress, hence no activity animation
