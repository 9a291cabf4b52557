"""The "Train SegRep" dock widget: self-supervised fine-tuning inside the viewer.

Start calls ``run()``, which starts :func:`napari_segrep.train_ssl` in a napari worker.  Steps
arrive in the GUI thread as messages (loss curve, status with its ETA); the widget's bar shows
the step progress.  Quality records (the start and every epoch's; see
:mod:`napari_segrep.engine.quality`) arrive the same way: the effective rank is plotted under
the loss with its start value as a reference line, the view agreement is shown as text, and a
collapse is shown as a warning in the status.  Pause holds the worker between two steps; Stop
writes a checkpoint and keeps the model, which **Embed segments** then offers as "model trained
in this session".

Volumes: a labels layer's axes come from :mod:`._layer_axes` (asked once for a 3D layer, as
Embed segments asks: a z-stack trains on its 3D objects, a time-lapse on its frames as images),
the voxel spacing from the layer's scale; the **3D model** picker offers the 3D backbones.

Backbones: the **backbone** picker (2D objects) and the **3D model** picker list the catalogue's
(:mod:`napari_segrep.catalogue`, via :mod:`._backbones`); **start from** offers the chosen
backbone's pretrained weight sets that are in the local torch cache (ImageNet, DINOv2) and an
untrained network, its download button follows the picker, and the crop size follows the
backbone and the objects' kind (64 for 2D ResNets, 112 for the ViTs, 32 for 3D) unless chosen.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import napari
import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    PushButton,
    SpinBox,
)
from napari.utils.notifications import show_error, show_info

from .._images import Layout
from ..catalogue import weight_set
from ..engine.train_config import ROTATIONS_HELP, SUPERVISED, choices, default, help_text
from . import _session
from ._backbones import (
    CROP_SIZE,
    BackbonePicker,
    CropDefault,
    present_weight_sets,
    reset_choices_in_order,
    weight_sets,
)
from ._common import (
    WarmRelay,
    chosen_path,
    folder_pairs,
    image_layers,
    labels_layers,
    layer_inputs,
    progress_bar,
    status_label,
    unless_deleted,
)
from ._jobs import CloseGuard, Job, start_job
from ._layer_axes import AxesQuestion, LayerAxesUnknown, layer_layout
from ._plots import LinePlot, LossCurve
from ._train_config_file import config_text, config_updates
from ._weights import WeightsDownloadButton
from .embed import VOLUME_BACKBONE

__all__ = ["TrainSegRepWidget"]

_WARNING_STYLE = "color: rgb(255, 120, 90);"
START_UNTRAINED = "untrained network"


def start_choice(ws) -> str:
    """The start of a weight set: ``"ImageNet weights"``."""
    return f"{ws.label} weights"


#: The starts of the pretrained weight sets, when their file is in the cache.
START_IMAGENET, START_DINOV2 = (
    start_choice(weight_set(b, n))
    for b, n in (("resnet18", "imagenet"), ("vit_small_patch14_reg4_dinov2", "dinov2"))
)


class _PairRow(Container):
    def __init__(self, owner: TrainSegRepWidget) -> None:
        super().__init__(layout="horizontal", labels=False)
        self.image = ComboBox(
            choices=lambda _w=None: image_layers(owner.viewer), tooltip="image layer"
        )
        self.labels = ComboBox(
            choices=lambda _w=None: labels_layers(owner.viewer), tooltip="labels layer"
        )
        self.remove = PushButton(text="-", tooltip="remove this pair")
        self.extend([self.image, self.labels, self.remove])
        self.remove.changed.connect(lambda: owner.remove_pair(self))
        self.image.changed.connect(owner._update_state)
        self.labels.changed.connect(owner._update_state)


class TrainSegRepWidget(Container):
    """Fine-tune a SegmentEncoder on the segments of (image, labels) pairs."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(labels=True)
        self.viewer = viewer
        self.pairs = Container(labels=False, label="image / labels")
        #: "'<layer>' is 3D: [z-stack (3D objects)] [time-lapse (2D frames)]", when asked.
        self.axes_question = AxesQuestion(on_answered=lambda *_: self._update_state())
        self.add_pair_button = PushButton(text="+ add an (image, labels) pair")
        self.folder_input = FileEdit(
            label="also a folder",
            mode="d",
            value="",
            tooltip="optional: a folder with images/ and labels/, or x.tif beside x_labels.tif",
        )
        self._object_dims = 2  # of the chosen pairs' objects, as the pickers were set for
        self.backbone_input = BackbonePicker(
            2, label="backbone", value=default("backbone"), help=help_text("backbone")
        )
        self.volume_model_input = BackbonePicker(
            3,
            label="3D model",
            value=VOLUME_BACKBONE,
            visible=False,
            help="the network trained on 3D objects: resnet18_3d, a 3D network (ImageNet "
            "weights inflated to 3D); resnet18_planes, the 2D network on the object's three "
            "orthogonal middle planes (faster on a CPU)",
        )
        self.start_input = ComboBox(
            label="start from",
            choices=self._start_choices,
            tooltip="the network training starts from: the backbone's pretrained weights (the "
            "default once downloaded: ImageNet, DINOv2) or a new, untrained one",
        )
        self.weights_button = WeightsDownloadButton(
            self.backbone, on_downloaded=lambda path: self._on_weights_downloaded()
        )
        # refining from annotations is Classify segments' (it has them), not this widget's
        self.objective_input = _choice("objective", label="objective")
        self.objective_input.choices = [c for c in choices("objective") if c != SUPERVISED]
        self.loss_input = _choice("loss", label="loss")
        self.objective_input.changed.connect(self._objective_changed)
        self.optimizer_input = _choice("optimizer", label="optimiser")
        self.epochs_input = SpinBox(
            label="epochs (0: auto)",
            value=default("epochs") or 0,
            min=0,
            max=10_000,
            tooltip=help_text("epochs", with_default=True),
        )
        self.batch_input = SpinBox(
            label="batch size",
            value=default("batch_size"),
            min=2,
            max=4096,
            tooltip=help_text("batch_size"),
        )
        self.crop_input = SpinBox(
            label="crop size",
            value=CROP_SIZE[2],
            min=8,
            max=512,
            step=8,
            tooltip=f"{help_text('crop_size')}: square (2D) or cubic (3D) views, by default "
            f"the backbone's ({CROP_SIZE[2]} for 2D ResNets, 112 for the ViTs, {CROP_SIZE[3]} "
            "for 3D objects)",
        )
        self._crop_default = CropDefault(self.crop_input, self.backbone, 2)
        self.lr_input = FloatSpinBox(
            label="learning rate (0: default)",
            value=default("lr") or 0.0,
            min=0.0,
            max=1e6,
            step=0.0001,
            tooltip=help_text("lr", with_default=True),
        )
        self.rotate_input = CheckBox(
            label="rotations and flips", value=False, tooltip=ROTATIONS_HELP
        )
        self.image_mask_input = CheckBox(
            label="image masking",
            value=default("image_masking"),
            tooltip=help_text("image_masking"),
        )
        self.feature_mask_input = CheckBox(
            label="feature masking",
            value=default("feature_masking"),
            tooltip=help_text("feature_masking"),
        )
        self.device_input = ComboBox(label="device", choices=["auto", "cpu"], value="auto")
        self._default_dir = _default_run_dir()
        self.checkpoint_dir_input = FileEdit(
            label="checkpoint folder",
            mode="d",
            value=self._default_dir,
            tooltip="each Start writes a new run: a folder that holds another run's last.pt "
            "becomes FOLDER-2, -3... (resuming FOLDER/last.pt continues that run in FOLDER)",
        )
        self.resume_input = FileEdit(label="resume from", mode="r", value="", filter="*.pt")
        self.save_config_button = PushButton(
            text="Save config...",
            tooltip="these settings as a YAML file, which Load config... reads back and "
            "'napari-segrep train --config FILE' runs (with data: FOLDER, or images:/labels:)",
        )
        self.load_config_button = PushButton(
            text="Load config...",
            tooltip="settings from a YAML file: one Save config... wrote, or a run's config.yaml",
        )
        self.start_button = PushButton(text="Start")
        self.pause_button = PushButton(text="Pause", enabled=False)
        self.stop_button = PushButton(text="Stop", enabled=False)
        self.status = status_label()
        self.progress = progress_bar()
        self.reembed_button = PushButton(
            text="Re-embed labels with the trained model", enabled=False
        )
        self.curve = LossCurve()
        #: Effective rank per epoch (start first), its start value as the reference line.
        self.rank_curve = LinePlot("effective rank", color=(120, 220, 120), markers=True)
        #: The latest view agreement, with its start value and chance.
        self.quality_text = status_label()
        self.quality_text.native.setMinimumHeight(0)
        self.extend(
            [
                self.pairs,
                self.axes_question,
                self.add_pair_button,
                self.folder_input,
                self.backbone_input,
                self.volume_model_input,
                self.start_input,
                self.weights_button,
                self.objective_input,
                self.loss_input,
                self.optimizer_input,
                self.epochs_input,
                self.batch_input,
                self.crop_input,
                self.lr_input,
                self.rotate_input,
                self.image_mask_input,
                self.feature_mask_input,
                self.device_input,
                self.checkpoint_dir_input,
                self.resume_input,
                Container(
                    widgets=[self.save_config_button, self.load_config_button],
                    layout="horizontal",
                    labels=False,
                ),
                self.start_button,
                self.pause_button,
                self.stop_button,
                self.progress,
                self.status,
            ]
        )
        self.native.layout().addWidget(self.curve)
        self.native.layout().addWidget(self.rank_curve)
        self.native.layout().addWidget(self.quality_text.native)  # full width, under its plot
        self.append(self.reembed_button)

        self.job: Job | None = None
        self.result = None
        self.history: list[dict] = []
        #: Quality records received (the start's first).
        self.quality: list[dict] = []
        #: The collapse warning of the current run, shown in the status (None: no collapse).
        self.warning: str | None = None
        self._resume = threading.Event()
        self._resume.set()
        self.add_pair_button.changed.connect(lambda: self.add_pair())
        self.start_button.changed.connect(self.run)
        self.save_config_button.changed.connect(lambda: self.save_config())
        self.load_config_button.changed.connect(lambda: self.load_config())
        self.pause_button.changed.connect(self.toggle_pause)
        self.stop_button.changed.connect(self.stop)
        self.reembed_button.changed.connect(lambda: self.reembed())
        self.backbone_input.changed.connect(self._on_backbone_changed)
        self.volume_model_input.changed.connect(self._on_backbone_changed)
        viewer.layers.events.inserted.connect(self._refresh)
        viewer.layers.events.removed.connect(self._refresh)
        self.add_pair()
        self._warm_relay = WarmRelay()
        self._warm_relay.ready.connect(unless_deleted(self._on_devices))
        _session.start_warm_up(self._warm_relay)
        self._close_guard = CloseGuard(
            self, "Training is running", "Stop training, save a checkpoint and close napari?"
        )
        self._guarded_window = None
        self._refresh()

    def _on_devices(self, devices) -> None:
        self.backbone_input.reset_choices()  # with the registry's, now the engine is loaded
        self.volume_model_input.reset_choices()
        self.weights_button.refresh()  # the warm-up has checked the files in the cache
        self.refresh_start()  # the warm-up may have found pretrained weights
        current = self.device_input.value
        self.device_input.choices = ["auto", *devices]
        if current in self.device_input.choices:
            self.device_input.value = current

    @property
    def backbone(self) -> str:
        """The backbone of a new run for the chosen pairs' objects: the 2D picker's, or the 3D
        model's for 3D objects."""
        picker = self.volume_model_input if self._object_dims == 3 else self.backbone_input
        return picker.value

    def pretrained_starts(self) -> dict[str, str]:
        """Start choice -> weight set, of the chosen backbone's weights in the cache now."""
        return {start_choice(ws): ws.name for ws in present_weight_sets(self.backbone)}

    def _start_choices(self, _widget=None) -> list[str]:
        """The pretrained starts first (the default) when their weights are in the cache."""
        return [*self.pretrained_starts(), START_UNTRAINED]

    def refresh_start(self) -> None:
        """Offer the backbone's pretrained starts whose weights are in the cache; a new one is
        selected (a user's choice among those offered before is kept)."""
        before = set(self.start_input.choices)
        reset_choices_in_order(self.start_input, self._start_choices())
        new = [c for c in self.pretrained_starts() if c not in before]
        if new and self.start_input.value not in set(self.pretrained_starts()) - set(new):
            self.start_input.value = new[0]

    def _on_backbone_changed(self, *_) -> None:
        """A new backbone: its pretrained starts, its download button, its default crop."""
        self.weights_button.follow(self.backbone)
        self._crop_default.follow(self.backbone, self._object_dims)
        self.refresh_start()

    def _on_weights_downloaded(self) -> None:
        offered = self.pretrained_starts()
        reset_choices_in_order(self.start_input, self._start_choices())
        if offered:
            self.start_input.value = next(iter(offered))

    # ------------------------------------------------------------------ inputs
    def add_pair(self) -> _PairRow:
        row = _PairRow(self)
        self.pairs.append(row)
        return row

    def remove_pair(self, row: _PairRow) -> None:
        if len(self.pairs) > 1:
            self.pairs.remove(row)

    def _refresh(self, event=None) -> None:
        self.reset_choices()
        self._update_state()

    def _update_state(self, *_) -> None:
        if self.job is not None:
            return
        why = self.validate()
        dims = 3 if self._trains_volumes() else 2
        self.volume_model_input.visible = dims == 3
        self.backbone_input.visible = dims == 2
        if dims != self._object_dims:  # the other kind's backbone: its starts and crop
            self._object_dims = dims
            self._on_backbone_changed()
        self.start_button.enabled = why is None
        if why is not None or self.result is None:  # keep the last run's outcome on show
            self.status.value = why or "Ready."

    def validate(self) -> str | None:
        """Why Start is not possible now (None when it is).  A 3D labels layer whose axes are
        not known yet shows the question (z-stack or time-lapse?)."""
        try:
            self._collect_arrays()
        except LayerAxesUnknown as exc:
            self.axes_question.ask(exc.layer)
            return str(exc)
        except ValueError as exc:
            self.axes_question.clear()
            return str(exc)
        self.axes_question.clear()
        return None

    def _trains_volumes(self) -> bool:
        """Whether a chosen labels layer holds 3D objects (a z-stack, as said)."""
        for row in self.pairs:
            try:
                if row.labels.value is not None and layer_layout(row.labels.value).is_volume:
                    return True
            except ValueError:
                continue
        return False

    def _folder(self) -> Path | None:
        return chosen_path(self.folder_input.value)

    def _collect_arrays(self) -> tuple[list, list, Layout | None]:
        """``(images, labels, layout)``: the pairs' arrays (each frame of a time-lapse an image
        of its own) and the layout they share, ``"yx"`` or ``"zyx"`` with the volumes' spacing
        (None without a layer pair).  ``ValueError`` with the reason when they don't fit
        (``LayerAxesUnknown`` for a 3D layer whose axes were not said)."""
        images, labels, kinds = [], [], []
        for row in self.pairs:
            image_layer, labels_layer = row.image.value, row.labels.value
            if image_layer is None or labels_layer is None:
                continue
            image, lab = np.asarray(image_layer.data), np.asarray(labels_layer.data)
            shape = image.shape[:-1] if image_layer.rgb else image.shape
            if shape != lab.shape:
                raise ValueError(
                    f"'{image_layer.name}' {shape} and '{labels_layer.name}' "
                    f"{lab.shape} differ in shape."
                )
            layout = layer_inputs(labels_layer, [image_layer], build=False).layout
            if layout.has_time:  # a time-lapse: each frame is an image (or a volume)
                images += list(image)
                labels += list(lab)
            else:
                images.append(image)
                labels.append(lab)
            kinds.append((labels_layer.name, layout.frame_layout))
        if not images and self._folder() is None:
            raise ValueError("Choose an image and a labels layer (or a folder).")
        return images, labels, _shared_layout(kinds)

    # ------------------------------------------------------------------ run
    def run(self):
        """Start training; returns the napari worker."""
        if self.job is not None:
            raise RuntimeError("Training is already running.")
        images, labels, layout = self._collect_arrays()
        volumes = layout is not None and layout.is_volume
        folder = self._folder()
        resume = chosen_path(self.resume_input.value)
        checkpoint_dir = self._checkpoint_dir_for_start(resume)
        options = {
            "epochs": int(self.epochs_input.value) or None,
            "batch_size": int(self.batch_input.value),
            "crop_size": int(self.crop_input.value),
            "objective": self.objective_input.value,
            "loss": self.loss_input.value if self.loss_input.enabled else default("loss"),
            "optimizer": self.optimizer_input.value,
            "lr": float(self.lr_input.value) or None,
            "image_masking": bool(self.image_mask_input.value),
            "feature_masking": bool(self.feature_mask_input.value),
            "device": self.device_input.value,
            "augment": {"rotate90": self.rotate_input.value, "flip": self.rotate_input.value},
        }
        backbone = self.volume_model_input.value if volumes else self.backbone_input.value
        options["backbone"] = backbone
        if volumes:  # 3D objects, at the layers' voxel spacing; the folder's files alike
            options.update(axes="zyx", spacing=layout.spacing)
        # by its weight set (a file removed since is the engine's clear error, not untrained)
        starts = {start_choice(ws): ws.name for ws in weight_sets(backbone)}
        pretrained = None if resume is not None else starts.get(self.start_input.value)
        resume_event = self._resume
        settings = self.config()  # the run folder's config.yaml, its epochs resolved

        def run_config(config) -> str:
            return config_text({**settings, "epochs": config.epochs})

        def call(progress, should_stop):
            _session.load_engine()  # after the warm-up, or without freezing napari
            from ..engine.training import train_ssl

            all_images, all_labels = list(images), list(labels)
            if folder is not None:
                from ..io import read_image

                for image_path, label_path in folder_pairs(folder):
                    all_images.append(read_image(image_path))
                    all_labels.append(read_image(label_path))

            encoder = None
            if pretrained is not None:
                from ..engine.embed import encoder_for
                from ..engine.inputs import as_channels_first

                spatial = 3 if volumes else 2
                channels = as_channels_first(
                    all_images[0], channel_axis=None, spatial_ndim=spatial
                ).shape[0]
                encoder = encoder_for(pretrained, in_channels=channels, backbone=backbone)

            def on_step(record):
                progress(record["step"], record["total_steps"])
                progress.message(record)
                while not resume_event.is_set() and not should_stop():
                    time.sleep(0.05)  # paused between two steps

            return train_ssl(
                all_images,
                all_labels,
                encoder=encoder,
                checkpoint_dir=checkpoint_dir,
                resume=resume,
                on_step=on_step,
                should_stop=should_stop,
                on_quality=lambda record: progress.message({"quality": record}),
                run_config=run_config,
                charts=True,
                tensorboard=None,  # when installed
                **options,
            )

        window = self.native.window()  # napari's main window once docked
        if id(window) != self._guarded_window:  # an id, not a reference: no cycle to the viewer
            window.installEventFilter(self._close_guard)
            self._guarded_window = id(window)
        self.history = []
        self.quality = []
        self.warning = None
        self.curve.clear()
        self.rank_curve.clear()
        self.quality_text.value = ""
        self.status.native.setStyleSheet("")
        self._resume.set()
        self.status.value = "Starting (loading data, building the model)..."
        self._set_running(True)
        self.job = start_job(
            call,
            desc="Training SegRep",
            progress_bar=self.progress,
            on_result=self._on_trained,
            on_error=self._on_error,
            on_done=self._on_done,
            on_message=self._on_message,
            ask_before_close=True,  # the close guard asks, then stops with a checkpoint
        )
        return self.job.worker

    def _checkpoint_dir_for_start(self, resume: Path | None) -> Path:
        """A folder of its own for this run: the default is a new time-stamped one per Start;
        a folder that holds another run (not the one resumed) becomes FOLDER-2, -3..."""
        from ..io import free_run_dir, same_file

        chosen = Path(self.checkpoint_dir_input.value)
        default = chosen == self._default_dir
        if default and not (resume is not None and same_file(resume, chosen / "last.pt")):
            chosen = _default_run_dir()  # the default, not a folder the user chose
        folder = free_run_dir(chosen, resume=resume)
        if folder != chosen:
            show_info(f"{chosen} holds another run: this one goes to {folder}")
        if default:
            self._default_dir = folder
        self.checkpoint_dir_input.value = folder
        return folder

    def _objective_changed(self, objective: str) -> None:
        """The loss is the contrastive objective's: greyed out for the pretext tasks."""
        self.loss_input.enabled = objective == "contrastive"

    # ------------------------------------------------------------------ config files
    def _config_fields(self) -> dict:
        """``{key: widget}``: the settings a config file holds, under the command line's keys
        (``napari-segrep train --config``'s: the long option names with underscores)."""
        return {
            "objective": self.objective_input,
            "loss": self.loss_input,
            "optimizer": self.optimizer_input,
            "epochs": self.epochs_input,
            "batch_size": self.batch_input,
            "crop_size": self.crop_input,
            "lr": self.lr_input,
            "rotations": self.rotate_input,
            "no_image_mask": self.image_mask_input,
            "no_feature_mask": self.feature_mask_input,
            "device": self.device_input,
            "log_dir": self.checkpoint_dir_input,
        }

    def config(self) -> dict:
        """The widget's settings under the command line's keys (0 epochs or learning rate:
        null, the default; a switch's value as the command line's ``no_...`` says it)."""
        out = {}
        for key, widget in self._config_fields().items():
            value = widget.value
            if key.startswith("no_"):
                value = not value
            elif key in ("epochs", "lr"):
                value = value or None
            elif isinstance(value, Path):
                value = str(value.resolve())
            out[key] = value
        out["backbone"] = self.backbone
        folder = self._folder()
        if folder is not None:
            out["data"] = str(folder.resolve())
        return out

    def save_config(self, path=None) -> Path | None:
        """Write :meth:`config` as YAML to ``path`` (None: asked in a dialog), atomically;
        returns the path, or None when nothing was written (a failure is shown)."""
        from ..io import atomic_write
        from ._common import save_path

        path = save_path(
            self.native,
            path,
            title="Save training config",
            suggestion="train.yaml",
            file_filter="YAML (*.yaml *.yml)",
            overwrite=True if path is not None else None,
        )
        if path is None:
            return None
        text = config_text(self.config())
        try:
            atomic_write(path, lambda fh: fh.write(text.encode("utf-8")))
        except OSError as exc:
            self._on_error(exc)
            return None
        show_info(f"Training config saved to {path}")
        return path

    def load_config(self, path=None) -> bool:
        """Set the fields from a YAML config (``path``; None: asked in a dialog): one
        :meth:`save_config` wrote, or a run's ``config.yaml``.  Keys this widget has no field
        for (seed, data globs...) are named in a notification; a bad file, key or value is an
        error naming the file and the key, and then no field changes.  Returns whether the
        fields were set."""
        import yaml

        if path is None:
            from qtpy.QtWidgets import QFileDialog

            path, _ = QFileDialog.getOpenFileName(
                self.native, "Load training config", "", "YAML (*.yaml *.yml)"
            )
            if not path:
                return False
        path = Path(path)
        try:
            values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
            if not isinstance(values, dict):
                raise ValueError(f"{path} must hold 'key: value' lines")
            updates = self._config_updates(path, values)
        except (OSError, UnicodeDecodeError, yaml.YAMLError, ValueError) as exc:
            self._on_error(exc if isinstance(exc, ValueError) else ValueError(f"{path}: {exc}"))
            return False
        pickers = (self.backbone_input, self.volume_model_input)
        # the backbone first: choosing it sets the crop size to its default, the file's wins
        for widget, value in sorted(updates, key=lambda u: u[0] not in pickers):
            widget.value = value
        ignored = sorted(set(values) - set(self._config_fields()) - {"backbone", "data"})
        note = f" (no field here for: {', '.join(ignored)})" if ignored else ""
        show_info(f"Training config loaded from {path.name}{note}")
        return True

    def _config_updates(self, path: Path, values: dict) -> list:
        """``[(widget, value)]`` for ``values`` (a config's), each checked; a ``ValueError``
        naming the file and the key otherwise."""
        fields = self._config_fields()
        backbone = values.get("backbone")
        for picker in (self.backbone_input, self.volume_model_input):
            if backbone in picker.choices:  # the picker of its kind (2D or 3D objects)
                fields["backbone"] = picker
        if backbone is not None and "backbone" not in fields:
            known = [*self.backbone_input.choices, *self.volume_model_input.choices]
            raise ValueError(f"{path}: backbone: {backbone!r} is not one of {known}")
        if values.get("data") is not None:
            fields["data"] = self.folder_input
        return config_updates(path, values, fields)

    def toggle_pause(self) -> None:
        """Pause between two steps, or resume."""
        if self.job is None:
            return
        if self._resume.is_set():
            self._resume.clear()
            self.pause_button.text = "Resume"
            self.status.value = "Paused."
        else:
            self._resume.set()
            self.pause_button.text = "Pause"
            self.status.value = "Resumed."

    @property
    def paused(self) -> bool:
        return self.job is not None and not self._resume.is_set()

    def stop(self) -> None:
        """Stop after the current step: a checkpoint is written and the model kept."""
        if self.job is not None:
            self.job.cancel()
            self._resume.set()
            self.status.value = "Stopping: writing a checkpoint..."

    def _set_running(self, running: bool) -> None:
        self.start_button.enabled = not running
        self.pause_button.enabled = running
        self.stop_button.enabled = running
        self.pause_button.text = "Pause"

    def _on_message(self, message: dict) -> None:
        if "quality" in message:
            self._on_quality(message["quality"])
        else:
            self._on_step(message)

    def _on_step(self, record: dict) -> None:
        self.history.append(record)
        self.curve.add(record["loss"])
        self._set_status(
            f"epoch {record['epoch']}, step {record['step']}/"
            f"{record['total_steps']}: loss {record['loss']:.4f} "
            f"({record['crops_per_s']:.0f} crops/s)"
        )

    def _set_status(self, text: str) -> None:
        """The status, after the run's collapse warning when there is one (in red)."""
        self.status.value = f"Warning: {self.warning}\n{text}" if self.warning else text
        self.status.native.setStyleSheet(_WARNING_STYLE if self.warning else "")

    def _on_quality(self, record: dict) -> None:
        self.quality.append(record)
        start = self.quality[0]
        self.rank_curve.add(record["effective_rank"])
        self.rank_curve.set_reference(start["effective_rank"])
        self.rank_curve.title = f"effective rank (start {start['effective_rank']:.1f})"
        where = f"{record['n']} {record['monitor']} segments"
        self.quality_text.value = (
            f"view agreement {record['view_agreement']:.2f} (start "
            f"{start['view_agreement']:.2f}, chance {1 / record['n']:.2f}) on {where}: the "
            "fraction of segments recognised under the augmentations"
        )
        if record.get("collapsed") and self.warning is None:
            self.warning = (
                f"the embeddings collapsed at epoch {record['epoch']} (effective rank "
                f"{start['effective_rank']:.1f} -> {record['effective_rank']:.1f}). Lower the "
                "learning rate or try another loss."
            )
            self._set_status(self.status.value)

    def _on_trained(self, result) -> None:
        self.result = result
        _session.trained_encoder = result.encoder
        for widget in _embed_widgets(self.viewer):
            widget.refresh_models()
        self.reembed_button.enabled = True
        how = "stopped" if result.stopped else "finished"
        self._set_status(
            f"Training {how} after {len(result.history)} steps; checkpoint "
            f"{result.checkpoint_path}. The model is available in Embed "
            "segments."
        )
        show_info(f"SegRep training {how}: checkpoint {result.checkpoint_path}")

    def _on_error(self, exc: BaseException) -> None:
        self.status.value = f"Error: {exc}"
        show_error(f"Train SegRep: {exc}")

    def _on_done(self) -> None:
        self.job = None
        self._set_running(False)
        self._resume.set()
        self.start_button.enabled = self.validate() is None

    def reembed(self):
        """Re-embed the chosen labels layer with the trained model (in Embed segments, which is
        docked if needed); the previous map is kept for comparison.  Returns the worker."""
        if _session.trained_encoder is None:
            raise RuntimeError("Train a model first.")
        widgets = _embed_widgets(self.viewer)
        if widgets:
            widget = widgets[0]
        else:
            _, widget = self.viewer.window.add_plugin_dock_widget("napari-segrep", "Embed segments")
        row = self.pairs[0]
        if row.labels.value is not None:
            widget.labels_input.value = row.labels.value
            widget.image_input.value = [row.image.value]
        return widget.reembed_with_session_model()


def _choice(name: str, *, label: str) -> ComboBox:
    """A ComboBox of the training setting ``name``'s choices, its default and help text."""
    return ComboBox(
        label=label, choices=list(choices(name)), value=default(name), tooltip=help_text(name)
    )


def _shared_layout(kinds: list[tuple[str, Layout]]) -> Layout | None:
    """The one layout of the pairs' objects (``(labels layer name, frame layout)`` each): all
    2D, or all volumes of one voxel spacing (one network, one grid); None without a pair."""
    if not kinds:
        return None
    (first, layout), *others = kinds
    for name, other in others:
        if other.spatial_ndim != layout.spatial_ndim:
            three, two = (first, name) if layout.is_volume else (name, first)
            raise ValueError(
                f"'{three}' holds 3D objects but '{two}' 2D ones: train on one kind at a time."
            )
        if layout.is_volume and not np.allclose(other.voxel_spacing, layout.voxel_spacing):
            raise ValueError(
                f"'{first}' has voxel spacing {_numbers(layout.voxel_spacing)} but '{name}' "
                f"{_numbers(other.voxel_spacing)} (their scale): train on volumes of one spacing "
                "at a time, or give the layers the same scale."
            )
    return layout


def _numbers(values) -> str:
    return "(" + ", ".join(f"{float(v):g}" for v in values) + ")"


def _default_run_dir() -> Path:
    return Path.home() / ".napari-segrep" / "runs" / time.strftime("%Y%m%d-%H%M%S")


def _embed_widgets(viewer) -> list:
    from .embed import EmbedSegmentsWidget

    return [w for w in EmbedSegmentsWidget.instances if w.viewer is viewer]
