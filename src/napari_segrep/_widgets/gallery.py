"""The "Segment gallery" dock widget: the segments behind a map's points, as thumbnails.

It follows a map, or a table of ``napari-segrep embed`` opened with "Open table..." (images
read from their files as their thumbnails are needed, :mod:`._gallery_table`).  It shows every
segment, the selected points, a cluster, a class (annotated or predicted), the classifier's
"label next" suggestions or the nearest neighbours of one segment in embedding space ("more like
this"), a page of :data:`PAGE` at a time, first / random / most typical (nearest the group's
centroid) first.  Clicking a thumbnail selects its point and centres the view on the segment
(in its frame); chosen thumbnails can be annotated with a class; hovering a map point previews
its segment; the page exports as a PNG montage.

The widget only translates: rows come from :class:`~._gallery_source.GallerySource` (the map's
results models), thumbnails from the engine
(:class:`~napari_segrep.engine.thumbnails.ThumbnailSource`), neighbours from
:class:`~napari_segrep.analysis.neighbours.NeighbourIndex`, computed in a worker thread that
sends thumbnails as they are ready (the grid shows grey placeholders until then; paging and
loading are in :mod:`._gallery_pages`, the Qt grid and preview in :mod:`._gallery_grid`).
"""

from __future__ import annotations

from pathlib import Path

import napari
import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, Label, PushButton, SpinBox
from napari.layers import Points
from napari.utils.notifications import show_error
from qtpy.QtCore import QTimer

from ._common import UserActions, centre_view_on, status_label
from ._gallery_grid import PreviewLabel, ThumbnailGrid
from ._gallery_pages import PAGE, GalleryPages
from ._gallery_source import GallerySource
from ._gallery_table import TableCollection, choose_table, open_table_collection
from ._results import shown_by

__all__ = ["MODES", "ORDERS", "PAGE", "SegmentGalleryWidget"]

_ORDERED = ("selected points", "all segments", "cluster", "class")  # modes with an order
MODES = (*_ORDERED, "label next (least sure)", "more like this")
ORDERS = ("first", "random", "most typical")
#: The hover preview follows the mouse at most this often (ms).
HOVER_MS = 40
NO_MAP = (
    "No map yet: embed segments first (Embed segments); the gallery shows the segments "
    "behind a map's points."
)


class SegmentGalleryWidget(UserActions, GalleryPages, Container):
    """Thumbnails of the segments behind a map's points.

    ``reload()`` shows what ``show`` asks for (returns the worker, None when there is nothing
    to show); ``shown_rows`` are the map rows of the page in order, ``loaded`` says whether
    all its thumbnails are there.
    """

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(labels=True)
        self.viewer = viewer
        self.source: GallerySource | None = None
        self._init_pages()
        self._reference: int | None = None  # the row "more like this" was asked for
        self._shuffle = 0
        self._what = ""  # what the page shows, in words (status line and montage title)
        self._hover_position = None
        self._tables: list[TableCollection] = []  # opened with open_table()
        self.map_input = ComboBox(label="map", choices=self._map_choices)
        self.open_button = PushButton(
            text="Open table...",
            tooltip="browse a table of napari-segrep embed (Parquet, CSV, h5ad): its images are "
            "read from their files, not opened in napari",
        )
        self.show_input = ComboBox(label="show", choices=MODES, value=MODES[0])
        self.which_input = ComboBox(label="which", choices=self._which_choices)
        self.order_input = ComboBox(
            label="order",
            choices=ORDERS,
            value="first",
            tooltip="most typical: nearest the shown segments' centroid in embedding space first",
        )
        from ..analysis.neighbours import METRICS

        self.k_input = SpinBox(label="neighbours", min=1, max=PAGE - 1, value=24)
        self.metric_input = ComboBox(label="distance", choices=METRICS, value="cosine")
        self.size_input = ComboBox(label="thumbnail size", choices=[48, 64, 96, 128], value=64)
        self.masked_input = CheckBox(
            label="segment only (what the encoder sees)",
            value=False,
            tooltip="zero outside the segment, as the embedding's image masking shows it",
        )
        self.previous_button = PushButton(text="< page")
        self.page_label = Label(value="")
        self.next_button = PushButton(text="page >")
        self.refresh_button = PushButton(text="Refresh")
        pager = Container(
            layout="horizontal",
            labels=False,
            widgets=[self.previous_button, self.page_label, self.next_button, self.refresh_button],
        )
        self.extend(
            [
                self.map_input,
                self.open_button,
                self.show_input,
                self.which_input,
                self.order_input,
                self.k_input,
                self.metric_input,
                self.size_input,
                self.masked_input,
                pager,
            ]
        )
        self.grid = ThumbnailGrid()
        self.preview = PreviewLabel(128)
        self.preview_text = Label(value="Hover a map point to preview its segment.")
        self.class_input = ComboBox(label="class", choices=self._class_choices)
        self.annotate_button = PushButton(text="Annotate chosen thumbnails")
        self.like_button = PushButton(text="More like this")
        self.export_button = PushButton(text="Export PNG montage...")
        self.status = status_label()
        below = Container(
            labels=True,
            widgets=[
                self.preview_text,
                self.class_input,
                self.annotate_button,
                self.like_button,
                self.export_button,
                self.status,
            ],
        )
        layout = self.native.layout()
        layout.addWidget(self.grid)
        layout.addWidget(self.preview)
        layout.addWidget(below.native)
        self._below = below
        self._hover_timer = QTimer()
        self._hover_timer.setSingleShot(True)
        self._hover_timer.setInterval(HOVER_MS)
        self._hover_timer.timeout.connect(self._hover)
        self._reload_timer = QTimer()  # selection events of one turn of the loop reload once
        self._reload_timer.setSingleShot(True)
        self._reload_timer.setInterval(0)
        self._reload_timer.timeout.connect(self.reload)

        self.map_input.changed.connect(self._on_map_chosen)
        self.open_button.changed.connect(self._user_action(lambda: self.open_table()))
        self.show_input.changed.connect(self._on_show_chosen)
        for control in (self.which_input, self.order_input, self.k_input, self.metric_input):
            control.changed.connect(self._on_choice_changed)
        self.size_input.changed.connect(self._on_size_chosen)
        self.masked_input.changed.connect(self._on_size_chosen)
        self.previous_button.changed.connect(lambda *_: self.go_to_page(self._page - 1))
        self.next_button.changed.connect(lambda *_: self.go_to_page(self._page + 1))
        self.refresh_button.changed.connect(self._on_refresh)
        self.annotate_button.changed.connect(self._user_action(self.annotate_chosen))
        self.like_button.changed.connect(self._user_action(self.more_like_this))
        self.export_button.changed.connect(self._user_action(lambda: self.export_montage()))
        self.grid.itemSelectionChanged.connect(self._on_thumbnails_chosen)
        self.grid.itemClicked.connect(self._on_thumbnail_clicked)
        viewer.layers.events.inserted.connect(self._on_layers_changed)
        viewer.layers.events.removed.connect(self._on_layers_changed)
        viewer.mouse_move_callbacks.append(self._on_mouse_move)
        self._show_controls()
        self._on_map_chosen()

    # ------------------------------------------------------------------ state
    @property
    def points_layer(self) -> Points | None:
        """The map the gallery follows (None: none, or a table)."""
        value = self.map_input.value
        return value if isinstance(value, Points) else None

    # ------------------------------------------------------------------ following a map
    def _map_choices(self, _widget=None) -> list:
        maps = [la for la in self.viewer.layers if isinstance(la, Points) and shown_by(la)]
        return [(la.name, la) for la in maps] + [(t.name, t) for t in self._tables]

    def _on_layers_changed(self, event=None) -> None:
        # a new map is registered once its layer is drawn, after the insertion: look then
        QTimer.singleShot(0, self._refresh_maps)

    def _refresh_maps(self) -> None:
        self._tables = [t for t in self._tables if not t.closed]
        try:
            before = self.map_input.value
            self.map_input.reset_choices()
            maps = [value for _, value in self._map_choices()]
            if maps and (before is None or before not in maps):
                self.map_input.value = maps[-1]  # the newest map
            self._on_map_chosen()
        except RuntimeError:  # the widget was closed meanwhile
            pass

    def _on_map_chosen(self, *_) -> None:
        value = self.map_input.value
        shown = value if isinstance(value, TableCollection) or value is None else shown_by(value)
        if self.source is not None and shown is self.source.shown:
            return
        self._follow(shown)

    def _follow(self, shown) -> None:
        if self.source is not None:
            self.source.connect(
                selection=self._on_selection,
                changed=self._on_rows_changed,
                closed=self._on_closed,
                connect=False,
            )
        self.source = GallerySource(shown) if shown is not None else None
        if self.source is not None:
            self.source.connect(
                selection=self._on_selection, changed=self._on_rows_changed, closed=self._on_closed
            )
        self._reference = None
        self._reset_choices()
        self.reload()

    def _on_closed(self, event=None) -> None:
        """The results were dropped (embedded again): follow what the map shows next."""
        QTimer.singleShot(0, self._refresh_maps)
        self._follow(None)

    def _reset_choices(self) -> None:
        for control in (self.which_input, self.class_input):
            with control.changed.blocked():
                control.reset_choices()

    # ------------------------------------------------------------------ what to show
    def _which_choices(self, _widget=None) -> list:
        source, mode = self.source, self.show_input.value
        if source is None:
            return []
        if mode == "cluster":
            return [(f"cluster {c}", c) for c in source.clusters()]
        if mode == "class":
            return source.class_names()
        return []

    def _class_choices(self, _widget=None) -> list:
        names = self.source.class_names() if self.source is not None else []
        return [(n, n) for n in names] + [("(remove the annotation)", "")]

    def _show_controls(self) -> None:
        mode = self.show_input.value
        self.which_input.visible = mode in ("cluster", "class")
        self.order_input.visible = mode in _ORDERED
        self.k_input.visible = self.metric_input.visible = mode == "more like this"

    def _on_show_chosen(self, *_) -> None:
        self._show_controls()
        self._reset_choices()
        self.reload()

    def _on_choice_changed(self, *_) -> None:
        if self.order_input.value == "random":
            self._shuffle += 1
        self.reload()

    def _on_refresh(self, *_) -> None:
        self._shuffle += 1
        self._reset_choices()
        self.reload()

    def _on_size_chosen(self, *_) -> None:
        self.grid.set_size(int(self.size_input.value))
        self._request_page(self._page, rows=self._rows, notes=self._notes)

    def _on_selection(self, event=None) -> None:
        if self.show_input.value == "selected points":
            self._reload_timer.start()

    def _on_rows_changed(self, event=None) -> None:
        """Rows, map or classes changed: new rows reload; otherwise the captions and class
        frames follow (the rows shown stay, so the page does not jump under the user)."""
        if self.source is None:
            return
        if self.source.rows_key() != self._rows_key:
            self.reload()
            return
        self._reset_choices()
        self._decorate(range(len(self.shown_rows)))

    def reload(self, *_):
        """Show what ``show`` asks for from its first page; returns the worker (None when there
        is nothing to show)."""
        self._reload_timer.stop()
        source, mode = self.source, self.show_input.value
        self._rows_key = source.rows_key() if source is not None else None
        if source is None:
            return self._show_nothing(NO_MAP)
        order = self.order_input.value
        if mode == "more like this":
            return self._show_neighbours()
        if mode == "selected points" and source.is_table:
            return self._show_nothing(
                "A table has no map to select in: show all segments, a cluster or a class."
            )
        if mode == "all segments":
            rows, what, empty = np.arange(len(source), dtype=np.int64), "all segments", ""
        elif mode == "selected points":
            rows = np.array(sorted(source.selection), np.int64)
            what, empty = "selected points", "Select points in the map (or choose what to show)."
        elif mode == "cluster":
            cluster = self.which_input.value
            if cluster is None:
                return self._show_nothing("No clusters yet: press Cluster in Embed segments.")
            rows, what, empty = source.rows_in_cluster(cluster), f"cluster {cluster}", ""
        elif mode == "class":
            name = self.which_input.value
            if name is None:
                return self._show_nothing("No classes yet: add them in Classify segments.")
            rows, what, empty = source.rows_of_class(name), f"class {name}", ""
        else:
            rows, order = source.suggested_rows(), "least sure first"
            what, empty = "label next", "No predictions yet: train a classifier first."
        if not len(rows):
            return self._show_nothing(empty or f"No segments in {what}.")
        self._what = f"{what} ({order})"
        if order == "random":
            rows = np.random.default_rng(self._shuffle).permutation(rows)
        elif order == "most typical":
            metric = self.metric_input.value

            def typical(rows=rows):
                index = source.neighbour_index(metric)
                found, _ = index.typical(rows, k=len(rows))
                return found, {}

            return self._request_page(0, order=typical)
        return self._request_page(0, rows=rows)

    def _show_neighbours(self):
        source, row = self.source, self._reference
        if row is None or row >= len(source):
            return self._show_nothing(
                "Click a thumbnail (or select a point), then press More like this."
            )
        k, metric = int(self.k_input.value), self.metric_input.value
        label = source.describe([row]).iloc[0]
        self._what = f"{k} nearest to label {label['label']} of {label['image']} ({metric})"

        def nearest():
            found, dist = source.neighbour_index(metric).query(row, k=k)
            notes = {int(r): f"d {d:.3g}" for r, d in zip(found, dist, strict=True)}
            notes[row] = "query"
            return np.concatenate([[row], found]).astype(np.int64), notes

        return self._request_page(0, order=nearest)

    def more_like_this(self) -> None:
        """Show the nearest neighbours of the clicked thumbnail (or of the first selected point)."""
        if self.source is None:
            raise RuntimeError(NO_MAP)
        current = self.grid.currentItem()
        if current is not None and current.isSelected():
            row = self.grid.row_of(current)
        elif self.source.selection:
            row = min(self.source.selection)
        else:
            raise ValueError("Click a thumbnail or select a point in the map first.")
        self._reference = int(row)
        if self.show_input.value == "more like this":
            self.reload()
        else:
            self.show_input.value = "more like this"

    # ------------------------------------------------------------------ going to a segment
    def _on_thumbnails_chosen(self) -> None:
        """Chosen thumbnails select their points (the gallery keeps what it shows)."""
        if self.source is not None:
            self.source.select_rows(self.grid.chosen_rows(), quiet_for=self._on_selection)

    def _on_thumbnail_clicked(self, item) -> None:
        if self.source is not None:
            self.go_to(self.grid.row_of(item), select=False)

    def go_to(self, row: int, *, select: bool = True) -> None:
        """Centre the view on the segment of map row ``row`` (in its frame; a 3D object on
        its middle plane) and, with ``select``, select its point."""
        source = self.source
        if select:
            source.select_rows([row], quiet_for=self._on_selection)
        if source.is_table:
            name = Path(source.shown.image_file(row)).name
            self.status.value = f"{name} is not open in the viewer: the gallery reads its file."
            return
        layer, point = source.place(row)
        if layer is None or layer not in self.viewer.layers:
            self.status.value = "Its labels layer is not in the viewer: its point is selected."
            return
        centre_view_on(self.viewer, point)
        if not layer.visible:
            self.status.value = f"{layer.name} is hidden: show it to see the segment."

    # ------------------------------------------------------------------ tables
    def open_table(self, path=None) -> TableCollection | None:
        """Open a table of ``napari-segrep embed`` (a file dialog when ``path`` is None) and
        follow it: every segment (or its clusters) from the image files, read as needed.
        Returns the :class:`~._gallery_table.TableCollection` (None: cancelled)."""
        path = choose_table(self.native) if path is None else path
        if path is None:
            return None
        table = open_table_collection(path)
        for old in [t for t in self._tables if t.path == table.path]:  # opened again: re-read
            self._tables.remove(old)
            old.close()
        self._tables.append(table)
        has_clusters = any("cluster" in m.table for m in table.members)
        with self.show_input.changed.blocked():
            self.show_input.value = "cluster" if has_clusters else "all segments"
        self._show_controls()
        with self.map_input.changed.blocked():
            self.map_input.reset_choices()
            self.map_input.value = table
        self._on_map_chosen()
        return table

    # ------------------------------------------------------------------ hover preview
    def _on_mouse_move(self, viewer, event) -> None:
        self._hover_position = tuple(event.position)
        if not self._hover_timer.isActive():
            self._hover_timer.start()

    def _hover(self) -> None:
        points, position = self.points_layer, self._hover_position
        if points is None or position is None or self.source is None or not points.visible:
            return
        try:
            index = points.get_value(position, world=True)
        except (IndexError, ValueError):  # a position napari cannot place in the layer
            return
        if index is not None and int(index) != self.preview.row:
            self.preview_row(int(index))

    def preview_row(self, row: int) -> None:
        """Show map row ``row``'s segment in the preview (computed here: one thumbnail)."""
        source = self.source
        (part,) = source.requests([row])
        frames = part.frames
        thumb = part.source.thumbnails(
            part.ids, frame=frames, size=self.preview.width(), masked=self.masked_input.value
        )[0]
        self.preview.show_thumbnail(row, thumb)
        caption, _ = self._captions([row])
        self.preview_text.value = caption[0].replace("\n", ": ")

    # ------------------------------------------------------------------ annotating
    def annotate_chosen(self, name: str | None = None) -> None:
        """Annotate the chosen thumbnails' segments with ``name`` (default: the class chosen
        below the grid; ``""``: remove their annotation)."""
        if self.source is None:
            raise RuntimeError(NO_MAP)
        rows = self.grid.chosen_rows()
        if not rows:
            raise ValueError("Choose thumbnails first: click one, Ctrl/Shift-click several.")
        name = self.class_input.value if name is None else name
        if name is None:
            raise ValueError("No classes yet: add them in Classify segments.")
        self.source.annotate(rows, name or None)
        what = f"as {name}" if name else "(annotation removed)"
        self.status.value = f"{len(rows)} segments annotated {what}."

    # ------------------------------------------------------------------ errors and closing
    def _on_error(self, exc: BaseException) -> None:
        from ..errors import Cancelled

        if isinstance(exc, Cancelled):
            return
        self.status.value = f"Error: {exc}"
        show_error(f"Segment gallery: {exc}")

    def close(self) -> None:
        self._hover_timer.stop()
        self._reload_timer.stop()
        self._pending = None
        if self.job is not None:
            self.job.cancel()
        if self._on_mouse_move in self.viewer.mouse_move_callbacks:
            self.viewer.mouse_move_callbacks.remove(self._on_mouse_move)
        self.viewer.layers.events.inserted.disconnect(self._on_layers_changed)
        self.viewer.layers.events.removed.disconnect(self._on_layers_changed)
        self._follow(None)
        for table in self._tables:
            table.close()
        super().close()
