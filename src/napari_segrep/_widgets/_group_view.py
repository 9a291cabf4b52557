"""Views of a :class:`~._group.ResultsGroup`: one Points layer for the rows of every labels
layer embedded together, and each labels layer's features and highlight.

Each labels layer is drawn by a :class:`SegmentsView` (the labels side of
:class:`~._map_view.MapView`: features, highlight of its selected segments, clicks and
``selected_label``), which changes its own results; the group turns that into one selection
across the layers, and this view draws the points from the group.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from qtpy.QtCore import QTimer

from ._group import ResultsGroup
from ._map_view import _TURN_MS, MAP_MARGIN, MapView
from ._results import ANNOTATION, PALETTE, PREDICTION_COLUMNS, register_map

__all__ = ["GroupMapView", "SegmentsView"]


class SegmentsView(MapView):
    """A :class:`~._map_view.MapView` without points: one labels layer of a group."""

    def _draw_points(self, *, new_map: bool) -> None:
        self._on_selection_changed()
        self._highlight()

    def _on_colour_by_changed(self, event=None) -> None:
        if self.results is not None:
            self._highlight()


class GroupMapView:
    """The map of a group: a Points layer "<n> images map" beside the images, linked both ways
    with every member's labels layer.  ``attach(group)`` draws and links; ``detach()`` unlinks
    (layers stay)."""

    def __init__(self, viewer) -> None:
        self.viewer = viewer
        self.group: ResultsGroup | None = None
        self.views: list[SegmentsView] = []
        self.points_layer = None
        self._drawn: np.ndarray | None = None  # the coordinates the points show
        self._unrevealed = None

    @property
    def settled(self) -> bool:
        """Whether the new points layer is shown (one turn of the event loop after attach)."""
        return self._unrevealed is None

    # ------------------------------------------------------------------ attach / detach
    def attach(self, group: ResultsGroup) -> None:
        self.detach()
        self.group = group
        for member in group.members:
            view = SegmentsView(self.viewer)
            view.attach(member)
            self.views.append(view)
        ev = group.events
        ev.selection.connect(self._on_selection_changed)
        ev.colour_by.connect(self._on_colour_by_changed)
        ev.points.connect(self._draw_points)
        ev.closed.connect(self._on_group_closed)
        self._draw_points()

    def detach(self) -> None:
        group = self.group
        if group is not None:
            ev = group.events
            ev.selection.disconnect(self._on_selection_changed)
            ev.colour_by.disconnect(self._on_colour_by_changed)
            ev.points.disconnect(self._draw_points)
            ev.closed.disconnect(self._on_group_closed)
        for view in self.views:
            view.detach()
        self.group, self.views, self._drawn = None, [], None
        points, self.points_layer = self.points_layer, None
        if points is not None:
            points.selected_data.events.items_changed.disconnect(self._on_points_selection_changed)

    def forget_layer(self, layer) -> None:
        """A layer was removed from the viewer: stop using it (a member's labels layer ends
        the group; the other layers keep their results)."""
        if self.group is None:
            return
        if self.points_layer is not None and layer == self.points_layer:
            self.detach()
            return
        for member in list(self.group.members):
            if member.labels_layer is None or member.labels_layer == layer:
                member.close()  # closes the group too: the view detaches

    def _on_group_closed(self, event=None) -> None:
        self.detach()

    def flush(self) -> None:
        for view in self.views:
            view.flush()

    # ------------------------------------------------------------------ drawing
    def _features(self) -> pd.DataFrame:
        """What hovering a point shows: its image and label (frame, cluster, class...)."""
        table = self.group.table
        columns = ["image", "label", "frame", "cluster", ANNOTATION, *PREDICTION_COLUMNS]
        return table[[c for c in columns if c in table]].reset_index(drop=True)

    def _draw_points(self, event=None) -> None:
        group = self.group
        coords = group.coords
        features = self._features()
        points = self.points_layer
        if points is None or points not in self.viewer.layers:
            self.points_layer = self.viewer.add_points(
                self.world_coordinates(coords),
                features=features,
                name=f"{len(group.members)} images map",
                size=self._point_size(),
                border_width=0.05,
                border_color="white",
                metadata={"map_method": group.map_method, "images": list(group.names)},
                visible=False,  # drawn for the first time in a turn of its own
            )
            self._unrevealed = self.points_layer
            QTimer.singleShot(_TURN_MS, self._reveal)
            self.points_layer.selected_data.events.items_changed.connect(
                self._on_points_selection_changed
            )
        else:
            if self._drawn is None or not np.array_equal(coords, self._drawn):
                with points.selected_data.events.items_changed.blocked():
                    points.selected_data = set()
                    points.data = self.world_coordinates(coords)
            points.features = features
            points.metadata["map_method"] = group.map_method
        register_map(self.points_layer, group)
        self._drawn = coords
        self._on_selection_changed()
        self._on_colour_by_changed()

    def _reveal(self) -> None:
        layer, self._unrevealed = self._unrevealed, None
        if layer is not None and layer in self.viewer.layers:
            layer.visible = True

    def _extent(self) -> tuple[np.ndarray, float, float]:
        """Top-left corner of the first labels layer, and the tallest and widest layer's
        height and width (world units): the layers lie on top of each other in the viewer."""
        layers = [m.labels_layer for m in self.group.members if m.labels_layer is not None]
        sizes = [np.asarray(la.data.shape[-2:]) * np.asarray(la.scale[-2:]) for la in layers]
        h, w = np.max(sizes, axis=0)
        return np.asarray(layers[0].translate[-2:], float), float(h), float(w)

    def world_coordinates(self, coords: np.ndarray) -> np.ndarray:
        """Map coordinates placed to the right of the images, scaled to their height."""
        c = np.nan_to_num(np.asarray(coords, float))
        lo, hi = (c.min(0), c.max(0)) if len(c) else (np.zeros(2), np.ones(2))
        unit = (c - lo) / np.maximum(hi - lo, 1e-9)
        corner, h, w = self._extent()
        y = corner[0] + unit[:, 1] * h
        x = corner[1] + w * (1 + MAP_MARGIN) + unit[:, 0] * h
        return np.stack([y, x], axis=1)

    def _point_size(self) -> float:
        _, h, w = self._extent()
        return max(h, w) / 50

    def colours(self) -> np.ndarray:
        """Each point's colour: its image's, or its segment's (label, cluster or class)."""
        group = self.group
        if group.colour_by == "image":
            palette = [PALETTE[i % len(PALETTE)] for i in range(len(group.members))]
            return np.repeat(np.asarray(palette, float), group.sizes, axis=0)
        return np.concatenate([view._colours() for view in self.views])

    def _on_colour_by_changed(self, event=None) -> None:
        if self.points_layer is not None and self.group is not None:
            self.points_layer.face_color = self.colours()

    # ------------------------------------------------------------------ linking
    def _on_points_selection_changed(self, event=None) -> None:
        if self.group is not None:
            self.group.select_rows(self.points_layer.selected_data)

    def _on_selection_changed(self, event=None) -> None:
        points, group = self.points_layer, self.group
        if points is not None and set(points.selected_data) != set(group.selection):
            points.selected_data = set(group.selection)
