"""Train SegRep's Save config... / Load config...: the command line's YAML keys, both ways."""

from __future__ import annotations

import pytest

from napari_segrep._sample_data import make_cells

from ..conftest import require_napari

require_napari()


@pytest.fixture()
def trainer(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    image, labels, _ = make_cells(shape=(96, 96), n_cells=8, seed=5)
    viewer.add_image(image, name="img")
    viewer.add_labels(labels, name="cells")
    _, widget = viewer.window.add_plugin_dock_widget("napari-segrep", "Train SegRep")
    return viewer, widget


def test_train_widget__fields_take_their_defaults_and_help_from_train_config(trainer):
    from napari_segrep.engine import train_config as tc

    _, widget = trainer
    assert widget.batch_input.value == tc.default("batch_size")
    assert widget.loss_input.value == tc.default("loss")
    assert list(widget.loss_input.choices) == list(tc.choices("loss"))
    assert list(widget.optimizer_input.choices) == list(tc.choices("optimizer"))
    assert widget.epochs_input.tooltip == tc.help_text("epochs", with_default=True)
    assert widget.rotate_input.tooltip == tc.ROTATIONS_HELP


def test_train_widget__save_config_then_load_config_restores_the_fields(trainer, tmp_path):
    import yaml

    _, widget = trainer
    widget.loss_input.value = "tico"
    widget.epochs_input.value = 7
    widget.batch_input.value = 16
    widget.crop_input.value = 48
    widget.lr_input.value = 0.0003
    widget.rotate_input.value = True
    widget.image_mask_input.value = False
    path = widget.save_config(tmp_path / "train.yaml")
    assert path == tmp_path / "train.yaml"
    saved = yaml.safe_load(path.read_text())
    assert saved["loss"] == "tico" and saved["epochs"] == 7 and saved["batch_size"] == 16
    assert saved["no_image_mask"] is True and saved["no_feature_mask"] is False
    assert saved["rotations"] is True and saved["lr"] == pytest.approx(0.0003)
    widget.loss_input.value = "ntxent"
    widget.epochs_input.value = 0
    widget.batch_input.value = 64
    widget.image_mask_input.value = True
    widget.rotate_input.value = False
    assert widget.load_config(path)
    assert widget.loss_input.value == "tico" and widget.epochs_input.value == 7
    assert widget.batch_input.value == 16 and widget.crop_input.value == 48
    assert widget.image_mask_input.value is False and widget.rotate_input.value is True


def test_train_widget__load_config_reads_a_command_line_config(trainer, tmp_path):
    _, widget = trainer
    path = tmp_path / "run.yaml"
    path.write_text("batch_size: 8\nepochs: null\nno_mask: false\nseed: 3\nlr: 1e-4\n")
    assert widget.load_config(path)
    assert widget.batch_input.value == 8 and widget.epochs_input.value == 0
    assert widget.lr_input.value == pytest.approx(1e-4)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("batch_size: '8'\n", "batch_size: '8' is not an integer"),
        ("loss: simclr\n", "loss: 'simclr' is not one of"),
        ("no_image_mask: 1\n", "no_image_mask: 1 is not true or false"),
        ("- a list\n", "must hold 'key: value' lines"),
    ],
)
def test_train_widget__a_bad_config_changes_no_field_and_names_the_key(
    trainer, tmp_path, text, needle
):
    _, widget = trainer
    path = tmp_path / "bad.yaml"
    path.write_text("epochs: 5\n" + text if not text.startswith("-") else text)
    assert not widget.load_config(path)
    assert needle in widget.status.value and str(path) in widget.status.value
    assert widget.epochs_input.value == 0  # nothing changed
