"""The backbone pickers of Embed segments and Train SegRep, generated from the catalogue, and
what follows a choice: the crop size, the pretrained models offered, the download button (real
napari viewers, Xvfb in CI; downloads from a real local HTTP server, tests/weights_server.py)."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from napari_segrep import catalogue
from napari_segrep._sample_data import make_cells

from ..conftest import require_napari
from ..weights_server import Route, leftovers, sha256, state_dict_bytes

require_napari()

from napari_segrep._widgets import _session  # noqa: E402
from napari_segrep._widgets._weights import WeightsDownloadButton  # noqa: E402
from napari_segrep._widgets.embed import (  # noqa: E402
    MODEL_DINOV2,
    MODEL_IMAGENET,
    MODEL_UNTRAINED,
)

TIMEOUT_MS = 120_000
DINOV2 = "vit_small_patch14_reg4_dinov2"


@pytest.fixture()
def cache(weights_cache):
    """An empty torch cache (the session asks the cache itself)."""
    return weights_cache


def _viewer(make_napari_viewer, *, seed=3, n_cells=10):
    viewer = make_napari_viewer()
    image, labels, classes = make_cells(shape=(128, 128), n_cells=n_cells, seed=seed)
    viewer.add_image(image, name="img")
    viewer.add_labels(labels, name="cells")
    return viewer, classes


def _embed_dock(viewer):
    _, widget = viewer.window.add_plugin_dock_widget("napari-segrep", "Embed segments")
    widget.umap_input.value = False
    return widget


def _publish(monkeypatch, backbone: str, weights: str, data: bytes) -> str:
    """For this test, ``data`` is the publisher's file of ``backbone``'s weight set
    ``weights``: its size and SHA-256 are what the checks expect (DINOv2's publisher gives
    neither: with them, the download is checked by its checksum, and no ViT is built)."""
    from napari_segrep import weights as weights_module

    name = catalogue.weight_set(backbone, weights).filename
    published = weights_module.PublishedFile(name, len(data), sha256(data))
    monkeypatch.setitem(weights_module.PUBLISHED, name, published)
    return name


def _extras(picker, dims):
    """The picker's choices beyond the catalogue's: registered (a test's) backbones only, and
    only once the engine is loaded (the picker never imports it)."""
    registry = sys.modules.get("napari_segrep.engine.backbones")
    listed = list(picker.choices)
    n = len(catalogue.backbone_choices(dims))
    extra = listed[n:]
    assert not extra or registry is not None
    assert all(registry.BACKBONES[name].spatial_dims == dims for name in extra)
    assert not set(extra) & set(catalogue.BY_NAME)
    return listed[:n]


def test_backbone_pickers__list_the_catalogue_backbones_of_each_kind(make_napari_viewer, cache):
    viewer, _ = _viewer(make_napari_viewer)
    embed = _embed_dock(viewer)
    _, train = viewer.window.add_plugin_dock_widget("napari-segrep", "Train SegRep")
    two, three = catalogue.backbone_choices(2), catalogue.backbone_choices(3)
    assert "vit_tiny_patch16_224" in two and DINOV2 in two and "resnet18_3d" in three
    for picker, dims in (
        (embed.backbone_input, 2),
        (embed.volume_model_input, 3),
        (train.backbone_input, 2),
        (train.volume_model_input, 3),
    ):
        assert _extras(picker, dims) == catalogue.backbone_choices(dims)
    # the defaults, and the 2D picker on show for 2D objects (the 3D one hidden)
    assert embed.backbone_input.value == train.backbone_input.value == "resnet18"
    assert not embed.backbone_input.native.isHidden()
    assert embed.volume_model_input.native.isHidden()
    assert not train.backbone_input.native.isHidden()
    # the tooltip is the chosen backbone's catalogue summary
    embed.backbone_input.value = DINOV2
    assert catalogue.get_entry(DINOV2).summary in embed.backbone_input.tooltip
    assert "DINOv2" in embed.backbone_input.tooltip and "384-d" in embed.backbone_input.tooltip


def test_embed_widget__a_backbone_brings_its_crop_size_weights_and_download_button(
    make_napari_viewer, cache, monkeypatch
):
    """Choosing a backbone: its default crop (unless the user chose one), its weight sets
    in the cache as models (DINOv2 only for the DINOv2 ViT), its download button (none for a
    backbone without pretrained weights)."""
    body = state_dict_bytes(1000)
    name = _publish(monkeypatch, DINOV2, "dinov2", body)
    cache.mkdir(parents=True)
    (cache / name).write_bytes(body)  # DINOv2's weights are in the cache, ImageNet's are not
    viewer, _ = _viewer(make_napari_viewer)
    widget = _embed_dock(viewer)
    button = widget.weights_button
    assert widget.crop_input.value == 64 and widget.model_input.value == MODEL_UNTRAINED
    assert not button.native.isHidden() and button.button.text == (
        "Download ImageNet weights (45 MB)"
    )
    widget.backbone_input.value = DINOV2
    assert widget.crop_input.value == 112  # the ViT's crop
    assert widget.model_input.choices[0] == MODEL_DINOV2  # offered first, and chosen
    assert widget.model_input.value == MODEL_DINOV2
    assert MODEL_IMAGENET not in widget.model_input.choices
    assert button.native.isHidden()  # its weights are there
    widget.backbone_input.value = "vit_tiny_patch16_224"  # no pretrained weights at all
    assert MODEL_DINOV2 not in widget.model_input.choices
    assert widget.model_input.value == MODEL_UNTRAINED and button.native.isHidden()
    assert widget.crop_input.value == 112
    widget.backbone_input.value = "resnet34"
    assert widget.crop_input.value == 64 and not button.native.isHidden()
    assert button.button.text == "Download ImageNet weights (83 MB)"
    assert "resnet34" in button.button.tooltip and "BSD-3-Clause" in button.button.tooltip
    widget.crop_input.value = 48  # the user's crop stays
    widget.backbone_input.value = DINOV2
    assert widget.crop_input.value == 48
    assert widget.model_input.value == MODEL_DINOV2  # pretrained again: it was wanted
    widget.model_input.value = MODEL_UNTRAINED  # the user's choice ...
    widget.backbone_input.value = "resnet34"
    widget.backbone_input.value = DINOV2
    assert widget.model_input.value == MODEL_UNTRAINED  # ... stays


def test_weights_button__asks_then_downloads_dinov2_and_dinov2_is_the_model(
    make_napari_viewer, qtbot, cache, weights_server, monkeypatch
):
    viewer, _ = _viewer(make_napari_viewer)
    widget = _embed_dock(viewer)
    widget.backbone_input.value = DINOV2
    button = widget.weights_button
    assert not button.native.isHidden()
    assert button.button.text == "Download DINOv2 weights (about 84 MB)"
    body = state_dict_bytes()
    name = _publish(monkeypatch, DINOV2, "dinov2", body)  # a stand-in of known checksum
    weights_server.routes[f"/{name}"] = Route(body, chunk=1 << 14)
    monkeypatch.setenv("SEGREP_WEIGHTS_URL", weights_server.base)
    asked = []
    button.confirm = lambda info: asked.append(info) or True  # the dialog, answered yes
    button.button.native.click()
    qtbot.waitUntil(lambda: button.job is None, timeout=TIMEOUT_MS)
    ((info,),) = [asked]
    assert (info.backbone, info.weights, info.licence) == (DINOV2, "dinov2", "Apache-2.0")
    assert info.url == f"{weights_server.base}/{name}" and info.path == cache / name
    assert (cache / name).read_bytes() == body and leftovers(cache) == []
    assert button.native.isHidden() and button.status.value == ""
    assert widget.model_input.value == MODEL_DINOV2
    assert _session.pretrained_available(DINOV2, "dinov2")


def test_weights_button__the_dinov2_question_names_publisher_size_licence_url_and_destination(
    qtbot, cache, monkeypatch
):
    from qtpy.QtWidgets import QMessageBox

    asked = []

    def answer(parent, title, text, *args):
        asked.append((title, text))
        return QMessageBox.StandardButton.No

    monkeypatch.setattr(QMessageBox, "question", answer)
    button = WeightsDownloadButton(DINOV2)
    qtbot.addWidget(button.native)
    assert button.download() is None and button.status.value == "Not downloaded."
    ((title, text),) = asked
    ws = catalogue.weight_set(DINOV2, "dinov2")
    assert title == "Download DINOv2 weights?"
    assert text.startswith(f"Download Meta AI (DINOv2)'s DINOv2 weights for {DINOV2} (about 84 MB)")
    assert "Licence: Apache-2.0" in text and f"From: {ws.url}" in text
    assert f"To: {cache / ws.filename}" in text
    assert "publishes no checksum" in text  # checked by loading it into the backbone
    assert not cache.exists()
    # a backbone without pretrained weights: nothing to offer
    button.follow("vit_tiny_patch16_224")
    assert button.info() is None and button.download() is None and len(asked) == 1


def test_train_widget__backbone_field_sets_the_crop_the_starts_and_the_config(
    make_napari_viewer, cache, monkeypatch, tmp_path
):
    from napari_segrep._widgets.train import START_DINOV2, START_IMAGENET, START_UNTRAINED

    body = state_dict_bytes(1000)
    name = _publish(monkeypatch, DINOV2, "dinov2", body)
    cache.mkdir(parents=True)
    (cache / name).write_bytes(body)
    viewer, _ = _viewer(make_napari_viewer)
    _, widget = viewer.window.add_plugin_dock_widget("napari-segrep", "Train SegRep")
    assert widget.backbone_input.value == "resnet18" and widget.crop_input.value == 64
    assert list(widget.start_input.choices) == [START_UNTRAINED]
    assert widget.weights_button.button.text == "Download ImageNet weights (45 MB)"
    widget.backbone_input.value = DINOV2
    assert widget.crop_input.value == 112
    assert list(widget.start_input.choices) == [START_DINOV2, START_UNTRAINED]
    assert widget.start_input.value == START_DINOV2  # the default once present
    assert widget.weights_button.native.isHidden()
    assert widget.config()["backbone"] == DINOV2
    widget.backbone_input.value = "resnet50"
    assert START_IMAGENET not in widget.start_input.choices
    assert widget.weights_button.button.text == "Download ImageNet weights (98 MB)"
    # a config file's backbone goes to the picker, its crop size wins over the backbone's
    path = tmp_path / "train.yaml"
    path.write_text(f"backbone: {DINOV2}\ncrop_size: 64\n")
    assert widget.load_config(path)
    assert widget.backbone_input.value == DINOV2 and widget.crop_input.value == 64
    path.write_text("backbone: resnet19\ncrop_size: 32\n")  # no such backbone: nothing changes
    assert not widget.load_config(path)
    assert f"{path}: backbone: 'resnet19' is not one of ['resnet18'," in widget.status.value
    assert widget.backbone_input.value == DINOV2 and widget.crop_input.value == 64


@pytest.mark.usefixtures("one_torch_thread")
def test_train_widget__trains_the_chosen_backbone(
    make_napari_viewer, qtbot, cache, narrow_backbone, tmp_path
):
    viewer, _ = _viewer(make_napari_viewer, n_cells=16)
    _, widget = viewer.window.add_plugin_dock_widget("napari-segrep", "Train SegRep")
    widget.backbone_input.reset_choices()  # the registry's backbones, the test's too
    widget.backbone_input.value = narrow_backbone
    widget.epochs_input.value = 1
    widget.batch_input.value = 8
    widget.crop_input.value = 32
    widget.device_input.value = "cpu"
    widget.checkpoint_dir_input.value = tmp_path / "run"
    widget.run()
    qtbot.waitUntil(lambda: widget.job is None, timeout=TIMEOUT_MS)
    assert widget.result is not None, widget.status.value
    assert widget.result.encoder.backbone_name == narrow_backbone


def test_classify_widget__a_classifier_on_an_untrained_other_backbone_applies_in_a_fresh_session(
    make_napari_viewer, qtbot, cache, monkeypatch, tmp_path, narrow_backbone
):
    """Issue 26: a classifier trained on a layer embedded by an untrained non-resnet18 encoder
    (the narrow test ResNet, chosen in the picker), saved, then applied to another layer in a
    fresh session: the encoder is rebuilt from the classifier's record (its backbone
    included), its fingerprint matches, and it classifies."""
    monkeypatch.setattr(_session, "trained_encoder", None)
    viewer, classes = _viewer(make_napari_viewer, n_cells=12)
    embed = _embed_dock(viewer)
    embed.backbone_input.reset_choices()  # the registry's backbones, the test's too
    embed.backbone_input.value = narrow_backbone
    embed.crop_input.value = 32
    assert embed.model_input.value == MODEL_UNTRAINED
    worker = embed.run()
    with qtbot.waitSignal(worker.finished, timeout=TIMEOUT_MS):
        pass
    qtbot.waitUntil(lambda: embed.job is None and embed.results is not None, timeout=TIMEOUT_MS)
    assert embed.results.table.attrs["encoder"]["backbone"] == narrow_backbone
    _, classify = viewer.window.add_plugin_dock_widget("napari-segrep", "Classify segments")
    names = sorted(set(classes.values()))
    for name in names:
        classify.add_class(name)
    for name in names:
        labels = [k for k, v in sorted(classes.items()) if v == name][:3]
        classify.annotate_labels(labels, name)
    qtbot.waitUntil(
        lambda: classify.job is None and classify.classifier is not None, timeout=TIMEOUT_MS
    )
    path = classify.save_classifier(tmp_path / "cells.segclf", overwrite=True)
    assert classify.classifier.info["encoder"]["backbone"] == narrow_backbone

    # a fresh session: another viewer, nothing embedded, no session model
    viewer.close()
    viewer2 = make_napari_viewer()
    image2, labels2, _ = make_cells(shape=(128, 128), n_cells=8, seed=9)
    viewer2.add_image(image2, name="img2")
    second = viewer2.add_labels(labels2, name="cells2")
    _, classify2 = viewer2.window.add_plugin_dock_widget("napari-segrep", "Classify segments")
    assert classify2.load_classifier(path) is not None
    # no encoder to reuse here: it is rebuilt from the classifier's record, fingerprint checked
    assert classify2.results is None and _session.trained_encoder is None
    worker = classify2.apply_to(second, [viewer2.layers["img2"]])
    with qtbot.waitSignal(worker.finished, timeout=TIMEOUT_MS):
        pass
    qtbot.waitUntil(lambda: classify2.apply_job is None, timeout=TIMEOUT_MS)
    assert "Error" not in classify2.status.value, classify2.status.value
    features = second.features
    assert set(features["label"]) == set(np.unique(labels2[labels2 > 0]))
    assert set(features["class_predicted"]) <= set(names)
    assert "cells2 predictions" in viewer2.layers


def _vit_available() -> bool:
    import importlib.util

    return (
        importlib.util.find_spec("timm") is not None
        and importlib.util.find_spec("napari_segrep.engine.backbones.vit") is not None
    )


@pytest.mark.skipif(not _vit_available(), reason="the masked ViT backbone (timm) is not here")
@pytest.mark.usefixtures("one_torch_thread")
def test_embed_widget__a_vit_chosen_in_the_picker_embeds_and_the_table_names_it(
    make_napari_viewer, qtbot, cache
):
    viewer, _ = _viewer(make_napari_viewer, n_cells=8)
    widget = _embed_dock(viewer)
    widget.backbone_input.value = "vit_tiny_patch16_224"
    assert widget.crop_input.value == 112 and widget.model_input.value == MODEL_UNTRAINED
    widget.crop_input.value = 32  # small and fast: a 2x2 token grid
    worker = widget.run()
    with qtbot.waitSignal(worker.finished, timeout=TIMEOUT_MS):
        pass
    qtbot.waitUntil(lambda: widget.job is None and widget.results is not None, timeout=TIMEOUT_MS)
    table = widget.results.table
    record = table.attrs["encoder"]
    assert record["backbone"] == "vit_tiny_patch16_224" and record["weights"] is None
    dim = catalogue.get_entry("vit_tiny_patch16_224").embedding_dim
    assert f"emb_{dim - 1}" in table and f"emb_{dim}" not in table
    assert len(table) == len(np.unique(viewer.layers["cells"].data)) - 1
    assert widget.results.provenance()["encoder"]["backbone"] == "vit_tiny_patch16_224"


def test_embed_widget__a_pretrained_model_whose_file_went_is_an_error_not_an_untrained_model(
    make_napari_viewer, qtbot, cache, monkeypatch
):
    from ..weights_server import RESNET18_FILE, publish

    body = state_dict_bytes(1000)
    publish(monkeypatch, body)
    cache.mkdir(parents=True)
    (cache / RESNET18_FILE).write_bytes(body)
    viewer, _ = _viewer(make_napari_viewer)
    widget = _embed_dock(viewer)
    assert widget.model_input.value == MODEL_IMAGENET
    (cache / RESNET18_FILE).unlink()  # removed by hand after the choice
    worker = widget.run()
    with qtbot.waitSignal(worker.finished, timeout=TIMEOUT_MS):
        pass
    qtbot.waitUntil(lambda: widget.job is None, timeout=TIMEOUT_MS)
    assert widget.results is None and widget.status.value.startswith("Error: ")
    assert "weights" in widget.status.value
