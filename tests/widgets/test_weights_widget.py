"""The "Download ImageNet weights" button in Embed segments (real napari viewers, Xvfb in CI),
downloading from a real local HTTP server (tests/weights_server.py)."""

from __future__ import annotations

import io
import os

import pytest

from napari_segrep._sample_data import make_cells

from ..conftest import require_napari
from ..weights_server import (
    RESNET18_FILE,
    Route,
    free_port,
    leftovers,
    publish,
    state_dict_bytes,
)

require_napari()

from napari_segrep._widgets import _session  # noqa: E402
from napari_segrep._widgets._weights import WeightsDownloadButton  # noqa: E402
from napari_segrep._widgets.embed import MODEL_IMAGENET, MODEL_UNTRAINED  # noqa: E402

TIMEOUT_MS = 120_000


@pytest.fixture(scope="module")
def resnet18_bytes() -> bytes:
    """torchvision-format resnet18 weights (random values stand in for ImageNet's), as the
    server sends them: the downloaded file must really load into the encoder."""
    import torch
    import torchvision

    torch.manual_seed(0)
    buffer = io.BytesIO()
    torch.save(torchvision.models.resnet18().state_dict(), buffer)
    return buffer.getvalue()


@pytest.fixture()
def cache(weights_cache):
    """An empty torch cache (the session asks the cache itself: nothing to restore)."""
    return weights_cache


def _dock(make_napari_viewer):
    viewer = make_napari_viewer()
    image, labels, _ = make_cells(shape=(128, 128), n_cells=10, seed=3)
    viewer.add_image(image, name="img")
    viewer.add_labels(labels, name="cells")
    _, widget = viewer.window.add_plugin_dock_widget("napari-segrep", "Embed segments")
    widget.crop_input.value = 32
    widget.umap_input.value = False
    return viewer, widget


def _serve(server, body: bytes, **route) -> str:
    server.routes[f"/{RESNET18_FILE}"] = Route(body, **route)
    return server.url(f"/{RESNET18_FILE}")


def _click_and_wait(qtbot, button: WeightsDownloadButton) -> None:
    button.button.native.click()
    qtbot.waitUntil(lambda: button.job is None, timeout=TIMEOUT_MS)


def test_weights_button__downloads_after_consent_then_imagenet_is_the_model(
    make_napari_viewer, qtbot, cache, weights_server, resnet18_bytes, monkeypatch
):
    publish(monkeypatch, resnet18_bytes)
    viewer, widget = _dock(make_napari_viewer)
    button = widget.weights_button
    assert MODEL_IMAGENET not in widget.model_input.choices
    assert widget.model_input.value == MODEL_UNTRAINED
    assert not button.native.isHidden() and button.button.text.endswith("(45 MB)")
    asked = []
    button.confirm = lambda info: asked.append(info) or True  # the dialog, answered yes
    button.url = _serve(weights_server, resnet18_bytes, chunk=1 << 20)
    _click_and_wait(qtbot, button)

    path = cache / RESNET18_FILE
    assert [info.url for info in asked] == [button.url] and asked[0].path == path
    assert path.read_bytes() == resnet18_bytes and leftovers(cache) == []
    assert button.native.isHidden()  # the weights are there: no button any more
    assert MODEL_IMAGENET in widget.model_input.choices
    assert widget.model_input.value == MODEL_IMAGENET  # and ImageNet is chosen
    # ... and it works: Run embeds with the downloaded weights
    worker = widget.run()
    with qtbot.waitSignal(worker.finished, timeout=TIMEOUT_MS):
        pass
    qtbot.waitUntil(lambda: widget.job is None and widget.results is not None, timeout=TIMEOUT_MS)
    assert widget.results.run.encoder.config()["weights"] == "imagenet"
    assert "emb_511" in viewer.layers["cells"].features


def test_weights_button__declined_downloads_nothing(
    make_napari_viewer, qtbot, cache, weights_server, resnet18_bytes
):
    _, widget = _dock(make_napari_viewer)
    button = widget.weights_button
    button.confirm = lambda info: False
    button.url = _serve(weights_server, resnet18_bytes)
    assert button.download() is None
    assert button.status.value == "Not downloaded." and weights_server.requests == []
    assert not cache.exists() and not button.native.isHidden()


def test_weights_button__errors_are_shown_in_the_widget(make_napari_viewer, qtbot, cache):
    _, widget = _dock(make_napari_viewer)
    button = widget.weights_button
    button.confirm = lambda info: True
    port = free_port()
    button.url = f"http://127.0.0.1:{port}/{RESNET18_FILE}"
    _click_and_wait(qtbot, button)
    text = button.status.value
    assert text.startswith("Download failed: could not download") and f":{port}" in text
    assert "Traceback" not in text and "\n" not in text
    assert button.button.enabled and not button.native.isHidden()
    assert not cache.exists() or os.listdir(cache) == []
    assert MODEL_IMAGENET not in widget.model_input.choices


def test_weights_button__cancel_midway_leaves_nothing(
    make_napari_viewer, qtbot, cache, weights_server, monkeypatch
):
    _, widget = _dock(make_napari_viewer)
    button = widget.weights_button
    button.confirm = lambda info: True
    body = state_dict_bytes()
    publish(monkeypatch, body)
    button.url = _serve(weights_server, body, chunk=4096, delay_s=0.02)  # ~4 s in all
    button.button.native.click()
    assert button.job is not None and not button.button.enabled
    assert not button.cancel_button.native.isHidden()
    qtbot.waitUntil(lambda: bool(leftovers(cache)), timeout=TIMEOUT_MS)  # under way
    button.cancel_button.native.click()
    qtbot.waitUntil(lambda: button.job is None, timeout=TIMEOUT_MS)
    assert button.status.value == "Download cancelled: nothing was written."
    assert os.listdir(cache) == [] and button.button.enabled
    assert button.cancel_button.native.isHidden()


def test_embed_widget__imagenet_is_the_default_model_when_present(
    make_napari_viewer, cache, monkeypatch
):
    body = state_dict_bytes(1000)
    publish(monkeypatch, body)
    cache.mkdir(parents=True)
    (cache / RESNET18_FILE).write_bytes(body)
    _, widget = _dock(make_napari_viewer)
    assert widget.model_input.value == MODEL_IMAGENET
    assert widget.weights_button.native.isHidden()


def test_weights_button__stands_alone_and_calls_back(qtbot, cache, weights_server, monkeypatch):
    """What another widget (Train SegRep) uses: the button with an ``on_downloaded``."""
    body = state_dict_bytes()
    publish(monkeypatch, body)
    done = []
    button = WeightsDownloadButton("resnet18", on_downloaded=done.append)
    qtbot.addWidget(button.native)
    button.confirm = lambda info: True
    button.url = _serve(weights_server, body)
    _click_and_wait(qtbot, button)
    assert done == [cache / RESNET18_FILE] and button.native.isHidden()
    assert _session.pretrained_available("resnet18")  # the session knows (restored after)


def test_weights_button__the_dialog_names_url_size_and_destination(
    qtbot, cache, monkeypatch, weights_server
):
    """Without a ``confirm`` of its own, the button asks in a dialog (answered here, since a
    modal dialog would wait for a person)."""
    from qtpy.QtWidgets import QMessageBox

    asked = []

    def answer(parent, title, text, *args):
        asked.append((title, text))
        return QMessageBox.StandardButton.No

    monkeypatch.setattr(QMessageBox, "question", answer)
    monkeypatch.setenv("SEGREP_WEIGHTS_URL", weights_server.base)
    button = WeightsDownloadButton()
    qtbot.addWidget(button.native)
    assert button.download() is None and weights_server.requests == []
    ((title, text),) = asked
    assert title == "Download ImageNet weights?"
    assert f"{weights_server.base}/{RESNET18_FILE}" in text and "about 45 MB" in text
    assert str(cache / RESNET18_FILE) in text


def test_weights_button__a_damaged_file_is_named_and_downloaded_again(
    make_napari_viewer, qtbot, cache, weights_server, monkeypatch
):
    """An error page saved under torchvision's name: ImageNet is not offered, the button
    says why and downloads the file again, replacing it; then ImageNet is the model."""
    body = state_dict_bytes()
    publish(monkeypatch, body)
    cache.mkdir(parents=True)
    path = cache / RESNET18_FILE
    path.write_bytes(b"<html><body>Sign in to the proxy</body></html>")
    _, widget = _dock(make_napari_viewer)
    button = widget.weights_button
    assert MODEL_IMAGENET not in widget.model_input.choices
    assert widget.model_input.value == MODEL_UNTRAINED
    assert not button.native.isHidden() and button.button.text.startswith(
        "Download ImageNet weights again ("
    )
    status = button.status.value
    assert status.startswith("The ImageNet weights file in the torch cache is damaged (")
    assert "it looks like a web page" in status and not button.status.native.isHidden()
    asked = []
    button.confirm = lambda info: asked.append(info) or True
    button.url = _serve(weights_server, body)
    _click_and_wait(qtbot, button)
    assert asked[0].damaged is not None  # the dialog says the file there is damaged
    assert path.read_bytes() == body and leftovers(cache) == []
    assert button.native.isHidden()
    assert MODEL_IMAGENET in widget.model_input.choices
    assert widget.model_input.value == MODEL_IMAGENET


def test_weights_button__the_dialog_says_a_damaged_file_is_replaced(qtbot, cache, monkeypatch):
    from qtpy.QtWidgets import QMessageBox

    cache.mkdir(parents=True)
    (cache / RESNET18_FILE).write_bytes(b"")
    asked = []

    def answer(parent, title, text, *args):
        asked.append(text)
        return QMessageBox.StandardButton.No

    monkeypatch.setattr(QMessageBox, "question", answer)
    button = WeightsDownloadButton()
    qtbot.addWidget(button.native)
    assert button.download() is None
    assert (
        "The file there now is damaged (it is empty): it is replaced once the new one is "
        in (asked[0])
    )
    assert (cache / RESNET18_FILE).read_bytes() == b""  # declined: untouched
