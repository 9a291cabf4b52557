"""The users' order, in a fresh process: napari starts and shows its canvas, then the plugin's
widget is opened from the manifest and run (torch and torchvision are first imported after the
canvas exists).  This is the order that segfaults through triton + Mesa without the guard in
``napari_segrep._widgets``; tests that import the package first would hide it."""

from __future__ import annotations

import os
import subprocess
import sys

import imageio.v3 as iio

from ..conftest import require_napari

require_napari()

SCRIPT = r"""
import sys
import napari
from qtpy.QtWidgets import QApplication

viewer = napari.Viewer(show=True)
viewer.open_sample("napari-segrep", "cells")
QApplication.instance().processEvents()
assert "torch" not in sys.modules and "torchvision" not in sys.modules, "torch came first"
_, widget = viewer.window.add_plugin_dock_widget("napari-segrep", "Embed segments")
widget.umap_input.value = False
worker = widget.run()
app = QApplication.instance()
import time
t0 = time.time()
while (widget.job is not None or widget.points_layer is None) and time.time() - t0 < 300:
    app.processEvents()
    time.sleep(0.01)
assert "torchvision" in sys.modules
print("segments", len(viewer.layers["cells labels"].features), "points",
      len(viewer.layers["cells labels map"].data), flush=True)
viewer.close()
"""


def test_users_order__viewer_first_then_widget_from_manifest_runs_without_crashing(tmp_path):
    env = {**os.environ, "PYTHONFAULTHANDLER": "1"}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        cwd=tmp_path,
    )
    assert done.returncode == 0, f"rc={done.returncode}\n{done.stderr[-4000:]}"
    assert "segments 120 points 120" in done.stdout


def test_demo_command__opens_napari_runs_and_saves_a_screenshot(tmp_path):
    shot = tmp_path / "demo.png"
    done = subprocess.run(
        [sys.executable, "-m", "napari_segrep.cli", "demo", "--screenshot", str(shot)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert "120 segments embedded, map: umap" in done.stdout
    picture = iio.imread(shot)
    assert picture.ndim == 3 and picture.shape[0] > 300 and picture.shape[1] > 600
