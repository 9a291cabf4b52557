"""MapView's highlight overlay for many segments (real viewers; a small threshold stands in for
the 5,000 colormap entries above which the overlay draws)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from napari_segrep._images import Layout

from ..conftest import require_napari

require_napari()

from napari.utils._proxies import ReadOnlyWrapper  # noqa: E402
from napari.utils.interactions import mouse_press_callbacks  # noqa: E402

from napari_segrep._widgets import _highlight  # noqa: E402
from napari_segrep._widgets._map_view import DIMMED, MapView  # noqa: E402
from napari_segrep._widgets._results import RunSetup, SegmentResults  # noqa: E402
from napari_segrep.analysis.reduce import pca_map  # noqa: E402

THRESHOLD = 20
SIDE, CELL = 48, 4  # 144 segments


def grid_labels(side=SIDE, cell=CELL) -> np.ndarray:
    k = side // cell
    ids = np.arange(1, k * k + 1, dtype=np.uint32).reshape(k, k)
    labels = np.kron(ids, np.ones((cell, cell), np.uint32))
    labels[::cell] = 0  # a background line between rows of segments
    return labels


def make_results(layer, labels, *, stack=False):
    rng = np.random.default_rng(0)
    ids = np.unique(labels[labels > 0])
    emb = rng.normal(size=(len(ids), 6)).astype(np.float32)
    table = pd.DataFrame({"label": ids})
    if stack:
        table["frame"] = [int(np.nonzero((labels == i).any(axis=(1, 2)))[0][0]) for i in ids]
    table = pd.concat([table, pd.DataFrame(emb).add_prefix("emb_")], axis=1)
    run = RunSetup(
        encoder=None,
        params={},
        image=labels,
        labels=labels,
        layout=Layout("tyx" if stack else "yx"),
    )
    return SegmentResults(layer, table, pca_map(emb), run)


@pytest.fixture()
def small_threshold(monkeypatch):
    monkeypatch.setattr(_highlight, "OVERLAY_MIN_ENTRIES", THRESHOLD)


@pytest.fixture()
def mapped(make_napari_viewer, small_threshold):
    viewer = make_napari_viewer()
    labels = grid_labels()
    layer = viewer.add_labels(labels, name="cells", opacity=0.6)
    results = make_results(layer, labels)
    view = MapView(viewer)
    view.attach(results)
    return viewer, layer, results, view


def overlays(viewer) -> list:
    return [la for la in viewer.layers if la.metadata.get(_highlight.OVERLAY_KEY)]


def shown_colour(overlay, labels, label) -> np.ndarray:
    """The RGBA the overlay gives the pixels of ``label``."""
    index = np.unique(np.asarray(overlay.data)[labels == label])
    assert len(index) == 1
    return np.asarray(overlay.colormap.map(np.array([index[0]], overlay.data.dtype)))[0]


def test_overlay__many_selected_in_their_colours_others_dim_and_clicks_still_select(
    mapped, MouseEvent
):
    viewer, layer, results, view = mapped
    labels = np.asarray(layer.data)
    rows = list(range(0, 60))  # 60 > THRESHOLD colormap entries
    viewer.layers.selection.active = layer
    results.select_rows(rows)
    (overlay,) = overlays(viewer)
    assert overlay.visible and overlay.data.dtype in (np.uint8, np.uint16)
    assert viewer.layers.index(overlay) == viewer.layers.index(layer) + 1
    assert layer.opacity == 0 and overlay.opacity == pytest.approx(0.6)
    assert not overlay.editable
    np.testing.assert_allclose(overlay.scale, layer.scale)
    # clicks, values and the layer controls stay the labels layer's
    assert viewer.layers.selection.active is layer and overlay not in viewer.layers.selection
    colours = view._colours()
    selected_label, other_label = int(results.labels[3]), int(results.labels[100])
    np.testing.assert_allclose(shown_colour(overlay, labels, selected_label), colours[3], atol=0.01)
    np.testing.assert_allclose(shown_colour(overlay, labels, other_label), DIMMED, atol=0.01)
    assert shown_colour(overlay, labels, 0)[3] == 0  # background clear
    # the labels layer keeps its colours (no colormap naming 60 labels)
    assert len(getattr(layer.colormap, "color_dict", {})) <= THRESHOLD + 2

    # a click on a segment of the (hidden) labels layer selects its point
    target = int(results.labels[120])
    yy, xx = np.nonzero(labels == target)
    layer.mode = "pan_zoom"
    mouse_press_callbacks(
        layer, ReadOnlyWrapper(MouseEvent(type="mouse_press", position=(yy[0], xx[0])))
    )
    assert set(results.selection) == {120}
    assert set(view.points_layer.selected_data) == {120}
    # one selected: the small colormap again, the overlay hidden
    assert not overlay.visible and layer.opacity == pytest.approx(0.6)
    assert layer.colormap.map(target)[3] == pytest.approx(1.0)

    results.select_rows(rows)
    assert overlay.visible and layer.opacity == 0 and overlays(viewer) == [overlay]
    results.select_rows(())  # cleared: the labels layer's own colours
    assert not overlay.visible and layer.opacity == pytest.approx(0.6)
    assert layer.colormap is view._original_colormap


def test_overlay__few_selected_use_the_colormap_as_before(mapped):
    viewer, layer, results, _ = mapped
    results.select_rows(range(THRESHOLD))  # at the threshold: the dict colormap
    assert overlays(viewer) == [] and layer.opacity == pytest.approx(0.6)
    assert set(layer.colormap.color_dict) >= {int(v) for v in results.labels[:THRESHOLD]}


def test_overlay__colour_by_cluster_and_repaint_when_the_labels_change(mapped):
    viewer, layer, results, view = mapped
    labels = np.asarray(layer.data)
    ids = (np.arange(len(results.labels)) % 5) + 1
    results.set_clusters(ids)
    assert results.colour_by == "cluster"
    (overlay,) = overlays(viewer)
    assert overlay.visible and layer.opacity == 0
    colours = view._colours()
    for row in (0, 7, 143):
        label = int(results.labels[row])
        np.testing.assert_allclose(shown_colour(overlay, labels, label), colours[row], atol=0.01)
    # an edit of the labels (live mode, painting): the overlay follows the new pixels
    edited = labels.copy()
    edited[edited == results.labels[7]] = results.labels[0]
    layer.data = edited
    first = np.unique(np.asarray(overlay.data)[labels == results.labels[0]])
    assert np.unique(np.asarray(overlay.data)[labels == results.labels[7]]).tolist() == [first[0]]
    results.colour_by = "label"
    assert not overlay.visible and layer.opacity == pytest.approx(0.6)


def test_overlay__not_a_labels_choice_and_removed_with_the_labels_layer(mapped):
    viewer, layer, results, view = mapped
    results.select_rows(range(60))
    (overlay,) = overlays(viewer)
    _, embed = viewer.window.add_plugin_dock_widget("napari-segrep", "Embed segments")
    _, classify = viewer.window.add_plugin_dock_widget("napari-segrep", "Classify segments")
    assert list(embed.labels_input.choices) == [layer]
    assert list(classify.labels_input.choices) == [layer]
    viewer.layers.remove(layer)
    assert overlay not in viewer.layers and overlays(viewer) == []
    view.detach()  # what the widgets do when their labels layer goes: nothing left to undo
    assert overlays(viewer) == []


def test_overlay__detach_removes_it_and_restores_the_labels_layer(mapped):
    viewer, layer, results, view = mapped
    results.select_rows(range(60))
    assert overlays(viewer)
    view.detach()
    assert overlays(viewer) == [] and layer.opacity == pytest.approx(0.6)


def test_overlay__stack_painted_whole_and_segments_view(make_napari_viewer, small_threshold):
    from napari_segrep._widgets._group_view import SegmentsView

    viewer = make_napari_viewer()
    frame = grid_labels()
    stack = np.stack([frame, np.where(frame > 0, frame + frame.max(), 0)])
    layer = viewer.add_labels(stack, name="movie", scale=(1, 2, 2))
    results = make_results(layer, stack, stack=True)
    view = SegmentsView(viewer)
    view.attach(results)
    results.select_rows(range(100, 250))  # rows of both frames
    (overlay,) = overlays(viewer)
    assert overlay.data.shape == stack.shape and overlay.visible
    np.testing.assert_allclose(overlay.scale, (1, 2, 2))
    colours = view._colours()
    row_late = int(np.flatnonzero(results.labels == frame.max() + 5)[0])
    label_late = int(results.labels[row_late])
    assert 100 <= row_late < 250
    np.testing.assert_allclose(
        shown_colour(overlay, stack, label_late), colours[row_late], atol=0.01
    )
    np.testing.assert_allclose(shown_colour(overlay, stack, 1), DIMMED, atol=0.01)
    view.detach()
    assert overlays(viewer) == []
