"""Small pieces the dock widgets share: layer choices and layer inputs, status labels, file
choices, the warm-up relay."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from magicgui.widgets import Label, ProgressBar
from napari.layers import Image, Labels
from qtpy.QtCore import QObject, Signal

from ._highlight import is_overlay

__all__ = [
    "LayerInputs",
    "UserActions",
    "WarmRelay",
    "centre_view_on",
    "chosen_path",
    "image_layers",
    "is_file",
    "labels_layers",
    "layer_inputs",
    "progress_bar",
    "save_path",
    "status_label",
    "unless_deleted",
]


class WarmRelay(QObject):
    """Carries the session warm-up's result (the working devices) to the GUI thread."""

    ready = Signal(object)


def image_layers(viewer) -> list[Image]:
    return [layer for layer in viewer.layers if isinstance(layer, Image)]


def labels_layers(viewer) -> list[Labels]:
    """The viewer's labels layers, less the highlight overlays the map views draw."""
    return [layer for layer in viewer.layers if isinstance(layer, Labels) and not is_overlay(layer)]


def status_label() -> Label:
    """A label for status messages that wraps: long messages must not widen the dock."""
    label = Label(value="")
    label.native.setWordWrap(True)
    label.native.setMinimumHeight(48)
    return label


def progress_bar() -> ProgressBar:
    """The bar a widget's jobs report to (see :func:`._jobs.start_job`): hidden when idle."""
    bar = ProgressBar(label="progress", value=0, min=0, max=1, visible=False)
    bar.native.setTextVisible(True)
    return bar


def is_file(value) -> bool:
    """Whether a FileEdit's value names an existing file."""
    try:
        path = chosen_path(value)
        return path is not None and path.is_file()
    except OSError:
        return False


def save_path(
    parent, path, *, title: str, suggestion: str, file_filter: str, overwrite: bool | None
) -> Path | None:
    """Where to write: ``path``, or the one chosen in a save dialog; an existing file is only
    replaced when ``overwrite`` is True or, when it is None, the user says yes.  None: write
    nothing."""
    if path is None:
        from qtpy.QtWidgets import QFileDialog

        path, _ = QFileDialog.getSaveFileName(parent, title, suggestion, file_filter)
        if not path:
            return None
    path = Path(path)
    if path.exists() and overwrite is None:
        from qtpy.QtWidgets import QMessageBox

        answer = QMessageBox.question(parent, "Replace file?", f"{path.name} exists. Replace it?")
        overwrite = answer == QMessageBox.StandardButton.Yes
    if path.exists() and not overwrite:
        return None
    return path


def export_table(
    parent, table, provenance: dict, path, *, title: str, suggestion: str, overwrite: bool | None
) -> Path | None:
    """Write ``table`` as CSV with its JSON sidecar (``write_table``: together or not at all;
    another program's JSON is never replaced) where :func:`save_path` says; a failure is shown,
    not raised, and so is a warning (text cells a spreadsheet could run as formulas).  Returns
    the path, or None when nothing was written."""
    import warnings

    from napari.utils.notifications import show_error, show_info, show_warning

    from ..analysis.export import write_table

    path = save_path(
        parent,
        path,
        title=title,
        suggestion=suggestion,
        file_filter="CSV (*.csv)",
        overwrite=overwrite,
    )
    if path is None:
        return None
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            write_table(table, path, provenance=provenance, overwrite=True)  # asked above
    except (OSError, ValueError) as exc:
        show_error(f"Export failed: {exc}")
        return None
    for warning in caught:
        show_warning(str(warning.message))
    show_info(f"Wrote {path}")
    return path


def chosen_path(value) -> Path | None:
    """A FileEdit's value as a path, or None when nothing is chosen ("" or ".")."""
    if value is None or str(value) in ("", "."):
        return None
    return Path(value)


@dataclass
class LayerInputs:
    image: np.ndarray | None  # None when validating only (build=False) with several layers
    labels: np.ndarray
    channel_axis: int | None
    stack: bool
    labels_layer: Labels
    image_layers: list[Image]


def layer_inputs(labels_layer, images: list, *, build: bool = True) -> LayerInputs:
    """Arrays from a labels layer and one or more image layers (several single-channel layers
    are stacked as channels); ``ValueError`` with the reason when they don't fit.  With
    ``build=False`` (validation on every layer event) channels are not stacked."""
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
    stack = labels.ndim == 3
    if len(images) > 1:
        image = np.stack(arrays, axis=-1) if build else None
        channel_axis = 2
    else:
        image = arrays[0]
        channel_axis = None
    if stack and not rgb and len(images) == 1:
        channel_axis = None
    return LayerInputs(image, labels, channel_axis, stack, labels_layer, images)


def unless_deleted(callback: Callable) -> Callable:
    """``callback`` for a Qt signal, made harmless once napari is closing: when a widget it
    updates has been deleted, Qt raises RuntimeError ("wrapped C/C++ object ... has been
    deleted"), which in a slot would abort the whole process."""

    def guarded(*args) -> None:
        try:
            callback(*args)
        except RuntimeError as exc:
            if "has been deleted" not in str(exc):
                raise

    return guarded


def folder_pairs(folder) -> list:
    """The (image, labels) file pairs of a folder a user chose: ``images/`` + ``labels/``, or
    ``x.tif`` beside ``x_labels.tif``, by the CLI's one rule (:func:`napari_segrep.io.pair_files`
    and its errors; files without a partner are refused, naming them)."""
    from ..io import pair_files

    return pair_files(data_dir=Path(folder), unmatched_fix=None)


def centre_view_on(viewer, centre, frame: int | None = None) -> None:
    """Centre the camera on ``centre`` (world y, x) and show ``frame`` (the first axis of a
    stack; None: leave it)."""
    if frame is not None:
        step = list(viewer.dims.current_step)
        step[0] = int(frame)
        viewer.dims.current_step = tuple(step)
    scene = getattr(viewer, "scene", None)  # napari >= 0.9; viewer.camera before
    camera = scene.camera if scene is not None else viewer.camera
    camera.center = tuple(float(v) for v in centre)


class UserActions:
    """A widget's buttons: ``_user_action(action)`` is the slot that calls ``action()``; what
    the user must do first (a ValueError or RuntimeError with the reason) goes to the widget's
    ``_on_error`` (status line and notification), not a traceback."""

    def _user_action(self, action):
        def run(*_):
            try:
                action()
            except (ValueError, RuntimeError) as exc:
                self._on_error(exc)

        return run
