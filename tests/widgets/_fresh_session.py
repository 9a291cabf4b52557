"""Scripts run in a fresh interpreter with an empty numba cache (a user's first session):
a shared prelude and the runner that checks the process exited cleanly."""

from __future__ import annotations

import json
import os
import subprocess
import sys

#: Imports, ``app`` (after the script creates its viewer: ``app = QApplication.instance()``),
#: ``wait(condition)`` processing Qt events, and ``start_heartbeat()`` -> (timer, ticks).
PRELUDE = r"""
import json, time
import napari
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QApplication

from napari_segrep._sample_data import make_cells

def wait(condition, timeout=600):
    end = time.time() + timeout
    while not condition():
        assert time.time() < end, "timed out"
        QApplication.instance().processEvents()
        time.sleep(0.005)

def start_heartbeat():
    ticks = []
    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start()
    return timer, ticks
"""


def run_fresh_session(script: str, tmp_path) -> dict:
    """Run ``PRELUDE + script`` in a fresh process (empty numba cache in ``tmp_path``); it must
    exit 0 with no abort, traceback or deleted-Qt-object error, and print one line
    ``REPORT <json>``, which is returned."""
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "numba"), "PYTHONFAULTHANDLER": "1"}
    done = subprocess.run(
        [sys.executable, "-c", PRELUDE + script],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    for bad in ("Aborted", "Fatal Python error", "Traceback", "has been deleted"):
        assert bad not in done.stderr, done.stderr[-4000:]
    assert "ERROR" not in done.stdout + done.stderr  # a cancel is not an error
    line = next(x for x in done.stdout.splitlines() if x.startswith("REPORT "))
    return json.loads(line[len("REPORT ") :])
