"""The backbone pickers of Embed segments and Train SegRep, generated from
:mod:`napari_segrep.catalogue` (torch-free: asked freely in napari's GUI thread).

A picker lists the catalogue's backbones of one kind (2D objects, or 3D ones: the native 3D
networks first, the catalogue's order), then any other backbone registered with the engine (a
plugin's, or a test's) once the engine is loaded: the registry is never imported here, in
napari's thread.  Its tooltip is the chosen backbone's ``summary``.  What a backbone brings
with it is read here too: its default crop size, and its weight sets (``"ImageNet"``,
``"DINOv2"``), of which the model choices offer those whose file is whole in the local torch
cache.
"""

from __future__ import annotations

import sys

from magicgui.widgets import ComboBox

from .. import catalogue

__all__ = [
    "CROP_SIZE",
    "BackbonePicker",
    "backbone_choices",
    "default_crop",
    "present_weight_sets",
    "weight_sets",
]

#: The default crop size for 2D and for 3D objects seen by a backbone the catalogue does not
#: know (``embed_segments``' own defaults).
CROP_SIZE = {2: 64, 3: 32}


def _registered(spatial_dims: int) -> list[str]:
    """Backbones registered with the engine beyond the catalogue's (only once the engine is
    loaded: importing it here would freeze napari's GUI thread)."""
    registry = sys.modules.get("napari_segrep.engine.backbones")
    backbones = getattr(registry, "BACKBONES", None)
    if not backbones:
        return []
    return [
        name
        for name, spec in list(backbones.items())
        if name not in catalogue.BY_NAME and getattr(spec, "spatial_dims", 2) == spatial_dims
    ]


def backbone_choices(spatial_dims: int) -> list[str]:
    """The backbones for objects of ``spatial_dims`` (2 or 3): the catalogue's, in its order,
    then the other registered ones."""
    return catalogue.backbone_choices(spatial_dims) + _registered(spatial_dims)


def default_crop(backbone: str | None, spatial_dims: int) -> int:
    """The crop size ``backbone`` sees objects of ``spatial_dims`` in by default: its
    catalogue entry's (112 for the ViTs), else :data:`CROP_SIZE` of the dimensions."""
    entry = catalogue.BY_NAME.get(backbone)
    if entry is not None and entry.spatial_dims == spatial_dims and entry.default_crop:
        return int(entry.default_crop)
    return CROP_SIZE[spatial_dims]


def weight_sets(backbone: str | None) -> tuple[catalogue.WeightSet, ...]:
    """``backbone``'s pretrained weight sets (none for a backbone the catalogue does not
    know)."""
    entry = catalogue.BY_NAME.get(backbone)
    return entry.weights if entry is not None else ()


def present_weight_sets(backbone: str | None) -> list[catalogue.WeightSet]:
    """``backbone``'s weight sets whose file lies whole in the local torch cache now (a damaged
    file does not count).  Imports no torch; a file's SHA-256 is computed once per version of
    the file (the session's warm-up does it in the background for every catalogue file)."""
    from ..weights import weights_info

    present = []
    for ws in weight_sets(backbone):
        try:
            if weights_info(backbone, weights=ws.name).usable:
                present.append(ws)
        except ValueError:
            continue
    return present


def describe(backbone: str | None) -> str:
    """One line for a tooltip: the catalogue's summary, its embedding size and default crop."""
    entry = catalogue.BY_NAME.get(backbone)
    if entry is None:
        return f"{backbone}: a backbone registered with the engine (not in the catalogue)"
    weights = ", ".join(ws.label for ws in entry.weights) or "none (untrained only)"
    return (
        f"{entry.name}: {entry.summary}. {entry.embedding_dim}-d embeddings, default crop "
        f"{entry.default_crop}; pretrained weights: {weights}"
    )


class BackbonePicker(ComboBox):
    """A combo box of the backbones for objects of ``spatial_dims`` (:func:`backbone_choices`,
    re-read by ``reset_choices``), its tooltip the chosen one's catalogue summary above
    ``help``."""

    def __init__(self, spatial_dims: int, *, label: str, value: str, help: str = "", **kwargs):
        self.spatial_dims = spatial_dims
        self.help = help
        super().__init__(
            label=label,
            choices=lambda _w=None: backbone_choices(spatial_dims),
            value=value,
            **kwargs,
        )
        self.changed.connect(self._describe)
        self._describe()

    def _describe(self, *_) -> None:
        text = describe(self.value)
        self.tooltip = f"{text}\n\n{self.help}" if self.help else text


class CropDefault:
    """Keeps a crop size field at the default of the chosen backbone and the objects' kind
    (:func:`default_crop`) until the user changes it: then their value stays."""

    def __init__(self, field, backbone: str | None = None, spatial_dims: int = 2) -> None:
        self.field = field
        self.value = default_crop(backbone, spatial_dims)  # the default the field was set to
        field.value = self.value

    def follow(self, backbone: str | None, spatial_dims: int) -> None:
        """The backbone or the objects' kind changed: the field takes the new default unless
        the user changed it."""
        new = default_crop(backbone, spatial_dims)
        if self.field.value == self.value:
            self.field.value = new
        self.value = new


def reset_choices_in_order(combo, wanted) -> None:
    """Re-read ``combo``'s choices (its choices callable, which gives ``wanted``) so that they
    show in ``wanted``'s order (magicgui appends new choices after the old ones: a pretrained
    model found later would come last), its value kept when still offered."""
    value = combo.value
    combo.reset_choices()
    if list(combo.choices) != list(wanted):
        combo.native.clear()
        combo.reset_choices()
        if value in combo.choices:
            combo.value = value
