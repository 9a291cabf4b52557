"""Views of a :class:`~._results.SegmentResults`: the map (a Points layer beside the image) and
the labels layer (its ``features``, the highlight of selected segments, clicks on segments).

Both only draw what the results model holds and turn user actions (selecting points, clicking
a segment, setting ``selected_label``) into model changes; the model's events redraw them.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from napari.layers import Labels, Points
from napari.utils.colormaps import DirectLabelColormap
from qtpy.QtCore import QTimer

from . import _highlight as overlay
from ._common import on_click, show_segment_planes, shown_index
from ._results import ANNOTATION, PREDICTION_COLUMNS, SegmentResults, register_map

__all__ = ["MapView", "class_colours"]

DIM_ALPHA = 0.15
#: The colour of the segments not selected while some are.
DIMMED = np.array([0.6, 0.6, 0.6, DIM_ALPHA])
MAP_MARGIN = 0.05
#: Segments with neither an annotation nor a prediction, coloured by class.
UNCLASSIFIED = np.array([0.5, 0.5, 0.5, 0.6])
_PLAIN = ("the labels layer's own colours",)
_TURN_MS = 15
#: Class changes within this many ms are drawn together (a click's annotation and its
#: predictions, when training is quick).
CLASS_REDRAW_MS = 120
#: The labels layer's features follow class changes after this many ms without one.
FEATURES_IDLE_MS = 1000


def class_colours(results: SegmentResults) -> np.ndarray:
    """Each row's colour by class: its annotation's, else its predicted class's (fainter when
    the model is unsure), else grey."""
    table, palette = results.table, results.class_colours
    out = np.tile(UNCLASSIFIED, (len(table), 1))
    if "class_predicted" in table:
        predicted = table["class_predicted"].to_numpy(dtype=object)
        sure = np.clip(table["class_probability"].to_numpy(float), 0, 1)
        for name, colour in palette.items():
            rows = predicted == name
            out[rows, :3] = colour[:3]
            out[rows, 3] = 0.35 + 0.65 * sure[rows]
    annotated = results.annotations
    for name, colour in palette.items():
        out[annotated == name] = (*colour[:3], 1.0)
    return out


def _single_shot(ms: int, callback) -> QTimer:
    timer = QTimer()
    timer.setSingleShot(True)
    timer.setInterval(ms)
    timer.timeout.connect(callback)
    return timer


class MapView:
    """Show one results model: a Points layer "<labels> map" and the labels layer, linked both
    ways.  ``attach(results)`` draws and links; ``detach()`` restores the labels layer's colours
    and unlinks (layers stay)."""

    def __init__(self, viewer) -> None:
        self.viewer = viewer
        self.results: SegmentResults | None = None
        self.points_layer: Points | None = None
        self._original_colormap = None
        self._box: tuple[np.ndarray, np.ndarray] | None = None
        self._highlighted: tuple | None = None  # what the labels layer's colours now show
        self._unrevealed: Points | None = None  # a new map layer, shown in the next turn
        self._overlay: overlay.HighlightOverlay | None = None  # highlights of many segments
        # class changes come in bursts (an annotation, then its predictions a moment later):
        # colours are redrawn once per burst, the labels layer's features once it is over
        self._recolour_timer = _single_shot(CLASS_REDRAW_MS, self._redraw_classes)
        self._features_timer = _single_shot(FEATURES_IDLE_MS, self._flush_layer_features)
        viewer.dims.events.current_step.connect(self._emphasise_frame)

    @property
    def settled(self) -> bool:
        """Whether everything drawn so far is on screen: a new map shows its points one turn
        of the event loop after the results arrive (everything else at once)."""
        return self._unrevealed is None

    def _reveal_later(self, layer: Points) -> None:
        """Show ``layer`` (added hidden) in a turn of the event loop of its own.

        A new map costs napari ~0.15 s to add the points layer and ~0.15 s to draw it the first
        time (its shaders, with software OpenGL): in one turn that froze the viewer for 0.3 s.
        (A real timer, not a zero one, which Qt runs with the posted events of the same turn.)
        """
        if self._unrevealed is not None:  # an earlier one still waiting: show it now
            self._reveal()
        self._unrevealed = layer
        QTimer.singleShot(_TURN_MS, self._reveal)

    def _reveal(self) -> None:
        layer, self._unrevealed = self._unrevealed, None
        if layer is not None and layer in self.viewer.layers:
            layer.visible = True

    @property
    def labels_layer(self) -> Labels | None:
        return self.results.labels_layer if self.results is not None else None

    # ------------------------------------------------------------------ attach / detach
    def attach(self, results: SegmentResults) -> None:
        """Draw ``results`` (reusing this view's points layer when it shows the same labels
        layer) and link the layers."""
        same_layer = self.labels_layer is results.labels_layer
        self.detach(keep_points=same_layer)
        self.results = results
        self._box = None
        self._highlighted = _PLAIN  # what the layer shows: its colormap, kept below
        layer = results.labels_layer
        self._original_colormap = layer.colormap
        events = results.events
        events.table.connect(self._on_table_changed)
        events.map.connect(self._on_map_changed)
        events.selection.connect(self._on_selection_changed)
        events.colour_by.connect(self._on_colour_by_changed)
        events.classes.connect(self._on_classes_changed)
        events.closed.connect(self._on_results_closed)
        layer.events.selected_label.connect(self._on_selected_label_changed)
        layer.mouse_drag_callbacks.append(self._on_labels_click)
        self._on_table_changed()

    def detach(self, *, keep_points: bool = False) -> None:
        self._recolour_timer.stop()
        self._features_timer.stop()
        results = self.results
        if results is not None:
            events = results.events
            for emitter, callback in (
                (events.table, self._on_table_changed),
                (events.map, self._on_map_changed),
                (events.selection, self._on_selection_changed),
                (events.colour_by, self._on_colour_by_changed),
                (events.classes, self._on_classes_changed),
                (events.closed, self._on_results_closed),
            ):
                emitter.disconnect(callback)
            layer = results.labels_layer
            if layer is not None:
                layer.events.selected_label.disconnect(self._on_selected_label_changed)
                if self._on_labels_click in layer.mouse_drag_callbacks:
                    layer.mouse_drag_callbacks.remove(self._on_labels_click)
                self._set_labels_colormap(self._original_colormap)
        if self._overlay is not None:
            self._overlay.close()
            self._overlay = None
        self.results = None
        self._original_colormap = None
        self._highlighted = None
        if not keep_points:
            self.release_points()

    def release_points(self) -> Points | None:
        """Stop drawing into the current points layer (it stays in the viewer, unlinked) and
        return it; the next results get a new one."""
        points, self.points_layer = self.points_layer, None
        if points is not None:
            points.selected_data.events.items_changed.disconnect(self._on_points_selection_changed)
        return points

    def keep_as_before(self) -> Points | None:
        """Keep the current map as its own layer "... (before)", moved below the next map so
        both stay in view, and unlinked; return it (None when there is no map)."""
        labels_layer, before = self.labels_layer, self.release_points()
        if before is None or before not in self.viewer.layers or labels_layer is None:
            return None
        before.name = f"{before.name} (before)"
        before.selected_data = set()
        h = labels_layer.data.shape[-2] * float(labels_layer.scale[-2])
        before.translate = (h * (1 + MAP_MARGIN), 0)
        return before

    def agreement_with(self, before: Points | None, *, k: int = 10) -> float | None:
        """The k-nearest-neighbour agreement of the segments shared by ``before`` (a map kept
        by :meth:`keep_as_before`) and the current map; also in the map's metadata."""
        from ..analysis.reduce import neighbour_agreement
        from ..analysis.tables import pair_by_label

        points = self.points_layer
        if before is None or before not in self.viewer.layers or points is None:
            return None
        a, b = pair_by_label(
            before.features["label"].to_numpy(), before.data, self.results.labels, points.data
        )
        if len(a) < 3:
            return None
        agreement = neighbour_agreement(a, b, k=k)
        points.metadata["neighbour_agreement_with_before"] = agreement
        return agreement

    def forget_layer(self, layer) -> None:
        """A layer was removed from the viewer: stop using it."""
        if layer is self.points_layer:
            self.detach()
        elif layer is self.labels_layer:
            self.detach(keep_points=True)

    def _on_results_closed(self, event=None) -> None:
        self.detach(keep_points=True)

    # ------------------------------------------------------------------ drawing
    def _on_table_changed(self, event=None) -> None:
        """Rows or columns changed: the labels layer's features, the points, the colours."""
        self._recolour_timer.stop()  # all drawn now
        self._features_timer.stop()
        self._set_layer_features()
        self._draw_points(new_map=self.points_layer is None or self._box is None)

    def _set_layer_features(self) -> None:
        results = self.results
        features = results.table.copy()
        features.insert(0, "index", results.labels)  # napari's key for label features
        results.labels_layer.features = features  # reassign: napari emits its event

    def _on_classes_changed(self, event=None) -> None:
        """Annotations or predictions changed (same rows): colours (when coloured by class)
        and the points' features at the end of the burst (:data:`CLASS_REDRAW_MS`), the labels
        layer's features once the changes stop (:data:`FEATURES_IDLE_MS`; napari takes 0.25 s
        to take 2,000 rows of 520 columns).  :meth:`flush` does both at once."""
        self._recolour_timer.start()
        self._features_timer.start()

    def _redraw_classes(self) -> None:
        if self.results is None:
            return
        if self.points_layer is not None:
            self.points_layer.features = self._point_features()
        self._on_colour_by_changed()

    def _flush_layer_features(self) -> None:
        """The class columns into the labels layer's features: in place when only their
        values changed (napari re-validates every column of a new table: 0.25 s for 2,000 rows
        of 520 columns), else a new table."""
        results, layer = self.results, self.labels_layer
        if results is None or layer is None:
            return
        features, table = layer.features, results.table
        columns = [c for c in table.columns if c not in features.columns]
        stale = [c for c in features.columns if c != "index" and c not in table.columns]
        same_rows = len(features) == len(table) and np.array_equal(
            features["label"].to_numpy(), results.labels
        )
        if columns or stale or not same_rows:
            self._set_layer_features()
            return
        for column in (ANNOTATION, *PREDICTION_COLUMNS):
            if column in table:
                features[column] = table[column].to_numpy()
        for column in table.columns:
            if str(column).startswith("prob_"):
                features[column] = table[column].to_numpy()
        layer.events.features()  # what a new table would emit

    def flush(self) -> None:
        """Draw pending class changes now (colours, points' and labels layer's features)."""
        for timer, draw in (
            (self._recolour_timer, self._redraw_classes),
            (self._features_timer, self._flush_layer_features),
        ):
            if timer.isActive():
                timer.stop()
                draw()

    @property
    def classes_drawn(self) -> bool:
        """Whether every class change so far is on screen and in the layers' features."""
        return not (self._recolour_timer.isActive() or self._features_timer.isActive())

    def _point_features(self) -> pd.DataFrame:
        """What hovering a point shows: its label (frame, cluster, class, probability)."""
        table = self.results.table
        features = pd.DataFrame({"label": self.results.labels})
        for column in ("frame", "cluster", ANNOTATION, *PREDICTION_COLUMNS):
            if column in table:
                features[column] = table[column].to_numpy()
        return features

    def _on_map_changed(self, event=None) -> None:
        self._draw_points(new_map=True)

    def _draw_points(self, *, new_map: bool) -> None:
        results = self.results
        if new_map:  # a new map gets its own box; live updates land on the current one
            c = np.nan_to_num(results.coords)
            self._box = (c.min(0), c.max(0)) if len(c) else (np.zeros(2), np.ones(2))
        data = self.world_coordinates(results.coords)
        features = self._point_features()
        points = self.points_layer
        if points is None or points not in self.viewer.layers:
            self.points_layer = self.viewer.add_points(
                data,
                features=features,
                name=f"{results.labels_layer.name} map",
                size=self._point_size(),
                border_width=0.05,
                border_color="white",
                metadata={"map_method": results.map_method},
                visible=False,  # drawn for the first time in a turn of its own
            )
            self._reveal_later(self.points_layer)
            self.points_layer.selected_data.events.items_changed.connect(
                self._on_points_selection_changed
            )
        else:
            with points.selected_data.events.items_changed.blocked():
                points.selected_data = set()
                points.data = data
            points.features = features
            points.size = self._point_size()
            points.metadata["map_method"] = results.map_method
        register_map(self.points_layer, results)
        self._on_selection_changed()
        self._on_colour_by_changed()

    def world_coordinates(self, coords: np.ndarray) -> np.ndarray:
        """Map coordinates placed beside the image: scaled to its height, to the right of it."""
        layer = self.labels_layer
        h, w = layer.data.shape[-2:]
        scale = np.asarray(layer.scale[-2:], float)
        translate = np.asarray(layer.translate[-2:], float)
        lo, hi = self._box
        unit = (np.nan_to_num(np.asarray(coords, float)) - lo) / np.maximum(hi - lo, 1e-9)
        height = h * scale[0]
        y = translate[0] + unit[:, 1] * height
        x = translate[1] + w * scale[1] * (1 + MAP_MARGIN) + unit[:, 0] * height
        return np.stack([y, x], axis=1)

    def _point_size(self) -> float:
        layer = self.labels_layer
        return max(layer.data.shape[-2:]) * float(layer.scale[-1]) / 50

    # ------------------------------------------------------------------ colours
    def _colours(self) -> np.ndarray:
        results = self.results
        if results.colour_by == "cluster":
            from napari.utils.colormaps import label_colormap

            clusters = results.table["cluster"].to_numpy()
            out = np.asarray(label_colormap(49, seed=0.5).map(clusters), float).reshape(-1, 4)
            out[clusters == 0] = (0.5, 0.5, 0.5, 1.0)
            return out
        if results.colour_by == "class":
            return class_colours(results)
        cmap = self._original_colormap
        return np.asarray(cmap.map(results.labels), float).reshape(-1, 4)

    def _on_colour_by_changed(self, event=None) -> None:
        if self.points_layer is None:
            return
        self.points_layer.face_color = self._colours()
        self._highlight()
        self._emphasise_frame()

    def _highlight(self) -> None:
        """Selected segments in their colours, the others in one dim grey; none selected:
        normal view (or cluster colours).

        The colormap names only the selected segments (the others take its default colour):
        napari checks every colour of a new colormap, 0.12 s for 10,000 segments, on every
        selection.  Nothing is redrawn when that is what the layer already shows (a new
        colormap makes napari recolour the whole image: 0.05 s for 1700x1700 labels, 0.2 s
        for 3600x3600).  A colormap of more than :data:`~._highlight.OVERLAY_MIN_ENTRIES`
        labels would be napari's slow path: those highlights are drawn by the overlay."""
        results = self.results
        selected = results.selected_labels()
        plain = not selected and results.colour_by == "label"  # the layer's own colours
        shown = _PLAIN if plain else (results.table, results.colour_by, frozenset(selected))
        last = self._highlighted
        if last is _PLAIN or shown is _PLAIN:
            if last is shown:
                return
        elif last is not None and last[0] is shown[0] and last[1:] == shown[1:]:
            return
        self._highlighted = shown
        if plain:
            self._set_labels_colormap(self._original_colormap)
            return
        labels, colours = results.labels, self._colours()
        if selected:
            rows = np.flatnonzero(np.isin(labels, list(selected)))
            if len(rows) > overlay.OVERLAY_MIN_ENTRIES and self._show_overlay(
                labels, colours, labels[rows]
            ):
                return
            labels, colours = labels[rows], colours[rows]
        elif len(labels) > overlay.OVERLAY_MIN_ENTRIES and self._show_overlay(labels, colours):
            return
        colour_dict = {None: DIMMED if selected else np.zeros(4), 0: np.zeros(4)}
        colour_dict.update(zip(labels.tolist(), colours, strict=True))
        self._set_labels_colormap(DirectLabelColormap(color_dict=colour_dict))

    def _show_overlay(self, labels, colours, selected=None) -> bool:
        """Draw the highlight through the overlay (:mod:`._highlight`: a colormap naming
        more than :data:`~._highlight.OVERLAY_MIN_ENTRIES` labels is napari's slow path)."""
        if self._overlay is None or self._overlay.closed:
            self._overlay = overlay.HighlightOverlay(self.viewer, self.labels_layer)
        return self._overlay.show(labels, colours, selected=selected, dimmed=DIMMED)

    def _set_labels_colormap(self, colormap) -> None:
        layer = self.labels_layer
        if self._overlay is not None:  # the labels layer's own colours show again
            self._overlay.hide()
        if layer is None or colormap is None:
            return
        # napari re-emits selected_label when the colormap changes: not a user selection
        with layer.events.selected_label.blocker():
            layer.colormap = colormap

    def _emphasise_frame(self, event=None) -> None:
        """For time-lapses: points of the frame shown large and opaque, the others small."""
        results, points = self.results, self.points_layer
        if results is None or points is None or "frame" not in results.table:
            return
        layer = results.labels_layer
        if layer is None:
            return
        shown = shown_index(self.viewer, layer, 0)
        current = results.table["frame"].to_numpy() == shown
        base = self._point_size()
        points.size = np.where(current, base * 1.6, base * 0.6)
        colours = np.array(points.face_color)
        colours[:, 3] = np.where(current, 1.0, 0.35)
        points.face_color = colours

    # ------------------------------------------------------------------ linking
    def _on_points_selection_changed(self, event=None) -> None:
        results = self.results
        if results is None:
            return
        results.select_rows(self.points_layer.selected_data)
        if len(results.selection) == 1 and results.labels_layer is not None:
            # a 3D object outside the plane shown: go to its middle plane to see it
            (row,) = results.selection
            show_segment_planes(
                self.viewer, results.labels_layer, results.run.layout, results.table.iloc[row]
            )

    def _on_selection_changed(self, event=None) -> None:
        """The model's selection: the points' selection, the highlight, and for one segment
        the labels layer's selected label."""
        results, points = self.results, self.points_layer
        if points is not None and set(points.selected_data) != set(results.selection):
            points.selected_data = set(results.selection)
        self._highlight()
        selected = results.selected_labels()
        layer = results.labels_layer
        if len(selected) == 1 and layer.selected_label != next(iter(selected)):
            layer.selected_label = next(iter(selected))

    def _on_selected_label_changed(self, event=None) -> None:
        """The user set the labels layer's selected label: select exactly its point(s)."""
        results = self.results
        label = int(results.labels_layer.selected_label)
        if results.selected_labels() != {label}:
            results.select_labels([label])

    def _on_labels_click(self, layer, event):
        """A click on a segment (pan/zoom mode) selects it, and so its point; on the background
        it clears the selection.  In 2D slicing the segment in the plane shown; in the 3D view
        the first object along the ray through the click (a drag turns the camera)."""
        if layer.mode != "pan_zoom" or self.results is None:
            return None
        return on_click(layer, event, self._on_label_picked)

    def _on_label_picked(self, layer, label: int) -> None:
        if self.results is None:
            return
        if label > 0:
            self.results.select_labels([label])
        else:
            self.results.select_rows(())
