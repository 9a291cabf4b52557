"""Classify segments' "Refine encoder with these annotations" in real napari viewers: the
button's state and the job's size, a refinement applied only on Accept and undone by Revert,
cancel, a failure, closing napari, and the GUI's heartbeat while it runs (a shrunken real
encoder, one epoch)."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest

from napari_segrep._sample_data import make_cells
from napari_segrep.refine import AUTO_STEPS

from ..conftest import TRAIN_SMALL, require_napari

require_napari()

from napari_segrep._widgets import _session  # noqa: E402

TIMEOUT_MS = 60_000
#: One epoch of small batches: a refinement of a dozen cells in about a second.
FAST = {"epochs": 1, "batch_size": 8, "projection_hidden": 64, "projection_dim": 32}


@pytest.fixture()
def classify(make_napari_viewer, qtbot, narrow_encoder, tmp_path):
    """A viewer with 12 generated cells embedded by the narrow encoder (as the session's
    model), Classify segments following them, refinements fast and their run folders in
    ``tmp_path``.  Returns ``(viewer, widget, classes)``."""
    image, labels, classes = make_cells(shape=(128, 128), n_cells=12, seed=2)
    viewer = make_napari_viewer()
    viewer.add_image(image, name="img")
    viewer.add_labels(labels, name="cells")
    _session.trained_encoder = narrow_encoder
    _, embed = viewer.window.add_plugin_dock_widget("napari-segrep", "Embed segments")
    embed.refresh_models()
    embed.model_input.value = "model trained in this session"
    embed.crop_input.value = TRAIN_SMALL["crop_size"]
    embed.device_input.value = "cpu"
    embed.umap_input.value = False
    embed.run()
    qtbot.waitUntil(lambda: embed.job is None and embed.map_view.settled, timeout=TIMEOUT_MS)
    _, widget = viewer.window.add_plugin_dock_widget("napari-segrep", "Classify segments")
    widget.refinement.options = dict(FAST)
    widget.refinement.runs_folder = tmp_path / "runs"
    qtbot.waitUntil(lambda: widget.refinement.engine_loaded, timeout=TIMEOUT_MS)
    widget.refinement.update()  # (its own signal would, in the next turn of the event loop)
    yield viewer, widget, classes
    _session.trained_encoder = None


def _annotate(widget, classes, per_class=3, names=None):
    names = names or sorted(set(classes.values()))
    for name in names:
        if name not in widget.results.class_colours:
            widget.add_class(name)
        ids = [k for k, v in sorted(classes.items()) if v == name][:per_class]
        widget.annotate_labels(ids, name)
    return names


def _wait_trained(qtbot, widget):
    qtbot.waitUntil(
        lambda: widget.job is None and "class_predicted" in widget.results.table,
        timeout=TIMEOUT_MS,
    )


def _refine(qtbot, widget):
    widget.refinement.refine()
    qtbot.waitUntil(lambda: widget.refinement.job is None, timeout=TIMEOUT_MS)


def _shown(button) -> bool:
    """Shown in its dock (the viewer itself is not shown in these tests)."""
    return not button.native.isHidden()


def _state(widget):
    results = widget.results
    return results.table, results.map_model, results.run, widget.classifier


def _unchanged(widget, before) -> bool:
    return all(a is b for a, b in zip(_state(widget), before, strict=True))


def test_refine_widget__enabled_with_enough_annotations_and_shows_the_job_size(classify, qtbot):
    _, widget, classes = classify
    part = widget.refinement
    assert not part.refine_button.enabled
    assert "at least 2 classes" in part.refine_button.tooltip
    a, b = sorted(set(classes.values()))[:2]
    _annotate(widget, classes, per_class=3, names=[a])
    _annotate(widget, classes, per_class=2, names=[b])
    _wait_trained(qtbot, widget)
    assert not part.refine_button.enabled
    assert f"at least 3 annotated segments of every class ({b} (2)" in part.refine_button.tooltip
    assert part.job_size.value == part.refine_button.tooltip
    with pytest.raises(ValueError, match="at least 3"):
        part.refine()
    widget.annotate_labels([k for k, v in sorted(classes.items()) if v == b][:3], b)
    _wait_trained(qtbot, widget)
    assert part.refine_button.enabled
    assert part.job_size.value == (
        f"Refining: 12 segments, annotations {a} 3, {b} 3; 1 epoch(s) of training, then the "
        "12 segments re-embedded."
    )
    part.options = {}
    part.update()
    assert f"about {AUTO_STEPS} training steps" in part.job_size.value


def test_refine_widget__refined_results_replace_the_old_only_on_accept_and_revert_restores(
    classify, qtbot, narrow_encoder, tmp_path
):
    import napari_segrep as sr

    viewer, widget, classes = classify
    part = widget.refinement
    _annotate(widget, classes)
    _wait_trained(qtbot, widget)
    table, map_model, run, classifier = _state(widget)
    coords = widget.results.coords.copy()
    _refine(qtbot, widget)
    candidate = part.candidate
    assert candidate is not None, part.comparison.value
    # shown, not applied: the layer's results and the classifier are the old ones
    assert _unchanged(widget, (table, map_model, run, classifier))
    assert _shown(part.accept_button) and _shown(part.revert_button)
    assert part.accept_button.text == ("Accept" if candidate.accepted else "Use it anyway")
    assert f"{candidate.accuracy_before:.3f} -> {candidate.accuracy_after:.3f}" in (
        part.comparison.value
    )
    cv = f"cross-validated accuracy {candidate.cv_before:.2f} -> {candidate.cv_after:.2f}"
    assert cv in part.comparison.value
    # the refined encoder is saved in its run folder, and the new table's record names it
    (saved,) = (tmp_path / "runs").glob("*-refined/encoder.pt")
    encoder = candidate.run.encoder
    assert encoder.fingerprint() != narrow_encoder.fingerprint()
    assert sr.load_encoder(saved).fingerprint() == encoder.fingerprint()
    assert candidate.table.attrs["encoder"]["weights"] == str(saved)

    part.accept()
    assert widget.job is None  # the classifier shown is the refinement's: no retraining
    results = widget.results
    assert results.run is candidate.run and results.map_model is candidate.map_model
    assert widget.classifier is candidate.model and _session.trained_encoder is encoder
    widget.classifier.check_encoder(results.table)  # the classifier's encoder is the table's
    expected = sr.embed_segments(
        viewer.layers["img"].data, viewer.layers["cells"].data, encoder, crop_size=32
    )
    np.testing.assert_allclose(
        results.table.filter(like="emb_"), expected.filter(like="emb_"), rtol=1e-5, atol=1e-6
    )
    np.testing.assert_array_equal(results.annotations, table["class_annotation"])
    assert "class_predicted" in results.table and not _shown(part.accept_button)
    assert viewer.layers["cells"].features["emb_0"].tolist() == results.table["emb_0"].tolist()

    part.revert()
    assert widget.results is results and widget.job is None
    pd.testing.assert_frame_equal(results.table, table)
    assert results.map_model is map_model and results.run is run
    np.testing.assert_array_equal(results.coords, coords)
    assert widget.classifier is classifier and _session.trained_encoder is narrow_encoder
    assert not _shown(part.revert_button)
    with pytest.raises(ValueError, match="no refinement to revert"):
        part.revert()


def test_refine_widget__cancel_and_failure_change_nothing(classify, qtbot):
    _, widget, classes = classify
    part = widget.refinement
    _annotate(widget, classes)
    _wait_trained(qtbot, widget)
    before = _state(widget)
    part.refine()
    part.cancel()
    qtbot.waitUntil(lambda: part.job is None, timeout=TIMEOUT_MS)
    assert part.candidate is None and _unchanged(widget, before)
    assert part.comparison.value == "Refining cancelled: nothing was changed."
    assert part.refine_button.enabled and not _shown(part.accept_button)
    # a failure: one clear error, nothing changed
    part.options = {**FAST, "lr": -1.0}
    _refine(qtbot, widget)
    assert part.comparison.value.startswith("Refining failed, nothing was changed: ")
    assert "lr" in part.comparison.value
    assert part.candidate is None and _unchanged(widget, before)
    assert part.refine_button.enabled


def test_refine_widget__the_gui_keeps_its_heartbeat_while_refining(classify, qtbot):
    from qtpy.QtCore import QTimer

    _, widget, classes = classify
    _annotate(widget, classes)
    _wait_trained(qtbot, widget)
    widget.refinement.options = {**FAST, "epochs": 3}
    ticks = []
    heartbeat = QTimer()
    heartbeat.setInterval(50)
    heartbeat.timeout.connect(lambda: ticks.append(time.perf_counter()))
    heartbeat.start()
    _refine(qtbot, widget)
    heartbeat.stop()
    assert widget.refinement.candidate is not None, widget.refinement.comparison.value
    gaps = np.diff(ticks)
    assert len(ticks) > 10 and gaps.max() <= 0.5, gaps.max()  # a freeze detector


def test_refine_widget__closing_napari_while_refining_cancels_it(classify, qtbot):
    viewer, widget, classes = classify
    _annotate(widget, classes)
    _wait_trained(qtbot, widget)
    before = _state(widget)
    widget.refinement.options = {**FAST, "epochs": 50}
    widget.refinement.refine()
    qtbot.waitUntil(lambda: "step" in widget.refinement.job_size.value, timeout=TIMEOUT_MS)
    widget.native.window().close()  # cancels the job and waits for it
    assert widget.refinement.job is None
    assert widget.refinement.candidate is None and _unchanged(widget, before)
