"""The "Embed segments" dock widget: labels layer -> embeddings -> a map linked to the segments.

The widget only translates: layer data -> one engine/analysis call in a worker thread ->
``layer.features`` and a Points layer.  Linking is by events on both layers.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from pathlib import Path

import napari
import numpy as np
import pandas as pd
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    Label,
    PushButton,
    Select,
    SpinBox,
)
from napari.layers import Image, Labels, Points
from napari.utils.colormaps import DirectLabelColormap
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QObject, Signal

from . import _session
from ._jobs import Job, start_job

__all__ = ["EmbedSegmentsWidget"]

MODEL_UNTRAINED = "untrained (random init, seed 0)"
MODEL_IMAGENET = "ImageNet (local torch cache)"
MODEL_FILE = "checkpoint file..."
MODEL_SESSION = "model trained in this session"
DIM_ALPHA = 0.15
LIVE_DEBOUNCE_MS = 150
MAP_MARGIN = 0.05


@dataclass
class _Inputs:
    image: np.ndarray
    labels: np.ndarray
    channel_axis: int | None
    stack: bool
    labels_layer: Labels
    image_layers: list[Image]


class _WarmRelay(QObject):
    ready = Signal(object)


class EmbedSegmentsWidget(Container):
    """Embed every segment of a labels layer and explore them as a map.

    ``run()`` (what Run calls) starts the embedding in a napari worker and returns it.
    """

    #: Open widgets (Train SegRep finds them to offer its model and to re-embed).
    instances: weakref.WeakSet = weakref.WeakSet()

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(labels=True)
        EmbedSegmentsWidget.instances.add(self)
        self.viewer = viewer
        self.previous_points: Points | None = None
        self.agreement: float | None = None
        self.image_input = Select(
            label="image layer(s)",
            choices=self._image_choices,
            tooltip="one layer, or several used as channels",
        )
        self.labels_input = ComboBox(label="labels layer", choices=self._labels_choices)
        self.model_input = ComboBox(label="model", choices=self._model_choices)
        self.checkpoint_input = FileEdit(
            label="checkpoint", mode="r", filter="*.pt *.pth", visible=False
        )
        self.crop_input = SpinBox(label="crop size", value=64, min=8, max=1024, step=8)
        self.normalize_input = ComboBox(
            label="normalisation", value="image", choices=["image", "segment", "none"]
        )
        self.device_input = ComboBox(label="device", value="auto", choices=["auto", "cpu"])
        self.batch_input = SpinBox(label="batch size", value=128, min=1, max=4096)
        self.run_button = PushButton(text="Run")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.status = Label(value="")
        self.status.native.setWordWrap(True)  # long messages must not widen the dock
        self.status.native.setMinimumHeight(48)
        self.cluster_method = ComboBox(label="clustering", choices=["kmeans", "hdbscan"])
        self.cluster_k = SpinBox(label="k (kmeans)", value=5, min=1, max=200)
        self.cluster_button = PushButton(text="Cluster", enabled=False)
        self.colour_by = ComboBox(label="colour by", choices=["label", "cluster"], value="label")
        self.selection_button = PushButton(text="New labels layer from selection", enabled=False)
        self.export_button = PushButton(text="Export CSV...", enabled=False)
        self.umap_input = CheckBox(label="UMAP map (PCA first)", value=True)
        self.live_input = CheckBox(label="live: re-embed segments as they are painted", value=False)
        self.refit_button = PushButton(text="Refit map", enabled=False)
        self.extend(
            [
                self.image_input,
                self.labels_input,
                self.model_input,
                self.checkpoint_input,
                self.crop_input,
                self.normalize_input,
                self.device_input,
                self.batch_input,
                self.umap_input,
                self.run_button,
                self.cancel_button,
                self.status,
                self.cluster_method,
                self.cluster_k,
                self.cluster_button,
                self.colour_by,
                self.selection_button,
                self.export_button,
                self.live_input,
                self.refit_button,
            ]
        )
        self.job: Job | None = None
        self.map_job: Job | None = None
        self.labels_layer: Labels | None = None
        self.points_layer: Points | None = None
        self.table: pd.DataFrame | None = None  # label, geometry, emb_* (+ frame, cluster)
        self.map_model = None
        self._original_colormap = None
        self._syncing = False
        self._connected: list[tuple] = []

        self.run_button.changed.connect(self.run)
        self.cancel_button.changed.connect(self.cancel)
        self.model_input.changed.connect(self._on_model_changed)
        self.cluster_button.changed.connect(lambda: self.cluster())
        self.colour_by.changed.connect(self._apply_colours)
        self.selection_button.changed.connect(lambda: self.labels_from_selection())
        self.export_button.changed.connect(lambda: self.export_csv())
        self.refit_button.changed.connect(lambda: self.refit_map())
        self.live_input.changed.connect(self._on_live_toggled)
        from qtpy.QtCore import QTimer

        self._live_timer = QTimer()
        self._live_timer.setSingleShot(True)
        self._live_timer.setInterval(LIVE_DEBOUNCE_MS)
        self._live_timer.timeout.connect(self._live_update)
        self.live_job: Job | None = None
        self._live_layer: Labels | None = None
        self._snapshot: np.ndarray | None = None  # labels as last embedded
        self._run_setup: dict | None = None  # encoder and parameters of the last run
        self._map_box: tuple[np.ndarray, np.ndarray] | None = None
        for w in (self.image_input, self.labels_input, self.checkpoint_input):
            w.changed.connect(self._update_run_state)
        viewer.layers.events.inserted.connect(self._on_layers_changed)
        viewer.layers.events.removed.connect(self._on_layers_changed)
        viewer.dims.events.current_step.connect(self._emphasise_frame)
        self._on_layers_changed()
        self._start_warm_up()

    # ------------------------------------------------------------------ choices and validation
    def _image_choices(self, _widget=None):
        return [layer for layer in self.viewer.layers if isinstance(layer, Image)]

    def _labels_choices(self, _widget=None):
        return [layer for layer in self.viewer.layers if isinstance(layer, Labels)]

    def _model_choices(self, _widget=None):
        choices = [MODEL_UNTRAINED]
        if _session.imagenet_available:
            choices.append(MODEL_IMAGENET)
        choices.append(MODEL_FILE)
        if _session.trained_encoder is not None:
            choices.append(MODEL_SESSION)
        return choices

    def _on_layers_changed(self, event=None) -> None:
        if event is not None and event.type == "removed" and event.value is self.labels_layer:
            self._forget_results()
        if event is not None and event.type == "removed" and event.value is self.points_layer:
            self._unlink()
            self.points_layer = None
        self.reset_choices()
        if not self.image_input.value and self.image_input.choices:
            self.image_input.value = [self.image_input.choices[0]]
        self._update_run_state()

    def _on_model_changed(self, value=None) -> None:
        self.checkpoint_input.visible = self.model_input.value == MODEL_FILE
        self._update_run_state()

    def refresh_models(self) -> None:
        """Re-read the model choices (after training, or once the warm-up found ImageNet)."""
        self.model_input.reset_choices()

    def _update_run_state(self, *_) -> None:
        running = self.job is not None
        why = self.validate()
        self.run_button.enabled = why is None and not running
        if not running and (why is not None or self.table is None):  # else keep the results
            self.status.value = why or "Ready."

    def validate(self) -> str | None:
        """Why Run is not possible now (None when it is)."""
        try:
            self._collect_inputs(build=False)
        except ValueError as exc:
            return str(exc)
        return None

    def _collect_inputs(self, *, build: bool = True) -> _Inputs:
        """The run's inputs; ``ValueError`` with the reason when they don't fit.  With
        ``build=False`` (validation on every layer event) channels are not stacked."""
        labels_layer = self.labels_input.value
        images = list(self.image_input.value or [])
        if labels_layer is None:
            raise ValueError("Add or choose a labels layer.")
        if not images:
            raise ValueError("Add or choose an image layer.")
        labels = labels_layer.data
        if getattr(labels_layer, "multiscale", False) or isinstance(labels, list):
            raise ValueError("Multiscale labels are not supported: use a single-scale layer.")
        labels = np.asarray(labels)
        if not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"Labels must be integers (got {labels.dtype}).")
        if labels.ndim not in (2, 3):
            raise ValueError(f"Labels must be 2D, or a (T, Y, X) stack (got {labels.ndim}D).")
        arrays = [np.asarray(layer.data) for layer in images]
        rgb = len(images) == 1 and images[0].rgb
        spatial = labels.shape
        for layer, arr in zip(images, arrays, strict=True):
            shape = arr.shape[:-1] if layer.rgb else arr.shape
            if shape != spatial:
                raise ValueError(
                    f"Image '{layer.name}' is {shape} but labels '{labels_layer.name}' are "
                    f"{spatial}: choose layers of the same shape."
                )
        if len(images) > 1 and any(layer.rgb for layer in images):
            raise ValueError("Use one RGB layer, or several single-channel layers as channels.")
        if not labels.any():
            raise ValueError(f"'{labels_layer.name}' has no segments yet.")
        if self.model_input.value == MODEL_FILE and not _is_file(self.checkpoint_input.value):
            raise ValueError("Choose a checkpoint file.")
        stack = labels.ndim == 3
        if len(images) > 1:
            image = np.stack(arrays, axis=-1) if build else None
            channel_axis = 2
        else:
            image = arrays[0]
            channel_axis = None
        if stack and not rgb and len(images) == 1:
            channel_axis = None
        return _Inputs(image, labels, channel_axis, stack, labels_layer, images)

    # ------------------------------------------------------------------ background warm-up
    def _start_warm_up(self) -> None:
        """Import torch, list working devices, look for ImageNet weights and compile UMAP's JIT
        in a background thread, once per session, so the first Run and the first map don't
        wait for them.  The result reaches the widget through a Qt signal (GUI thread)."""
        self._warm_relay = _WarmRelay()
        self._warm_relay.ready.connect(self._on_warm)
        _session.start_warm_up(self._warm_relay)

    def _on_warm(self, devices) -> None:
        current = self.device_input.value
        self.device_input.choices = ["auto", *devices]
        if current in self.device_input.choices:
            self.device_input.value = current
        self.refresh_models()

    # ------------------------------------------------------------------ run
    def run(self):
        """Start embedding the chosen labels layer; returns the napari worker."""
        if self.job is not None:
            raise RuntimeError("An embedding is already running: cancel it first.")
        inputs = self._collect_inputs()  # ValueError with the reason when Run is disabled
        model = self.model_input.value
        checkpoint = self.checkpoint_input.value
        session_encoder = _session.trained_encoder
        params = {
            "crop_size": int(self.crop_input.value),
            "batch_size": int(self.batch_input.value),
            "device": self.device_input.value,
            "normalize": None
            if self.normalize_input.value == "none"
            else self.normalize_input.value,
            "channel_axis": inputs.channel_axis,
        }
        image = inputs.image
        labels = inputs.labels.copy()  # the user may paint while we work

        def call(progress, should_stop):
            from ..analysis.reduce import pca_map
            from ..engine.checkpoint import load_encoder
            from ..engine.embed import embed_segments, embed_stack
            from ..engine.encoder import SegmentEncoder
            from ..engine.segments import as_channels_first

            plane = image[0] if inputs.stack else image
            n_channels = as_channels_first(plane, channel_axis=params["channel_axis"]).shape[0]
            if model == MODEL_IMAGENET:
                encoder = SegmentEncoder(in_channels=n_channels, weights="imagenet")
            elif model == MODEL_FILE:
                encoder = load_encoder(checkpoint)
            elif model == MODEL_SESSION and session_encoder is not None:
                encoder = session_encoder
            else:
                encoder = SegmentEncoder(in_channels=n_channels)
            embed = embed_stack if inputs.stack else embed_segments
            df = embed(image, labels, encoder, progress=progress, should_stop=should_stop, **params)
            live_params = dict(params)
            if params["normalize"] == "image" and not inputs.stack:
                # Live updates reuse the image's percentiles instead of recomputing them: the
                # same numbers, without a pass over the whole image per paint stroke.
                from ..engine.segments import resolve_normalization

                norm = resolve_normalization(
                    as_channels_first(image, channel_axis=params["channel_axis"]), "image"
                )
                live_params["normalize"] = (norm.low, norm.high)
            setup = {
                "encoder": encoder,
                "params": live_params,
                "image": image,
                "labels": labels,
                "stack": inputs.stack,
            }
            return df, pca_map(df.filter(regex=r"^emb_").to_numpy()), setup

        self.status.value = "Embedding..."
        self._set_running(True)
        target = inputs.labels_layer
        self.job = start_job(
            call,
            desc="Embedding segments",
            on_result=lambda result: self._on_embedded(target, *result),
            on_error=self._on_error,
            on_done=self._on_job_done,
        )
        return self.job.worker

    def reembed_with_session_model(self):
        """Embed again with the model trained in this session.  The current map is kept as its
        own points layer ("... map (before)") and compared with the new one (neighbour
        agreement, in the status and in the new layer's metadata).  Returns the worker."""
        self.refresh_models()
        self.model_input.value = MODEL_SESSION
        if self.points_layer is not None and self.points_layer in self.viewer.layers:
            self._unlink()
            self.points_layer.name = f"{self.points_layer.name} (before)"
            self.points_layer.selected_data = set()
            # below the new map, so both stay in view
            h = self.labels_layer.data.shape[-2] * float(self.labels_layer.scale[-2])
            self.points_layer.translate = (h * (1 + MAP_MARGIN), 0)
            self.previous_points = self.points_layer
            self.points_layer = None
        return self.run()

    def _compare_with_previous(self) -> None:
        from ..analysis.reduce import neighbour_agreement

        before = self.previous_points
        if before is None or before not in self.viewer.layers:
            return
        old = dict(zip(before.features["label"].tolist(), before.data.tolist(), strict=True))
        labels = self.table["label"].tolist()
        shared = [i for i, lab in enumerate(labels) if lab in old]
        if len(shared) < 3:
            return
        a = np.array([old[labels[i]] for i in shared])
        b = self.points_layer.data[shared]
        self.agreement = neighbour_agreement(a, b, k=10)
        self.points_layer.metadata["neighbour_agreement_with_before"] = self.agreement
        self.status.value += f" | 10-NN agreement with the previous map: {self.agreement:.2f}"

    def cancel(self) -> None:
        """Stop the running embedding: layers and features stay exactly as before."""
        if self.job is not None:
            self.job.cancel()
            self.status.value = "Cancelling..."

    def _set_running(self, running: bool) -> None:
        self.cancel_button.enabled = running
        self.run_button.enabled = not running and self.validate() is None

    def _on_job_done(self) -> None:
        cancelled = self.job is not None and self.job.cancelled
        self.job = None
        self._set_running(False)
        if cancelled:
            self.status.value = "Cancelled: nothing was changed."

    def _on_error(self, exc: BaseException) -> None:
        from ..errors import Cancelled

        if isinstance(exc, Cancelled):
            return
        self.status.value = f"Error: {exc}"
        show_error(f"Embed segments: {exc}")

    # ------------------------------------------------------------------ results
    def _on_embedded(self, labels_layer: Labels, df: pd.DataFrame, map_model, setup) -> None:
        if labels_layer not in self.viewer.layers:
            self.status.value = "The labels layer was removed during the run: nothing to show."
            return
        self._forget_results()
        self.labels_layer = labels_layer
        self._run_setup = setup
        self._snapshot = setup["labels"]
        self.table = df
        self.map_model = map_model
        features = df.copy()
        features.insert(0, "index", df["label"].to_numpy())
        labels_layer.features = features  # reassign: napari emits its event
        self._original_colormap = labels_layer.colormap
        self._show_map(map_model.coords, "pca")
        self._link()
        for b in (
            self.cluster_button,
            self.selection_button,
            self.export_button,
            self.refit_button,
        ):
            b.enabled = True
        self._on_live_toggled()
        n = len(df)
        self.status.value = f"{n} segments embedded. Map: PCA" + (
            " (UMAP on its way...)" if self.umap_input.value and n >= 4 else ""
        )
        if self.umap_input.value and n >= 4:
            self._start_umap(df.filter(regex=r"^emb_").to_numpy())
        else:
            self._compare_with_previous()

    def _start_umap(self, emb: np.ndarray) -> None:
        def call(progress, should_stop):
            from ..analysis.reduce import umap_map

            return umap_map(emb)

        table = self.table

        def done(map_model):
            if self.table is not table or self.points_layer is None:
                return  # a newer run replaced these results
            self.map_model = map_model
            self._show_map(map_model.coords, "umap")
            self.status.value = f"{len(table)} segments embedded. Map: UMAP"
            self._compare_with_previous()

        self.map_job = start_job(call, desc="UMAP map", on_result=done, on_error=self._on_error)

    def map_world_coordinates(self, coords: np.ndarray) -> np.ndarray:
        """Map coordinates placed beside the image: scaled to its height, to the right of it."""
        layer = self.labels_layer
        h, w = layer.data.shape[-2:]
        scale = np.asarray(layer.scale[-2:], float)
        translate = np.asarray(layer.translate[-2:], float)
        c = np.nan_to_num(np.asarray(coords, float))
        if self._map_box is None:  # the box of the current map: new points land on the same map
            self._map_box = (c.min(0), c.max(0))
        lo, hi = self._map_box
        unit = (c - lo) / np.maximum(hi - lo, 1e-9)  # each axis fills the square
        height = h * scale[0]
        y = translate[0] + unit[:, 1] * height
        x = translate[1] + w * scale[1] * (1 + MAP_MARGIN) + unit[:, 0] * height
        return np.stack([y, x], axis=1)

    def _show_map(self, coords: np.ndarray, method: str) -> None:
        self._map_box = None  # a new map: its own box
        data = self.map_world_coordinates(coords)
        features = pd.DataFrame({"label": self.table["label"].to_numpy()})
        if "frame" in self.table:
            features["frame"] = self.table["frame"].to_numpy()
        if "cluster" in self.table:
            features["cluster"] = self.table["cluster"].to_numpy()
        size = self._point_size()
        if self.points_layer is None or self.points_layer not in self.viewer.layers:
            self.points_layer = self.viewer.add_points(
                data,
                features=features,
                name=f"{self.labels_layer.name} map",
                size=size,
                border_width=0.05,
                border_color="white",
                metadata={"map_method": method},
            )
        else:
            self._syncing = True
            try:
                self.points_layer.selected_data = set()
            finally:
                self._syncing = False
            self.points_layer.data = data
            self.points_layer.features = features
            self.points_layer.metadata["map_method"] = method
        self._apply_colours()
        self._emphasise_frame()

    def _point_size(self) -> float:
        return max(self.labels_layer.data.shape[-2:]) * float(self.labels_layer.scale[-1]) / 50

    def _forget_results(self) -> None:
        self._set_live_connection(None)
        self._unlink()
        if self.map_job is not None:
            self.map_job.cancel()
        self.table = None
        self.map_model = None
        self.labels_layer = None

    # ------------------------------------------------------------------ colours
    def _label_colours(self, labels: np.ndarray) -> np.ndarray:
        cmap = self._original_colormap or self.labels_layer.colormap
        return np.asarray(cmap.map(np.asarray(labels)), float).reshape(-1, 4)

    def _cluster_colours(self, clusters: np.ndarray) -> np.ndarray:
        from napari.utils.colormaps import label_colormap

        cmap = label_colormap(49, seed=0.5)
        out = np.asarray(cmap.map(clusters), float).reshape(-1, 4)
        out[clusters == 0] = (0.5, 0.5, 0.5, 1.0)
        return out

    def _apply_colours(self, *_) -> None:
        if self.points_layer is None or self.table is None:
            return
        by_cluster = self.colour_by.value == "cluster" and "cluster" in self.table
        if by_cluster:
            colours = self._cluster_colours(self.table["cluster"].to_numpy())
        else:
            colours = self._label_colours(self.table["label"].to_numpy())
        self.points_layer.face_color = colours
        self._highlight(self._selected_labels())

    def _segment_colour_dict(self) -> dict:
        labels = self.table["label"].to_numpy()
        if self.colour_by.value == "cluster" and "cluster" in self.table:
            colours = self._cluster_colours(self.table["cluster"].to_numpy())
        else:
            colours = self._label_colours(labels)
        out = {None: np.zeros(4), 0: np.zeros(4)}
        out.update({int(k): c for k, c in zip(labels, colours, strict=True)})
        return out

    def _highlight(self, selected: set[int]) -> None:
        """Selected segments at full colour, the others dimmed; none selected: normal view."""
        layer = self.labels_layer
        if layer is None or self._original_colormap is None:
            return
        by_cluster = self.colour_by.value == "cluster" and "cluster" in self.table
        if not selected and not by_cluster:
            colormap = self._original_colormap
        else:
            colours = self._segment_colour_dict()
            if selected:
                for k, c in colours.items():
                    if k not in (None, 0) and k not in selected:
                        colours[k] = np.array([c[0], c[1], c[2], DIM_ALPHA])
            colormap = DirectLabelColormap(color_dict=colours)
        # napari re-emits selected_label when the colormap changes: not a user selection.
        syncing, self._syncing = self._syncing, True
        try:
            layer.colormap = colormap
        finally:
            self._syncing = syncing

    # ------------------------------------------------------------------ linking
    def _link(self) -> None:
        self._unlink()
        points, labels = self.points_layer, self.labels_layer
        points.selected_data.events.items_changed.connect(self._on_points_selection)
        labels.events.selected_label.connect(self._on_selected_label)
        labels.mouse_drag_callbacks.append(self._on_labels_click)
        self._connected = [(points, labels)]

    def _unlink(self) -> None:
        for points, labels in self._connected:
            try:
                points.selected_data.events.items_changed.disconnect(self._on_points_selection)
            except (TypeError, ValueError, RuntimeError):
                pass
            labels.events.selected_label.disconnect(self._on_selected_label)
            if self._on_labels_click in labels.mouse_drag_callbacks:
                labels.mouse_drag_callbacks.remove(self._on_labels_click)
            if self._original_colormap is not None:
                self._syncing = True
                try:
                    labels.colormap = self._original_colormap
                finally:
                    self._syncing = False
        self._connected = []

    def _selected_labels(self) -> set[int]:
        if self.points_layer is None or self.table is None:
            return set()
        idx = sorted(self.points_layer.selected_data)
        return {int(v) for v in self.table["label"].to_numpy()[idx]}

    def _on_points_selection(self, event=None) -> None:
        if self._syncing:
            return
        selected = self._selected_labels()
        self._highlight(selected)
        if len(selected) == 1:
            self._syncing = True
            try:
                self.labels_layer.selected_label = next(iter(selected))
            finally:
                self._syncing = False

    def _on_selected_label(self, event=None) -> None:
        if self._syncing or self.points_layer is None:
            return
        label = int(self.labels_layer.selected_label)
        rows = np.flatnonzero(self.table["label"].to_numpy() == label)
        self._syncing = True
        try:
            self.points_layer.selected_data = set(rows.tolist())
        finally:
            self._syncing = False
        self._highlight({label} if len(rows) else set())

    def _on_labels_click(self, layer, event):
        """A click on a segment (pan/zoom mode) selects it, and so its point; on the background
        it clears the selection."""
        if layer.mode != "pan_zoom":
            return
        value = layer.get_value(event.position, world=True)
        if value is None:
            return
        if int(value) > 0:
            layer.selected_label = int(value)
            self._on_selected_label()
        elif self.points_layer is not None:
            self.points_layer.selected_data = set()

    def _emphasise_frame(self, event=None) -> None:
        """For stacks: points of the current frame large and opaque, the others small."""
        if self.points_layer is None or self.table is None or "frame" not in self.table:
            return
        frame = self.viewer.dims.current_step[0]
        current = self.table["frame"].to_numpy() == frame
        base = self._point_size()
        self.points_layer.size = np.where(current, base * 1.6, base * 0.6)
        colours = np.array(self.points_layer.face_color)
        colours[:, 3] = np.where(current, 1.0, 0.35)
        self.points_layer.face_color = colours

    # ------------------------------------------------------------------ live embedding
    def _set_live_connection(self, layer: Labels | None) -> None:
        events = ("labels_update", "paint", "data")
        if self._live_layer is not None:
            for name in events:
                getattr(self._live_layer.events, name).disconnect(self._on_labels_edited)
        self._live_layer = layer
        if layer is not None:
            for name in events:
                getattr(layer.events, name).connect(self._on_labels_edited)

    def _on_live_toggled(self, *_) -> None:
        usable = self.table is not None and self._run_setup is not None
        usable = usable and not self._run_setup["stack"]
        self._set_live_connection(self.labels_layer if self.live_input.value and usable else None)

    def _on_labels_edited(self, event=None) -> None:
        self._live_timer.start()  # debounced: one update after a burst of paint events

    def _live_update(self) -> None:
        """Re-embed only the segments whose pixels changed since the last embedding."""
        if self.labels_layer is None or self._snapshot is None or self.job is not None:
            return
        if self.live_job is not None:  # one at a time: try again when it is done
            self._live_timer.start()
            return
        current = np.array(self.labels_layer.data, copy=True)
        if current.shape != self._snapshot.shape:
            return
        changed = current != self._snapshot
        if not changed.any():
            return
        touched = np.union1d(current[changed], self._snapshot[changed])
        touched = touched[touched > 0]
        present = np.intersect1d(touched, current[np.isin(current, touched)])
        removed = np.setdiff1d(touched, present)
        setup = self._run_setup

        def call(progress, should_stop):
            from ..engine.embed import embed_segments

            if not present.size:
                return None
            subset = np.where(np.isin(current, present), current, 0)
            return embed_segments(setup["image"], subset, setup["encoder"], **setup["params"])

        self.live_job = start_job(
            call,
            desc="Live embedding",
            on_result=lambda df: self._apply_live_result(df, removed, current),
            on_error=self._on_error,
            on_done=self._on_live_done,
        )

    def _on_live_done(self) -> None:
        self.live_job = None

    def _apply_live_result(
        self, df: pd.DataFrame | None, removed: np.ndarray, labels_now: np.ndarray
    ) -> None:
        """Replace the rows and points of re-embedded segments, add new ones, drop deleted ones;
        every other row and point stays as it was.  New points are placed with the current
        map's ``transform`` (no refit)."""
        if self.table is None or self.points_layer is None:
            return
        table, points = self.table, self.points_layer
        redone = df["label"].to_numpy() if df is not None else np.empty(0, np.int64)
        keep = ~np.isin(table["label"].to_numpy(), np.union1d(redone, removed))
        new_rows = df if df is not None else table.iloc[:0]
        if "cluster" in table and df is not None:
            new_rows = new_rows.assign(cluster=0)
        new_xy = np.empty((0, 2))
        if len(new_rows):
            coords = self.map_model.transform(new_rows.filter(regex=r"^emb_").to_numpy())
            new_xy = self.map_world_coordinates(coords)
        merged = pd.concat([table[keep], new_rows], ignore_index=True)
        order = np.argsort(merged["label"].to_numpy(), kind="stable")
        self.table = merged.iloc[order].reset_index(drop=True)
        self._snapshot = labels_now
        features = self.table.copy()
        features.insert(0, "index", self.table["label"].to_numpy())
        self.labels_layer.features = features
        point_features = pd.DataFrame({"label": self.table["label"].to_numpy()})
        if "cluster" in self.table:
            point_features["cluster"] = self.table["cluster"].to_numpy()
        self._syncing = True
        try:
            points.selected_data = set()
            points.data = np.concatenate([np.asarray(points.data)[keep], new_xy])[order]
            points.features = point_features
        finally:
            self._syncing = False
        self._apply_colours()
        self.status.value = (
            f"Live: {len(new_rows)} segment(s) embedded, {len(removed)} removed;"
            f" {len(self.table)} in the map ('Refit map' refits it)."
        )

    def refit_map(self) -> None:
        """Fit the 2D map again on all current embeddings (PCA now, then UMAP if chosen)."""
        from ..analysis.reduce import pca_map

        if self.table is None:
            raise RuntimeError("Run the embedding first.")
        emb = self.table.filter(regex=r"^emb_").to_numpy()
        self.map_model = pca_map(emb)
        self._show_map(self.map_model.coords, "pca")
        if self.umap_input.value and len(emb) >= 4:
            self._start_umap(emb)

    # ------------------------------------------------------------------ clusters, selection, CSV
    def cluster(self) -> np.ndarray:
        """Cluster the embeddings (KMeans k, or HDBSCAN); ids from 1, 0 = noise."""
        from ..analysis.cluster import cluster_embeddings

        if self.table is None:
            raise RuntimeError("Run the embedding first.")
        ids = cluster_embeddings(
            self.table.filter(regex=r"^emb_").to_numpy(),
            method=self.cluster_method.value,
            k=int(self.cluster_k.value),
        )
        self.table = self.table.assign(cluster=ids)
        features = self.labels_layer.features.copy()
        features["cluster"] = ids
        self.labels_layer.features = features
        pf = self.points_layer.features.copy()
        pf["cluster"] = ids
        self.points_layer.features = pf
        self.colour_by.value = "cluster"
        self._apply_colours()
        show_info(f"{len(set(ids.tolist()) - {0})} clusters")
        return ids

    def labels_from_selection(self) -> Labels | None:
        """A new labels layer holding only the selected segments."""
        selected = self._selected_labels()
        if not selected:
            show_info("Select points in the map first.")
            return None
        data = np.asarray(self.labels_layer.data)
        out = np.where(np.isin(data, list(selected)), data, 0)
        return self.viewer.add_labels(
            out,
            name=f"{self.labels_layer.name} selection",
            scale=self.labels_layer.scale,
            translate=self.labels_layer.translate,
        )

    def export_table(self) -> pd.DataFrame:
        """label, geometry, map_0, map_1, map_method, cluster, emb_*."""
        df = self.table.copy()
        emb_cols = [c for c in df.columns if c.startswith("emb_")]
        front = df.drop(columns=emb_cols)
        coords = self.map_model.coords
        front["map_0"], front["map_1"] = coords[:, 0], coords[:, 1]
        front["map_method"] = self.map_model.method
        if "cluster" not in front:
            front["cluster"] = 0
        return pd.concat([front, df[emb_cols]], axis=1)

    def export_csv(self, path: str | Path | None = None, *, overwrite: bool | None = None):
        """Write the table (and its JSON sidecar).  Asks before replacing a file unless
        ``overwrite`` says; returns the path, or None when nothing was written."""
        from .._version import __version__
        from ..analysis.export import write_table

        if self.table is None:
            raise RuntimeError("Run the embedding first.")
        if path is None:
            from qtpy.QtWidgets import QFileDialog

            path, _ = QFileDialog.getSaveFileName(
                self.native, "Export CSV", f"{self.labels_layer.name}.csv", "CSV (*.csv)"
            )
            if not path:
                return None
        path = Path(path)
        if path.exists() and overwrite is None:
            from qtpy.QtWidgets import QMessageBox

            answer = QMessageBox.question(
                self.native, "Replace file?", f"{path.name} exists. Replace it?"
            )
            overwrite = answer == QMessageBox.StandardButton.Yes
        if path.exists() and not overwrite:
            return None
        provenance = {
            "package": "napari-segrep",
            "package_version": __version__,
            "labels_layer": self.labels_layer.name,
            "image_layers": [layer.name for layer in self.image_input.value or []],
            "model": self.model_input.value,
            "crop_size": int(self.crop_input.value),
            "normalization": self.normalize_input.value,
            "map_method": self.map_model.method,
            "n_segments": len(self.table),
        }
        try:
            write_table(self.export_table(), path, provenance=provenance)
        except (OSError, ValueError) as exc:
            show_error(f"Export failed: {exc}")
            return None
        show_info(f"Wrote {path}")
        return path


def _is_file(value) -> bool:
    try:
        return value is not None and str(value) not in ("", ".") and Path(value).is_file()
    except OSError:
        return False
