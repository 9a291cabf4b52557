"""The "Train SegRep" widget in real napari viewers."""

from __future__ import annotations

import numpy as np
import pytest

from napari_segrep._sample_data import make_cells

from ..conftest import require_napari

require_napari()

import napari_segrep as sr  # noqa: E402
from napari_segrep._widgets import _session  # noqa: E402

TIMEOUT_MS = 180_000


@pytest.fixture(autouse=True)
def _fresh_session():
    _session.trained_encoder = None
    yield
    _session.trained_encoder = None


@pytest.fixture()
def trainer(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    image, labels, _ = make_cells(shape=(160, 160), n_cells=20, seed=5)
    viewer.add_image(image, name="img")
    viewer.add_labels(labels, name="cells")
    _, widget = viewer.window.add_plugin_dock_widget("napari-segrep", "Train SegRep")
    widget.epochs_input.value = 1
    widget.batch_input.value = 8
    widget.crop_input.value = 32
    widget.device_input.value = "cpu"
    widget.checkpoint_dir_input.value = tmp_path / "run"
    return viewer, widget


def _wait_done(qtbot, widget):
    qtbot.waitUntil(lambda: widget.job is None, timeout=TIMEOUT_MS)


def test_train_widget__one_epoch_curve_checkpoint_and_session_model(trainer, qtbot, tmp_path):
    viewer, widget = trainer
    assert widget.start_button.enabled and widget.status.value == "Ready."
    worker = widget.run()
    assert worker is not None and not widget.start_button.enabled
    _wait_done(qtbot, widget)
    assert len(widget.curve.values) == len(widget.history) == 2  # 20 cells // 8
    assert widget.result is not None and not widget.result.stopped
    ckpt = tmp_path / "run" / "last.pt"
    assert widget.result.checkpoint_path == ckpt and sr.load_encoder(ckpt) is not None
    assert _session.trained_encoder is widget.result.encoder
    # Embed segments now offers the session model, and uses it
    _, embed = viewer.window.add_plugin_dock_widget("napari-segrep", "Embed segments")
    assert "model trained in this session" in embed.model_input.choices
    embed.umap_input.value = False
    embed.crop_input.value = 32
    embed.model_input.value = "model trained in this session"
    embed.run()
    qtbot.waitUntil(lambda: embed.job is None and embed.table is not None, timeout=TIMEOUT_MS)
    expected = sr.embed_segments(
        viewer.layers["img"].data,
        viewer.layers["cells"].data,
        widget.result.encoder,
        crop_size=32,
        device="cpu",
    )
    np.testing.assert_allclose(
        embed.table.filter(like="emb_"), expected.filter(like="emb_"), rtol=1e-5, atol=1e-6
    )


def test_train_widget__pause_resume_and_stop_keep_a_loadable_model(trainer, qtbot, tmp_path):
    viewer, widget = trainer
    widget.epochs_input.value = 50
    widget.run()
    qtbot.waitUntil(lambda: len(widget.history) >= 1, timeout=TIMEOUT_MS)
    widget.toggle_pause()
    assert widget.paused and widget.pause_button.text == "Resume"
    qtbot.wait(300)
    steps = len(widget.history)
    qtbot.wait(1500)
    assert len(widget.history) <= steps + 1  # at most the step that was running
    widget.toggle_pause()
    assert not widget.paused
    qtbot.waitUntil(lambda: len(widget.history) >= steps + 2, timeout=TIMEOUT_MS)
    widget.stop()
    _wait_done(qtbot, widget)
    assert widget.result.stopped and len(widget.history) < 50 * 2
    enc = sr.load_encoder(tmp_path / "run" / "last.pt")
    assert enc is not None and _session.trained_encoder is widget.result.encoder
    assert widget.start_button.enabled and widget.reembed_button.enabled


def test_train_widget__nan_configuration_ends_with_a_notification_and_a_usable_widget(
    trainer, qtbot
):
    viewer, widget = trainer
    widget.optimizer_input.value = "adamw"
    widget.lr_input.value = 1e6  # blows the weights up within a few steps
    widget.epochs_input.value = 30
    widget.run()
    _wait_done(qtbot, widget)
    # diverged: the loss became NaN, or (caught earlier now) the weights blew up
    assert widget.status.value.startswith("Error: ") and "Lower the learning rate" in (
        widget.status.value
    )
    assert widget.start_button.enabled and not widget.stop_button.enabled
    assert _session.trained_encoder is None


def test_train_widget__reembed_keeps_the_previous_map_and_compares(trainer, qtbot):
    viewer, widget = trainer
    _, embed = viewer.window.add_plugin_dock_widget("napari-segrep", "Embed segments")
    embed.umap_input.value = False
    embed.crop_input.value = 32
    embed.run()
    qtbot.waitUntil(
        lambda: embed.job is None and embed.points_layer is not None, timeout=TIMEOUT_MS
    )
    widget.run()
    _wait_done(qtbot, widget)
    widget.reembed()
    qtbot.waitUntil(lambda: embed.job is None and embed.agreement is not None, timeout=TIMEOUT_MS)
    names = [layer.name for layer in viewer.layers]
    assert "cells map (before)" in names and "cells map" in names
    assert 0.0 <= embed.agreement <= 1.0
    assert "agreement" in embed.status.value


def test_train_widget__pairs_and_validation(trainer):
    viewer, widget = trainer
    widget.add_pair()
    assert len(widget.pairs) == 2
    widget.remove_pair(widget.pairs[1])
    assert len(widget.pairs) == 1
    viewer.add_labels(np.zeros((10, 10), np.int32), name="small")
    widget.pairs[0].labels.value = viewer.layers["small"]
    assert "differ in shape" in widget.validate()
    assert not widget.start_button.enabled


def test_train_widget__closing_napari_during_training_stops_with_a_checkpoint(
    trainer, qtbot, tmp_path
):
    viewer, widget = trainer
    widget.epochs_input.value = 50
    widget.run()
    qtbot.waitUntil(lambda: len(widget.history) >= 1, timeout=TIMEOUT_MS)
    widget._close_guard.answer = False
    widget.native.window().close()
    assert widget.job is not None  # refused: still training
    widget._close_guard.answer = True
    widget.native.window().close()
    assert widget.job is None and widget.result.stopped
    assert sr.load_encoder(tmp_path / "run" / "last.pt") is not None
    assert not list((tmp_path / "run").glob("*.tmp"))


def test_train_widget__each_start_gets_a_new_run_folder(trainer, qtbot, tmp_path):
    """Start twice: the second run gets run-2, the first run's checkpoint is untouched; resuming
    a run's last.pt continues it in its own folder."""
    from napari_segrep.engine.checkpoint import load_checkpoint

    viewer, widget = trainer
    widget.run()
    _wait_done(qtbot, widget)
    first = tmp_path / "run" / "last.pt"
    assert widget.result.checkpoint_path == first
    before = first.read_bytes()
    widget.run()
    _wait_done(qtbot, widget)
    second = tmp_path / "run-2" / "last.pt"
    assert widget.result.checkpoint_path == second
    assert widget.checkpoint_dir_input.value == tmp_path / "run-2"
    assert first.read_bytes() == before
    widget.epochs_input.value = 2
    widget.resume_input.value = second
    widget.run()
    _wait_done(qtbot, widget)
    assert widget.result.checkpoint_path == second and load_checkpoint(second)["epoch"] == 2
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("run")) == [
        "run",
        "run-2",
    ]
    assert first.read_bytes() == before
