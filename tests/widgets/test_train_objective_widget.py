"""Train SegRep's objective field: BiaPy's pretext tasks from the widget."""

from __future__ import annotations

import pytest

from napari_segrep._sample_data import make_cells

from ..conftest import require_napari

require_napari()


@pytest.fixture()
def trainer(make_napari_viewer):
    viewer = make_napari_viewer()
    image, labels, _ = make_cells(shape=(96, 96), n_cells=8, seed=5)
    viewer.add_image(image, name="img")
    viewer.add_labels(labels, name="cells")
    _, widget = viewer.window.add_plugin_dock_widget("napari-segrep", "Train SegRep")
    return widget


def test_train_widget__the_objective_field_greys_the_loss_out_and_round_trips(trainer, tmp_path):
    import yaml

    from napari_segrep.engine import train_config as tc

    widget = trainer
    assert widget.objective_input.value == tc.default("objective")
    assert list(widget.objective_input.choices) == list(tc.choices("objective"))
    assert widget.loss_input.enabled
    widget.objective_input.value = "masking"
    assert not widget.loss_input.enabled  # the loss is the contrastive objective's
    path = widget.save_config(tmp_path / "train.yaml")
    assert yaml.safe_load(path.read_text())["objective"] == "masking"
    widget.objective_input.value = "contrastive"
    assert widget.loss_input.enabled
    assert widget.load_config(path)
    assert widget.objective_input.value == "masking" and not widget.loss_input.enabled
