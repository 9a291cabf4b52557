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
from napari_segrep._widgets._map_view import DIMMED  # noqa: E402

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
    assert (
        not widget.volume_model_input.native.isHidden()
    )  # a z-stack: how a new model sees 3D objects
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


# ---------------------------------------------------------------------------- a z-stack
SCALE = (2.0, 0.5, 0.5)  # (dz, dy, dx): the voxel spacing


@pytest.fixture()
def zstack_embedded(make_napari_viewer, qtbot):
    """A z-stack (24, 48, 48) of 6 objects with scale (2, 0.5, 0.5), its axes answered in
    Embed segments, embedded (3D model, crop 16)."""
    from ._embed import run_and_wait

    viewer = make_napari_viewer()
    image, labels = blob_volume()
    viewer.add_image(image, name="img", scale=SCALE)
    layer = viewer.add_labels(labels, name="vol", scale=SCALE)
    widget = _dock(viewer)
    widget.axes_question.answer("zyx")
    run_and_wait(qtbot, widget)
    return viewer, widget, layer, image, labels


def _plane_colour(layer, z: int, label: int, labels) -> np.ndarray:
    """The colour the labels layer draws ``label`` in, in plane ``z`` as napari slices it."""
    viewer_plane = np.asarray(layer._slice.image.raw)
    assert viewer_plane.shape == labels.shape[1:]
    np.testing.assert_array_equal(viewer_plane, labels[z])  # napari shows plane z
    yy, xx = np.nonzero(labels[z] == label)
    return np.asarray(layer.colormap.map(viewer_plane[yy[0], xx[0]]))


def _show_plane(viewer, z: int) -> None:
    viewer.dims.set_point(0, z * SCALE[0])
    assert viewer.dims.current_step[0] == z


def test_embed_volumes__one_row_and_point_per_3d_object_with_the_layer_spacing(
    zstack_embedded, tmp_path
):
    import json

    import pandas as pd

    from napari_segrep.analysis.export import sidecar_path

    viewer, widget, layer, image, labels = zstack_embedded
    table = widget.table
    ids = [int(v) for v in np.unique(labels) if v]
    assert list(table["label"]) == ids and "frame" not in table  # one row per 3D object
    z = np.nonzero(labels == 5)[0]
    assert table.loc[table["label"] == 5, "centroid_z"].item() == pytest.approx(z.mean())
    assert table.loc[table["label"] == 5, "area"].item() == (labels == 5).sum()  # voxels
    assert {"bbox_z0", "bbox_z1", "centroid_y", "emb_0"} <= set(table.columns)
    # the layers' scale is the voxel spacing the engine was given
    recorded = {"axes": "zyx", "spacing": [2.0, 0.5, 0.5], "spacing_source": "napari scale"}
    assert table.attrs["layout"] == recorded
    assert widget.results.run.params["axes"] == "zyx"
    assert widget.results.run.params["spacing"] == SCALE
    assert widget.results.provenance()["layout"] == recorded
    points = viewer.layers["vol map"]
    assert list(points.features["label"]) == ids
    assert points.data.shape == (len(ids), 2)  # one point per object, beside the volume
    assert points.data[:, 1].min() > labels.shape[2] * SCALE[2]
    assert list(layer.features["label"]) == ids
    # exported: the 3D geometry, and the layout in the sidecar
    out = widget.export_csv(tmp_path / "vol.csv")
    back = pd.read_csv(out)
    assert list(back.columns[:5]) == ["label", "centroid_z", "centroid_y", "centroid_x", "area"]
    assert json.loads(sidecar_path(out).read_text())["layout"] == recorded


def test_embed_volumes__selected_point_highlights_its_object_in_every_plane(zstack_embedded):
    viewer, widget, layer, image, labels = zstack_embedded
    row = int(np.flatnonzero(widget.table["label"] == 3)[0])
    z3 = np.unique(np.nonzero(labels == 3)[0])
    _show_plane(viewer, 0)  # object 3 is not in plane 0: selecting its point goes to it
    viewer.layers["vol map"].selected_data = {row}
    middle = int(round(widget.table["centroid_z"].iloc[row]))
    assert viewer.dims.current_step[0] == middle
    for z in (z3[0], z3[-1]):  # highlighted in its first and last plane, others dimmed
        _show_plane(viewer, int(z))
        assert _plane_colour(layer, int(z), 3, labels)[3] == pytest.approx(1.0)
        other = next(v for v in np.unique(labels[z]) if v not in (0, 3))
        assert _plane_colour(layer, int(z), int(other), labels)[3] < 0.5
    # a point whose object the plane shown cuts: the plane stays
    _show_plane(viewer, int(z3[0]))
    viewer.layers["vol map"].selected_data = set()
    viewer.layers["vol map"].selected_data = {row}
    assert viewer.dims.current_step[0] == z3[0]


def test_embed_volumes__click_in_any_plane_or_through_the_3d_view_selects_the_point(
    zstack_embedded, MouseEvent
):
    from napari.utils._proxies import ReadOnlyWrapper
    from napari.utils.interactions import (
        mouse_move_callbacks,
        mouse_press_callbacks,
        mouse_release_callbacks,
    )

    viewer, widget, layer, image, labels = zstack_embedded
    points = viewer.layers["vol map"]
    layer.mode = "pan_zoom"
    rows = {int(v): i for i, v in enumerate(widget.table["label"])}

    def world(z, y, x):
        return (z * SCALE[0], y * SCALE[1], x * SCALE[2])

    # 2D slicing: object 4 clicked in a plane away from its middle
    zz, yy, xx = np.nonzero(labels == 4)
    z = int(zz.min())
    _show_plane(viewer, z)
    y, x = yy[zz == z][0], xx[zz == z][0]
    press = MouseEvent(type="mouse_press", position=world(z, y, x))
    mouse_press_callbacks(layer, ReadOnlyWrapper(press))
    assert set(points.selected_data) == {rows[4]} and layer.selected_label == 4

    # the 3D view: a ray along z through (y, x) = (24, 24) meets object 5 only
    viewer.dims.ndisplay = 3
    ray = {"dims_displayed": (0, 1, 2), "view_direction": (1.0, 0.0, 0.0)}
    at = world(0, 24, 24)

    def event(kind, **extra):
        return ReadOnlyWrapper(MouseEvent(type=kind, position=at, **ray, **extra))

    mouse_press_callbacks(layer, event("mouse_press"))
    assert set(points.selected_data) == {rows[4]}  # picked at the release, not the press
    mouse_release_callbacks(layer, event("mouse_release"))
    assert set(points.selected_data) == {rows[5]} and layer.selected_label == 5
    # a drag turns the camera: nothing is picked
    points.selected_data = {rows[1]}
    mouse_press_callbacks(layer, event("mouse_press"))
    mouse_move_callbacks(layer, event("mouse_move", is_dragging=True))
    mouse_release_callbacks(layer, event("mouse_release"))
    assert set(points.selected_data) == {rows[1]}
    # a click whose ray meets no object clears the selection
    at = world(0, 1, 1)
    mouse_press_callbacks(layer, event("mouse_press"))
    mouse_release_callbacks(layer, event("mouse_release"))
    assert set(points.selected_data) == set()


def test_embed_volumes__many_highlighted_objects_overlay_in_every_plane(
    zstack_embedded, monkeypatch
):
    from napari_segrep._widgets import _highlight

    viewer, widget, layer, image, labels = zstack_embedded
    monkeypatch.setattr(_highlight, "OVERLAY_MIN_ENTRIES", 2)  # the overlay's path
    rows = np.flatnonzero(np.isin(widget.table["label"], [2, 3, 4]))
    viewer.layers["vol map"].selected_data = set(rows.tolist())
    overlay = widget.map_view._overlay.layer
    assert overlay.data.shape == labels.shape and overlay.visible and layer.opacity == 0
    np.testing.assert_allclose(overlay.scale, SCALE)
    colours = widget.map_view._colours()
    for label in (3, 1):
        expected = colours[rows[1]] if label == 3 else DIMMED
        for z in np.unique(np.nonzero(labels == label)[0])[[0, -1]]:
            _show_plane(viewer, int(z))
            shown = np.asarray(overlay._slice.image.raw)
            yy, xx = np.nonzero(labels[z] == label)
            np.testing.assert_allclose(
                overlay.colormap.map(shown[yy[0], xx[0]]), expected, atol=0.01
            )


def _drawn():
    from napari_segrep._widgets.embed import EmbedSegmentsWidget

    return all(w.map_view.classes_drawn for w in EmbedSegmentsWidget.instances)


def test_classify_volumes__click_any_plane_or_the_3d_view_predictions_per_object(
    zstack_embedded, qtbot, MouseEvent
):
    from napari.utils._proxies import ReadOnlyWrapper
    from napari.utils.interactions import mouse_press_callbacks, mouse_release_callbacks

    viewer, embed, layer, image, labels = zstack_embedded
    _, widget = viewer.window.add_plugin_dock_widget("napari-segrep", "Classify segments")
    assert widget.results is embed.results
    widget.add_class("big")
    widget.add_class("small")
    layer.mode = "pan_zoom"

    def click_in_plane(label, which):  # its first or last plane, never its middle one
        zz, yy, xx = np.nonzero(labels == label)
        z = int(zz.min() if which == "first" else zz.max())
        _show_plane(viewer, z)
        at = (z * SCALE[0], yy[zz == z][0] * SCALE[1], xx[zz == z][0] * SCALE[2])
        mouse_press_callbacks(layer, ReadOnlyWrapper(MouseEvent("mouse_press", at)))

    widget.class_input.value = "big"
    click_in_plane(1, "first")
    click_in_plane(3, "last")
    widget.class_input.value = "small"
    click_in_plane(2, "last")
    viewer.dims.ndisplay = 3  # a ray along z through (24, 24) meets object 5 only
    ray = {"dims_displayed": (0, 1, 2), "view_direction": (1.0, 0.0, 0.0)}
    for kind in ("mouse_press", "mouse_release"):
        event = MouseEvent(kind, (0.0, 24 * SCALE[1], 24 * SCALE[2]), **ray)
        (mouse_press_callbacks if kind == "mouse_press" else mouse_release_callbacks)(
            layer, ReadOnlyWrapper(event)
        )
    viewer.dims.ndisplay = 2
    table = widget.results.table
    annotated = dict(zip(table["label"], widget.results.annotations, strict=True))
    assert annotated == {1: "big", 2: "small", 3: "big", 4: "", 5: "small", 6: ""}
    qtbot.waitUntil(
        lambda: "class_predicted" in widget.results.table and widget.job is None,
        timeout=TIMEOUT_MS,
    )
    qtbot.waitUntil(_drawn, timeout=TIMEOUT_MS)
    table = widget.results.table
    assert len(table) == 6 and set(table["class_predicted"]) <= {"big", "small"}
    assert widget.predictions_layer().data.shape == labels.shape
    # the least sure object: the view goes to its middle plane, centred on it
    _show_plane(viewer, 0)
    row = widget.next_suggestion()
    record = widget.results.table.iloc[row]
    assert record["label"] in (4, 6) and widget.results.selection == {row}
    assert viewer.dims.current_step[0] == round(record["centroid_z"])
    scene = getattr(viewer, "scene", viewer)  # napari >= 0.9: viewer.scene.camera
    np.testing.assert_allclose(
        scene.camera.center[-2:],
        (record["centroid_y"] * SCALE[1], record["centroid_x"] * SCALE[2]),
        atol=1e-6,
    )


def test_embed_volumes__live_repaint_of_one_object_embeds_it_again_alone_in_3d(
    zstack_embedded, qtbot
):
    import napari_segrep as sr

    viewer, widget, layer, image, labels = zstack_embedded
    before = widget.table.copy()
    widget.live_input.value = True
    # object 2 grows by two planes below it (background there), painted in 3D
    zz, yy, xx = np.nonzero(labels == 2)
    grown = [(z, y, x) for z in (zz.max() + 1, zz.max() + 2) for y, x in zip(yy, xx, strict=True)]
    grown = np.unique(np.array(grown), axis=0)
    assert (labels[tuple(grown.T)] == 0).all()
    layer.data_setitem(tuple(grown.T), 2)
    row = int(np.flatnonzero(before["label"] == 2)[0])
    qtbot.waitUntil(
        lambda: widget.table["area"].iloc[row] == (np.asarray(layer.data) == 2).sum(),
        timeout=TIMEOUT_MS,
    )
    qtbot.waitUntil(lambda: widget.live_job is None, timeout=TIMEOUT_MS)
    after = widget.table
    assert list(after["label"]) == list(before["label"])
    others = after["label"] != 2
    emb = after.filter(like="emb_").to_numpy()
    np.testing.assert_array_equal(emb[others], before.filter(like="emb_").to_numpy()[others])
    assert after["bbox_z1"].iloc[row] == zz.max() + 3  # a 3D object, grown in z
    run = widget.results.run
    alone = sr.embed_segments(image, np.asarray(layer.data), run.encoder, only=[2], **run.params)
    np.testing.assert_allclose(emb[row], alone.filter(like="emb_").to_numpy()[0], rtol=1e-5)
    assert not np.allclose(emb[row], before.filter(like="emb_").to_numpy()[row])


def test_embed_volumes__time_lapse_of_volumes_frames_of_3d_objects_centring_sets_t_and_z(
    make_napari_viewer, qtbot
):
    from ._embed import run_and_wait

    viewer = make_napari_viewer()
    image, labels = blob_volume()
    movie = np.stack([labels, np.where(np.isin(labels, [2, 5]), labels, 0)])  # (2, Z, Y, X)
    viewer.add_image(np.stack([image, image[::-1]]), name="img")
    layer = viewer.add_labels(movie, name="movie")
    widget = _dock(viewer)
    assert not widget.axes_question.asking and widget.run_button.enabled, widget.status.value
    run_and_wait(qtbot, widget)
    table = widget.table
    assert list(zip(table["frame"], table["label"], strict=True)) == [
        *[(0, v) for v in range(1, 7)],
        (1, 2),
        (1, 5),
    ]
    assert "centroid_z" in table and table.attrs["layout"]["axes"] == "tzyx"
    # the map emphasises the frame shown; selecting a point shows its frame and middle plane
    points = viewer.layers["movie map"]
    viewer.dims.current_step = (1, 0, *viewer.dims.current_step[2:])
    big = points.size > np.median(points.size)
    np.testing.assert_array_equal(big, table["frame"].to_numpy() == 1)
    row = int(np.flatnonzero((table["frame"] == 0) & (table["label"] == 3))[0])
    points.selected_data = {row}
    assert viewer.dims.current_step[:2] == (0, round(table["centroid_z"].iloc[row]))
    # Classify's suggestions centre on an object in its frame and middle plane
    _, classify = viewer.window.add_plugin_dock_widget("napari-segrep", "Classify segments")
    viewer.dims.current_step = (1, 0, *viewer.dims.current_step[2:])
    classify.go_to_row(row + 1)
    record = table.iloc[row + 1]
    assert viewer.dims.current_step[:2] == (0, round(record["centroid_z"]))
    assert layer.metadata == {}  # nothing asked, nothing written


def test_run_encoder__a_model_of_other_dimensions_than_the_objects_is_refused(narrow_encoder):
    from napari_segrep._images import Layout
    from napari_segrep._widgets._results import run_encoder

    image = blob_volume()[0]
    with pytest.raises(ValueError, match=r"embeds 2D objects but the labels are a z-stack"):
        run_encoder(narrow_encoder, image, Layout("zyx"), channel_axis=None)
    assert run_encoder(narrow_encoder, image, Layout("tyx"), channel_axis=None) is narrow_encoder


def test_gallery_go_to__a_3d_object_centres_on_its_middle_plane(zstack_embedded, qtbot):
    """The gallery's "go to" (its point left as it is): the dims move to the object's middle
    plane and the camera to its centroid, through the layer's scale."""
    viewer, widget, layer, image, labels = zstack_embedded
    _, gallery = viewer.window.add_plugin_dock_widget("napari-segrep", "Segment gallery")
    qtbot.waitUntil(lambda: gallery.points_layer == widget.points_layer, timeout=5000)
    row = int(np.flatnonzero(widget.table["label"] == 3)[0])
    record = widget.table.iloc[row]
    _show_plane(viewer, 0)  # object 3 is not in plane 0
    gallery.go_to(row, select=False)
    assert viewer.dims.current_step[0] == int(round(record["centroid_z"]))
    expected = (record["centroid_y"] * SCALE[1], record["centroid_x"] * SCALE[2])
    np.testing.assert_allclose(viewer.camera.center[-2:], expected)
    assert not viewer.layers["vol map"].selected_data
