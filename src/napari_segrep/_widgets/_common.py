"""Small pieces the dock widgets share: layer choices and layer inputs, status labels, file
choices, the warm-up relay."""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from magicgui.widgets import Label, ProgressBar
from napari.layers import Image, Labels
from qtpy.QtCore import QObject, Signal

from .._images import Layout
from ._highlight import is_overlay
from ._layer_axes import layer_layout

__all__ = [
    "LayerInputs",
    "UserActions",
    "WarmRelay",
    "centre_on_segment",
    "centre_view_on",
    "chosen_path",
    "image_layers",
    "is_file",
    "label_at",
    "labels_layers",
    "layer_inputs",
    "on_click",
    "progress_bar",
    "save_path",
    "segment_point",
    "show_segment_planes",
    "shown_index",
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
    """What one (image, labels) pair of layers gives the engine."""

    image: np.ndarray | None  # None when validating only (build=False) with several layers
    labels: np.ndarray
    channel_axis: int | None
    layout: Layout  # what the labels' axes are, and the voxel spacing (see ._layer_axes)
    labels_layer: Labels
    image_layers: list[Image]

    @property
    def stack(self) -> bool:
        """A time-lapse (a ``frame`` column): ``layout.has_time``."""
        return self.layout.has_time


def layer_inputs(labels_layer, images: list, *, build: bool = True) -> LayerInputs:
    """Arrays from a labels layer and one or more image layers (several single-channel layers
    are stacked as channels, on a last axis), and the labels' layout (:func:`~._layer_axes.
    layer_layout`); ``ValueError`` with the reason when they don't fit (``LayerAxesUnknown``
    for a 3D layer whose axes were not said).  With ``build=False`` (validation on every layer
    event) channels are not stacked.

    ``channel_axis`` (several layers) is counted in the whole image, as ``embed_segments``
    takes it, except for a ``"tyx"`` time-lapse, embedded frame by frame by ``embed_stack``,
    which counts it within a frame."""
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
    if labels.ndim not in (2, 3, 4):
        raise ValueError(
            f"Labels must be 2D, 3D (a z-stack or a time-lapse) or 4D (a time-lapse of "
            f"volumes), got {labels.ndim}D."
        )
    arrays = [np.asarray(layer.data) for layer in images]
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
    layout = layer_layout(labels_layer)  # LayerAxesUnknown: the widget asks
    if layout.is_volume:  # the scale is the voxel spacing: the layers must agree on it
        for layer in images:
            if not np.allclose(np.abs(layer.scale[-3:]), np.abs(labels_layer.scale[-3:])):
                raise ValueError(
                    f"Image '{layer.name}' has scale {_numbers(layer.scale[-3:])} but labels "
                    f"'{labels_layer.name}' have {_numbers(labels_layer.scale[-3:])}: give "
                    "both layers the same scale (the voxel spacing, z, y, x)."
                )
    if not labels.any():
        raise ValueError(f"'{labels_layer.name}' has no segments yet.")
    channel_axis = None
    image = arrays[0]
    if len(images) > 1:
        image = np.stack(arrays, axis=-1) if build else None
        channel_axis = labels.ndim - 1 if layout.axes == "tyx" else labels.ndim
    return LayerInputs(image, labels, channel_axis, layout, labels_layer, images)


def _numbers(values) -> str:
    return "(" + ", ".join(f"{float(v):g}" for v in values) + ")"


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


def centre_view_on(viewer, centre, frame: int | None = None, *, camera: bool = True) -> None:
    """Centre the view on ``centre``: world coordinates of the last ``len(centre)`` axes of
    the viewer ((y, x), (z, y, x), or every axis).  The displayed axes centre the camera
    (unless ``camera`` is False), the others (z in 2D slicing, time) move the dims there.
    ``frame``: show this step of the viewer's first axis (a time-lapse's frame; None: leave
    it)."""
    dims = viewer.dims
    centre = np.asarray(centre, float).reshape(-1)
    first = dims.ndim - len(centre)
    if first < 0:
        raise ValueError(f"{len(centre)} coordinates for a viewer of {dims.ndim} dimensions")
    for axis, value in enumerate(centre, start=first):
        if axis not in dims.displayed:
            dims.set_point(axis, float(value))
    if frame is not None:
        step = list(dims.current_step)
        step[0] = int(frame)
        dims.current_step = tuple(step)
    if not camera:
        return
    scene = getattr(viewer, "scene", None)  # napari >= 0.9; viewer.camera before
    view = scene.camera if scene is not None else viewer.camera
    shown = [centre[axis - first] for axis in dims.displayed if axis >= first]
    view.center = tuple(float(v) for v in shown)


#: The table columns that place a segment along each axis of its labels (``frame``: time).
_PLACE = {"t": "frame", "z": "centroid_z", "y": "centroid_y", "x": "centroid_x"}


def segment_point(layout: Layout, record) -> np.ndarray:
    """Where the segment of a table row (``record``: a Series or mapping with ``frame``,
    ``centroid_z``, ``centroid_y``, ``centroid_x``, as its table has them) is, in its labels'
    data coordinates (one per axis of ``layout``: its frame and its middle plane included)."""
    return np.array([float(record[_PLACE[axis]]) for axis in layout.axes])


def centre_on_segment(viewer, layer, layout: Layout, record) -> None:
    """Centre the view on the segment of a table row of ``layer`` (labels of ``layout``): the
    camera on its centroid, the dims on its frame and its middle plane (:func:`segment_point`,
    through the layer's scale, translation and affine)."""
    centre_view_on(viewer, np.asarray(layer.data_to_world(segment_point(layout, record)), float))


def show_segment_planes(viewer, layer, layout: Layout, record) -> None:
    """In 2D slicing, move the dims to the middle plane (and frame) of a table row's 3D
    object when the plane shown does not cut it (the camera stays).  2D objects: nothing."""
    if not layout.is_volume or viewer.dims.ndisplay != 2:
        return
    z = layout.axes.index("z")
    shown = shown_index(viewer, layer, z)
    inside = int(record["bbox_z0"]) <= shown < int(record["bbox_z1"])
    if layout.has_time:
        inside = inside and shown_index(viewer, layer, 0) == int(record["frame"])
    if not inside:
        world = layer.data_to_world(segment_point(layout, record))
        centre_view_on(viewer, np.asarray(world, float), camera=False)


def on_click(layer, event, pick: Callable) -> Generator | None:
    """What a labels layer's mouse-drag callback returns to call ``pick(layer, label)`` on a
    click, ``label`` the one under the mouse (:func:`label_at`; 0: background): in 2D slicing
    at the press (as before); in the 3D view at the release, when the mouse did not move (a
    drag turns the camera: nothing is picked)."""
    if len(tuple(getattr(event, "dims_displayed", ()) or ())) < 3:
        label = label_at(layer, event)
        if label is not None:
            pick(layer, label)
        return None
    return _pick_at_release(layer, event, pick)


def _pick_at_release(layer, event, pick: Callable) -> Generator:
    yield
    moved = False
    while event.type == "mouse_move":
        moved = True
        yield
    if not moved:
        label = label_at(layer, event)
        if label is not None:
            pick(layer, label)


def label_at(layer, event) -> int | None:
    """The label under a mouse event: in 2D slicing the value at the mouse in the plane shown;
    in the 3D view the first object along the ray through the mouse (0 when the ray meets
    none).  None: outside the layer."""
    displayed = tuple(getattr(event, "dims_displayed", ()) or ())
    direction = getattr(event, "view_direction", None)
    if len(displayed) == 3 and direction is not None:
        value = layer.get_value(
            event.position,
            view_direction=direction,
            dims_displayed=list(displayed),
            world=True,
        )
        return 0 if value is None else int(value)
    value = layer.get_value(event.position, world=True)
    return None if value is None else int(value)


def shown_index(viewer, layer, axis: int) -> int:
    """The index along ``layer``'s data ``axis`` that the viewer's dims show now (its frame or
    its plane, through the layer's scale and translation)."""
    point = np.asarray(viewer.dims.point, float)[-layer.ndim :]
    return int(np.round(np.asarray(layer.world_to_data(point), float)[axis]))


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
