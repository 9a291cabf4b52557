"""The "Embed segments" dock widget: the form, Run, and the actions on the results.

The widget only translates: layer data -> one engine call in a worker thread -> a
:class:`~._results.SegmentResults` (one per labels layer), which the map view
(:mod:`._map_view`) draws and live mode (:mod:`._live`) keeps up to date.
"""

from __future__ import annotations

import weakref
from contextlib import contextmanager

import napari
import numpy as np
import pandas as pd
from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, PushButton, Select, SpinBox
from napari.layers import Labels, Points
from napari.utils.notifications import show_error

from ..catalogue import weight_set
from . import _session
from ._backbones import (
    CROP_SIZE,
    BackbonePicker,
    CropDefault,
    backbone_choices,
    reset_choices_in_order,
    weight_sets,
)
from ._backbones import present_weight_sets as _present_weight_sets
from ._common import (
    LayerInputs,
    WarmRelay,
    chosen_path,
    image_layers,
    is_file,
    labels_layers,
    layer_inputs,
    progress_bar,
    status_label,
    unless_deleted,
)
from ._embed_actions import ResultsActions
from ._jobs import Job, start_job, watch_close
from ._layer_axes import AxesQuestion, LayerAxesUnknown
from ._live import LiveEmbedding
from ._map_view import MapView
from ._multi import MultiPairs
from ._results import SegmentResults, embed_run
from ._weights import WeightsDownloadButton

__all__ = ["EmbedSegmentsWidget"]

MODEL_UNTRAINED = "untrained (random init, seed 0)"
MODEL_FILE = "checkpoint file..."
MODEL_SESSION = "model trained in this session"
#: The default 2D backbone of a new model (the catalogue's first).
BACKBONE = backbone_choices(2)[0]
#: The default 3D model on a GPU and elsewhere (``engine.embed.volume_backbone``'s rule, kept
#: here: the engine is not imported in napari's thread).
VOLUME_BACKBONE, VOLUME_BACKBONE_CPU = "resnet18_3d", "resnet18_planes"


def pretrained_model(ws) -> str:
    """The model choice of a weight set: ``"ImageNet (local torch cache)"``."""
    return f"{ws.label} (local torch cache)"


#: The model choices of the pretrained weight sets, when their file is in the cache.
MODEL_IMAGENET, MODEL_DINOV2 = (
    pretrained_model(weight_set(b, n))
    for b, n in (("resnet18", "imagenet"), ("vit_small_patch14_reg4_dinov2", "dinov2"))
)


class EmbedSegmentsWidget(ResultsActions, Container):
    """Embed every segment of a labels layer (or of several (image, labels) pairs) and
    explore them as a map.

    ``run()`` (what Run calls) starts the embedding in a napari worker and returns it.  The
    results are ``self.results`` (a :class:`~._results.SegmentResults`); ``table``,
    ``map_model``, ``labels_layer`` and ``points_layer`` read from it and its map view.  With
    more pairs (``multi.add_pair``, ``multi.add_folder``) they are ``self.group`` (a
    :class:`~._group.ResultsGroup`: each labels layer's results, one map), ``results`` is None,
    and ``table`` (with an ``image`` column), ``map_model`` and ``points_layer`` are the group's.
    """

    #: Open widgets (Train SegRep finds them to offer its model and to re-embed).
    instances: weakref.WeakSet = weakref.WeakSet()

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(labels=True)
        EmbedSegmentsWidget.instances.add(self)
        self.viewer = viewer
        self.results: SegmentResults | None = None
        self.previous_points: Points | None = None
        self.agreement: float | None = None
        self.job: Job | None = None
        self._map_request: int | None = None  # the UMAP fit whose result is awaited
        self._view_at_run: tuple | None = None
        self.map_view = MapView(viewer)
        self.multi = MultiPairs(self)
        self.live = LiveEmbedding(
            busy=lambda: self.job is not None,
            on_applied=self._on_live_applied,
            on_error=self._on_error,
        )
        self.image_input = Select(
            label="image layer(s)",
            choices=lambda _w=None: image_layers(viewer),
            tooltip="one layer, or several used as channels",
        )
        self.labels_input = ComboBox(
            label="labels layer", choices=lambda _w=None: labels_layers(viewer)
        )
        self.axes_question = AxesQuestion(on_answered=self._update_run_state)
        self._object_dims = 2  # of the chosen labels' objects, as the pickers were set for
        self.backbone_input = BackbonePicker(
            2,
            label="backbone",
            value=BACKBONE,
            help="the network of a new model (untrained or pretrained) for 2D objects; a "
            "checkpoint or the model trained in this session brings its own",
        )
        # the default by device (README "Volumes"): the planes until the warm-up finds CUDA
        self.volume_model_input = BackbonePicker(
            3,
            label="3D model",
            value=VOLUME_BACKBONE_CPU,
            visible=False,
            help="how a new model sees a 3D object: resnet18_3d, a 3D network (ImageNet "
            "weights inflated to 3D); resnet18_planes, the 2D network on the object's three "
            "orthogonal middle planes (a quarter of the CPU time: the default without CUDA)",
        )
        self._volume_default = VOLUME_BACKBONE_CPU
        #: The pretrained model is chosen when the chosen backbone's weights are there (the
        #: default), until the user picks another model.
        self._wants_pretrained = True
        self._switching = False
        self.model_input = ComboBox(label="model", choices=self._model_choices)
        self.weights_button = WeightsDownloadButton(
            BACKBONE, on_downloaded=lambda path: self._on_weights_downloaded()
        )
        self.checkpoint_input = FileEdit(
            label="checkpoint", mode="r", filter="*.pt *.pth", visible=False
        )
        self.crop_input = SpinBox(
            label="crop size",
            value=CROP_SIZE[2],
            min=8,
            max=1024,
            step=8,
            tooltip="side of the square (2D) or cubic (3D) crop each object is seen in: by "
            f"default the backbone's ({CROP_SIZE[2]} for 2D ResNets, 112 for the ViTs, "
            f"{CROP_SIZE[3]} for 3D objects: a {CROP_SIZE[2]}^3 crop is 8x the work)",
        )
        self._crop_default = CropDefault(self.crop_input, BACKBONE, 2)
        self.normalize_input = ComboBox(
            label="normalisation", value="image", choices=["image", "segment", "none"]
        )
        self.device_input = ComboBox(label="device", value="auto", choices=["auto", "cpu"])
        self.batch_input = SpinBox(label="batch size", value=128, min=1, max=4096)
        self.run_button = PushButton(text="Run")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.status = status_label()
        self.progress = progress_bar()
        self.cluster_method = ComboBox(label="clustering", choices=["kmeans", "hdbscan"])
        self.cluster_k = SpinBox(label="k (kmeans)", value=5, min=1, max=200)
        self.cluster_button = PushButton(text="Cluster", enabled=False)
        self.colour_by = ComboBox(label="colour by", choices=self._colour_choices, value="label")
        self.selection_button = PushButton(text="New labels layer from selection", enabled=False)
        self.export_button = PushButton(text="Export CSV...", enabled=False)
        self.umap_input = CheckBox(label="UMAP map (PCA first)", value=True)
        self.live_input = CheckBox(label="live: re-embed segments as they are painted", value=False)
        self.refit_button = PushButton(text="Refit map", enabled=False)
        self.extend(
            [
                self.image_input,
                self.labels_input,
                self.axes_question,
                *self.multi.widgets,
                self.backbone_input,
                self.volume_model_input,
                self.model_input,
                self.weights_button,
                self.checkpoint_input,
                self.crop_input,
                self.normalize_input,
                self.device_input,
                self.batch_input,
                self.umap_input,
                self.run_button,
                self.cancel_button,
                self.progress,
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
        self.run_button.changed.connect(self.run)
        self.cancel_button.changed.connect(self.cancel)
        self.model_input.changed.connect(self._on_model_changed)
        self.backbone_input.changed.connect(self._on_backbone_changed)
        self.volume_model_input.changed.connect(self._on_backbone_changed)
        self.cluster_button.changed.connect(lambda: self.cluster())
        self.colour_by.changed.connect(self._on_colour_by_chosen)
        self.selection_button.changed.connect(lambda: self.labels_from_selection())
        self.export_button.changed.connect(lambda: self.export_csv())
        self.refit_button.changed.connect(lambda: self.refit_map())
        self.live_input.changed.connect(self._on_live_toggled)
        for w in (self.image_input, self.labels_input, self.checkpoint_input):
            w.changed.connect(self._update_run_state)
        viewer.layers.events.inserted.connect(self._on_layers_changed)
        viewer.layers.events.removed.connect(self._on_layers_changed)
        self._on_layers_changed()
        self._warm_relay = WarmRelay()
        self._warm_relay.ready.connect(unless_deleted(self._on_warm))
        _session.start_warm_up(
            self._warm_relay, label_dtypes={layer.data.dtype for layer in labels_layers(viewer)}
        )

    # ------------------------------------------------------------------ the results, read-only
    @property
    def table(self) -> pd.DataFrame | None:
        shown = self._shown()
        return shown.table if shown is not None else None

    @property
    def map_model(self):
        shown = self._shown()
        return shown.map_model if shown is not None else None

    @property
    def labels_layer(self) -> Labels | None:
        return self.results.labels_layer if self.results is not None else None

    @property
    def points_layer(self) -> Points | None:
        view = self.multi.view if self.group is not None else self.map_view
        return view.points_layer

    @property
    def live_job(self) -> Job | None:
        return self.live.job

    # ------------------------------------------------------------------ choices and validation
    @property
    def backbone(self) -> str:
        """The backbone of a new model for the chosen labels' objects: the 2D picker's, or the
        3D model's for 3D objects."""
        picker = self.volume_model_input if self._object_dims == 3 else self.backbone_input
        return picker.value

    def pretrained_choices(self) -> dict[str, str]:
        """Model choice -> weight set, of the chosen backbone's weights in the cache now."""
        return {pretrained_model(ws): ws.name for ws in _present_weight_sets(self.backbone)}

    def _model_choices(self, _widget=None):
        choices = list(self.pretrained_choices())  # the default when present
        choices += [MODEL_UNTRAINED, MODEL_FILE]
        if _session.trained_encoder is not None:
            choices.append(MODEL_SESSION)
        return choices

    def _on_layers_changed(self, event=None) -> None:
        if event is not None and event.type == "removed":
            if self.results is not None and event.value is self.results.labels_layer:
                self._drop_results()
            self.map_view.forget_layer(event.value)
            self.multi.forget_layer(event.value)
        self.reset_choices()
        if not self.image_input.value and self.image_input.choices:
            self.image_input.value = [self.image_input.choices[0]]
        self._update_run_state()

    def _on_model_changed(self, value=None) -> None:
        if not self._switching:  # the user's choice (not one that went with a backbone)
            self._wants_pretrained = self.model_input.value in self.pretrained_choices()
        self.checkpoint_input.visible = self.model_input.value == MODEL_FILE
        self._update_run_state()

    def _on_backbone_changed(self, *_) -> None:
        """A new backbone: its weight sets are the pretrained models offered (and its download
        button on show), its crop size the default unless the user chose one."""
        self.weights_button.follow(self.backbone)
        self._crop_default.follow(self.backbone, self._object_dims)
        self.refresh_models()

    def refresh_models(self) -> None:
        """Re-read the model choices (after training, a download, a backbone change, or once
        the warm-up has checked the weights in the cache); the chosen backbone's pretrained
        model is chosen when there and wanted (the default, or the user's last choice)."""
        with self._choosing():
            reset_choices_in_order(self.model_input, self._model_choices())
            offered = list(self.pretrained_choices())
            if self._wants_pretrained and offered and self.model_input.value not in offered:
                self.model_input.value = offered[0]

    def _on_weights_downloaded(self) -> None:
        """The download button's weights arrived: offered and chosen."""
        self._wants_pretrained = True
        self.refresh_models()

    @contextmanager
    def _choosing(self):
        """A block whose model changes are the widget's, not the user's."""
        before, self._switching = self._switching, True
        try:
            yield
        finally:
            self._switching = before

    def _update_run_state(self, *_) -> None:
        running = self.job is not None
        why = self.validate()
        dims = 3 if self._embeds_volumes() else 2
        self.volume_model_input.visible = dims == 3
        self.backbone_input.visible = dims == 2
        if dims != self._object_dims:  # the other kind's backbone: its weights and crop
            self._object_dims = dims
            self._on_backbone_changed()
        self.run_button.enabled = why is None and not running
        if not running and (why is not None or self.results is None):  # else keep the results
            self.status.value = why or "Ready."

    def validate(self) -> str | None:
        """Why Run is not possible now (None when it is).  A 3D labels layer whose axes are
        not known yet shows the question (z-stack or time-lapse?)."""
        try:
            self._collect_inputs(build=False)
            if self.multi.active:
                self.multi.validate()
        except LayerAxesUnknown as exc:
            self.axes_question.ask(exc.layer)
            return str(exc)
        except ValueError as exc:
            self.axes_question.clear()
            return str(exc)
        self.axes_question.clear()
        return None

    def _embeds_volumes(self) -> bool:
        """Whether the chosen labels layer holds 3D objects (a z-stack, as said)."""
        from ._layer_axes import layer_layout

        layer = self.labels_input.value
        try:
            return layer is not None and layer_layout(layer).is_volume
        except ValueError:
            return False

    def _collect_inputs(self, *, build: bool = True) -> LayerInputs:
        """The run's inputs; ``ValueError`` with the reason when they don't fit.  With
        ``build=False`` (validation on every layer event) channels are not stacked."""
        inputs = layer_inputs(
            self.labels_input.value, list(self.image_input.value or []), build=build
        )
        if self.model_input.value == MODEL_FILE and not is_file(self.checkpoint_input.value):
            raise ValueError("Choose a checkpoint file.")
        return inputs

    # ------------------------------------------------------------------ background warm-up
    def _on_warm(self, devices) -> None:
        """The session warm-up (torch, devices, ImageNet weights, UMAP's JIT; see
        :mod:`._session`) found the devices that work here."""
        current = self.device_input.value
        self.device_input.choices = ["auto", *devices]
        if current in self.device_input.choices:
            self.device_input.value = current
        self.backbone_input.reset_choices()  # with the registry's, now the engine is loaded
        self.volume_model_input.reset_choices()
        if self.volume_model_input.value == self._volume_default:  # not chosen by the user
            cuda = any(str(d).startswith("cuda") for d in devices)
            default = VOLUME_BACKBONE if cuda else VOLUME_BACKBONE_CPU
            self.volume_model_input.value = self._volume_default = default
        self.weights_button.refresh()  # the warm-up has checked the files in the cache
        self.refresh_models()

    # ------------------------------------------------------------------ run
    def run(self):
        """Start embedding the chosen labels layer (every pair, with more pairs); returns the
        napari worker."""
        if self.job is not None:
            raise RuntimeError("An embedding is already running: cancel it first.")
        inputs = self._collect_inputs()  # ValueError with the reason when Run is disabled
        model = self.model_input.value
        checkpoint = chosen_path(self.checkpoint_input.value) if model == MODEL_FILE else None
        # a pretrained model by its weight set (not only those found: a file removed since is
        # the engine's clear error, never an untrained model in its place)
        pretrained = {pretrained_model(ws): ws.name for ws in weight_sets(self.backbone)}
        weights = {**pretrained, MODEL_FILE: checkpoint}.get(model)
        if model == MODEL_SESSION and _session.trained_encoder is not None:
            weights = _session.trained_encoder
        normalize = self.normalize_input.value
        params = {
            "crop_size": int(self.crop_input.value),
            "batch_size": int(self.batch_input.value),
            "device": self.device_input.value,
            "normalize": None if normalize == "none" else normalize,
        }
        run = {"model": model, "checkpoint": checkpoint}
        backbone, volume_backbone = self.backbone_input.value, self.volume_model_input.value
        if self.multi.active:
            call, on_result, on_message = self.multi.prepare(
                weights, params, backbone=backbone, volume_backbone=volume_backbone, **run
            )
            return self._start(call, on_result, on_message=on_message)
        image = inputs.image
        labels = inputs.labels.copy()  # the user may paint while we work
        layer_names = [layer.name for layer in inputs.image_layers]

        def call(progress, should_stop):
            _session.load_engine()  # after the warm-up, or without freezing napari
            return embed_run(
                image,
                labels,
                weights,
                {**params, "channel_axis": inputs.channel_axis},
                layout=inputs.layout,
                image_layers=layer_names,
                progress=progress,
                should_stop=should_stop,
                backbone=backbone,
                volume_backbone=volume_backbone,
                **run,
            )

        target = inputs.labels_layer
        return self._start(call, lambda result: self._on_embedded(target, *result))

    def _start(self, call, on_result, *, on_message=None):
        """Run ``call`` as the widget's job; ``on_result`` shows what it returns."""
        self.status.value = "Embedding..."
        watch_close(self.native.window())  # closing napari cancels the run first
        self._view_at_run = self._camera_view()
        self._set_running(True)
        from ._map_process import map_process

        # the map process (compiling UMAP, or fitting an earlier map) waits meanwhile
        release_map_process = map_process().pause()

        def done() -> None:
            release_map_process()
            self._on_job_done()

        def show(result) -> None:
            # a cancel that came after the last batch but before the result was delivered
            # still wins: nothing changes
            if self.job is None or not self.job.cancelled:
                on_result(result)

        self.job = start_job(
            call,
            desc="Embedding segments",
            progress_bar=self.progress,
            on_result=show,
            on_message=on_message,
            on_error=self._on_error,
            on_done=done,
        )
        return self.job.worker

    def reembed_with_session_model(self):
        """Embed again with the model trained in this session.  The current map is kept as its
        own points layer ("... map (before)") and compared with the new one (neighbour
        agreement, in the status and in the new layer's metadata).  Returns the worker."""
        self.refresh_models()
        self.model_input.value = MODEL_SESSION
        before = self.map_view.keep_as_before()
        if before is not None:
            self.previous_points = before
        return self.run()

    def _compare_with_previous(self) -> None:
        self.agreement = self.map_view.agreement_with(self.previous_points)
        if self.agreement is not None:
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
    def _on_embedded(self, labels_layer: Labels, df: pd.DataFrame, map_model, run) -> None:
        if labels_layer not in self.viewer.layers:
            self.status.value = "The labels layer was removed during the run: nothing to show."
            return
        previous = self.results if self.labels_layer is labels_layer else None
        self._drop_results()
        self.results = SegmentResults(labels_layer, df, map_model, run, previous=previous)
        self.results.events.colour_by.connect(self._on_results_colour_by)
        self.colour_by.value = "label"
        self.map_view.attach(self.results)
        self._show_new_results(len(df))

    def _show_new_results(self, n: int, what: str = "") -> None:
        """Fit the view, enable the actions, start UMAP: for the results just shown."""
        if self._camera_view() == self._view_at_run:  # the user has not zoomed or panned since
            self.viewer.reset_view()  # show the image and its map beside it
        for b in (
            self.cluster_button,
            self.selection_button,
            self.export_button,
            self.refit_button,
        ):
            b.enabled = True
        self.live_input.enabled = self.group is None  # live follows one labels layer
        self._on_live_toggled()
        umap = self.umap_input.value and n >= 4
        self.status.value = f"{n} segments{what} embedded. Map: PCA" + (
            " (UMAP on its way...)" if umap else ""
        )
        if umap:
            self._start_umap()
        else:
            self._compare_with_previous()

    def _camera_view(self) -> tuple:
        scene = getattr(self.viewer, "scene", None)  # napari >= 0.9; viewer.camera before
        camera = scene.camera if scene is not None else self.viewer.camera
        return tuple(np.round(camera.center, 6)), round(float(camera.zoom), 9)

    def _drop_results(self) -> None:
        self.live.follow(None)
        self._map_request = None  # a map still on its way is not wanted any more
        if self.results is not None:
            self.results.events.colour_by.disconnect(self._on_results_colour_by)
            self.results.close()
        self.results = None
        self.multi.drop()

    # ------------------------------------------------------------------ live embedding
    def _on_live_toggled(self, *_) -> None:
        self.live.follow(self.results if self.live_input.value else None)

    def _on_live_applied(self, n_embedded: int, n_removed: int) -> None:
        self.status.value = (
            f"Live: {n_embedded} segment(s) embedded, {n_removed} removed;"
            f" {len(self.results.table)} in the map ('Refit map' refits it)."
        )
