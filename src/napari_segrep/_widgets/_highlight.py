"""A highlight of many segments drawn as a small-palette labels layer over the labels layer.

:class:`~._map_view.MapView` colours segments with a ``DirectLabelColormap`` naming each
coloured label; napari checks every entry of it and re-maps every (u)int32 pixel through a
typed dict, so its cost grows with the number of entries (``benchmarks/map_scale.py``, 102,400
segments in 3200 x 3200 under Xvfb: 50,000 selected -> painted in 941 ms, every label coloured
by cluster -> 1354 ms).  Above :data:`OVERLAY_MIN_ENTRIES` entries the view draws through
:class:`HighlightOverlay` instead: the colours as a uint8/uint16 index image (one numpy gather,
:mod:`._label_colours`) with a colormap of its few palette entries, painted in 0.16-0.21 s
whatever the number of segments.  The labels layer stays the active layer (clicks, values,
painting) with its opacity at 0 while the overlay shows.
"""

from __future__ import annotations

import numpy as np
from napari.layers import Labels

from ._label_colours import index_colormap, indexed_colours, paint_labels

__all__ = ["OVERLAY_KEY", "OVERLAY_MIN_ENTRIES", "HighlightOverlay", "is_overlay"]

#: Metadata key marking the overlay layer (widgets leave such layers out of their choices).
OVERLAY_KEY = "napari_segrep_overlay"
#: A highlight whose colormap would name more labels than this is drawn by the overlay.  The
#: dict colormap costs ~17 us per entry (map_scale.py (e): 1,000 selected -> painted in
#: 93-127 ms, 50,000 -> 941 ms), the overlay 157-207 ms whatever the count: they cross near
#: 5,000 entries (~0.2 s), where the dict path still meets the 200 ms target.
OVERLAY_MIN_ENTRIES = 5_000
_FOLLOWED = ("scale", "translate", "rotate", "shear", "affine")


def is_overlay(layer) -> bool:
    """Whether ``layer`` is a highlight overlay (not a layer of the user's)."""
    return bool(getattr(layer, "metadata", {}).get(OVERLAY_KEY, False))


class HighlightOverlay:
    """The overlay of one labels layer: created on the first :meth:`show`, hidden by
    :meth:`hide` (the labels layer's opacity restored), removed by :meth:`close` or when the
    labels layer is removed from the viewer."""

    def __init__(self, viewer, labels_layer: Labels) -> None:
        self.viewer = viewer
        self.labels_layer = labels_layer
        self.layer: Labels | None = None
        self._index: np.ndarray | None = None  # label value -> palette entry, as shown
        self._opacity: float | None = None  # the user's, while the overlay shows
        self._setting_opacity = False
        self._closed = False
        labels_layer.events.opacity.connect(self._on_opacity)
        labels_layer.events.visible.connect(self._on_visible)
        for name in ("data", "paint"):
            getattr(labels_layer.events, name).connect(self._repaint)
        for name in _FOLLOWED:
            getattr(labels_layer.events, name).connect(self._follow_transform)
        viewer.layers.events.removed.connect(self._on_layer_removed)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def shown(self) -> bool:
        return self._opacity is not None

    def show(self, labels: np.ndarray, colours: np.ndarray, *, selected=None, dimmed) -> bool:
        """Draw ``labels`` in ``colours`` (with ``selected``: only those, the others
        ``dimmed``); False when the colours do not fit a uint16 palette (nothing drawn)."""
        try:
            index, palette = indexed_colours(labels, colours, selected=selected, dimmed=dimmed)
        except ValueError:
            return False
        self._index = index
        layer = self.layer
        if layer is None or layer not in self.viewer.layers:
            self._create(paint_labels(self.labels_layer.data, index), palette)
        else:
            data = np.asarray(layer.data)
            if data.dtype == index.dtype and data.shape == self.labels_layer.data.shape:
                paint_labels(self.labels_layer.data, index, out=data)
                layer.colormap = index_colormap(palette)  # (refreshes)
            else:  # another shape or index dtype (uint8 <-> uint16)
                layer.data = paint_labels(self.labels_layer.data, index)
                layer.colormap = index_colormap(palette)
        if self._opacity is None:
            self._opacity = float(self.labels_layer.opacity)
            self.layer.opacity = self._opacity
            self._set_labels_opacity(0.0)
        self.layer.visible = bool(self.labels_layer.visible)
        return True

    def hide(self) -> None:
        """Hide the overlay (it stays for the next highlight) and restore the opacity."""
        if self.layer is not None and self.layer in self.viewer.layers:
            self.layer.visible = False
        self._index = None
        if self._opacity is not None:
            opacity, self._opacity = self._opacity, None
            self._set_labels_opacity(opacity)

    def close(self) -> None:
        """Hide, remove the overlay layer and unlink."""
        if self._closed:
            return
        self._closed = True
        self.hide()
        layer, self.layer = self.layer, None
        events = self.labels_layer.events
        events.opacity.disconnect(self._on_opacity)
        events.visible.disconnect(self._on_visible)
        for name in ("data", "paint"):
            getattr(events, name).disconnect(self._repaint)
        for name in _FOLLOWED:
            getattr(events, name).disconnect(self._follow_transform)
        self.viewer.layers.events.removed.disconnect(self._on_layer_removed)
        if layer is not None and layer in self.viewer.layers:
            self.viewer.layers.remove(layer)

    # ------------------------------------------------------------------ internals
    def _create(self, data: np.ndarray, palette: np.ndarray) -> None:
        source, layers = self.labels_layer, self.viewer.layers
        selection, active = set(layers.selection), layers.selection.active
        layer = Labels(
            data,
            name=f"{source.name} highlight",
            scale=source.scale,
            translate=source.translate,
            rotate=source.rotate,
            shear=source.shear,
            affine=source.affine,
            blending=source.blending,
            opacity=float(source.opacity),
            colormap=index_colormap(palette),
            metadata={OVERLAY_KEY: True},
        )
        layer.editable = False
        position = layers.index(source) + 1 if source in layers else len(layers)
        layers.insert(position, layer)
        self.layer = layer
        # the labels layer stays the one clicks and the layer controls go to
        layers.selection.clear()
        layers.selection.update(selection or {source})
        layers.selection.active = active if active is not None else source

    def _set_labels_opacity(self, opacity: float) -> None:
        self._setting_opacity = True
        try:
            self.labels_layer.opacity = opacity
        finally:
            self._setting_opacity = False

    def _on_opacity(self, event=None) -> None:
        """The user changed the labels layer's opacity while the overlay shows: the overlay
        takes it (and it is restored when the overlay hides)."""
        if self._setting_opacity or self._opacity is None:
            return
        self._opacity = float(self.labels_layer.opacity)
        if self.layer is not None:
            self.layer.opacity = self._opacity
        self._set_labels_opacity(0.0)

    def _on_visible(self, event=None) -> None:
        if self.layer is not None and self.shown:
            self.layer.visible = bool(self.labels_layer.visible)

    def _follow_transform(self, event=None) -> None:
        if self.layer is not None:
            for name in _FOLLOWED:
                setattr(self.layer, name, getattr(self.labels_layer, name))

    def _repaint(self, event=None) -> None:
        """The labels changed (painting, live mode): repaint with the current colours (new
        label values beyond the table: transparent until the view redraws)."""
        if self._index is None or self.layer is None or not self.shown:
            return
        self.layer.data = paint_labels(self.labels_layer.data, self._index)

    def _on_layer_removed(self, event) -> None:
        if event.value is self.labels_layer:
            self.close()
        elif event.value is self.layer:  # the user removed the overlay: show the labels
            self.layer = None
            self.hide()
