"""The "Classify segments" widget in real napari viewers (Xvfb in CI): annotate by clicking,
train in the background, predictions in the results, colours, suggestions, files."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from napari_segrep._sample_data import make_cells

from ..conftest import require_napari

require_napari()

from napari.utils._proxies import ReadOnlyWrapper  # noqa: E402
from napari.utils.interactions import mouse_press_callbacks  # noqa: E402

TIMEOUT_MS = 120_000


@pytest.fixture()
def cells():
    image, labels, classes = make_cells(shape=(256, 256), n_cells=36, seed=2)
    return image, labels, classes


def _embedded(make_napari_viewer, qtbot, image, labels, name="cells", axis_labels=None):
    viewer = make_napari_viewer()
    viewer.add_image(image, name="img")
    viewer.add_labels(labels, name=name, axis_labels=axis_labels)
    _, embed = viewer.window.add_plugin_dock_widget("napari-segrep", "Embed segments")
    embed.crop_input.value = 32
    embed.umap_input.value = False
    worker = embed.run()
    with qtbot.waitSignal(worker.finished, timeout=TIMEOUT_MS):
        pass
    qtbot.waitUntil(lambda: embed.job is None and embed.map_view.settled, timeout=TIMEOUT_MS)
    return viewer, embed


def _classify_dock(viewer):
    _, widget = viewer.window.add_plugin_dock_widget("napari-segrep", "Classify segments")
    return widget


def _click(layer, label, labels, MouseEvent):
    yy, xx = np.nonzero(labels == label)
    i = len(yy) // 2
    layer.mode = "pan_zoom"
    event = ReadOnlyWrapper(MouseEvent(type="mouse_press", position=(yy[i], xx[i])))
    mouse_press_callbacks(layer, event)


def _drawn():
    """Every map view has drawn the class changes (they are drawn once per burst)."""
    from napari_segrep._widgets.embed import EmbedSegmentsWidget

    return all(w.map_view.classes_drawn for w in EmbedSegmentsWidget.instances)


def _wait_trained(qtbot, widget):
    qtbot.waitUntil(
        lambda: widget.job is None and widget.classifier is not None, timeout=TIMEOUT_MS
    )
    qtbot.waitUntil(lambda: "class_predicted" in widget.results.table, timeout=TIMEOUT_MS)
    qtbot.waitUntil(lambda: widget.job is None and _drawn(), timeout=TIMEOUT_MS)


def _annotate_by_clicks(qtbot, widget, layer, labels, classes, MouseEvent, per_class=3):
    names = sorted(set(classes.values()))
    for name in names:
        widget.add_class(name)
    for name in names:
        widget.class_input.value = name
        for label in [k for k, v in sorted(classes.items()) if v == name][:per_class]:
            _click(layer, label, labels, MouseEvent)
    _wait_trained(qtbot, widget)
    return names


def test_classify_widget__click_to_annotate_train_predict_colour_and_hover(
    make_napari_viewer, qtbot, cells, MouseEvent
):
    image, labels, classes = cells
    viewer, embed = _embedded(make_napari_viewer, qtbot, image, labels)
    widget = _classify_dock(viewer)
    layer = viewer.layers["cells"]
    assert widget.results is embed.results
    names = _annotate_by_clicks(qtbot, widget, layer, labels, classes, MouseEvent)
    table = widget.results.table
    # the clicks are annotations in the labels layer's features
    annotated = table[table["class_annotation"] != ""]
    assert len(annotated) == 3 * len(names)
    assert all(classes[int(r.label)] == r.class_annotation for r in annotated.itertuples())
    assert (layer.features["class_annotation"] != "").sum() == len(annotated)
    # every segment predicted, with probabilities; most are right
    assert set(table["class_predicted"]) <= set(names)
    assert np.allclose(table[[f"prob_{n}" for n in names]].sum(axis=1), 1.0)
    truth = np.array([classes[int(v)] for v in table["label"]])
    assert (table["class_predicted"].to_numpy() == truth).mean() > 0.6
    assert "cross-validated accuracy" in widget.status.value
    # coloured by class: map points and segments in their predicted class's colour
    assert embed.colour_by.value == "class"
    points = viewer.layers["cells map"]
    row = int(np.flatnonzero(table["class_annotation"] == names[0])[0])
    colour = widget.results.class_colours[names[0]]
    np.testing.assert_allclose(points.face_color[row][:3], colour[:3], atol=1e-6)
    np.testing.assert_allclose(
        layer.colormap.map(table["label"].iloc[row])[:3], colour[:3], atol=1e-6
    )
    # hovering a point or a segment shows the class and probability
    status = points.get_status(tuple(points.data[row]), world=True)
    text = status["coordinates"] if isinstance(status, dict) else str(status)
    assert "class_predicted" in text and "class_probability" in text
    yy, xx = np.nonzero(labels == table["label"].iloc[row])
    status = layer.get_status((yy[0], xx[0]), world=True)
    text = status["coordinates"] if isinstance(status, dict) else str(status)
    assert f"class_predicted: {table['class_predicted'].iloc[row]}" in text
    # clicking an annotated segment again with its class removes the annotation
    widget.class_input.value = names[0]
    _click(layer, int(table["label"].iloc[row]), labels, MouseEvent)
    assert widget.results.annotations[row] == ""


def test_classify_widget__suggestions_are_least_sure_and_centre_the_view(
    make_napari_viewer, qtbot, cells, MouseEvent
):
    image, labels, classes = cells
    viewer, _ = _embedded(make_napari_viewer, qtbot, image, labels)
    widget = _classify_dock(viewer)
    _annotate_by_clicks(qtbot, widget, viewer.layers["cells"], labels, classes, MouseEvent)
    table = widget.results.table
    not_annotated = table["class_annotation"].to_numpy() == ""
    margins = table["class_margin"].to_numpy()
    assert len(widget.suggestions.choices) == 10
    widget.predictions_layer()  # a new layer (choices are re-read): the list stays
    assert len(widget.suggestions.choices) == 10
    first = widget.next_suggestion()
    assert not_annotated[first] and margins[first] == margins[not_annotated].min()
    record = table.iloc[first]
    scene = getattr(viewer, "scene", viewer)  # napari >= 0.9: viewer.scene.camera
    np.testing.assert_allclose(
        scene.camera.center[-2:], (record["centroid_y"], record["centroid_x"]), atol=1e-6
    )
    assert widget.results.selection == {first}
    # annotating it moves on to the next least sure
    widget.annotate_rows([first], classes[int(record["label"])])
    _wait_trained(qtbot, widget)
    qtbot.waitUntil(lambda: widget.job is None, timeout=TIMEOUT_MS)
    assert widget.next_suggestion() != first


def test_classify_widget__classes_rename_remove_and_annotate_selection(
    make_napari_viewer, qtbot, cells, MouseEvent
):
    image, labels, classes = cells
    viewer, _ = _embedded(make_napari_viewer, qtbot, image, labels)
    widget = _classify_dock(viewer)
    widget.add_class("a")
    widget.add_class("b")
    with pytest.raises(ValueError, match="already"):
        widget.add_class("a")
    widget.results.select_rows([0, 1, 2])
    widget.class_input.value = "a"
    widget.annotate_selection()
    assert list(widget.results.annotations[:3]) == ["a"] * 3
    widget.rename_class("a", "round")
    assert list(widget.results.annotations[:3]) == ["round"] * 3
    widget.set_class_colour("round", (1.0, 0.0, 1.0, 1.0))  # what Colour... sets
    widget.results.colour_by = "class"
    qtbot.waitUntil(_drawn, timeout=TIMEOUT_MS)
    colour = viewer.layers["cells"].colormap.map(int(widget.results.table["label"].iloc[0]))
    np.testing.assert_allclose(colour[:3], (1.0, 0.0, 1.0), atol=1e-6)
    assert "#ff00ff" in widget.legend.value
    assert widget.class_input.choices == ("round", "b")
    assert "Annotate at least 2" in widget.status.value  # one class: nothing to train
    widget.remove_class("round")
    assert (widget.results.annotations == "").all()
    # a button clicked too early says what to do first (no traceback)
    widget.name_input.value = ""
    widget.add_button.native.click()
    assert "Type the new class's name first" in widget.status.value
    widget.predictions_button.native.click()
    assert "Train or load a classifier first" in widget.status.value


@pytest.mark.parametrize("features", ["embedding", "embedding+geometry", "measurements"])
def test_classify_widget__save_load_apply_to_a_second_layer_and_export(
    make_napari_viewer, qtbot, cells, MouseEvent, tmp_path, features
):
    image, labels, classes = cells
    viewer, embed = _embedded(make_napari_viewer, qtbot, image, labels)
    widget = _classify_dock(viewer)
    widget.features_input.value = features
    names = _annotate_by_clicks(qtbot, widget, viewer.layers["cells"], labels, classes, MouseEvent)
    assert ("perimeter" in widget.classifier.feature_columns) == (features != "embedding")
    before = widget.results.table[["label", "class_predicted", "class_probability"]].copy()
    # save, and never over someone else's file
    path = widget.save_classifier(tmp_path / "cells.segclf", overwrite=True)
    foreign = tmp_path / "notes.segclf"
    foreign.write_text("mine")
    assert widget.save_classifier(foreign, overwrite=True) is None
    assert foreign.read_text() == "mine"
    # load in a fresh widget state: the same predictions
    widget.results.set_predictions(None)
    model = widget.load_classifier(path)
    assert model.classes_ == names
    after = widget.results.table[["label", "class_predicted", "class_probability"]]
    pd.testing.assert_frame_equal(before.reset_index(drop=True), after.reset_index(drop=True))
    # a damaged file (all-zero scale: NaN probabilities before issue 22): refused, named in
    # the status, the classifier in use and its predictions kept
    with np.load(path, allow_pickle=False) as archive:
        contents = {k: archive[k] for k in archive.files}
    contents["array_scale"] = np.zeros_like(contents["array_scale"])
    bad = tmp_path / "bad.segclf"
    with open(bad, "wb") as fh:
        np.savez_compressed(fh, **contents)
    assert widget.load_classifier(bad) is None
    assert widget.classifier is model
    assert f"{bad}: scale is not positive" in widget.status.value
    after = widget.results.table[["label", "class_predicted", "class_probability"]]
    pd.testing.assert_frame_equal(before.reset_index(drop=True), after.reset_index(drop=True))
    # a loaded classifier is improved, not replaced: new clicks add to its training examples
    widget.annotate_rows([int(np.flatnonzero(widget.results.annotations == "")[0])], names[0])
    _wait_trained(qtbot, widget)
    assert widget.classifier.info["layers"]["cells.segclf (file)"] == 3 * len(names)
    # apply to a second image's labels layer: embedded with the same encoder, then predicted
    image2, labels2, classes2 = make_cells(shape=(256, 256), n_cells=30, seed=7)
    viewer.add_image(image2, name="img2")
    second = viewer.add_labels(labels2, name="cells2")
    worker = widget.apply_to(second, [viewer.layers["img2"]])
    with qtbot.waitSignal(worker.finished, timeout=TIMEOUT_MS):
        pass
    qtbot.waitUntil(lambda: "cells2 predictions" in viewer.layers, timeout=TIMEOUT_MS)
    features = second.features
    assert set(features["label"]) == set(np.unique(labels2[labels2 > 0]))
    truth = np.array([classes2[int(v)] for v in features["label"]])
    assert (features["class_predicted"].to_numpy() == truth).mean() > 0.6
    predicted = viewer.layers["cells2 predictions"].data
    one = int(features["label"].iloc[0])
    expected = names.index(features["class_predicted"].iloc[0]) + 1
    assert set(np.unique(predicted[labels2 == one])) == {expected}
    # export: keys, the annotation, the prediction and the probabilities, with a sidecar
    out = widget.export_csv(tmp_path / "classes.csv", overwrite=True)
    written = pd.read_csv(out)
    assert list(written.columns[:3]) == ["label", "centroid_y", "centroid_x"]
    assert {"class_annotation", "class_predicted", "class_probability", "class_margin"} <= set(
        written.columns
    )
    assert {f"prob_{n}" for n in names} <= set(written.columns)
    sidecar = json.loads((tmp_path / "classes.csv.json").read_text())
    assert sidecar["classifier"]["classes"] == names
    # the Embed segments export carries the classes too
    full = embed.export_table()
    assert {"class_annotation", "class_predicted"} <= set(full.columns)
    # a folder of files (x.tif beside x_labels.tif): one table with an image column
    import tifffile

    folder = tmp_path / "folder"
    folder.mkdir()
    truth = {}
    for stem, seed in (("a", 11), ("b", 12)):
        img, lab, cls = make_cells(shape=(192, 192), n_cells=16, seed=seed)
        tifffile.imwrite(folder / f"{stem}.tif", img)
        tifffile.imwrite(folder / f"{stem}_labels.tif", lab)
        truth.update({(stem, k): v for k, v in cls.items()})
    (folder / "classes.csv").write_text("someone else's file\n")
    # the user says no to replacing it: nothing runs, nothing is written
    assert widget.apply_to_folder(folder, folder / "classes.csv", overwrite=False) is None
    assert (folder / "classes.csv").read_text() == "someone else's file\n"
    out = folder / "out.csv"
    worker = widget.apply_to_folder(folder, out)
    with qtbot.waitSignal(worker.finished, timeout=TIMEOUT_MS):
        pass
    qtbot.waitUntil(lambda: out.exists(), timeout=TIMEOUT_MS)
    written = pd.read_csv(out)
    assert list(written.columns[:3]) == ["image", "label", "class"]
    assert set(zip(written["image"], written["label"], strict=True)) == set(truth)
    right = [
        truth[(i, k)] == c
        for i, k, c in written[["image", "label", "class"]].itertuples(index=False)
    ]
    assert np.mean(right) > 0.6


def test_classify_widget__opened_before_embedding_follows_the_results(
    make_napari_viewer, qtbot, cells
):
    image, labels, _ = cells
    viewer = make_napari_viewer()
    viewer.add_image(image, name="img")
    viewer.add_labels(labels, name="cells")
    widget = _classify_dock(viewer)
    assert widget.results is None and "Embed this layer first" in widget.status.value
    with pytest.raises(RuntimeError, match="Embed this layer first"):
        widget.add_class("a")
    _, embed = viewer.window.add_plugin_dock_widget("napari-segrep", "Embed segments")
    embed.crop_input.value = 32
    embed.umap_input.value = False
    with qtbot.waitSignal(embed.run().finished, timeout=TIMEOUT_MS):
        pass
    qtbot.waitUntil(lambda: widget.results is embed.results, timeout=TIMEOUT_MS)
    widget.add_class("a")
    widget.annotate_rows([0, 1], "a")
    # embedding again (another model, say) keeps the annotations
    with qtbot.waitSignal(embed.run().finished, timeout=TIMEOUT_MS):
        pass
    qtbot.waitUntil(lambda: widget.results is embed.results, timeout=TIMEOUT_MS)
    assert list(widget.results.annotations[:2]) == ["a", "a"]
    assert list(widget.results.class_colours) == ["a"]


CLOSE_SCRIPT = r"""
image, labels, classes = make_cells(shape=(320, 320), n_cells=50, seed=3)
viewer = napari.Viewer(show=True)
app = QApplication.instance()
viewer.add_image(image, name="img")
viewer.add_labels(labels, name="cells")
app.processEvents()

_, embed = viewer.window.add_plugin_dock_widget("napari-segrep", "Embed segments")
embed.crop_input.value = 32
embed.umap_input.value = False
embed.run()
wait(lambda: embed.job is None and embed.map_view.settled)
_, widget = viewer.window.add_plugin_dock_widget("napari-segrep", "Classify segments")
heartbeat, ticks = start_heartbeat()
names = sorted(set(classes.values()))
for name in names:
    widget.add_class(name)
for name in names:  # the first training imports scikit-learn in the worker
    widget.annotate_labels([k for k, v in sorted(classes.items()) if v == name][:2], name)
wait(lambda: widget.job is None and "class_predicted" in widget.results.table)
heartbeat.stop()
# closed with work in flight: a training, and the embedding of another layer to classify it
image2, labels2, _ = make_cells(shape=(640, 640), n_cells=200, seed=4)
viewer.add_image(image2, name="img2")
second = viewer.add_labels(labels2, name="cells2")
widget.apply_to(second, [viewer.layers["img2"]])
widget.annotate_labels([int(widget.results.table["label"].iloc[-1])], names[0])
wait(lambda: widget.apply_job is not None and widget.apply_job.worker is not None)
gaps = [b - a for a, b in zip(ticks, ticks[1:])]
print("REPORT", json.dumps({"longest_stall_s": max(gaps), "in_flight": widget.apply_job is not None}))
viewer.close()
"""


def test_classify_widget__first_training_does_not_freeze_and_closing_with_work_exits_cleanly(
    tmp_path,
):
    from ._fresh_session import run_fresh_session

    report = run_fresh_session(CLOSE_SCRIPT, tmp_path)
    assert report["in_flight"] is True
    assert report["longest_stall_s"] <= 1.0, report  # a freeze detector, not a speed target


def test_classify_widget__image_after_image_keeps_what_the_first_taught(
    make_napari_viewer, qtbot, cells, MouseEvent
):
    image, labels, classes = cells
    viewer, embed = _embedded(make_napari_viewer, qtbot, image, labels)
    widget = _classify_dock(viewer)
    names = _annotate_by_clicks(qtbot, widget, viewer.layers["cells"], labels, classes, MouseEvent)
    # the next image: embedded (the same model), followed; not one click on it yet
    image2, labels2, classes2 = make_cells(shape=(256, 256), n_cells=30, seed=9)
    viewer.add_image(image2, name="img2")
    viewer.add_labels(labels2, name="cells2")
    embed.image_input.value = [viewer.layers["img2"]]
    embed.labels_input.value = viewer.layers["cells2"]
    with qtbot.waitSignal(embed.run().finished, timeout=TIMEOUT_MS):
        pass
    qtbot.waitUntil(lambda: embed.job is None, timeout=TIMEOUT_MS)
    widget.labels_input.value = viewer.layers["cells2"]
    qtbot.waitUntil(lambda: widget.results is embed.results, timeout=TIMEOUT_MS)
    _wait_trained(qtbot, widget)
    assert widget.classifier.info["layers"] == {"cells2": 0, "cells": 3 * len(names)}
    assert "in 2 layers" in widget.status.value
    table = widget.results.table
    truth = np.array([classes2[int(v)] for v in table["label"]])
    assert (table["class_predicted"].to_numpy() == truth).mean() > 0.6
    # without the earlier layers, there is nothing to train on
    widget.remember_input.value = False
    assert "Annotate at least 2" in widget.status.value


def test_classify_widget__stacks_frame_by_frame(make_napari_viewer, qtbot, MouseEvent):
    planes = [make_cells(shape=(160, 160), n_cells=15, seed=s) for s in (21, 22)]
    image = np.stack([p[0] for p in planes])
    labels = np.stack([p[1] for p in planes])
    viewer, _ = _embedded(make_napari_viewer, qtbot, image, labels, axis_labels=("t", "y", "x"))
    widget = _classify_dock(viewer)
    table = widget.results.table
    assert "frame" in table
    names = sorted(set(planes[0][2].values()))
    for name in names:
        widget.add_class(name)
    # a click annotates the segment of the frame shown only (labels repeat across frames)
    viewer.dims.current_step = (1, *viewer.dims.current_step[1:])
    label = int(table[table["frame"] == 1]["label"].iloc[0])
    widget.class_input.value = names[0]
    _click_plane(viewer.layers["cells"], label, labels, 1, MouseEvent)
    hit = table[widget.results.annotations != ""]
    assert list(hit["frame"]) == [1] and list(hit["label"]) == [label]
    for frame, (_, _, classes) in enumerate(planes):
        for name in names:
            rows = [
                int(r)
                for r in np.flatnonzero(table["frame"] == frame)
                if classes[int(table["label"].iloc[r])] == name
            ][:2]
            widget.annotate_rows(rows, name)
    _wait_trained(qtbot, widget)
    layer = widget.predictions_layer()
    assert layer.data.shape == labels.shape
    row = widget.next_suggestion()
    assert viewer.dims.current_step[0] == int(widget.results.table["frame"].iloc[row])


def _click_plane(layer, label, labels, frame, MouseEvent):
    yy, xx = np.nonzero(labels[frame] == label)
    i = len(yy) // 2
    layer.mode = "pan_zoom"
    event = ReadOnlyWrapper(MouseEvent(type="mouse_press", position=(frame, yy[i], xx[i])))
    mouse_press_callbacks(layer, event)


def test_classify_widget__apply_to_a_layer_with_results_of_its_own(
    make_napari_viewer, qtbot, cells, MouseEvent
):
    from napari_segrep._images import Layout
    from napari_segrep._widgets._map_view import MapView
    from napari_segrep._widgets._results import SegmentResults, embed_run

    image, labels, classes = cells
    viewer, embed = _embedded(make_napari_viewer, qtbot, image, labels)
    widget = _classify_dock(viewer)
    names = _annotate_by_clicks(qtbot, widget, viewer.layers["cells"], labels, classes, MouseEvent)
    # applied to the layer it follows: predicts it (its features keep the embeddings)
    assert widget.apply_to(viewer.layers["cells"]) is None
    assert "emb_0" in viewer.layers["cells"].features
    # a second layer embedded with the same model, shown by a map view of its own
    image2, labels2, classes2 = make_cells(shape=(256, 256), n_cells=30, seed=7)
    viewer.add_image(image2, name="img2")
    second = viewer.add_labels(labels2, name="cells2")
    params = {**embed.results.run.params, "normalize": "image"}
    table, coords, run = embed_run(
        image2,
        labels2,
        embed.results.run.encoder,
        params,
        layout=Layout("yx"),
        model="",
        checkpoint=None,
        image_layers=["img2"],
        progress=None,
        should_stop=None,
    )
    other = SegmentResults(second, table, coords, run)
    MapView(viewer).attach(other)
    assert widget.apply_to(second) is None  # no embedding needed
    qtbot.waitUntil(_drawn_all(other), timeout=TIMEOUT_MS)
    features = second.features
    assert "emb_0" in features and "class_predicted" in features
    truth = np.array([classes2[int(v)] for v in features["label"]])
    assert (features["class_predicted"].to_numpy() == truth).mean() > 0.6
    assert list(other.class_colours) == names
    assert "cells2 predictions" in viewer.layers


def _drawn_all(results):
    def drawn():
        return "class_predicted" in results.labels_layer.features

    return drawn


def test_predictions_paint__large_label_ids_need_no_table_of_their_size():
    from napari_segrep._widgets._apply import _paint

    labels = np.array([[0, 3_000_000_000, 7], [7, 12, 3_000_000_000]], np.int64)
    out = _paint(labels, np.array([7, 3_000_000_000]), np.array([1, 2]))
    np.testing.assert_array_equal(out, [[0, 2, 1], [1, 0, 2]])  # 12: not predicted, 0
    assert _paint(labels, np.array([], np.int64), np.array([], np.int32)).max() == 0
