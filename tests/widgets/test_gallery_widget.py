"""The "Segment gallery" widget in real napari viewers (Xvfb in CI): the thumbnails of exactly
the segments asked for, clicks that select and centre, nearest neighbours in exact order,
annotation, hover preview, several images, stacks, the PNG montage."""

from __future__ import annotations

import numpy as np
import pytest

from napari_segrep._sample_data import make_cells

from ..conftest import disc_labels, require_napari

require_napari()

from napari.utils._proxies import ReadOnlyWrapper  # noqa: E402
from napari.utils.interactions import mouse_move_callbacks  # noqa: E402

from ._gallery import dock_gallery as _gallery  # noqa: E402
from ._gallery import embed_layer as _embed  # noqa: E402
from ._gallery import wait_loaded as _loaded  # noqa: E402

TIMEOUT_MS = 120_000


def _expected(results, rows, *, size=64, masked=False):
    """The thumbnails of ``rows`` straight from the engine (the run's own normalisation)."""
    import napari_segrep as sr

    table, run = results.table, results.run
    frames = table["frame"].to_numpy()[rows] if "frame" in table else None
    return sr.segment_thumbnails(
        run.image,
        run.labels,
        table["label"].to_numpy()[rows],
        axes="tyx" if "frame" in table else None,  # the widget embeds 3D labels as stacks
        size=size,
        masked=masked,
        normalize=run.params["normalize"],
        frame=frames,
    )


@pytest.fixture()
def scene(make_napari_viewer):
    """napari first, the gallery next (before any map), then the embedding: the users' order."""
    viewer = make_napari_viewer()
    image, labels, classes = make_cells(shape=(256, 256), n_cells=36, seed=2)
    viewer.add_image(image, name="img", scale=(0.5, 0.5), translate=(10, 20))
    viewer.add_labels(labels, name="cells", scale=(0.5, 0.5), translate=(10, 20))
    return viewer, classes


def test_gallery_widget__selected_points_show_exactly_their_segments(scene, qtbot):
    from napari_segrep._widgets._results import results_for
    from napari_segrep.analysis.neighbours import typical_segments

    viewer, _ = scene
    gallery = _gallery(viewer)
    assert "embed segments first" in gallery.status.value.lower()
    embed = _embed(viewer, qtbot)
    results = results_for(viewer.layers["cells"])
    qtbot.waitUntil(lambda: gallery.source is not None, timeout=5000)
    assert gallery.points_layer == embed.points_layer

    chosen = [30, 2, 17, 5, 11]
    embed.points_layer.selected_data = set(chosen)
    _loaded(qtbot, gallery, len(chosen))
    assert gallery.shown_rows == sorted(chosen)
    expected = _expected(results, sorted(chosen))
    for i in range(len(chosen)):
        np.testing.assert_array_equal(gallery.thumbnail(i), expected[i])
    assert gallery.grid.count() == len(chosen)
    assert gallery.page_label.value == f"1-{len(chosen)} of {len(chosen)}"

    gallery.order_input.value = "random"
    _loaded(qtbot, gallery, len(chosen))
    assert sorted(gallery.shown_rows) == sorted(chosen)
    gallery.order_input.value = "most typical"
    _loaded(qtbot, gallery, len(chosen))
    direct = typical_segments(results.table, chosen, k=len(chosen))
    assert gallery.shown_rows == direct.index.tolist()

    gallery.masked_input.value = True  # what the encoder sees
    _loaded(qtbot, gallery, len(chosen))
    masked = _expected(results, gallery.shown_rows, masked=True)
    np.testing.assert_array_equal(gallery.thumbnail(0), masked[0])

    embed.points_layer.selected_data = set()
    qtbot.waitUntil(lambda: gallery.grid.count() == 0, timeout=5000)
    assert "Select points" in gallery.status.value


def test_gallery_widget__click_selects_the_point_and_centres_the_camera(scene, qtbot):
    from qtpy.QtCore import Qt

    from napari_segrep._widgets._results import results_for

    viewer, _ = scene
    gallery = _gallery(viewer)
    embed = _embed(viewer, qtbot)
    results = results_for(viewer.layers["cells"])
    embed.points_layer.selected_data = {3, 8, 21}
    _loaded(qtbot, gallery, 3)

    item = gallery.grid.item(2)  # row 21
    rect = gallery.grid.visualItemRect(item)
    qtbot.mouseClick(gallery.grid.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
    assert set(embed.points_layer.selected_data) == {21}
    assert results.selection == frozenset({21})
    record = results.table.iloc[21]
    centre = np.array([record["centroid_y"], record["centroid_x"]]) * 0.5 + [10, 20]
    camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera
    np.testing.assert_allclose(camera.center[-2:], centre)
    assert gallery.shown_rows == [3, 8, 21]  # the gallery keeps what it shows
    assert viewer.layers["cells"].selected_label == int(record["label"])

    # Ctrl-click a second one: both points selected
    rect = gallery.grid.visualItemRect(gallery.grid.item(0))
    qtbot.mouseClick(
        gallery.grid.viewport(),
        Qt.MouseButton.LeftButton,
        Qt.KeyboardModifier.ControlModifier,
        rect.center(),
    )
    assert set(embed.points_layer.selected_data) == {3, 21}
    assert gallery.grid.chosen_rows() == [3, 21]


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_gallery_widget__more_like_this_is_the_exact_nearest_neighbours(scene, qtbot, metric):
    from scipy.spatial.distance import cdist

    from napari_segrep._widgets._results import results_for
    from napari_segrep.analysis.tables import embedding_matrix

    viewer, _ = scene
    embed = _embed(viewer, qtbot)
    gallery = _gallery(viewer)
    results = results_for(viewer.layers["cells"])
    embed.points_layer.selected_data = {7}
    _loaded(qtbot, gallery, 1)
    gallery.metric_input.value = metric
    gallery.k_input.value = 12
    gallery.more_like_this()
    _loaded(qtbot, gallery, 13)
    x = embedding_matrix(results.table).astype(np.float64)
    dist = cdist(x[7:8], x, metric=metric)[0]
    dist[7] = np.inf
    direct = np.argsort(dist, kind="stable")[:12]
    assert gallery.shown_rows == [7, *direct.tolist()]
    assert "query" in gallery.grid.item(0).text()
    expected = _expected(results, gallery.shown_rows)
    np.testing.assert_array_equal(gallery.thumbnail(5), expected[5])


def test_gallery_widget__clusters_classes_suggestions_and_annotating(scene, qtbot):
    from napari_segrep._widgets._results import results_for
    from napari_segrep.analysis.classify import suggest_next

    viewer, classes = scene
    embed = _embed(viewer, qtbot)
    gallery = _gallery(viewer)
    results = results_for(viewer.layers["cells"])

    embed.cluster_k.value = 3
    ids = embed.cluster()
    gallery.show_input.value = "cluster"
    assert list(gallery.which_input.choices) == sorted(set(ids.tolist()))
    gallery.which_input.value = int(ids[0])
    _loaded(qtbot, gallery)
    assert gallery.shown_rows == np.flatnonzero(ids == ids[0]).tolist()

    _, classify = viewer.window.add_plugin_dock_widget("napari-segrep", "Classify segments")
    names = sorted(set(classes.values()))
    for name in names:
        classify.add_class(name)
    labels = results.table["label"].to_numpy()
    for name in names:
        classify.annotate_labels([k for k, v in sorted(classes.items()) if v == name][:2], name)
    qtbot.waitUntil(
        lambda: classify.job is None and "class_predicted" in results.table, timeout=TIMEOUT_MS
    )

    gallery.show_input.value = "class"
    gallery.which_input.value = names[1]
    _loaded(qtbot, gallery)
    table = results.table
    effective = np.where(
        results.annotations != "", results.annotations, table["class_predicted"].to_numpy(object)
    )
    assert gallery.shown_rows == np.flatnonzero(effective == names[1]).tolist()

    gallery.show_input.value = "label next (least sure)"
    _loaded(qtbot, gallery)
    direct = suggest_next(
        table.rename(columns={"class_margin": "margin"}),
        n=len(table),
        exclude=results.annotations != "",
    )
    assert gallery.shown_rows == direct.index.tolist()

    # annotate the two least sure from the gallery: the classifier follows
    gallery.grid.item(0).setSelected(True)
    gallery.grid.item(1).setSelected(True)
    rows = gallery.grid.chosen_rows()
    trainings = classify.classifier
    gallery.class_input.value = names[0]
    gallery.annotate_chosen()
    assert list(results.annotations[rows]) == [names[0], names[0]]
    qtbot.waitUntil(
        lambda: classify.job is None and classify.classifier is not trainings, timeout=TIMEOUT_MS
    )
    assert sum(classify.classifier.info["n_annotations"].values()) == 2 * len(names) + 2
    assert gallery.shown_rows[:2] == rows  # the page stays; captions follow
    assert f"{names[0]}*" in gallery.grid.item(0).text()
    assert labels.size == len(results.table)


def test_gallery_widget__hover_previews_the_point_under_the_mouse(scene, qtbot, MouseEvent):
    from napari_segrep._widgets._results import results_for

    viewer, _ = scene
    embed = _embed(viewer, qtbot)
    gallery = _gallery(viewer)
    results = results_for(viewer.layers["cells"])
    points = embed.points_layer
    for row in (4, 19):
        event = ReadOnlyWrapper(MouseEvent(type="mouse_move", position=tuple(points.data[row])))
        mouse_move_callbacks(viewer, event)
        qtbot.waitUntil(lambda row=row: gallery.preview.row == row, timeout=5000)
        shown = gallery.preview.pixmap()
        assert (shown.width(), shown.height()) == (128, 128)
        np.testing.assert_array_equal(gallery.preview.image, _expected(results, [row], size=128)[0])
        assert str(int(results.table["label"].iloc[row])) in gallery.preview_text.value


def test_gallery_widget__several_images_and_stacks(make_napari_viewer, qtbot):
    from napari_segrep._widgets._results import results_for

    viewer = make_napari_viewer()
    image_a, labels_a, _ = make_cells(shape=(160, 160), n_cells=14, seed=4)
    rng = np.random.default_rng(0)
    stack = rng.random((3, 64, 64)).astype(np.float32)
    stack_labels = np.stack(
        [
            disc_labels((64, 64), [(20, 20, 6), (40, 44, 8)]),
            disc_labels((64, 64), [(30, 30, 7)]),
            disc_labels((64, 64), [(15, 45, 5), (45, 15, 6)], start=3),
        ]
    )
    img_a = viewer.add_image(image_a, name="img_a")
    cells_a = viewer.add_labels(labels_a, name="cells_a")
    gallery = _gallery(viewer)
    embed_a = _embed(viewer, qtbot, labels_layer=cells_a)
    # a second pair makes a group: one map of both images
    img_b = viewer.add_image(image_a[::-1].copy(), name="img_b")
    cells_b = viewer.add_labels(labels_a[::-1].copy(), name="cells_b")
    embed_a.image_input.value = [img_a]
    embed_a.labels_input.value = cells_a
    embed_a.multi.add_pair(img_b, cells_b)
    worker = embed_a.run()
    with qtbot.waitSignal(worker.finished, timeout=TIMEOUT_MS):
        pass
    qtbot.waitUntil(lambda: embed_a.job is None and embed_a.multi.view.settled, timeout=60000)
    qtbot.waitUntil(lambda: gallery.points_layer == embed_a.points_layer, timeout=5000)
    res_a, res_b = results_for(cells_a), results_for(cells_b)
    n_a = len(res_a.table)
    embed_a.points_layer.selected_data = {1, n_a + 2}
    _loaded(qtbot, gallery, 2)
    np.testing.assert_array_equal(gallery.thumbnail(0), _expected(res_a, [1])[0])
    np.testing.assert_array_equal(gallery.thumbnail(1), _expected(res_b, [2])[0])
    assert gallery.grid.item(1).text().startswith("cells_b ")
    gallery.go_to(n_a + 2)
    assert res_b.selection == frozenset({2}) and res_a.selection == frozenset()

    # a stack: clicking a thumbnail of frame 2 shows frame 2
    viewer.add_image(stack, name="stack")
    cells_s = viewer.add_labels(stack_labels, name="stack_cells", axis_labels=("t", "y", "x"))
    _, embed_s = viewer.window.add_plugin_dock_widget("napari-segrep", "Embed segments")
    embed_s.crop_input.value = 32
    embed_s.umap_input.value = False
    embed_s.image_input.value = [viewer.layers["stack"]]
    embed_s.labels_input.value = cells_s
    worker = embed_s.run()
    with qtbot.waitSignal(worker.finished, timeout=TIMEOUT_MS):
        pass
    qtbot.waitUntil(lambda: embed_s.job is None and embed_s.map_view.settled, timeout=60000)
    qtbot.waitUntil(lambda: gallery.points_layer == embed_s.points_layer, timeout=5000)
    res_s = results_for(cells_s)
    assert res_s.table[["label", "frame"]].values.tolist()[3] == [3, 2]
    embed_s.points_layer.selected_data = {0, 3}
    _loaded(qtbot, gallery, 2)
    np.testing.assert_array_equal(gallery.thumbnail(1), _expected(res_s, [3])[0])
    gallery.go_to(3)
    assert viewer.dims.current_step[0] == 2


def test_gallery_widget__montage_png_is_written_atomically(scene, qtbot, tmp_path):
    from PIL import Image

    from napari_segrep.analysis.montage import montage_layout

    viewer, _ = scene
    embed = _embed(viewer, qtbot)
    gallery = _gallery(viewer)
    embed.points_layer.selected_data = set(range(9))
    _loaded(qtbot, gallery, 9)
    path = gallery.export_montage(tmp_path / "cells.png", overwrite=False)
    assert path == tmp_path / "cells.png"
    with Image.open(path) as png:
        written = np.asarray(png.convert("RGB"))
    height, width, origins = montage_layout(9, 64, captions=True, title=True)
    assert written.shape == (height, width, 3)
    y, x = origins[4]
    np.testing.assert_array_equal(written[y : y + 64, x : x + 64], gallery.thumbnail(4))

    before = path.read_bytes()
    embed.points_layer.selected_data = {0, 1}
    _loaded(qtbot, gallery, 2)
    assert gallery.export_montage(path, overwrite=False) is None  # an existing file is kept
    assert path.read_bytes() == before
    assert gallery.export_montage(path, overwrite=True) == path
    assert path.read_bytes() != before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cells.png"]  # no temporaries
    with pytest.raises(ValueError, match="png"):
        gallery.export_montage(tmp_path / "cells.jpg", overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cells.png"]


RESPONSIVE_SCRIPT = r"""
image, labels, _ = make_cells(shape=(768, 768), n_cells=420, seed=5)
viewer = napari.Viewer(show=True)
app = QApplication.instance()
viewer.add_image(image, name="img")
viewer.add_labels(labels, name="cells")
app.processEvents()

_, gallery = viewer.window.add_plugin_dock_widget("napari-segrep", "Segment gallery")
gallery.size_input.value = 96
_, embed = viewer.window.add_plugin_dock_widget("napari-segrep", "Embed segments")
embed.crop_input.value = 32
embed.umap_input.value = False
embed.run()
wait(lambda: embed.job is None and embed.map_view.settled)
n = len(embed.table)
heartbeat, ticks = start_heartbeat()
embed.points_layer.selected_data = set(range(n))  # more than a page
wait(lambda: gallery.loaded and len(gallery.shown_rows) == 200)
first = list(gallery.shown_rows)
gallery.go_to_page(1)
wait(lambda: gallery.loaded)
second = list(gallery.shown_rows)
gallery.order_input.value = "most typical"
wait(lambda: gallery.loaded)
heartbeat.stop()
gaps = [b - a for a, b in zip(ticks, ticks[1:])]
# closed while a page loads
gallery.order_input.value = "random"
wait(lambda: gallery.job is not None and len(gallery._thumbs) < len(gallery.shown_rows))
print("REPORT", json.dumps({
    "longest_stall_s": max(gaps), "n": n, "first": first, "second": second,
    "in_flight": gallery.job is not None,
}))
viewer.close()
"""


def test_gallery_widget__first_session_stays_responsive_and_closes_cleanly(tmp_path):
    """A fresh process with an empty numba cache, napari first: paging through more than
    a page of thumbnails keeps the event loop ticking; closing napari while thumbnails load
    exits cleanly."""
    from ._fresh_session import run_fresh_session

    report = run_fresh_session(RESPONSIVE_SCRIPT, tmp_path)
    assert report["first"] == list(range(200)) and report["second"] == list(range(200, 400))
    assert report["in_flight"] is True
    assert report["longest_stall_s"] <= 1.0, report  # a freeze detector, not a speed target
