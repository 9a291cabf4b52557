"""The "Embed segments" widget in real napari viewers (Xvfb in CI)."""

from __future__ import annotations

import json
import signal
import sys
import threading
import time

import numpy as np
import pandas as pd
import pytest

from napari_segrep._sample_data import make_cells
from napari_segrep.analysis.export import sidecar_path

from ..conftest import disc_labels, require_napari

require_napari()

from napari.utils._proxies import ReadOnlyWrapper  # noqa: E402
from napari.utils.interactions import mouse_press_callbacks  # noqa: E402

from ._embed import run_and_wait as _run_and_wait  # noqa: E402

TIMEOUT_MS = 120_000


@pytest.fixture()
def small_scene():
    image, labels, _ = make_cells(shape=(160, 160), n_cells=14, seed=4)
    return image, labels


def _dock(viewer):
    _, widget = viewer.window.add_plugin_dock_widget("napari-segrep", "Embed segments")
    widget.crop_input.value = 32
    widget.umap_input.value = False
    widget.device_input.value = "auto"
    return widget


def _ready(make_napari_viewer, scene):
    viewer = make_napari_viewer()
    image, labels = scene
    viewer.add_image(image, name="img")
    viewer.add_labels(labels, name="cells")
    return viewer, _dock(viewer)


def test_embed_widget__docks_from_the_manifest_runs_and_fills_features_and_map(
    make_napari_viewer, qtbot, small_scene
):
    viewer, widget = _ready(make_napari_viewer, small_scene)
    assert widget.run_button.enabled and widget.status.value == "Ready."
    _run_and_wait(qtbot, widget)
    labels_layer = viewer.layers["cells"]
    ids = sorted(np.unique(small_scene[1][small_scene[1] > 0]))
    features = labels_layer.features
    assert list(features["label"]) == ids and list(features["index"]) == ids
    assert {"centroid_y", "area", "bbox_y0", "emb_0", "emb_511"} <= set(features.columns)
    points = viewer.layers["cells map"]
    assert len(points.data) == len(ids) and list(points.features["label"]) == ids
    assert points.visible  # added hidden, shown in the next turn of the event loop
    # beside the image: to its right, within its height
    h, w = small_scene[1].shape
    assert points.data[:, 1].min() > w and points.data[:, 0].min() >= 0
    assert points.data[:, 0].max() <= h + 1e-6
    # point colours are the segments' colours
    for row, label in enumerate(ids[:4]):
        np.testing.assert_allclose(
            points.face_color[row], labels_layer.colormap.map(label), atol=1e-6
        )
    assert points.metadata["map_method"] == "pca"


def test_embed_widget__linking_both_ways(make_napari_viewer, qtbot, small_scene, MouseEvent):
    viewer, widget = _ready(make_napari_viewer, small_scene)
    _run_and_wait(qtbot, widget)
    labels_layer, points = viewer.layers["cells"], viewer.layers["cells map"]
    table_labels = list(points.features["label"])

    # points -> segments: several selected: those highlighted, the others dimmed
    recoloured: list = []
    labels_layer.events.colormap.connect(recoloured.append)
    points.selected_data = {0, 2}
    cmap = labels_layer.colormap
    assert cmap.map(table_labels[0])[3] == pytest.approx(1.0)
    assert cmap.map(table_labels[1])[3] < 0.5
    # the colormap names the selected segments only (the others take its default colour),
    # and napari recolours the image once per selection, not once per view that reacts
    assert set(cmap.color_dict) <= {None, 0, table_labels[0], table_labels[2]}
    assert len(recoloured) == 1
    widget.results.colour_by = "label"  # what it is already: nothing to redraw
    assert len(recoloured) == 1
    # one selected: also the labels layer's selected label
    points.selected_data = {3}
    assert labels_layer.selected_label == table_labels[3]
    # segments -> points
    labels_layer.selected_label = table_labels[5]
    assert set(points.selected_data) == {5}
    # a click on a segment (pan/zoom mode) selects exactly its point
    target = table_labels[1]
    yy, xx = np.nonzero(small_scene[1] == target)
    labels_layer.mode = "pan_zoom"
    event = ReadOnlyWrapper(MouseEvent(type="mouse_press", position=(yy[0], xx[0])))
    mouse_press_callbacks(labels_layer, event)
    assert set(points.selected_data) == {1} and labels_layer.selected_label == target
    # hovering a point: its label (and cluster) in the status bar
    status = points.get_status(tuple(points.data[2]), world=True)
    text = status["coordinates"] if isinstance(status, dict) else str(status)
    assert f"label: {table_labels[2]}" in text
    # clearing restores the normal view
    points.selected_data = set()
    assert labels_layer.colormap.map(table_labels[1])[3] == pytest.approx(1.0)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process states from /proc")
def test_embed_widget__map_process_waits_while_embedding(make_napari_viewer, qtbot, small_scene):
    from napari_segrep._widgets._map_process import map_process

    viewer, widget = _ready(make_napari_viewer, small_scene)
    pid = map_process()._process.pid

    def state() -> str:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]

    def stopped() -> bool:
        """Stopped, or SIGSTOP already sent and waiting for the idle-priority process to be
        scheduled (on a loaded machine it may not run before the embedding ends)."""
        with open(f"/proc/{pid}/status") as f:
            pending = {k: v for k, v in (line.split(":", 1) for line in f if ":" in line)}
        mask = int(pending["ShdPnd"], 16) | int(pending["SigPnd"], 16)
        return state() == "T" or bool(mask & (1 << (signal.SIGSTOP - 1)))

    widget.run()
    qtbot.waitUntil(lambda: stopped() or widget.job is None, timeout=TIMEOUT_MS)
    stopped_while_embedding = widget.job is not None and stopped()
    qtbot.waitUntil(lambda: widget.job is None, timeout=TIMEOUT_MS)
    assert stopped_while_embedding
    qtbot.waitUntil(lambda: state() != "T", timeout=TIMEOUT_MS)  # and running again after


def test_embed_widget__cancel_leaves_everything_as_before(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    image, labels, _ = make_cells(shape=(512, 512), n_cells=150, seed=1)
    viewer.add_image(image, name="img")
    labels_layer = viewer.add_labels(labels, name="cells")
    labels_layer.features = pd.DataFrame({"index": [1, 2], "note": ["a", "b"]})
    before = labels_layer.features.copy()
    widget = _dock(viewer)
    widget.batch_input.value = 4
    seen = []
    worker = widget.run()
    widget.job._relay.progressed.connect(lambda d, t: seen.append(d))
    qtbot.waitUntil(lambda: len(seen) >= 2, timeout=TIMEOUT_MS)
    widget.cancel()
    qtbot.waitUntil(lambda: widget.job is None, timeout=TIMEOUT_MS)
    assert worker is not None
    pd.testing.assert_frame_equal(labels_layer.features, before)
    assert [layer.name for layer in viewer.layers] == ["img", "cells"]
    assert "Cancelled" in widget.status.value and widget.run_button.enabled


def test_embed_widget__removing_the_labels_layer_during_a_run_is_harmless(
    make_napari_viewer, qtbot
):
    viewer = make_napari_viewer()
    image, labels, _ = make_cells(shape=(384, 384), n_cells=80, seed=2)
    viewer.add_image(image, name="img")
    viewer.add_labels(labels, name="cells")
    widget = _dock(viewer)
    widget.batch_input.value = 8
    worker = widget.run()
    viewer.layers.remove("cells")
    with qtbot.waitSignal(worker.finished, timeout=TIMEOUT_MS):
        pass
    qtbot.waitUntil(lambda: widget.job is None, timeout=TIMEOUT_MS)
    assert [layer.name for layer in viewer.layers] == ["img"]
    assert not widget.run_button.enabled and "labels layer" in widget.status.value


def test_embed_widget__run_disabled_with_a_reason(make_napari_viewer):
    viewer = make_napari_viewer()
    widget = _dock(viewer)
    assert not widget.run_button.enabled and "labels layer" in widget.status.value
    viewer.add_image(np.zeros((20, 30)), name="img")
    viewer.add_labels(np.zeros((20, 25), np.int32), name="lab")
    widget.labels_input.value = viewer.layers["lab"]
    assert (
        not widget.run_button.enabled and "choose layers of the same shape" in widget.status.value
    )
    viewer.layers.remove("lab")
    viewer.add_labels(np.zeros((20, 30), np.int32), name="empty")
    assert "no segments" in widget.status.value
    with pytest.raises(ValueError, match="no segments"):
        widget.run()


def test_embed_widget__clusters_selection_layer_and_csv(
    make_napari_viewer, qtbot, small_scene, tmp_path
):
    viewer, widget = _ready(make_napari_viewer, small_scene)
    _run_and_wait(qtbot, widget)
    widget.cluster_k.value = 3
    ids = widget.cluster()
    assert set(ids.tolist()) == {1, 2, 3}
    np.testing.assert_array_equal(viewer.layers["cells"].features["cluster"], ids)
    np.testing.assert_array_equal(viewer.layers["cells map"].features["cluster"], ids)
    viewer.layers["cells map"].selected_data = {0, 1}
    new = widget.labels_from_selection()
    chosen = set(viewer.layers["cells map"].features["label"].iloc[[0, 1]])
    assert set(np.unique(new.data)) == {0, *chosen}

    out = tmp_path / "cells.csv"
    assert widget.export_csv(out) == out
    back = pd.read_csv(out)
    table = widget.table
    assert list(back["label"]) == list(table["label"])
    assert list(back.columns[:10]) == [
        "label",
        "centroid_y",
        "centroid_x",
        "area",
        "bbox_y0",
        "bbox_x0",
        "bbox_y1",
        "bbox_x1",
        "scale",
        "cluster",
    ]
    assert {"map_0", "map_1", "map_method"} <= set(back.columns)
    np.testing.assert_allclose(
        back.filter(like="emb_"), table.filter(like="emb_"), rtol=1e-6, atol=1e-7
    )
    np.testing.assert_array_equal(back["cluster"], ids)
    side = json.loads(sidecar_path(out).read_text())
    assert side["labels_layer"] == "cells" and side["n_segments"] == len(table)
    out.write_text("keep me")
    assert widget.export_csv(out, overwrite=False) is None
    assert out.read_text() == "keep me"


def test_embed_widget__stack_frames_and_emphasis(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    rng = np.random.default_rng(0)
    image = rng.random((3, 64, 64)).astype(np.float32)
    labels = np.stack(
        [
            disc_labels((64, 64), [(20, 20, 6), (40, 44, 8)]),
            disc_labels((64, 64), [(30, 30, 7)]),
            disc_labels((64, 64), [(15, 45, 5), (45, 15, 6)], start=3),
        ]
    )
    viewer.add_image(image, name="img")
    viewer.add_labels(labels, name="cells", axis_labels=("t", "y", "x"))  # a time-lapse
    widget = _dock(viewer)
    _run_and_wait(qtbot, widget)
    table = widget.table
    assert table[["label", "frame"]].values.tolist() == [[1, 0], [2, 0], [1, 1], [3, 2], [4, 2]]
    points = viewer.layers["cells map"]
    viewer.dims.current_step = (2, 0, 0)
    big = points.size > np.median(points.size)
    np.testing.assert_array_equal(big, table["frame"].to_numpy() == 2)


def test_embed_widget__gui_stays_responsive_during_a_run(make_napari_viewer, qtbot):
    """Longest event-loop stall while 150 segments are embedded (all torch work runs in the
    worker).  Measured from Run until the last batch is reported; showing the results afterwards
    is napari's own layer creation (README: ~0.3 s once)."""
    from qtpy.QtCore import QTimer

    viewer = make_napari_viewer()
    image, labels, _ = make_cells(shape=(512, 512), n_cells=150, seed=3)
    viewer.add_image(image, name="img")
    viewer.add_labels(labels, name="cells")
    widget = _dock(viewer)
    widget.batch_input.value = 16
    ticks, finished_at = [], []
    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start()
    widget.run()
    widget.job._relay.progressed.connect(
        lambda d, t: finished_at.append(time.perf_counter()) if d == t else None
    )
    qtbot.waitUntil(lambda: widget.job is None, timeout=TIMEOUT_MS)
    timer.stop()
    assert finished_at, "the run never reported its last batch"
    during = np.array([t for t in ticks if t <= finished_at[0]])
    gaps = np.diff(during)
    assert len(gaps) > 20
    assert gaps.max() <= 0.1, f"longest event-loop stall {gaps.max() * 1000:.0f} ms"


def test_embed_widget__umap_replaces_the_pca_map(make_napari_viewer, qtbot, small_scene):
    viewer, widget = _ready(make_napari_viewer, small_scene)
    widget.umap_input.value = True
    _run_and_wait(qtbot, widget)
    points = viewer.layers["cells map"]
    assert points.metadata["map_method"] == "pca"
    qtbot.waitUntil(lambda: points.metadata["map_method"] == "umap", timeout=TIMEOUT_MS)
    assert widget.map_model.method == "umap" and len(points.data) == len(widget.table)


def test_embed_widget__live_mode_paint_adds_erase_removes_untouched_rows_unchanged(
    make_napari_viewer, qtbot, small_scene
):
    viewer, widget = _ready(make_napari_viewer, small_scene)
    _run_and_wait(qtbot, widget)
    labels_layer, points = viewer.layers["cells"], viewer.layers["cells map"]
    before = widget.table.copy()
    before_points = np.array(points.data)
    widget.live_input.value = True
    # the map places new segments in a worker thread, never in napari's (a map process busy
    # with a fit, or stopped during an embedding, would freeze the GUI)
    placed_in: list = []
    pca = widget.results.map_model
    transform = pca.transform
    pca.transform = lambda rows: placed_in.append(threading.current_thread()) or transform(rows)
    from scipy import ndimage

    room = ndimage.distance_transform_edt(small_scene[1] == 0)
    cy, cx = np.unravel_index(np.argmax(room), room.shape)  # the emptiest background spot
    free = np.argwhere(disc_labels(small_scene[1].shape, [(cy, cx, 5)]) > 0)
    assert (small_scene[1][tuple(free.T)] == 0).all()  # paint on background only
    new_id = int(small_scene[1].max()) + 1
    labels_layer.data_setitem(tuple(free.T), new_id)  # the labels layer's data API
    qtbot.waitUntil(lambda: len(widget.table) == len(before) + 1, timeout=TIMEOUT_MS)
    qtbot.waitUntil(lambda: widget.live_job is None, timeout=TIMEOUT_MS)
    assert len(points.data) == len(before) + 1
    assert placed_in and threading.main_thread() not in placed_in
    assert new_id in set(labels_layer.features["label"])
    assert list(points.features["label"]) == list(widget.table["label"])
    old = widget.table[widget.table["label"] != new_id].reset_index(drop=True)
    np.testing.assert_array_equal(
        old.filter(like="emb_").to_numpy(), before.filter(like="emb_").to_numpy()
    )  # bitwise
    np.testing.assert_array_equal(np.asarray(points.data)[:-1], before_points)
    expected = __import__("napari_segrep").embed_segments(
        small_scene[0], np.where(labels_layer.data == new_id, new_id, 0), crop_size=32, device="cpu"
    )
    np.testing.assert_allclose(
        widget.table[widget.table["label"] == new_id].filter(like="emb_").to_numpy(),
        expected.filter(like="emb_").to_numpy(),
        rtol=1e-5,
        atol=1e-6,
    )
    # erase it again: its row and point go, nothing else changes
    labels_layer.data_setitem(tuple(free.T), 0)
    qtbot.waitUntil(lambda: len(widget.table) == len(before), timeout=TIMEOUT_MS)
    qtbot.waitUntil(lambda: widget.live_job is None, timeout=TIMEOUT_MS)
    np.testing.assert_array_equal(
        widget.table.filter(like="emb_").to_numpy(), before.filter(like="emb_").to_numpy()
    )
    np.testing.assert_array_equal(np.asarray(points.data), before_points)
    # refit: a full new map
    widget.refit_map()
    assert points.metadata["map_method"] == "pca" and len(points.data) == len(before)
