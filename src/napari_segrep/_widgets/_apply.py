"""The classifier's files and its use beyond the layer it was trained on (part of the
"Classify segments" widget): save and load a classifier, apply it to another labels layer
(embedding that layer first with the classifier's own encoder when needed), show predictions as
a labels layer, and export them to CSV."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from magicgui.widgets import ComboBox, Container, PushButton, Select
from napari.layers import Labels
from napari.utils.colormaps import DirectLabelColormap
from napari.utils.notifications import show_error, show_info

from .._images import Layout, layout_of
from . import _session
from ._common import (
    export_table,
    folder_pairs,
    image_layers,
    labels_layers,
    layer_inputs,
    progress_bar,
    save_path,
)
from ._jobs import start_job, watch_close
from ._layer_axes import AxesQuestion, LayerAxesUnknown, layer_layout
from ._results import (
    ANNOTATION,
    PREDICTION_COLUMNS,
    prediction_columns,
    results_for,
    with_classes,
)

__all__ = [
    "ClassifierFiles",
    "classify_arrays",
    "export_columns",
    "file_layout",
    "reads_measurements",
    "with_measurements",
]


def export_columns(table: pd.DataFrame) -> list[str]:
    """The columns of a predictions export: keys, centroid and area, the annotation, the
    prediction and each class's probability."""
    keys = ("image", "frame", "label", "centroid_z", "centroid_y", "centroid_x", "area")
    front = [c for c in keys if c in table]
    classes = [c for c in (ANNOTATION, *PREDICTION_COLUMNS) if c in table]
    return front + classes + [c for c in table.columns if str(c).startswith("prob_")]


def reads_measurements(model) -> bool:
    """Whether the classifier ``model`` reads measurement columns (``info["features"]``
    "embedding+geometry" or "measurements"): a table needs :func:`with_measurements` first."""
    from ..analysis.classify import MEASURED_FEATURES

    return model.info.get("features") in MEASURED_FEATURES


def with_measurements(table, image, labels, params: dict, cached=None):
    """``table`` with the measurement columns (area, shape, intensity per channel; 3D objects
    in the spacing's unit) that ``features="embedding+geometry"`` needs: ``cached`` ones
    (measured before on the same labels, same rows) or measured now.  ``params``: the run's
    ``embed_segments`` parameters (``channel_axis``; a volume's ``axes`` and ``spacing``)."""
    from ..analysis.measure import add_measurements

    if cached is not None and len(cached) == len(table):
        return table.assign(**{c: cached[c].to_numpy() for c in cached.columns})
    channel_axis = params.get("channel_axis")
    if (
        channel_axis is not None
        and channel_axis >= 0
        and "frame" in table
        and not params.get("axes")
    ):
        channel_axis = int(channel_axis) + 1  # embed_stack's, within a frame: past time
    return add_measurements(
        table,
        image,
        labels,
        channel_axis=channel_axis,
        axes=params.get("axes"),
        spacing=params.get("spacing"),
    )


def classify_arrays(
    model, encoder, image, labels, channel_axis, params, progress, should_stop, *, layout
):
    """Embed the segments of ``labels`` (of ``layout``: 2D, a z-stack, a time-lapse) with
    ``encoder`` (an encoder, or the classifier's record of one: rebuilt, and checked to be the
    same by its fingerprint) and classify them: ``(table, predictions, encoder)``.  In a
    worker."""
    from ._results import embed_layout, layout_params, run_encoder

    if not hasattr(encoder, "fingerprint"):
        sha = encoder.get("sha256")
        encoder = run_encoder(
            encoder.get("weights"),
            image,
            layout,
            channel_axis=channel_axis,
            backbone=encoder.get("backbone"),
            seed=encoder.get("seed", 0),
        )
        if sha is not None and encoder.fingerprint() != sha:
            raise ValueError(
                "the classifier's encoder is not available here (the model it was trained on "
                f"is not this session's, and its weights {encoder.weights_source or '(untrained)'}"
                " differ): embed a layer with that model in Embed segments first"
            )
    table = embed_layout(
        image,
        labels,
        encoder,
        layout,
        channel_axis=channel_axis,
        progress=progress,
        should_stop=should_stop,
        **params,
    )
    if reads_measurements(model):
        measured = {"channel_axis": channel_axis, **layout_params(layout)}
        table = with_measurements(table, image, labels, measured)
    return table, model.predict(table, force=True), encoder


def file_layout(labels, model) -> Layout:
    """The layout of a labels file classified with ``model``: 2D and 4D as they are; 3D by
    what the classifier's encoder embeds (3D objects: a z-stack; 2D: a time-lapse)."""
    from ..engine.backbones import get_backbone

    axes = None
    if np.ndim(labels) == 3:
        backbone = (model.info.get("encoder") or {}).get("backbone", "resnet18")
        axes = "zyx" if get_backbone(backbone).spatial_dims == 3 else "tyx"
    return layout_of(np.shape(labels), axes=axes)


class ClassifierFiles:
    """Save/load/apply/export for :class:`~.classify.ClassifySegmentsWidget` (a mixin: it
    uses the widget's ``viewer``, ``results``, ``classifier``, ``status``)."""

    def add_file_widgets(self) -> None:
        self.save_button = PushButton(text="Save classifier...")
        self.load_button = PushButton(text="Load classifier...")
        self.apply_labels = ComboBox(
            label="apply to labels", choices=lambda _w=None: labels_layers(self.viewer)
        )
        self.apply_images = Select(
            label="its image layer(s)", choices=lambda _w=None: image_layers(self.viewer)
        )
        self.apply_question = AxesQuestion(on_answered=lambda *_: self._check_apply_axes())
        self.apply_button = PushButton(text="Apply classifier")
        self.apply_progress = progress_bar()
        self.folder_button = PushButton(text="Apply to a folder of files...")
        self.export_button = PushButton(text="Export predictions CSV...")
        self.extend(
            [
                Container(
                    layout="horizontal", labels=False, widgets=[self.save_button, self.load_button]
                ),
                self.apply_labels,
                self.apply_question,
                self.apply_images,
                self.apply_button,
                self.folder_button,
                self.apply_progress,
                self.export_button,
            ]
        )
        self.apply_job = None
        act = self._user_action
        self.save_button.changed.connect(act(self.save_classifier))
        self.load_button.changed.connect(act(self.load_classifier))
        self.apply_button.changed.connect(
            act(lambda: self.apply_to(self.apply_labels.value, list(self.apply_images.value or [])))
        )
        self.export_button.changed.connect(act(self.export_csv))
        self.folder_button.changed.connect(act(self._apply_to_chosen_folder))
        self.apply_labels.changed.connect(self._check_apply_axes)
        self._check_apply_axes()

    def _check_apply_axes(self, *_) -> None:
        """Ask what the layer to apply to is when it is 3D and that is not known yet."""
        layer = self.apply_labels.value
        try:
            if layer is not None:
                layer_layout(layer)
        except LayerAxesUnknown:
            self.apply_question.ask(layer)
            return
        except ValueError:
            pass
        self.apply_question.clear()

    # ------------------------------------------------------------------ files
    def save_classifier(self, path=None, *, overwrite: bool | None = None) -> Path | None:
        """Write the classifier (``.segclf``: arrays + JSON, no pickle).  A file that is not a
        napari-segrep classifier is never replaced."""
        if self.classifier is None:
            raise ValueError("Train or load a classifier first.")
        path = save_path(
            self.native,
            path,
            title="Save classifier",
            suggestion="classifier.segclf",
            file_filter="napari-segrep classifier (*.segclf)",
            overwrite=overwrite,
        )
        if path is None:
            return None
        try:
            self.classifier.save(path)  # replaces only its own kind of file
        except (OSError, ValueError) as exc:
            show_error(f"Saving the classifier failed: {exc}")
            return None
        show_info(f"Wrote {path}")
        return path

    def load_classifier(self, path=None):
        """Read a classifier and predict the followed layer's segments with it."""
        from ..analysis.classify import load_classifier

        if path is None:
            from qtpy.QtWidgets import QFileDialog

            path, _ = QFileDialog.getOpenFileName(
                self.native, "Load classifier", "", "napari-segrep classifier (*.segclf)"
            )
            if not path:
                return None
        try:
            model = load_classifier(path)
        except (OSError, ValueError) as exc:
            self._on_error(exc)
            return None
        self.classifier = model
        from ..analysis.improve import training_examples

        examples = training_examples(model)
        if examples is not None:  # new annotations add to what it was trained on
            self._remembered[f"{Path(path).name} (file)"] = examples
        if self.results is not None:
            self.predict_with(model)
        self.status.value = f"Loaded {Path(path).name}: classes {', '.join(model.classes_)}."
        return model

    # ------------------------------------------------------------------ apply to another layer
    def apply_to(self, labels_layer: Labels, images: list | None = None):
        """Predict the segments of another labels layer: with its embeddings when it has some
        from the classifier's encoder, else embedding it first (in a worker; returns it) with
        that encoder and the followed run's settings.  The layer's features get the
        predictions, and a "<layer> predictions" labels layer shows them."""
        model = self.classifier
        if model is None:
            raise ValueError("Train or load a classifier first.")
        sha = (model.info.get("encoder") or {}).get("sha256")
        other = results_for(labels_layer)
        if other is not None and sha in (None, other.table.attrs.get("encoder", {}).get("sha256")):
            if other is self.results:  # the layer followed here
                self.predict_with(model)
                return None
            rows = other.table  # embedded already: its results own its features
            if reads_measurements(model):
                run = other.run
                rows = with_measurements(rows, run.image, run.labels, run.params)
            other.set_classes(with_classes(other.class_colours, model.classes_))
            other.set_predictions(model.predict(rows, force=True))
            self.show_predictions(labels_layer, other.table, other.class_colours)
            self.status.value = f"'{labels_layer.name}': {len(rows)} segments predicted."
            return None
        try:
            inputs = layer_inputs(labels_layer, images or [])
        except LayerAxesUnknown:
            self.apply_question.ask(labels_layer)
            raise
        encoder, params = self._embedding_setup(model)
        labels = inputs.labels.copy()

        def call(progress, should_stop):
            image, axis = inputs.image, inputs.channel_axis
            table, predictions, _ = classify_arrays(
                model,
                encoder,
                image,
                labels,
                axis,
                params,
                progress,
                should_stop,
                layout=inputs.layout,
            )
            return table, predictions

        self.status.value = f"Embedding '{labels_layer.name}' to classify it..."
        watch_close(self.native.window())  # closing napari cancels the embedding first
        self.apply_job = start_job(
            call,
            desc="Embedding to classify",
            progress_bar=self.apply_progress,
            on_result=lambda out: self._show_applied(labels_layer, *out),
            on_error=self._on_error,
            on_done=lambda: setattr(self, "apply_job", None),
        )
        return self.apply_job.worker

    def _apply_to_chosen_folder(self) -> None:
        from qtpy.QtWidgets import QFileDialog

        folder = QFileDialog.getExistingDirectory(self.native, "Folder of images and labels")
        if folder:
            self.apply_to_folder(folder)

    def apply_to_folder(self, folder, output=None, *, overwrite: bool | None = None):
        """Classify every image of a folder (``images/`` + ``labels/``, or ``x.tif`` beside
        ``x_labels.tif``, paired by file stem) in a worker (returns it; None when no output was
        chosen): one CSV with an ``image`` column (the file stem) and the predictions, plus
        its JSON sidecar, written when every image is done (a file napari-segrep did not
        write is never replaced)."""
        model = self.classifier
        if model is None:
            raise ValueError("Train or load a classifier first.")
        folder = Path(folder)
        pairs = folder_pairs(folder)
        output = save_path(
            self.native,
            output,
            title="Write the predictions of the folder",
            suggestion=str(folder / "classes.csv"),
            file_filter="CSV (*.csv)",
            overwrite=overwrite,
        )
        if output is None:
            return None
        encoder, params = self._embedding_setup(model)
        axis = self.results.run.params["channel_axis"] if self.results is not None else None

        def call(progress, should_stop):
            from ..io import read_image

            nonlocal encoder
            parts = []
            for i, (image_path, labels_path) in enumerate(pairs):
                progress(i, len(pairs))
                try:
                    image, labels = read_image(image_path), read_image(labels_path)
                    layout = file_layout(labels, model)
                    _, predictions, encoder = classify_arrays(
                        model,
                        encoder,
                        image,
                        labels,
                        axis,
                        params,
                        None,
                        should_stop,
                        layout=layout,
                    )
                except ValueError as exc:
                    raise ValueError(f"{image_path.name}: {exc}") from None
                predictions.insert(0, "image", image_path.stem)
                parts.append(predictions)
            progress(len(pairs), len(pairs))
            return pd.concat(parts, ignore_index=True)

        def write(table) -> None:
            from ..analysis.export import write_table

            record = {
                "package": "napari-segrep",
                "command": "napari: Classify segments, Apply to a folder",
                "inputs": [[str(a), str(b)] for a, b in pairs],
                "encoder": model.info.get("encoder"),
                "classifier": {"method": model.method, "classes": model.classes_},
            }
            try:
                write_table(table, output, provenance=record, overwrite=True)  # asked
            except (OSError, ValueError) as exc:
                self._on_error(exc)
                return
            counts = table["class"].value_counts()
            self.status.value = f"{len(pairs)} images, {len(table)} segments -> {output.name}: " + (
                ", ".join(f"{n} {name}" for name, n in counts.items())
            )

        self.status.value = f"Classifying {len(pairs)} images of {folder.name}..."
        watch_close(self.native.window())
        self.apply_job = start_job(
            call,
            desc="Classifying the folder",
            progress_bar=self.apply_progress,
            on_result=write,
            on_error=self._on_error,
            on_done=lambda: setattr(self, "apply_job", None),
        )
        return self.apply_job.worker

    def _embedding_setup(self, model):
        """The encoder to embed with (an encoder whose fingerprint is the classifier's, or its
        record to rebuild from) and the keyword arguments (the followed run's, the image's
        normalisation recomputed for the new image)."""
        from ..engine.segments import normalize_argument

        sha = (model.info.get("encoder") or {}).get("sha256")
        run = self.results.run if self.results is not None else None
        candidates = [run.encoder] if run is not None else []
        if _session.trained_encoder is not None:
            candidates.append(_session.trained_encoder)
        encoder = next((e for e in candidates if sha is None or e.fingerprint() == sha), None)
        params = {"crop_size": 64, "batch_size": 128, "device": "auto", "normalize": "image"}
        if run is not None:
            params.update({k: run.params[k] for k in ("crop_size", "batch_size", "device")})
        recorded = run.normalization if run is not None else model.info.get("normalization")
        if recorded and recorded.get("mode", "image") != "image":  # "image": the new image's
            params["normalize"] = normalize_argument(recorded)
        if "crop_size" in model.info:
            params["crop_size"] = int(model.info["crop_size"])
        return (encoder if encoder is not None else dict(model.info.get("encoder") or {})), params

    def _show_applied(self, labels_layer: Labels, table: pd.DataFrame, predictions) -> None:
        if labels_layer not in self.viewer.layers:
            return
        merged = table.drop(columns=[c for c in table.columns if str(c).startswith("emb_")])
        merged = merged.assign(**prediction_columns(predictions))
        features = merged.copy()
        features.insert(0, "index", merged["label"].to_numpy())
        labels_layer.features = features
        colours = self.results.class_colours if self.results is not None else {}
        self.show_predictions(labels_layer, merged, with_classes(colours, self.classifier.classes_))
        counts = merged["class_predicted"].value_counts()
        self.status.value = f"'{labels_layer.name}': " + ", ".join(
            f"{n} {name}" for name, n in counts.items()
        )

    def predictions_layer(self) -> Labels | None:
        """A labels layer "<layer> predictions": every segment painted with its predicted
        class (1 = the first class ...), in the class colours."""
        results = self._require_results()
        if "class_predicted" not in results.table:
            raise ValueError("Train or load a classifier first.")
        return self.show_predictions(results.labels_layer, results.table, results.class_colours)

    def show_predictions(self, labels_layer: Labels, table: pd.DataFrame, colours: dict) -> Labels:
        """Add (or update) "<layer> predictions": segments painted 1, 2, ... by predicted
        class, in the classes' colours."""
        names = list(colours)
        index = {name: i + 1 for i, name in enumerate(names)}
        ids = np.array([index.get(c, 0) for c in table["class_predicted"]], np.int32)
        data = np.asarray(labels_layer.data)
        out = np.zeros(data.shape, np.int32)
        if "frame" in table:
            for frame in np.unique(table["frame"]):
                rows = table["frame"].to_numpy() == frame
                out[frame] = _paint(data[frame], table["label"].to_numpy()[rows], ids[rows])
        else:
            out = _paint(data, table["label"].to_numpy(), ids)
        colour_dict = {None: np.zeros(4), 0: np.zeros(4)}
        colour_dict.update({i + 1: np.asarray(colours[n], float) for i, n in enumerate(names)})
        name = f"{labels_layer.name} predictions"
        features = pd.DataFrame({"index": np.arange(len(names) + 1), "class": ["", *names]})
        if name in self.viewer.layers and isinstance(self.viewer.layers[name], Labels):
            layer = self.viewer.layers[name]
            layer.data = out
        else:
            layer = self.viewer.add_labels(
                out, name=name, scale=labels_layer.scale, translate=labels_layer.translate
            )
        layer.colormap = DirectLabelColormap(color_dict=colour_dict)
        layer.features = features
        return layer

    # ------------------------------------------------------------------ export
    def export_csv(self, path=None, *, overwrite: bool | None = None) -> Path | None:
        """Write the followed layer's predictions (keys, centroid, area, annotation, predicted
        class, probability, margin, every class's probability) and a JSON sidecar."""
        results = self.results
        if results is None or "class_predicted" not in results.table:
            raise ValueError("Train or load a classifier first.")
        record = results.provenance()
        model = self.classifier
        record["command"] = "napari: Classify segments, Export predictions CSV"
        if model is not None:
            record["classifier"] = {
                "method": model.method,
                "classes": model.classes_,
                "cv_score": model.cv_score_,
                "n_annotations": model.info.get("n_annotations"),
            }
        return export_table(
            self.native,
            results.table[export_columns(results.table)],
            record,
            path,
            title="Export predictions",
            suggestion=f"{results.labels_layer.name}_classes.csv",
            overwrite=overwrite,
        )


def _paint(labels: np.ndarray, label_ids: np.ndarray, values: np.ndarray) -> np.ndarray:
    """``labels`` with each id of ``label_ids`` replaced by its value (others 0); by sorted
    lookup, so ids as large as 3e9 need no table of that size."""
    order = np.argsort(label_ids, kind="stable")
    ids, values = np.asarray(label_ids)[order], np.asarray(values, np.int32)[order]
    if not len(ids):
        return np.zeros(labels.shape, np.int32)
    at = np.clip(np.searchsorted(ids, labels), 0, len(ids) - 1)
    return np.where(ids[at] == labels, values[at], 0).astype(np.int32)
