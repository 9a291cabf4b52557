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
    # quality: the start and the epoch's effective rank plotted, the view agreement as text
    start, end = widget.result.quality
    assert widget.quality == widget.result.quality
    assert widget.rank_curve.values == [start["effective_rank"], end["effective_rank"]]
    assert widget.rank_curve.reference == start["effective_rank"]
    assert f"start {start['effective_rank']:.1f}" in widget.rank_curve.title
    assert widget.quality_text.value.startswith(
        f"view agreement {end['view_agreement']:.2f} (start {start['view_agreement']:.2f}, "
        "chance 0.05) on 20 training segments"
    )
    assert widget.warning is None and not widget.status.value.startswith("Warning")
    assert widget.rank_curve.isVisibleTo(widget.native)  # in the dock, under the loss curve
    assert not widget.rank_curve.grab().isNull()  # it paints
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


def test_train_widget__a_collapse_shows_as_a_warning_in_the_status(trainer, qtbot):
    """A learning rate far too high collapses the embeddings: the status says so, in words
    (not a traceback), with what to try, and keeps saying it until the next Start.  (LARS,
    whose trust ratio keeps such a rate finite: AdamW's steps of ~lr give NaN.)"""
    viewer, widget = trainer
    widget.optimizer_input.value = "lars"
    widget.lr_input.value = 100.0
    widget.run()
    _wait_done(qtbot, widget)
    assert widget.result is not None  # the run finishes: a collapse is not an error
    assert widget.quality[-1]["collapsed"]
    status = widget.status.value
    assert status.startswith("Warning: the embeddings collapsed at epoch 1")
    assert "Lower the learning rate or try another loss" in status
    assert "Training finished" in status and "Traceback" not in status
    assert "rgb(255" in widget.status.native.styleSheet()  # shown in red
    # the plot shows the fall below the start
    assert widget.rank_curve.values[-1] < 0.3 * widget.rank_curve.reference
    widget.lr_input.value = 0.0
    widget.run()
    assert widget.warning is None and not widget.status.value.startswith("Warning")
    _wait_done(qtbot, widget)


def test_train_widget__starts_from_imagenet_when_present_with_rotations_if_ticked(
    make_napari_viewer, qtbot, tmp_path, weights_cache, monkeypatch
):
    import io

    import torch
    import torchvision

    from napari_segrep._widgets.train import START_IMAGENET, START_UNTRAINED
    from napari_segrep.engine.checkpoint import load_checkpoint

    from ..weights_server import RESNET18_FILE, publish

    viewer = make_napari_viewer()
    image, labels, _ = make_cells(shape=(160, 160), n_cells=20, seed=5)
    viewer.add_image(image, name="img")
    viewer.add_labels(labels, name="cells")
    _, widget = viewer.window.add_plugin_dock_widget("napari-segrep", "Train SegRep")
    # no weights in the cache: an untrained start, and the download button on show
    assert widget.start_input.choices == (START_UNTRAINED,)
    assert not widget.weights_button.native.isHidden()
    assert widget.loss_input.value == "ntxent" and widget.optimizer_input.value == "adamw"
    assert widget.epochs_input.value == 0 and widget.epochs_input.label == "epochs (0: auto)"
    assert widget.rotate_input.value is False

    weights_cache.mkdir(parents=True)
    buffer = io.BytesIO()  # torchvision-format resnet18 weights stand in for ImageNet's
    torch.save(torchvision.models.resnet18().state_dict(), buffer)
    publish(monkeypatch, buffer.getvalue())  # the stand-in is torchvision's file here
    (weights_cache / RESNET18_FILE).write_bytes(buffer.getvalue())
    widget.refresh_start()  # what the warm-up does once it has looked
    assert widget.start_input.value == START_IMAGENET  # the default once present
    widget.start_input.value = START_UNTRAINED
    widget.refresh_start()  # a user's choice is kept once ImageNet is on offer
    assert widget.start_input.value == START_UNTRAINED
    widget.start_input.value = START_IMAGENET

    widget.epochs_input.value = 1
    widget.batch_input.value = 8
    widget.crop_input.value = 32
    widget.device_input.value = "cpu"
    widget.rotate_input.value = True
    widget.checkpoint_dir_input.value = tmp_path / "run"
    widget.run()
    _wait_done(qtbot, widget)
    assert widget.result is not None, widget.status.value
    assert widget.result.encoder.config()["weights"] == "imagenet"
    config = load_checkpoint(tmp_path / "run" / "last.pt")["config"]
    assert config["augment"] == {"rotate90": True, "flip": True}
    assert config["loss"] == "ntxent" and config["batchnorm_stats"] == "frozen"


# ----------------------------------------------------------------------------- volumes
@pytest.fixture()
def volume_viewer(make_napari_viewer, narrow_backbone_3d):
    """A viewer with a (10, 40, 40) z-stack and its 8 labelled balls, both at scale (2, 0.5,
    0.5), and Train SegRep docked."""
    from ..engine.test_dataset import blob_volumes

    viewer = make_napari_viewer()
    images, labels = blob_volumes(shape=(10, 40, 40), spacing=(2.0, 0.5, 0.5), n=8, seed=21)
    viewer.add_image(images[0], name="vol", scale=(2, 0.5, 0.5))
    viewer.add_labels(labels[0], name="nuclei", scale=(2, 0.5, 0.5))
    _, widget = viewer.window.add_plugin_dock_widget("napari-segrep", "Train SegRep")
    return viewer, widget


@pytest.mark.usefixtures("one_torch_thread")
def test_train_widget__a_z_stack_trains_on_its_3d_objects(volume_viewer, qtbot, tmp_path):
    """A 3D labels layer: asked once (Start disabled until answered); "z-stack" trains a 3D
    model on its 3D objects at the layers' scale as voxel spacing, with the 3D crop size."""
    from napari_segrep.engine.checkpoint import load_checkpoint

    from ..conftest import NARROW_BACKBONE_3D

    viewer, widget = volume_viewer
    assert widget.axes_question.asking and not widget.start_button.enabled
    assert widget.status.value.startswith("'nuclei' is 3D (10, 40, 40): is it a z-stack")
    assert widget.volume_model_input.native.isHidden() and widget.crop_input.value == 64
    widget.axes_question.zstack_button.clicked.emit()  # the user's answer
    assert viewer.layers["nuclei"].metadata["napari_segrep"]["axes"] == "zyx"  # remembered
    assert not widget.axes_question.asking and widget.start_button.enabled
    assert not widget.volume_model_input.native.isHidden() and widget.crop_input.value == 32
    assert widget.volume_model_input.value == "resnet18_3d"  # the default 3D model
    widget.volume_model_input.reset_choices()  # the registry's 3D backbones, the test's too
    widget.volume_model_input.value = NARROW_BACKBONE_3D
    widget.epochs_input.value = 1
    widget.batch_input.value = 4
    widget.crop_input.value = 16
    widget.device_input.value = "cpu"
    widget.checkpoint_dir_input.value = tmp_path / "run"
    widget.run()
    _wait_done(qtbot, widget)
    assert widget.result is not None, widget.status.value
    assert widget.result.encoder.spatial_dims == 3 and len(widget.history) == 2  # 8 // 4
    config = load_checkpoint(tmp_path / "run" / "last.pt")["config"]
    assert config["axes"] == "zyx" and config["spacing"] == [2.0, 0.5, 0.5]
    assert config["backbone"] == NARROW_BACKBONE_3D and config["crop_size"] == 16
    assert _session.trained_encoder is widget.result.encoder


def test_train_widget__a_time_lapse_trains_on_its_frames_and_kinds_do_not_mix(volume_viewer):
    """Answered "time-lapse": each plane is a 2D image (the 2D model and crop); a z-stack with
    a 2D pair, or image and labels of other scales, are refused with the reason."""
    viewer, widget = volume_viewer
    widget.axes_question.timelapse_button.clicked.emit()
    assert widget.start_button.enabled and widget.volume_model_input.native.isHidden()
    images, labels, layout = widget._collect_arrays()
    assert len(images) == len(labels) == 10 and images[0].shape == (40, 40)
    assert layout.axes == "yx" and widget.crop_input.value == 64
    viewer.layers["nuclei"].metadata = {"napari_segrep": {"axes": "zyx"}}
    image, cells, _ = make_cells(shape=(64, 64), n_cells=6, seed=1)
    viewer.add_image(image, name="img")
    viewer.add_labels(cells, name="cells")
    row = widget.add_pair()
    row.image.value, row.labels.value = viewer.layers["img"], viewer.layers["cells"]
    assert widget.validate() == (
        "'nuclei' holds 3D objects but 'cells' 2D ones: train on one kind at a time."
    )
    widget.remove_pair(row)
    viewer.layers["vol"].scale = (1, 0.5, 0.5)
    assert "give both layers the same scale" in widget.validate()


def test_train_widget__the_run_folder_has_its_config_and_charts(trainer, qtbot, tmp_path):
    """Start writes the run folder's config.yaml (the settings, its epochs resolved: Load
    config... reads it back) and the two charts beside last.pt."""
    import yaml

    _, widget = trainer
    widget.run()
    _wait_done(qtbot, widget)
    run = tmp_path / "run"
    assert {"config.yaml", "last.pt", "charts"} <= {p.name for p in run.iterdir()}
    assert sorted(p.name for p in (run / "charts").iterdir()) == ["loss.png", "quality.png"]
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["epochs"] == 1 and config["log_dir"] == str(run.resolve())
    assert widget.load_config(run / "config.yaml")
