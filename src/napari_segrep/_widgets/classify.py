"""The "Classify segments" dock widget: click a few segments per class, predict all of them.

The widget only translates: clicks and selections -> annotations in the labels layer's results
(:class:`~._results.SegmentResults`, column ``class_annotation``); a worker runs
:func:`napari_segrep.analysis.classify.train_classifier` and ``predict`` on the table; the
predictions go back into the same results (``class_predicted``, ``class_probability``,
``class_margin``, ``prob_<class>``), which the map view colours by class and shows on hover.
Saving, loading, applying a classifier to another layer and the predictions layer are in
:mod:`._apply`.
"""

from __future__ import annotations

import napari
import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, Label, LineEdit, PushButton
from napari.layers import Labels
from napari.utils.notifications import show_error

from . import _session
from ._apply import ClassifierFiles, reads_measurements, with_measurements
from ._common import UserActions, labels_layers, on_click, shown_index, status_label
from ._jobs import Job, start_job, watch_close
from ._refine import EncoderRefinement
from ._results import PALETTE, SegmentResults, results_for, with_classes
from ._suggest import Suggestions
from ._training import NOT_EMBEDDED, annotated_examples, fit_and_predict, training_layers

__all__ = ["ClassifySegmentsWidget"]


class ClassifySegmentsWidget(UserActions, ClassifierFiles, Suggestions, Container):
    """Annotate segments with classes, train a classifier on their embeddings in the
    background after every annotation, and predict every segment.

    ``train()`` (what "Train now" calls) starts training and returns the napari worker (None
    when there is nothing to train on yet); ``classifier`` is the last model trained or loaded.
    """

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(labels=True)
        self.viewer = viewer
        self.results: SegmentResults | None = None
        self.classifier = None
        self.job: Job | None = None
        self._again = False  # annotations changed while training: train again after
        self._clicked_layer: Labels | None = None
        self._seen_annotations = None  # the followed results' annotations, as last seen
        self.labels_input = ComboBox(
            label="labels layer", choices=lambda _w=None: labels_layers(viewer)
        )
        self.class_input = ComboBox(label="class", choices=self._class_choices)
        self.name_input = LineEdit(label="class name")
        self.add_button = PushButton(text="Add")
        self.rename_button = PushButton(text="Rename")
        self.remove_button = PushButton(text="Remove")
        self.colour_button = PushButton(text="Colour...")
        class_buttons = Container(
            layout="horizontal",
            labels=False,
            widgets=[self.add_button, self.rename_button, self.remove_button, self.colour_button],
        )
        self.legend = Label(value="")
        self.annotate_input = CheckBox(
            label="click a segment to annotate it with the class (pan/zoom mode)", value=True
        )
        self.selection_button = PushButton(text="Annotate selected map points")
        from ..analysis.classify import FEATURES, METHODS

        self.method_input = ComboBox(label="method", choices=[*METHODS, "auto"], value="logistic")
        self.features_input = ComboBox(
            label="features",
            choices=list(FEATURES),
            value="embedding",
            tooltip="embedding+geometry adds area, shape and intensity per channel: choose it "
            "when size, brightness or texture tell the classes apart; measurements: those "
            "alone; auto: whichever cross-validates best on your annotations",
        )
        self._measured: tuple | None = None  # (labels as embedded, measurement columns)
        self.auto_input = CheckBox(label="retrain after every annotation", value=True)
        self.remember_input = CheckBox(
            label="also train on the layers annotated before (same model)",
            value=True,
            tooltip="annotate one image, then the next: the classifier keeps the first image's "
            "annotations (kept until this widget closes)",
        )
        #: layer name -> (its annotated rows, their annotations), once another layer is followed
        self._remembered: dict = {}
        self.train_button = PushButton(text="Train now")
        self.status = status_label()
        self.add_suggestion_widgets()
        self.predictions_button = PushButton(text="Predictions as labels layer")
        #: "Refine encoder with these annotations", its job and Accept/Revert
        self.refinement = EncoderRefinement(self)
        self.extend(
            [
                self.labels_input,
                self.class_input,
                self.name_input,
                class_buttons,
                self.legend,
                self.annotate_input,
                self.selection_button,
                self.method_input,
                self.features_input,
                self.auto_input,
                self.remember_input,
                self.train_button,
                self.status,
                *self.refinement.widgets,
                self.suggestions,
                self.next_button,
                self.predictions_button,
            ]
        )
        self.add_file_widgets()
        self.labels_input.changed.connect(self._on_labels_chosen)
        act = self._user_action
        self.add_button.changed.connect(act(lambda: self.add_class(self.name_input.value)))
        self.rename_button.changed.connect(
            act(lambda: self.rename_class(self.class_input.value, self.name_input.value))
        )
        self.remove_button.changed.connect(act(lambda: self.remove_class(self.class_input.value)))
        self.colour_button.changed.connect(self._choose_colour)
        self.selection_button.changed.connect(act(self.annotate_selection))
        self.method_input.changed.connect(self._on_annotations_changed)
        self.features_input.changed.connect(self._on_annotations_changed)
        self.remember_input.changed.connect(self._on_annotations_changed)
        self.train_button.changed.connect(act(self.train))
        self.next_button.changed.connect(act(self.next_suggestion))
        self.suggestions.changed.connect(self._on_suggestion_chosen)
        self.predictions_button.changed.connect(act(self.predictions_layer))
        viewer.layers.events.inserted.connect(self._on_layers_changed)
        viewer.layers.events.removed.connect(self._on_layers_changed)
        self._on_layers_changed()
        self._show_state()
        _session.start_loading_classifier_tools()  # scikit-learn, before the first training

    # ------------------------------------------------------------------ following a layer
    def _on_layers_changed(self, event=None) -> None:
        self.reset_choices()
        self._on_labels_chosen()

    def _on_labels_chosen(self, *_) -> None:
        layer = self.labels_input.value
        if self._clicked_layer is not layer:
            self._unhook_layer()
            if layer is not None:
                layer.mouse_drag_callbacks.append(self._on_click)
                layer.events.features.connect(self._on_layer_features)
                self._clicked_layer = layer
        self._follow(results_for(layer) if layer is not None else None)

    def _unhook_layer(self) -> None:
        layer, self._clicked_layer = self._clicked_layer, None
        if layer is not None:
            if self._on_click in layer.mouse_drag_callbacks:
                layer.mouse_drag_callbacks.remove(self._on_click)
            layer.events.features.disconnect(self._on_layer_features)

    def _on_layer_features(self, event=None) -> None:
        """The layer's features were set: maybe new results (an embedding finished)."""
        layer = self._clicked_layer
        if layer is not None and results_for(layer) is not self.results:
            self._follow(results_for(layer))

    def _follow(self, results: SegmentResults | None) -> None:
        if results is self.results:
            return
        if self.results is not None:
            self.results.events.table.disconnect(self._on_rows_changed)
            self.results.events.classes.disconnect(self._on_classes_event)
        self.results = results
        self._seen_annotations = results.annotations.copy() if results is not None else None
        if results is not None:
            results.events.table.connect(self._on_rows_changed)
            results.events.classes.connect(self._on_classes_event)
            if not results.class_colours and self.classifier is not None:
                self._adopt_classes(self.classifier.classes_)
        self._refresh_classes()
        self._show_state()
        if results is not None:  # its annotations (carried over), or the model predicts
            self.train(quiet=True)

    # ------------------------------------------------------------------ classes
    def _class_choices(self, _widget=None) -> list[str]:
        return list(self.results.class_colours) if self.results is not None else []

    def _refresh_classes(self) -> None:
        """Re-read the classes in their order (magicgui appends new choices at the end)."""
        current = self.class_input.value
        with self.class_input.changed.blocked():
            self.class_input.choices = ()
            self.class_input.reset_choices()
            if current in self.class_input.choices:
                self.class_input.value = current

    def _require_results(self) -> SegmentResults:
        if self.results is None:
            raise RuntimeError(NOT_EMBEDDED)
        return self.results

    def add_class(self, name: str, colour=None) -> str:
        """Add a class (the next palette colour unless ``colour``) and make it current."""
        results = self._require_results()
        name = str(name).strip()
        if not name:
            raise ValueError("Type the new class's name first.")
        if name in results.class_colours:
            raise ValueError(f"There is a class {name!r} already.")
        colours = dict(results.class_colours)
        colour = PALETTE[len(colours) % len(PALETTE)] if colour is None else colour
        colours[name] = np.asarray(colour, float)
        results.set_classes(colours)
        self._refresh_classes()
        self.class_input.value = name
        self.name_input.value = ""
        return name

    def rename_class(self, old: str, new: str) -> None:
        """Rename a class; its annotations follow."""
        results = self._require_results()
        new = str(new).strip()
        if not new or new in results.class_colours:
            raise ValueError("Type a new, unused name for the class first.")
        colours = {new if k == old else k: v for k, v in results.class_colours.items()}
        with results.events.classes.blocker(self._on_classes_event):
            results.set_classes(colours, renamed={old: new})
        self._seen_annotations = results.annotations.copy()
        self._refresh_classes()
        self.class_input.value = new
        self._on_annotations_changed()

    def remove_class(self, name: str) -> None:
        """Remove a class and its annotations."""
        results = self._require_results()
        colours = {k: v for k, v in results.class_colours.items() if k != name}
        with results.events.classes.blocker(self._on_classes_event):
            results.set_classes(colours)
        self._seen_annotations = results.annotations.copy()
        self._refresh_classes()
        self._on_annotations_changed()

    def set_class_colour(self, name: str, colour) -> None:
        results = self._require_results()
        colours = dict(results.class_colours)
        colours[name] = np.asarray(colour, float)
        results.set_classes(colours)

    def _choose_colour(self, *_) -> None:
        from qtpy.QtGui import QColor
        from qtpy.QtWidgets import QColorDialog

        name = self.class_input.value
        if self.results is None or name is None:
            return
        r, g, b, _ = (self.results.class_colours[name] * 255).astype(int)
        chosen = QColorDialog.getColor(QColor(r, g, b), self.native, f"Colour of {name}")
        if chosen.isValid():
            self.set_class_colour(name, np.array(chosen.getRgbF()))

    def _adopt_classes(self, names) -> None:
        """Define ``names`` as classes (keeping the colours of those already defined)."""
        results = self._require_results()
        colours = with_classes(results.class_colours, names)
        if list(colours) != list(results.class_colours):
            results.set_classes(colours)
            self._refresh_classes()

    # ------------------------------------------------------------------ annotating
    def _on_click(self, layer, event):
        """Pan/zoom click on a segment: annotate it with the current class (clicking it again
        with the same class removes the annotation).  In 2D slicing the segment in the plane
        shown, in any plane; in the 3D view the first object along the ray through the click
        (a drag turns the camera)."""
        if not self.annotate_input.value or layer.mode != "pan_zoom" or self.results is None:
            return None
        return on_click(layer, event, self._on_label_clicked)

    def _on_label_clicked(self, layer, label: int) -> None:
        if label <= 0 or self.results is None or self.class_input.value is None:
            return
        rows = self._rows_of(label)
        if len(rows):
            current = self.class_input.value
            same = (self.results.annotations[rows] == current).all()
            # the map view selected the segment (its click): annotating keeps every class in
            # view instead of dimming the other segments
            self.results.select_rows(())
            self.annotate_rows(rows, None if same else current)

    def _rows_of(self, label: int) -> np.ndarray:
        table = self.results.table
        hit = table["label"].to_numpy() == label
        layer = self.results.labels_layer
        if "frame" in table and layer is not None:  # a time-lapse: the segment in the frame shown
            hit &= table["frame"].to_numpy() == shown_index(self.viewer, layer, 0)
        return np.flatnonzero(hit)

    def annotate_rows(self, rows, name: str | None) -> None:
        """Annotate table rows with class ``name`` (None: remove their annotation); training
        follows (:meth:`_on_classes_event`)."""
        self._require_results().annotate_rows(rows, name)

    def annotate_labels(self, labels, name: str | None) -> None:
        """Annotate the segments with these label ids (in the frame shown, for time-lapses)."""
        rows = np.concatenate([self._rows_of(int(v)) for v in labels] or [np.zeros(0, int)])
        self.annotate_rows(rows, name)

    def annotate_selection(self) -> None:
        """Annotate the segments selected in the map with the current class."""
        results = self._require_results()
        if not results.selection:
            raise ValueError("Select points in the map first.")
        self.annotate_rows(sorted(results.selection), self.class_input.value)

    def _on_classes_event(self, event=None) -> None:
        """Classes, annotations or predictions changed: annotated here or elsewhere (the
        Segment gallery), the classifier trains again."""
        annotations = self.results.annotations
        seen = self._seen_annotations
        if seen is None or not np.array_equal(annotations, seen):
            self._seen_annotations = annotations.copy()
            self._on_annotations_changed()
        self._show_state()

    def _on_rows_changed(self, event=None) -> None:
        """Live edits replaced rows: predict them (train again if annotated ones went)."""
        self._on_annotations_changed(force=True)

    def _on_annotations_changed(self, *_, force: bool = False) -> None:
        if self.auto_input.value or force:
            self.train(quiet=True)

    # ------------------------------------------------------------------ training
    def train(self, *, quiet: bool = False):
        """Train on the annotations and predict every segment, in a worker; returns it (None
        when there is nothing to train on, or a training runs: it trains again after)."""
        if self.job is not None:
            self._again = True
            return None
        remembered = self._remembered if self.remember_input.value else {}
        layers, why = training_layers(self.results, remembered, features=self.features_input.value)
        if layers is None:
            if self._model_fits():
                self.predict_with(self.classifier)  # a loaded model predicts the new rows
            elif not quiet:
                raise ValueError(why)
            self._show_state(why)
            return None
        method, features, results = self.method_input.value, self.features_input.value, self.results
        table, measured = results.table, self._measured
        cached = measured[1] if measured is not None and measured[0] is results.run.labels else None

        def call(progress, should_stop):
            _session.load_classifier_tools()  # without freezing napari, the first time
            return fit_and_predict(layers, method=method, features=features, cached=cached)

        self.status.value = "Training..."
        watch_close(self.native.window())  # closing napari waits for it (a fraction of a second)
        self.job = start_job(
            call,
            desc="Training the classifier",
            on_result=lambda out: self._on_trained(results, table, *out),
            on_error=self._on_error,
            on_done=self._on_job_done,
        )
        return self.job.worker

    def _on_trained(self, results, table, model, predictions, rows) -> None:
        if rows is not table:  # measured: kept for the next training on the same labels
            from ..analysis.measure import geometry_columns

            self._measured = (results.run.labels, rows[geometry_columns(rows)])
        if results is not self.results:
            return  # another layer is followed now
        if not np.array_equal(results.labels, table["label"].to_numpy()):
            self._again = True  # live edits changed the rows meanwhile: train on the new ones
            return
        if results.labels_layer is not None:  # kept for training on the next layers
            self._remembered[results.labels_layer.name] = annotated_examples(results, rows)
        self.classifier = model
        self._adopt_classes(model.classes_)  # classes annotated in other layers too
        self._apply_predictions(predictions)

    def _model_fits(self) -> bool:
        """Whether the current classifier can predict the followed table (same encoder)."""
        if self.classifier is None or self.results is None:
            return False
        try:
            self.classifier.check_encoder(self.results.table)
        except ValueError:
            return False
        return True

    def predict_with(self, model) -> None:
        """Predict every segment with ``model`` (a loaded classifier), in the GUI thread
        (numpy: milliseconds for thousands of segments)."""
        results = self._require_results()
        self._adopt_classes(model.classes_)
        try:
            rows = results.table
            if reads_measurements(model):
                run = results.run
                rows = with_measurements(rows, run.image, run.labels, run.params, None)
            predictions = model.predict(rows)
        except ValueError as exc:
            self._on_error(exc)
            return
        self._apply_predictions(predictions)

    def _apply_predictions(self, predictions) -> None:
        results = self.results
        results.set_predictions(predictions)
        if results.colour_by != "class":
            results.colour_by = "class"
        self.update_suggestions(predictions)
        self._show_state()

    def _on_job_done(self) -> None:
        self.job = None
        if self._again:
            self._again = False
            self.train(quiet=True)

    def _on_error(self, exc: BaseException) -> None:
        from ..errors import Cancelled

        if isinstance(exc, Cancelled):
            self.status.value = "Cancelled: nothing was changed."
            return
        self.status.value = f"Error: {exc}"
        show_error(f"Classify segments: {exc}")

    # ------------------------------------------------------------------ status and legend
    def _show_state(self, why: str | None = None) -> None:
        self.refinement.update()
        results = self.results
        if results is None:
            self.legend.value = ""
            self.status.value = NOT_EMBEDDED
            return
        ann = results.annotations
        table = results.table
        predicted = (
            table["class_predicted"].to_numpy(dtype=object)
            if "class_predicted" in table
            else np.zeros(0, object)
        )
        lines = []
        for name, colour in results.class_colours.items():
            hex_colour = "#{:02x}{:02x}{:02x}".format(*(np.asarray(colour[:3]) * 255).astype(int))
            lines.append(
                f"<span style='color:{hex_colour}'>&#9632;</span> {name}: "
                f"{int((ann == name).sum())} annotated, {int((predicted == name).sum())} predicted"
            )
        self.legend.value = "<br>".join(lines) or "Add a class, then click its segments."
        model = self.classifier
        if why is not None:
            self.status.value = why
        elif model is not None and len(predicted):
            cv = "n/a" if model.cv_score_ is None else f"{model.cv_score_:.2f}"
            layers = model.info.get("layers", {})
            where = f" in {len(layers)} layers" if len(layers) > 1 else ""
            self.status.value = (
                f"{model.method}: cross-validated accuracy {cv} on "
                f"{sum(model.info.get('n_annotations', {}).values())} annotations{where}; "
                f"{len(predicted)} segments predicted."
            )

    def close(self) -> None:
        self._follow(None)
        self._unhook_layer()
        super().close()
