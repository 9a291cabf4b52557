"""Volumes in napari: what a 3D labels layer is (asked once, remembered in the layer), and
Embed segments / Classify segments on a z-stack (one row and point per 3D object, linked both
ways in every plane and in the 3D view; live mode), in real viewers."""

from __future__ import annotations

import numpy as np
import pytest

from ..conftest import disc_labels, require_napari

require_napari()

from napari.layers import Labels  # noqa: E402

from napari_segrep._widgets._layer_axes import (  # noqa: E402
    METADATA_KEY,
    LayerAxesUnknown,
    layer_layout,
)

TIMEOUT_MS = 120_000


def blob_volume(shape=(24, 48, 48), seed=0):
    """A float z-stack and its labels: 6 ellipsoids (ids 1-6) of different sizes, apart."""
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.mgrid[: shape[0], : shape[1], : shape[2]]
    labels = np.zeros(shape, np.int32)
    centres = [(6, 12, 12), (8, 12, 36), (12, 36, 12), (16, 36, 36), (18, 24, 24), (6, 38, 26)]
    radii = [(4, 6, 6), (3, 5, 5), (5, 7, 6), (4, 6, 7), (3, 4, 4), (3, 4, 5)]
    for k, ((cz, cy, cx), (rz, ry, rx)) in enumerate(zip(centres, radii, strict=True)):
        inside = ((zz - cz) / rz) ** 2 + ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        labels[inside & (labels == 0)] = k + 1
    image = rng.random(shape).astype(np.float32) * 0.2 + 0.5 * (labels > 0)
    return image, labels


def _dock(viewer):
    _, widget = viewer.window.add_plugin_dock_widget("napari-segrep", "Embed segments")
    widget.crop_input.value = 16
    widget.umap_input.value = False
    return widget


# ---------------------------------------------------------------------------- the layout
def test_layer_layout__answer_then_axis_labels_then_dimensions_else_unknown():
    labels = blob_volume()[1]
    assert layer_layout(Labels(labels[0])).axes == "yx"
    assert layer_layout(Labels(labels[None].repeat(2, axis=0))).axes == "tzyx"
    plain = Labels(labels, name="vol")
    with pytest.raises(LayerAxesUnknown, match=r"'vol' is 3D \(24, 48, 48\)"):
        layer_layout(plain)  # napari's default axis labels ('-3', '-2', '-1') say nothing
    assert layer_layout(Labels(labels, axis_labels=("Z", "Y", "X"))).axes == "zyx"
    assert layer_layout(Labels(labels, axis_labels=("t", "y", "x"))).axes == "tyx"
    # the user's answer comes first, and travels with the layer's metadata
    named = Labels(labels, axis_labels=("t", "y", "x"), metadata={"other": 1})
    from napari_segrep._widgets._layer_axes import remember_axes

    remember_axes(named, "zyx")
    assert named.metadata == {"other": 1, METADATA_KEY: {"axes": "zyx"}}
    assert layer_layout(named).axes == "zyx"
    data, state, _ = named.as_layer_data_tuple()
    assert layer_layout(Labels(data, **state)).axes == "zyx"  # a saved and reloaded layer
    # an answer that no longer fits the data (now 2D) is ignored
    named.data = labels[0]
    assert layer_layout(named).axes == "yx"


def test_layer_layout__spacing_from_the_scale_of_a_volume_only():
    labels = blob_volume()[1]
    layout = layer_layout(Labels(labels, scale=(2, 0.5, 0.5), axis_labels=("z", "y", "x")))
    assert layout.spacing == (2.0, 0.5, 0.5) and layout.spacing_source == "napari scale"
    assert layer_layout(Labels(labels, axis_labels=("z", "y", "x"))).spacing is None
    movie = Labels(labels[None].repeat(2, axis=0), scale=(5, 3, 1, 1))
    assert layer_layout(movie).spacing == (3.0, 1.0, 1.0)  # the time axis is not spacing
    assert layer_layout(Labels(labels[0], scale=(2, 2))).spacing is None  # 2D: as before
    one_plane = Labels(labels[:1], name="thin", axis_labels=("z", "y", "x"))
    with pytest.raises(ValueError, match="'thin'.*at least 2 planes"):
        layer_layout(one_plane)


# ---------------------------------------------------------------------------- asked once
def test_embed_volumes__asks_once_run_disabled_until_answered_remembered(make_napari_viewer):
    viewer = make_napari_viewer()
    image, labels = blob_volume()
    viewer.add_image(image, name="img")
    layer = viewer.add_labels(labels, name="vol")
    widget = _dock(viewer)
    question = widget.axes_question
    assert question.asking and question.layer is layer
    assert question.question.value == "'vol' is 3D:"
    assert not widget.run_button.enabled
    assert "is it a z-stack (3D objects) or a time-lapse (2D frames)" in widget.status.value
    with pytest.raises(ValueError, match="'vol' is 3D"):
        widget.run()  # nothing is guessed
    assert widget.volume_model_input.native.isHidden()
    question.zstack_button.changed.emit(True)  # the user's click
    assert layer.metadata[METADATA_KEY] == {"axes": "zyx"}
    assert not question.asking and widget.run_button.enabled, widget.status.value
    assert not widget.volume_model_input.native.isHidden()  # a z-stack: how a new model sees 3D objects
    # remembered: another widget, or the layer chosen again, does not ask
    other = _dock(viewer)
    assert not other.axes_question.asking and other.run_button.enabled
    # a layer whose axis labels say it is not asked either
    viewer.add_labels(labels, name="named", axis_labels=("z", "y", "x"))
    other.labels_input.value = viewer.layers["named"]
    assert not other.axes_question.asking and other.run_button.enabled, other.status.value
    # a layer that is 3D and unknown is asked about as soon as it is chosen
    other.labels_input.value = viewer.layers["vol"]
    layer.metadata = {}
    other.labels_input.value = viewer.layers["named"]
    other.labels_input.value = viewer.layers["vol"]
    assert other.axes_question.asking and not other.run_button.enabled


def test_embed_volumes__image_and_labels_must_agree_on_the_voxel_spacing(make_napari_viewer):
    viewer = make_napari_viewer()
    image, labels = blob_volume()
    viewer.add_image(image, name="img", scale=(1, 0.5, 0.5))
    viewer.add_labels(labels, name="vol", scale=(2, 0.5, 0.5), axis_labels=("z", "y", "x"))
    widget = _dock(viewer)
    assert not widget.run_button.enabled
    assert (
        "Image 'img' has scale (1, 0.5, 0.5) but labels 'vol' have (2, 0.5, 0.5): give both "
        "layers the same scale" in widget.status.value
    )
    viewer.layers["img"].scale = (2, 0.5, 0.5)
    widget.labels_input.reset_choices()
    widget._update_run_state()
    assert widget.run_button.enabled, widget.status.value


def test_embed_volumes__a_time_lapse_answer_embeds_frame_by_frame_as_before(
    make_napari_viewer, qtbot
):
    from ._embed import run_and_wait

    viewer = make_napari_viewer()
    labels = np.stack(
        [
            disc_labels((48, 48), [(12, 12, 5), (30, 34, 7)]),
            disc_labels((48, 48), [(24, 24, 6)]),
            disc_labels((48, 48), [(12, 34, 5), (34, 12, 6)], start=3),
        ]
    )
    image = np.random.default_rng(0).random(labels.shape).astype(np.float32)
    viewer.add_image(image, name="img")
    layer = viewer.add_labels(labels, name="movie")
    widget = _dock(viewer)
    widget.axes_question.timelapse_button.changed.emit(True)
    assert layer.metadata[METADATA_KEY] == {"axes": "tyx"}
    assert widget.volume_model_input.native.isHidden()
    run_and_wait(qtbot, widget)
    table = widget.table
    expected = [(int(v), t) for t in range(3) for v in np.unique(labels[t]) if v]
    assert list(zip(table["label"], table["frame"], strict=True)) == expected
    assert "centroid_z" not in table
