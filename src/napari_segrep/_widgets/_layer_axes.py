"""What the axes of a labels layer are (its :class:`~napari_segrep._images.Layout`), asked once.

A 2D labels layer is ``"yx"`` and a 4D one ``"tzyx"``; a 3D one is a z-stack (``"zyx"``: one
3D object per label) or a time-lapse (``"tyx"``: one 2D object per label and frame), which is
never guessed.  In this order, the axes are:

1. what the user answered for this layer before (:func:`remember_axes`, kept in
   ``layer.metadata["napari_segrep"]["axes"]``: it travels with the layer's metadata);
2. the layer's ``axis_labels`` when they name them (``("z", "y", "x")``, ``("t", "y", "x")``,
   ``("t", "z", "y", "x")``, any case; napari's defaults ``"-2"``, ``"-1"`` say nothing);
3. the number of dimensions (2D, 4D);
4. else :class:`LayerAxesUnknown`: the widget asks (:class:`AxesQuestion`).

The voxel spacing of a volume is the labels layer's ``scale`` along its spatial axes, when it
is not all ones (``spacing_source`` "napari scale").
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from magicgui.widgets import Container, Label, PushButton

from .._images import AXES, AxesUnknown, Layout, layout_of

__all__ = [
    "ANSWERS",
    "METADATA_KEY",
    "AxesQuestion",
    "LayerAxesUnknown",
    "axes_from_labels",
    "layer_layout",
    "remember_axes",
    "remembered_axes",
]

#: The key of napari-segrep's entries in a layer's ``metadata``.
METADATA_KEY = "napari_segrep"
#: The answers to "what is this 3D layer?", as the question's buttons say them.
ANSWERS = {"zyx": "z-stack (3D objects)", "tyx": "time-lapse (2D frames)"}
SPACING_SOURCE = "napari scale"


class LayerAxesUnknown(AxesUnknown):
    """A 3D labels layer whose axes were not said (nor answered, nor in its axis labels)."""

    def __init__(self, layer) -> None:
        self.layer = layer
        self.layer_name = str(layer.name)
        super().__init__(np.shape(layer.data))

    def message(self, how: str) -> str:
        return (
            f"'{self.layer_name}' is 3D {self.shape}: is it a z-stack (3D objects) or a "
            "time-lapse (2D frames)? Answer with the buttons above."
        )


def remembered_axes(layer) -> str | None:
    """The axes the user answered for ``layer`` (None: not asked yet, or its data changed
    dimensions since)."""
    ours = getattr(layer, "metadata", {}).get(METADATA_KEY)
    axes = ours.get("axes") if isinstance(ours, dict) else None
    if isinstance(axes, str) and axes in AXES and len(axes) == np.ndim(layer.data):
        return axes
    return None


def remember_axes(layer, axes: str) -> None:
    """Remember ``axes`` for ``layer`` in its metadata (a new dict: napari's own stays as it
    was for any other holder of it)."""
    axes = str(axes).lower()
    layout_of(np.shape(layer.data), axes=axes)  # ValueError when they do not fit
    metadata = dict(layer.metadata)
    ours = metadata.get(METADATA_KEY)
    metadata[METADATA_KEY] = {**(ours if isinstance(ours, dict) else {}), "axes": axes}
    layer.metadata = metadata


def axes_from_labels(layer) -> str | None:
    """The axes the layer's ``axis_labels`` name (t, z, y, x; any case), or None."""
    labels = getattr(layer, "axis_labels", None)
    if labels is None:
        return None
    axes = "".join(str(a).strip().lower() for a in labels)
    if axes in AXES and len(axes) == len(labels) == np.ndim(layer.data):
        return axes
    return None


def layer_layout(layer) -> Layout:
    """The :class:`~napari_segrep._images.Layout` of a labels layer, its spacing from its
    ``scale`` (volumes only; none when all ones).

    Raises
    ------
    LayerAxesUnknown
        A 3D layer whose axes were neither answered nor named by its axis labels.
    ValueError
        Not 2D, 3D or 4D; a one-plane volume.
    """
    shape = tuple(int(n) for n in np.shape(layer.data))
    axes = remembered_axes(layer) or axes_from_labels(layer)
    if axes is None and len(shape) == 3:
        raise LayerAxesUnknown(layer)
    try:
        layout = layout_of(shape, axes=axes)
    except ValueError as exc:
        raise ValueError(f"'{layer.name}': {exc}") from None
    if not layout.is_volume:
        return layout  # 2D objects: their tables stay exactly as they were
    spacing = np.abs(np.asarray(layer.scale, float)[-3:])
    if np.allclose(spacing, 1.0):
        return layout
    return layout_of(shape, axes=layout.axes, spacing=spacing, spacing_source=SPACING_SOURCE)


class AxesQuestion(Container):
    """A row that asks, inline, what a 3D labels layer is: "'<layer>' is 3D: [z-stack (3D
    objects)] [time-lapse (2D frames)]".  :meth:`ask` shows it for a layer, :meth:`clear`
    hides it; a button remembers the answer in the layer (:func:`remember_axes`) and calls
    ``on_answered(layer, axes)``."""

    def __init__(self, on_answered: Callable[[object, str], None]) -> None:
        self.question = Label(value="")
        self.zstack_button = PushButton(text=ANSWERS["zyx"])
        self.timelapse_button = PushButton(text=ANSWERS["tyx"])
        super().__init__(
            layout="horizontal",
            labels=False,
            visible=False,
            widgets=[self.question, self.zstack_button, self.timelapse_button],
        )
        self.layer = None
        self._on_answered = on_answered
        self.zstack_button.changed.connect(lambda: self.answer("zyx"))
        self.timelapse_button.changed.connect(lambda: self.answer("tyx"))

    @property
    def asking(self) -> bool:
        """Whether the question shows (in a dock that is shown)."""
        return not self.native.isHidden()

    def ask(self, layer) -> None:
        """Show the question for ``layer``."""
        self.layer = layer
        self.question.value = f"'{layer.name}' is 3D:"
        self.visible = True

    def clear(self) -> None:
        self.layer = None
        self.visible = False

    def answer(self, axes: str) -> None:
        """What the buttons do: remember ``axes`` for the layer asked about."""
        layer = self.layer
        if layer is None:
            return
        remember_axes(layer, axes)
        self.clear()
        self._on_answered(layer, axes)
