"""Embed segments with several (image, labels) pairs: one map, linked both ways per layer."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from napari_segrep._sample_data import make_cells
from napari_segrep.analysis.export import sidecar_path

from ..conftest import require_napari

require_napari()

from napari.utils._proxies import ReadOnlyWrapper  # noqa: E402
from napari.utils.interactions import mouse_press_callbacks  # noqa: E402

from ._embed import run_and_wait as _run_and_wait  # noqa: E402

TIMEOUT_MS = 120_000


def _dock(viewer):
    _, widget = viewer.window.add_plugin_dock_widget("napari-segrep", "Embed segments")
    widget.crop_input.value = 32
    widget.umap_input.value = False
    return widget


def _two_pairs(make_napari_viewer, shape=(160, 160), n_cells=14):
    viewer = make_napari_viewer()
    scenes = {}
    for name, seed in (("a", 4), ("b", 5)):
        image, labels, _ = make_cells(shape=shape, n_cells=n_cells, seed=seed)
        scenes[name] = (
            viewer.add_image(image, name=f"img_{name}"),
            viewer.add_labels(labels, name=f"cells_{name}"),
        )
    widget = _dock(viewer)
    widget.image_input.value = [scenes["a"][0]]
    widget.labels_input.value = scenes["a"][1]
    widget.multi.add_pair(*scenes["b"])
    return viewer, widget, scenes["a"][1], scenes["b"][1]


def _click(layer, label, MouseEvent):
    yy, xx = np.nonzero(np.asarray(layer.data) == label)
    layer.mode = "pan_zoom"
    event = ReadOnlyWrapper(MouseEvent(type="mouse_press", position=(yy[0], xx[0])))
    mouse_press_callbacks(layer, event)


def test_embed_multi__two_pairs_one_map_linked_both_ways_per_layer(
    make_napari_viewer, qtbot, MouseEvent, tmp_path
):
    import napari_segrep as sr
    from napari_segrep._widgets._results import PALETTE, results_for

    viewer, widget, cells_a, cells_b = _two_pairs(make_napari_viewer)
    assert widget.multi.active and widget.run_button.enabled, widget.status.value
    _run_and_wait(qtbot, widget)
    res_a, res_b = results_for(cells_a), results_for(cells_b)
    n_a, n_b = len(res_a.table), len(res_b.table)
    assert n_a == len(np.unique(cells_a.data)) - 1 and n_b == len(np.unique(cells_b.data)) - 1
    assert widget.results is None and widget.group.members == [res_a, res_b]
    assert "2 images" in widget.status.value and not widget.live_input.enabled

    # one points layer with the rows of both, carrying image and label
    points = widget.points_layer
    assert points.name == "2 images map" and len(points.data) == n_a + n_b
    assert list(points.features["image"]) == ["cells_a"] * n_a + ["cells_b"] * n_b
    assert list(points.features["label"]) == [*res_a.labels, *res_b.labels]
    assert list(widget.table["image"][:1]) == ["cells_a"] and len(widget.table) == n_a + n_b
    assert [la.name for la in viewer.layers if la.name.endswith("map")] == ["2 images map"]
    assert points.data[:, 1].min() > cells_a.data.shape[1]  # beside the images

    # each layer's results are what embedding that layer alone gives (same encoder)
    for res, layer, image in ((res_a, cells_a, "img_a"), (res_b, cells_b, "img_b")):
        alone = sr.embed_segments(
            viewer.layers[image].data, layer.data, res.run.encoder, crop_size=32
        )
        assert "image" not in res.table and list(layer.features["label"]) == list(alone["label"])
        np.testing.assert_allclose(
            res.table.filter(like="emb_").to_numpy(),
            alone.filter(like="emb_").to_numpy(),
            rtol=1e-5,
            atol=1e-6,
        )

    # coloured by image at first
    assert widget.colour_by.value == "image"
    np.testing.assert_allclose(points.face_color[:n_a], np.tile(PALETTE[0], (n_a, 1)))
    np.testing.assert_allclose(points.face_color[n_a:], np.tile(PALETTE[1], (n_b, 1)))

    # points of B selected: exactly those segments highlighted in B, A shows its own colours
    a_colormap = cells_a.colormap
    points.selected_data = {n_a + 0, n_a + 2}
    assert res_b.selected_labels() == {int(res_b.labels[0]), int(res_b.labels[2])}
    assert res_a.selection == frozenset()
    cmap_b = cells_b.colormap
    assert cmap_b.map(res_b.labels[0])[3] == pytest.approx(1.0)
    assert cmap_b.map(res_b.labels[2])[3] == pytest.approx(1.0)
    assert cmap_b.map(res_b.labels[1])[3] < 0.5
    assert cells_a.colormap is a_colormap
    # points of both: each layer highlights its own
    points.selected_data = {1, n_a + 3}
    assert res_a.selected_labels() == {int(res_a.labels[1])}
    assert res_b.selected_labels() == {int(res_b.labels[3])}
    assert cells_a.colormap.map(res_a.labels[0])[3] < 0.5
    assert cells_a.selected_label == res_a.labels[1]

    # a click on a segment of A selects exactly its point (B's selection cleared)
    _click(cells_a, int(res_a.labels[4]), MouseEvent)
    assert set(points.selected_data) == {4} and res_b.selection == frozenset()
    assert cells_b.colormap.map(res_b.labels[3])[3] == pytest.approx(1.0)  # B: plain again
    # and one of B: its point (rows after A's)
    _click(cells_b, int(res_b.labels[5]), MouseEvent)
    assert set(points.selected_data) == {n_a + 5} and res_a.selection == frozenset()
    # B's selected label set by the user selects its point
    cells_b.selected_label = int(res_b.labels[6])
    assert set(points.selected_data) == {n_a + 6}
    # hovering a point names its image and label
    status = points.get_status(tuple(points.data[n_a + 1]), world=True)
    text = status["coordinates"] if isinstance(status, dict) else str(status)
    assert "cells_b" in text and f"label: {res_b.labels[1]}" in text

    # clusters computed across both images, split back to each layer
    widget.cluster_k.value = 3
    ids = widget.cluster()
    assert len(ids) == n_a + n_b and set(ids.tolist()) == {1, 2, 3}
    np.testing.assert_array_equal(cells_a.features["cluster"], ids[:n_a])
    np.testing.assert_array_equal(cells_b.features["cluster"], ids[n_a:])
    np.testing.assert_array_equal(points.features["cluster"], ids)
    assert widget.colour_by.value == "cluster"
    same = [(i, j) for i in range(n_a) for j in range(n_a, n_a + n_b) if ids[i] == ids[j]]
    i, j = same[0]  # one cluster id, one colour, whichever image
    np.testing.assert_allclose(points.face_color[i], points.face_color[j])
    widget.colour_by.value = "image"
    np.testing.assert_allclose(points.face_color[n_a], PALETTE[1])

    # a new labels layer per layer with selected segments
    points.selected_data = {0, n_a + 1}
    made = widget.labels_from_selection()
    assert [la.name for la in made] == ["cells_a selection", "cells_b selection"]
    assert set(np.unique(made[1].data)) == {0, int(res_b.labels[1])}

    # one exported table with an image column
    out = tmp_path / "both.csv"
    assert widget.export_csv(out) == out
    back = pd.read_csv(out)
    assert list(back.columns[:2]) == ["image", "label"] and len(back) == n_a + n_b
    assert list(back["image"]) == list(points.features["image"])
    np.testing.assert_array_equal(back["cluster"], ids)
    side = json.loads(sidecar_path(out).read_text())
    assert side["n_segments"] == n_a + n_b
    assert [p["labels_layer"] for p in side["pairs"]] == ["cells_a", "cells_b"]

    # refit: one map of all rows again
    widget.refit_map()
    assert len(points.data) == n_a + n_b and points.metadata["map_method"] == "pca"

    # back to one pair: the single-layer widget as before
    widget.multi.remove_pair(widget.multi.rows[0])
    assert not widget.multi.active
    _run_and_wait(qtbot, widget)
    assert widget.group is None and widget.results is results_for(cells_a)
    assert widget.points_layer.name == "cells_a map" and "image" not in widget.colour_by.choices
    assert widget.live_input.enabled


def test_embed_multi__cancel_mid_run_leaves_no_half_results(make_napari_viewer, qtbot):
    from napari_segrep._widgets._results import results_for

    viewer, widget, cells_a, cells_b = _two_pairs(make_napari_viewer, (384, 384), 80)
    before = [la.name for la in viewer.layers]
    widget.batch_input.value = 4
    seen: list = []
    widget.run()
    widget.job._relay.progressed.connect(lambda d, t: seen.append((d, t)))
    # well into the second image: the first one is done, nothing of it may show
    qtbot.waitUntil(lambda: any(d > t * 0.6 for d, t in seen), timeout=TIMEOUT_MS)
    assert widget.status.value == "Embedding cells_b (2 of 2 images)..."
    widget.cancel()
    qtbot.waitUntil(lambda: widget.job is None, timeout=TIMEOUT_MS)
    assert results_for(cells_a) is None and results_for(cells_b) is None
    assert widget.group is None and widget.points_layer is None
    assert cells_a.features.empty and cells_b.features.empty
    assert [la.name for la in viewer.layers] == before
    assert "Cancelled" in widget.status.value and widget.run_button.enabled


def test_embed_multi__folder_pairs_open_as_layers_and_embed_as_one(
    make_napari_viewer, qtbot, tmp_path
):
    import tifffile

    for sub in ("images", "labels"):
        (tmp_path / sub).mkdir()
    for i in range(3):
        image, labels, _ = make_cells(shape=(96, 96), n_cells=6, seed=10 + i)
        tifffile.imwrite(tmp_path / "images" / f"well{i}.tif", image)
        tifffile.imwrite(tmp_path / "labels" / f"well{i}_labels.tif", labels)
    viewer = make_napari_viewer()
    widget = _dock(viewer)
    with pytest.raises(ValueError, match="up to 2 open as layers"):
        widget.multi.add_folder(tmp_path, limit=2)
    assert len(viewer.layers) == 0
    added = widget.multi.add_folder(tmp_path)
    assert [la.name for la in added] == ["well0 labels", "well1 labels", "well2 labels"]
    assert widget.labels_input.value == added[0]
    assert widget.image_input.value == [viewer.layers["well0"]]
    assert [row.labels.value for row in widget.multi.rows] == added[1:]
    assert widget.multi.active and widget.run_button.enabled, widget.status.value
    _run_and_wait(qtbot, widget)
    images = widget.points_layer.features["image"]
    assert list(dict.fromkeys(images)) == ["well0", "well1", "well2"]  # the file stems
    assert len(images) == sum(len(np.unique(la.data)) - 1 for la in added)


def test_embed_multi__a_flat_folder_pairs_by_the_clis_rule(make_napari_viewer, tmp_path):
    """Folder... on ``x.tif`` beside ``x_mask.tif`` pairs as ``embed --data`` does (any label
    suffix); an orphan is refused naming it, with the way out a widget has (no CLI option)."""
    import tifffile

    from napari_segrep.io import pair_files

    for i, suffix in enumerate(("_labels", "_mask")):
        image, labels, _ = make_cells(shape=(64, 64), n_cells=4, seed=i)
        tifffile.imwrite(tmp_path / f"well{i}.tif", image)
        tifffile.imwrite(tmp_path / f"well{i}{suffix}.tif", labels)
    viewer = make_napari_viewer()
    widget = _dock(viewer)
    added = widget.multi.add_folder(tmp_path)
    assert [la.name for la in added] == ["well0 labels", "well1 labels"]
    assert [la.name for la in added] == [
        f"{i.stem} labels" for i, _ in pair_files(data_dir=tmp_path)
    ]
    tifffile.imwrite(tmp_path / "orphan_labels.tif", np.zeros((64, 64), np.uint16))
    with pytest.raises(ValueError, match=r"unmatched labels: \['orphan_labels.tif'\]") as info:
        widget.multi.add_folder(tmp_path)
    assert "--skip-unmatched" not in str(info.value) and "move it away" in str(info.value)


def test_embed_multi__pairs_that_cannot_share_a_map_disable_run(make_napari_viewer):
    viewer = make_napari_viewer()
    image, labels, _ = make_cells(shape=(96, 96), n_cells=6, seed=1)
    img = viewer.add_image(image, name="img")
    lab = viewer.add_labels(labels, name="cells")
    rgb = viewer.add_image(np.zeros((96, 96, 3), np.uint8), name="rgb", rgb=True)
    other = viewer.add_labels(labels.copy(), name="other")
    widget = _dock(viewer)
    widget.image_input.value, widget.labels_input.value = [img], lab
    row = widget.multi.add_pair(rgb, other)
    assert not widget.run_button.enabled and "channels" in widget.status.value
    row.image.value = img
    assert widget.run_button.enabled
    other.metadata["segrep_image_name"] = "cells"  # as if opened from a file "cells.tif"
    widget._update_run_state()
    assert not widget.run_button.enabled and "Two pairs" in widget.status.value


def test_embed_multi__classify_one_layer_colours_its_points_in_the_shared_map(
    make_napari_viewer, qtbot
):
    from napari_segrep._widgets._results import results_for

    viewer, widget, cells_a, cells_b = _two_pairs(make_napari_viewer)
    _run_and_wait(qtbot, widget)
    res_a, res_b = results_for(cells_a), results_for(cells_b)
    n_a = len(res_a.table)
    _, classify = viewer.window.add_plugin_dock_widget("napari-segrep", "Classify segments")
    classify.labels_input.value = cells_b
    assert classify.results is res_b
    for name in ("x", "y"):
        classify.add_class(name)
    classify.annotate_labels([int(v) for v in res_b.labels[:3]], "x")
    classify.annotate_labels([int(v) for v in res_b.labels[3:6]], "y")
    qtbot.waitUntil(
        lambda: classify.job is None and "class_predicted" in res_b.table, timeout=TIMEOUT_MS
    )
    qtbot.waitUntil(lambda: classify.job is None, timeout=TIMEOUT_MS)
    assert widget.colour_by.value == "class" and widget.group.colour_by == "class"
    points = widget.points_layer
    np.testing.assert_allclose(points.face_color[n_a][:3], res_b.class_colours["x"][:3])
    np.testing.assert_allclose(points.face_color[n_a + 3][:3], res_b.class_colours["y"][:3])
    # A has no classes: its points keep its segments' colours
    np.testing.assert_allclose(
        points.face_color[0], cells_a.colormap.map(res_a.labels[0]), atol=1e-6
    )
    assert "class_predicted" in points.features and res_a.selection == frozenset()
