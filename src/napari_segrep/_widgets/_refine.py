"""Classify segments' "Refine encoder with these annotations": the followed layer's annotations
teach its encoder (:func:`napari_segrep.refine.refine_encoder`) in a background job;
the layer is re-embedded with the refined encoder, its map and the classifier are fitted again,
and the figures before and after are shown.  Nothing changes until the user accepts; Revert
then goes back, in one click, to the table, map, classifier and encoder of before.

Where the refined encoder goes: as Train SegRep's trained one, it becomes the session's model
(``_session.trained_encoder``: Embed segments offers it, Apply classifier finds it by its
fingerprint) and is saved in a run folder of its own,
``~/.napari-segrep/runs/<time>-refined/encoder.pt`` (:func:`~napari_segrep.save_encoder`,
written once, in the job).  The re-embedded table's encoder record names that file, so a
classifier trained on it can rebuild the encoder in another session.  The refinement itself
runs without ``checkpoint_dir``: a checkpoint every epoch (40 of them on a small image) made it
1.6x slower (77 s -> 121 s, resnet18, 36 cells, 1 thread).
"""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from magicgui.widgets import Container, Label, PushButton
from napari.utils.notifications import show_error
from qtpy.QtCore import QObject, Signal

from . import _session
from ._common import progress_bar, status_label, unless_deleted
from ._jobs import Job, start_job, watch_close
from ._results import RunSetup, SegmentResults
from ._training import NOT_EMBEDDED, fit_and_predict

__all__ = ["REFINE_MODULE", "EncoderRefinement", "RefineCandidate"]

#: The engine module that refines (imported in a background thread, never in napari's).
REFINE_MODULE = "napari_segrep.refine"
#: Where each refinement's run folder goes (``<time>-refined``), as Train SegRep's runs.
RUNS_FOLDER = Path.home() / ".napari-segrep" / "runs"
#: Set once :data:`REFINE_MODULE` is imported, wholly (``sys.modules`` has a module from the
#: start of its import).
_engine_ready = threading.Event()


@dataclass
class RefineCandidate:
    """What a finished refinement offers (computed in the job, shown until accepted)."""

    results: SegmentResults  # the followed layer's results it was computed for
    table: pd.DataFrame  # re-embedded (no annotations, no predictions)
    map_model: object  # PCA of the new embeddings
    run: RunSetup  # the refined encoder, the run's parameters
    model: object  # the classifier trained on the new embeddings
    predictions: pd.DataFrame
    annotations: pd.DataFrame  # what it learnt from (and the classifiers were trained on)
    accepted: bool  # refine_encoder's verdict: the refined encoder helped
    message: str  # refine_encoder's line for the user
    accuracy_before: float
    accuracy_after: float
    cv_before: float | None
    cv_after: float | None


@dataclass
class _Before:
    """What an accepted refinement replaced (what Revert restores)."""

    results: SegmentResults
    table: pd.DataFrame
    map_model: object
    run: RunSetup
    classifier: object
    trained_encoder: object
    annotations: np.ndarray


class _Relay(QObject):
    loaded = Signal()


class EncoderRefinement:
    """The refinement part of :class:`~.classify.ClassifySegmentsWidget`; ``widgets`` are its
    controls.  It reads the host's ``results``, ``classifier``, ``method_input``,
    ``features_input``, ``native``, ``viewer``, and calls its ``_apply_predictions``,
    ``_on_rows_changed`` (blocked while the table is swapped), ``train`` and ``_show_state``.

    ``refine()`` starts the job and returns its worker; ``accept()`` / ``revert()``.
    ``options``: further ``refine_encoder`` arguments (``epochs``, ``batch_size``...);
    ``runs_folder``: where run folders go.
    """

    def __init__(self, host) -> None:
        self._host = host
        self.options: dict = {}
        self.runs_folder = RUNS_FOLDER
        self.job: Job | None = None
        self.candidate: RefineCandidate | None = None
        self._figures = ""  # the last refinement's before -> after line
        self.before: _Before | None = None
        self._map_key: int | None = None  # the UMAP refit awaited after an accept
        self._loading = False
        self._relay = _Relay()
        self._relay.loaded.connect(unless_deleted(self.update))
        self.refine_button = PushButton(text="Refine encoder with these annotations")
        self.job_size = Label(value="")
        self.job_size.native.setWordWrap(True)
        self.cancel_button = PushButton(text="Cancel refining", enabled=False)
        self.progress = progress_bar()
        self.comparison = status_label()
        self.accept_button = PushButton(text="Accept", visible=False)
        self.revert_button = PushButton(text="Revert", visible=False)
        self.widgets = [
            self.refine_button,
            self.job_size,
            self.cancel_button,
            self.progress,
            self.comparison,
            Container(
                layout="horizontal",
                labels=False,
                widgets=[self.accept_button, self.revert_button],
            ),
        ]
        act = host._user_action
        self.refine_button.changed.connect(act(self.refine))
        self.cancel_button.changed.connect(self.cancel)
        self.accept_button.changed.connect(act(self.accept))
        self.revert_button.changed.connect(act(self.revert))

    # ------------------------------------------------------------------ readiness and job size
    @property
    def engine_loaded(self) -> bool:
        return _engine_ready.is_set()

    def why_not(self) -> str | None:
        """Why refining is not possible now (None when it is)."""
        results = self._host.results
        if results is None:
            return NOT_EMBEDDED
        if self.job is not None:
            return "Refining..."
        if not self.engine_loaded:
            self._start_loading()
            return "Loading the training engine..."
        engine = sys.modules[REFINE_MODULE]
        counts = _class_counts(results)
        few = [f"{name} ({n})" for name, n in counts.items() if n < engine.MIN_PER_CLASS]
        missing = []
        if len(counts) < 2:
            missing.append("annotations of at least 2 classes")
        if few:
            missing.append(
                f"at least {engine.MIN_PER_CLASS} annotated segments of every class "
                f"({', '.join(few)} have fewer)"
            )
        if missing:
            return "To refine the encoder, add " + " and ".join(missing) + "."
        return None

    def job_text(self) -> str:
        """The size of the job: segments, annotations per class, training steps."""
        results = self._host.results
        engine = sys.modules[REFINE_MODULE]
        counts = ", ".join(f"{name} {n}" for name, n in _class_counts(results).items())
        steps = self.options.get("epochs", "auto")
        steps = (
            f"about {engine.AUTO_STEPS} training steps"
            if steps == "auto"
            else f"{steps} epoch(s) of training"
        )
        n = len(results.table)
        return (
            f"Refining: {n} segments, annotations {counts}; {steps}, then the {n} segments "
            "re-embedded."
        )

    def update(self) -> None:
        """Enable the button (its tooltip and the job size say what is missing, or the job's
        size); show Accept/Revert only for the followed layer's results."""
        why = self.why_not()
        running = self.job is not None
        self.refine_button.enabled = why is None
        self.refine_button.tooltip = why or "Train the encoder on these annotations (held-out "
        "annotations check that it helped), then re-embed, refit the map and retrain."
        if not running:
            self.job_size.value = why if why is not None else self.job_text()
        results = self._host.results
        pending = self.candidate is not None and self.candidate.results is results
        done = self.before is not None and self.before.results is results
        self.accept_button.visible = pending
        self.revert_button.visible = pending or done
        if pending:
            self.accept_button.text = "Accept" if self.candidate.accepted else "Use it anyway"
            self.revert_button.text = "Discard"
        elif done:
            self.revert_button.text = "Revert"

    def _start_loading(self) -> None:
        """Import the refining engine in a background thread (torch, the training loop);
        ``update`` when it is there."""
        if self._loading:
            return
        self._loading = True

        def load() -> None:
            _session.load_engine()
            with _session.collector_paused():
                import napari_segrep.refine  # noqa: F401
            _engine_ready.set()
            try:
                self._relay.loaded.emit()
            except RuntimeError:  # the widget is gone
                pass

        threading.Thread(target=load, name="napari-segrep refine engine", daemon=True).start()

    # ------------------------------------------------------------------ the job
    def refine(self):
        """Refine the followed layer's encoder with its annotations in a worker (returns it):
        then re-embed the layer, fit its map and the classifier; shown, not applied."""
        why = self.why_not()
        if why is not None:
            raise ValueError(why)
        host = self._host
        results = host.results
        run = results.run
        annotations = results.annotation_frame()
        old_table = results.table
        method, features = host.method_input.value, host.features_input.value
        name = results.labels_layer.name if results.labels_layer is not None else ""
        folder = _free_folder(self.runs_folder)
        options = dict(self.options)

        def call(progress, should_stop):
            _session.load_engine()
            return _refine_job(
                results,
                run,
                old_table,
                annotations,
                (name, method, features, folder, options),
                progress,
                should_stop,
            )

        self.candidate = None
        self.comparison.value = ""
        host.status.value = "Refining the encoder..."
        watch_close(host.native.window())  # closing napari cancels it, and waits
        from ._map_process import map_process

        release_map_process = map_process().pause()  # no UMAP compile competes meanwhile

        def done() -> None:
            release_map_process()
            self.job = None
            self.cancel_button.enabled = False
            self.update()

        self.job = start_job(
            call,
            desc="Refining the encoder",
            progress_bar=self.progress,
            on_result=lambda candidate: self._on_refined(results, candidate),
            on_error=self._on_error,
            on_done=done,
            on_message=self._on_message,
        )
        self.cancel_button.enabled = True
        self.update()
        return self.job.worker

    def cancel(self) -> None:
        """Stop the refinement: nothing changes."""
        if self.job is not None:
            self.job.cancel()
            self.job_size.value = "Cancelling..."

    def _on_message(self, text: str) -> None:
        self.job_size.value = text

    def _on_refined(self, results: SegmentResults, candidate: RefineCandidate | None) -> None:
        host = self._host
        if candidate is None or (self.job is not None and self.job.cancelled):
            host.status.value = self.comparison.value = "Refining cancelled: nothing was changed."
            return
        if results is not host.results:
            self.comparison.value = "Another layer is followed now: nothing was changed."
            return
        self.candidate = candidate
        cv = f"{_score(candidate.cv_before)} -> {_score(candidate.cv_after)}"
        then = (
            "Accept to use the refined encoder (Discard keeps the old one)."
            if candidate.accepted
            else "Nothing was changed (Use it anyway replaces the old encoder)."
        )
        self._figures = (
            f"{candidate.message}. Classifier ({candidate.model.method}) cross-validated "
            f"accuracy {cv} on {len(candidate.annotations)} annotations."
        )
        self.comparison.value = f"{self._figures} {then}"
        host.status.value = "Refined: see the comparison below."
        self.update()

    def _on_error(self, exc: BaseException) -> None:
        from ..errors import Cancelled

        if isinstance(exc, Cancelled):
            self.comparison.value = "Refining cancelled: nothing was changed."
            return
        self.comparison.value = f"Refining failed, nothing was changed: {exc}"
        show_error(f"Refine encoder: {exc}")

    # ------------------------------------------------------------------ accept / revert
    def accept(self) -> None:
        """Use the refined encoder: the layer's table, map, classifier and the session's model
        become the refinement's (Revert goes back)."""
        host, candidate = self._host, self.candidate
        results = host.results
        if candidate is None or candidate.results is not results:
            raise ValueError("Refine the encoder first.")
        if not _same_rows(results.table, candidate.table):
            self.candidate = None
            self.update()
            raise ValueError("The segments changed since the refinement started: refine again.")
        self.before = _Before(
            results=results,
            table=results.table,
            map_model=results.map_model,
            run=results.run,
            classifier=host.classifier,
            trained_encoder=_session.trained_encoder,
            annotations=results.annotations.copy(),
        )
        self.candidate = None
        with results.events.table.blocker(host._on_rows_changed):
            results.replace_embeddings(candidate.table, candidate.map_model, candidate.run)
        host.classifier = candidate.model
        host._apply_predictions(candidate.predictions)
        _set_session_encoder(host.viewer, candidate.run.encoder)
        if self.before.map_model.method != "pca":
            self._refit_map(results)
        self.comparison.value = f"{self._figures} Accepted (Revert goes back)."
        if not _same_annotations(results, candidate.annotations):
            host.train(quiet=True)  # annotated meanwhile: the classifier learns them too
        self.update()

    def revert(self) -> None:
        """Discard a refinement not accepted yet, or go back to what the accepted one replaced
        (table, map, classifier, session model; annotations made since stay)."""
        host = self._host
        results = host.results
        if self.candidate is not None and self.candidate.results is results:
            self.candidate = None
            self.comparison.value = "Discarded: nothing was changed."
            self.update()
            return
        before = self.before
        if before is None or before.results is not results:
            raise ValueError("There is no refinement to revert.")
        self.before = None
        self._map_key = None  # a UMAP of the refined embeddings is not wanted any more
        with results.events.table.blocker(host._on_rows_changed):
            results.replace_embeddings(before.table, before.map_model, before.run)
        host.classifier = before.classifier
        _set_session_encoder(host.viewer, before.trained_encoder)
        self.comparison.value = "Reverted to the encoder, map and classifier of before."
        if not np.array_equal(results.annotations, before.annotations):
            host.train(quiet=True)
        host._show_state()
        self.update()

    def _refit_map(self, results: SegmentResults) -> None:
        """UMAP of the new embeddings in the map process (the old map was UMAP)."""
        from ..analysis.tables import embedding_matrix
        from ._map_process import RemoteMap, map_process

        if len(results.table) < 4:
            return
        process, key, run = map_process(), RemoteMap.next_key(), results.run
        self._map_key = key

        def done(ok: bool, value) -> None:
            if self._map_key != key or results.run is not run:
                return  # reverted, or refined again, meanwhile
            self._map_key = None
            if not ok:
                self._on_error(RuntimeError(f"UMAP map failed: {value}"))
            elif len(value[1]) == len(results.table):
                results.set_map(RemoteMap(process, key, *value))

        process.submit("fit", key, embedding_matrix(results.table), 0, on_done=done)


def _refine_job(results, run, old_table, annotations, setup, progress, should_stop):
    """In the worker: refine, save, re-embed, map, classify before and after; None when
    stopped.  ``setup``: the layer's name, the classifier's method and features, the run
    folder and further ``refine_encoder`` options."""
    from ..analysis.reduce import pca_map
    from ..analysis.tables import embedding_matrix
    from ..engine.encoder import load_encoder, save_encoder
    from ..refine import refine_encoder
    from ._results import embed_layout

    name, method, features, folder, options = setup
    params = run.params
    started = [None]

    def steps(done: int, total: int) -> None:
        progress(done, total)
        now = time.monotonic()
        if started[0] is None:
            started[0] = (now, done)
        t0, d0 = started[0]
        left = ""
        if done > d0:
            left = f", about {(now - t0) / (done - d0) * (total - done):.0f} s left"
        progress.message(f"Refining: step {done}/{total}{left}.")

    result = refine_encoder(
        run.image,
        run.labels,
        annotations,
        encoder=run.encoder,
        axes=run.layout,
        crop_size=params["crop_size"],
        device=params["device"],
        normalize=_mode(run),
        channel_axis=params["channel_axis"],
        progress=steps,
        should_stop=should_stop,
        **options,
    )
    if result.stopped:
        return None
    Path(folder).mkdir(parents=True, exist_ok=True)
    path = save_encoder(result.refined_encoder, Path(folder) / "encoder.pt")
    encoder = load_encoder(path)  # the same weights; its record names the file
    if encoder.fingerprint() != result.refined_encoder.fingerprint():
        raise RuntimeError(f"the refined encoder saved in {path} does not read back the same")
    progress.message("Re-embedding the segments with the refined encoder...")
    table = embed_layout(
        run.image,
        run.labels,
        encoder,
        run.layout,
        progress=progress,
        should_stop=should_stop,
        **params,
    )
    new_run = RunSetup(
        encoder=encoder,
        params=params,
        image=run.image,
        labels=run.labels,
        layout=run.layout,
        normalization=table.attrs.get("normalization", run.normalization),
        model=f"refined ({Path(folder).name})",
        checkpoint=str(path),
        image_layers=list(run.image_layers),
    )
    progress.message("Fitting the map and the classifier...")
    _session.load_classifier_tools()
    map_model = pca_map(embedding_matrix(table))
    old, _, _ = fit_and_predict(
        [(old_table, annotations, run, name)], method=method, features=features
    )
    model, predictions, _ = fit_and_predict(
        [(table, annotations, new_run, name)], method=method, features=features
    )
    return RefineCandidate(
        results=results,
        table=table,
        map_model=map_model,
        run=new_run,
        model=model,
        predictions=predictions,
        annotations=annotations,
        accepted=bool(result.accepted),
        message=result.message[:1].upper() + result.message[1:],
        accuracy_before=result.accuracy_before,
        accuracy_after=result.accuracy_after,
        cv_before=old.cv_score_,
        cv_after=model.cv_score_,
    )


def _class_counts(results: SegmentResults) -> dict[str, int]:
    """Annotated segments per class, in the classes' order."""
    ann = results.annotations
    names = [n for n in results.class_colours if (ann == n).any()]
    names += sorted({str(a) for a in ann if a != "" and a not in names})
    return {n: int((ann == n).sum()) for n in names}


def _mode(run: RunSetup):
    """The run's normalisation as ``refine_encoder`` takes it (the mode: the same image gives
    the same numbers)."""
    mode = (run.normalization or {}).get("mode", "image")
    return None if mode == "none" else mode


def _same_rows(a: pd.DataFrame, b: pd.DataFrame) -> bool:
    from ..analysis.classify import segment_keys

    keys = segment_keys(a)
    if len(a) != len(b) or not set(keys) <= set(b.columns):
        return False
    return bool((a[keys].to_numpy() == b[keys].to_numpy()).all())


def _same_annotations(results: SegmentResults, annotations: pd.DataFrame) -> bool:
    now = results.annotation_frame()
    return len(now) == len(annotations) and now.equals(annotations.reset_index(drop=True))


def _score(value) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _free_folder(root: Path) -> Path:
    from ..io import free_run_dir

    return free_run_dir(Path(root) / f"{time.strftime('%Y%m%d-%H%M%S')}-refined")


def _set_session_encoder(viewer, encoder) -> None:
    """Make ``encoder`` the session's model (Embed segments offers it), as Train SegRep does."""
    from .embed import EmbedSegmentsWidget

    _session.trained_encoder = encoder
    for widget in EmbedSegmentsWidget.instances:
        if widget.viewer is viewer:
            widget.refresh_models()
