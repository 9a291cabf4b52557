"""SegmentResults: the one evented model of a run's results per labels layer (real napari
layers, real embeddings and maps; no viewer needed)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_segrep._images import Layout

from ..conftest import disc_labels, require_napari

require_napari()

from napari.layers import Labels  # noqa: E402

from napari_segrep._widgets._results import RunSetup, SegmentResults, results_for  # noqa: E402


@pytest.fixture()
def embedded(scene, encoder):
    import napari_segrep as sr
    from napari_segrep.analysis.reduce import pca_map
    from napari_segrep.analysis.tables import embedding_matrix

    image, labels = scene
    params = {"crop_size": 32, "batch_size": 8, "device": "cpu", "normalize": (0.0, 1.0)}
    params["channel_axis"] = None
    df = sr.embed_segments(image, labels, encoder, **params)
    run = RunSetup(
        encoder=encoder, params=params, image=image, labels=labels.copy(), layout=Layout("yx")
    )
    return Labels(labels, name="cells"), df, pca_map(embedding_matrix(df)), run


def _count(emitter) -> list:
    seen: list = []
    emitter.connect(lambda event=None: seen.append(event))
    return seen


def test_segment_results__one_per_labels_layer_and_replacing_closes_the_old(embedded):
    layer, df, map_model, run = embedded
    first = SegmentResults(layer, df, map_model, run)
    assert results_for(layer) is first
    closed = _count(first.events.closed)
    second = SegmentResults(layer, df, map_model, run)
    assert results_for(layer) is second and len(closed) == 1
    other = Labels(np.zeros((4, 4), np.int32))
    assert results_for(other) is None
    second.close()
    assert results_for(layer) is None


def test_segment_results__selection_by_rows_or_labels_emits_once_per_change(embedded):
    layer, df, map_model, run = embedded
    results = SegmentResults(layer, df, map_model, run)
    seen = _count(results.events.selection)
    results.select_rows([0, 2])
    results.select_rows({2, 0})  # the same selection: no event
    assert len(seen) == 1 and results.selected_labels() == {int(df["label"][0]), 3}
    results.select_labels([int(df["label"][4])])
    assert results.selection == {4} and len(seen) == 2
    results.select_labels([999])  # not a segment: nothing selected
    assert results.selection == frozenset() and len(seen) == 3


def test_segment_results__clusters_switch_colours_and_keep_the_selection(embedded):
    layer, df, map_model, run = embedded
    results = SegmentResults(layer, df, map_model, run)
    with pytest.raises(ValueError, match="colour_by"):
        results.colour_by = "rainbow"
    results.colour_by = "cluster"  # no cluster column yet: stays by label
    assert results.colour_by == "label"
    results.select_rows([1])
    tables, colours = _count(results.events.table), _count(results.events.colour_by)
    ids = np.arange(len(df)) % 2 + 1
    results.set_clusters(ids)
    np.testing.assert_array_equal(results.table["cluster"], ids)
    assert results.colour_by == "cluster" and len(tables) == 1 and len(colours) == 1
    assert results.selection == {1}
    with pytest.raises(ValueError, match="one cluster id per row"):
        results.set_clusters(ids[:-1])


def test_segment_results__replace_rows_keeps_untouched_rows_and_coordinates_bitwise(embedded):
    import napari_segrep as sr

    layer, df, map_model, run = embedded
    results = SegmentResults(layer, df, map_model, run)
    results.set_clusters(np.ones(len(df), np.int64))
    before_table, before_coords = results.table.copy(), results.coords.copy()
    # paint a new segment (id 9) on empty background and erase segment 6
    labels_now = run.labels.copy()
    labels_now[labels_now == 6] = 0
    new = disc_labels(labels_now.shape, [(85, 40, 5)], start=9)
    assert not labels_now[new > 0].any()
    labels_now[new > 0] = 9
    rows = sr.embed_segments(run.image, labels_now, run.encoder, only=[9], **run.params)
    seen = _count(results.events.table)
    coords = map_model.transform(rows.filter(like="emb_").to_numpy())  # as a live worker does
    results.replace_rows(rows, np.array([6]), labels_now=labels_now, coords=coords)

    assert len(seen) == 1 and results.run.labels is labels_now
    assert list(results.labels) == [1, 2, 3, 4, 5, 9]
    kept = before_table["label"].isin([1, 2, 3, 4, 5]).to_numpy()
    np.testing.assert_array_equal(
        results.table.iloc[:5].filter(like="emb_").to_numpy(),
        before_table[kept].filter(like="emb_").to_numpy(),
    )
    np.testing.assert_array_equal(results.coords[:5], before_coords[kept])
    np.testing.assert_allclose(
        results.coords[5], map_model.transform(rows.filter(like="emb_").to_numpy())[0]
    )
    assert results.table["cluster"].tolist() == [1, 1, 1, 1, 1, 0]  # new rows: unassigned
    assert results.selection == frozenset()


def test_segment_results__export_frame_and_provenance_match_the_cli_keys(embedded):
    layer, df, map_model, run = embedded
    results = SegmentResults(layer, df, map_model, run)
    frame = results.export_frame()
    assert list(frame["label"]) == list(df["label"])
    np.testing.assert_array_equal(frame[["map_0", "map_1"]].to_numpy(), map_model.coords)
    side = results.provenance()
    assert side["labels_layer"] == "cells" and side["n_segments"] == len(df)
    assert side["encoder"] == run.encoder.record() and side["seed"] == run.encoder.seed
    assert side["crop_size"] == 32 and side["map_method"] == "pca"
    assert side["torch_version"] and side["package_version"]
