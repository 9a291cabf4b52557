"""What the segment gallery shows, whatever the map: the rows of one labels layer's results
(:class:`~._results.SegmentResults`) or of several embedded together
(:class:`~._group.ResultsGroup`), row ``i`` being the map's point ``i``; or of a table of
``napari-segrep embed`` (:class:`~._gallery_table.TableCollection`: no map, no layers, its
images' files read only when a thumbnail of them is asked for).

A :class:`GallerySource` turns rows into what the gallery needs: which rows a cluster, a class
or the classifier's suggestions hold, the thumbnails' requests to the engine
(:class:`~napari_segrep.engine.thumbnails.ThumbnailSource`, one per labels layer, kept while
its labels are the ones embedded), captions and class colours, the embeddings for
nearest-neighbour queries, and where a segment is in the viewer.  It changes only the results
models (selection, annotations); their events redraw every view.

The thumbnails' requests, the orderings and the neighbour index are computed in the gallery's
worker thread; they only read the members' tables and arrays, which the results models replace
and never change in place.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..engine.thumbnails import BBOX_COLUMNS, BBOX_COLUMNS_3D
from ._results import ANNOTATION

__all__ = ["GallerySource", "ThumbnailRequest"]


@dataclass
class ThumbnailRequest:
    """Thumbnails of one labels layer's segments: ``ids`` (and ``frames`` for a stack) go to
    ``positions`` of the page."""

    source: object  # ThumbnailSource
    ids: np.ndarray
    frames: np.ndarray | None
    positions: np.ndarray


class GallerySource:
    """The rows of ``shown`` (a SegmentResults, a ResultsGroup or a
    :class:`~._gallery_table.TableCollection`: images read from files) for the gallery."""

    def __init__(self, shown) -> None:
        from ._gallery_table import TableCollection

        self.shown = shown
        self.is_table = isinstance(shown, TableCollection)  # no map, no layers: files
        self.is_group = hasattr(shown, "members")
        self.members = list(shown.members) if self.is_group else [shown]
        if self.is_group:
            self.names = list(shown.names)
        else:
            layer = shown.labels_layer
            self.names = [layer.name if layer is not None else "labels"]
        self._thumbnail_sources: dict[int, tuple[tuple, object]] = {}
        self._index: tuple[tuple, object] | None = None

    # ------------------------------------------------------------------ rows
    def rows_key(self) -> tuple:
        """Changes when the rows do (a live edit, a member re-embedded).  A table's members
        keep their runs (and so the path strings) as long as they live: ids stay the same."""
        return tuple((id(m.run.labels), len(m.table)) for m in self.members)

    @property
    def offsets(self) -> np.ndarray:
        sizes = [len(m.table) for m in self.members]
        return np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def locate(self, rows) -> tuple[np.ndarray, np.ndarray]:
        """Each row's member (index) and its row in that member's table."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        offsets = self.offsets
        member = np.searchsorted(offsets, rows, side="right") - 1
        bad = (rows < 0) | (rows >= offsets[-1])
        if bad.any():
            raise IndexError(f"row {int(rows[bad][0])} is not in the map ({offsets[-1]} rows)")
        return member, rows - offsets[member]

    def column(self, name: str, fill) -> np.ndarray:
        """``name`` of every row (members in order); ``fill`` where a member lacks it."""
        parts = []
        for m in self.members:
            table = m.table
            if name in table:
                parts.append(table[name].to_numpy())
            else:
                parts.append(np.full(len(table), fill, dtype=object))
        return np.concatenate(parts) if parts else np.zeros(0, object)

    @property
    def selection(self) -> frozenset[int]:
        return self.shown.selection

    def select_rows(self, rows, *, quiet_for=None) -> None:
        """Select ``rows`` on the map (and so their segments); ``quiet_for``: a callback of the
        selection event not to call (the gallery's own, which would reload it)."""
        emitter = self.shown.events.selection
        if quiet_for is None:
            self.shown.select_rows(rows)
            return
        with emitter.blocker(quiet_for):
            self.shown.select_rows(rows)

    def connect(self, *, selection, changed, closed, connect: bool = True) -> None:
        """(Dis)connect callbacks of the selection, of rows or classes changing, and of the
        results being dropped."""
        ev = self.shown.events
        links = [(ev.selection, selection), (ev.closed, closed)]
        if self.is_group:
            links.append((ev.points, changed))
        else:
            links += [(ev.table, changed), (ev.classes, changed)]
        for emitter, callback in links:
            emitter.connect(callback) if connect else emitter.disconnect(callback)

    # ------------------------------------------------------------------ what to show
    def clusters(self) -> list:
        values = self.column("cluster", None)
        values = values[pd.notna(values)]
        return sorted({int(v) for v in values}) if len(values) else []

    def class_names(self) -> list[str]:
        names: dict[str, None] = {}
        for m in self.members:
            names.update(dict.fromkeys(m.class_colours))
        return list(names)

    def classes(self) -> np.ndarray:
        """Each row's class: its annotation, else its predicted class, else ``""``."""
        annotated = self.column(ANNOTATION, "").astype(object)
        predicted = self.column("class_predicted", "").astype(object)
        annotated[pd.isna(annotated)] = ""
        predicted[pd.isna(predicted)] = ""
        return np.where(annotated != "", annotated, predicted)

    def rows_in_cluster(self, cluster) -> np.ndarray:
        values = self.column("cluster", None)
        keep = pd.notna(values)
        out = np.zeros(len(values), bool)
        out[keep] = values[keep].astype(np.int64) == int(cluster)
        return np.flatnonzero(out)

    def rows_of_class(self, name: str) -> np.ndarray:
        return np.flatnonzero(self.classes() == name)

    def suggested_rows(self) -> np.ndarray:
        """The segments the classifier is least sure of (smallest margin), not annotated yet:
        the order of its "label next" suggestions."""
        from ..analysis.classify import suggest_next

        margin = pd.to_numeric(pd.Series(self.column("class_margin", np.nan)), errors="coerce")
        annotated = self.column(ANNOTATION, "")
        exclude = margin.isna().to_numpy() | (pd.Series(annotated).fillna("") != "").to_numpy()
        frame = pd.DataFrame({"margin": margin.to_numpy(float)})
        return suggest_next(frame, n=len(frame), exclude=exclude).index.to_numpy(np.int64)

    # ------------------------------------------------------------------ embeddings
    def neighbour_index(self, metric: str):
        """A :class:`~napari_segrep.analysis.neighbours.NeighbourIndex` of every row (kept
        while the rows are the same; call from a worker: it copies the embeddings)."""
        from ..analysis.neighbours import NeighbourIndex
        from ..analysis.tables import embedding_matrix

        key = (self.rows_key(), metric)
        cached = self._index
        if cached is not None and cached[0] == key:
            return cached[1]
        matrix = np.concatenate([embedding_matrix(m.table) for m in self.members])
        index = NeighbourIndex(matrix, metric=metric)
        self._index = (key, index)
        return index

    # ------------------------------------------------------------------ thumbnails
    def thumbnail_source(self, i: int):
        """Member ``i``'s :class:`~napari_segrep.engine.thumbnails.ThumbnailSource`: the image
        and labels as embedded, their axes and spacing (:func:`_run_layout`), the embedding's
        channel axis and normalisation (the frozen numbers of a 2D run), the table's bounding
        boxes."""
        from ..engine.thumbnails import ThumbnailSource

        member = self.members[i]
        run = member.run
        key = (id(run.labels), id(run.image))
        cached = self._thumbnail_sources.get(i)
        if cached is not None and cached[0] == key:
            return cached[1]
        table = member.table
        axes, spacing, channel_axis = _run_layout(run.params, table)
        columns = [c for c in ("label", "frame", *BBOX_COLUMNS_3D) if c in table]
        source = ThumbnailSource(
            run.image,
            run.labels,
            axes=axes,
            spacing=spacing,
            channel_axis=channel_axis,
            normalize=run.params.get("normalize", "image"),
            table=table[columns] if set(BBOX_COLUMNS) <= set(columns) else None,
        )
        self._thumbnail_sources[i] = (key, source)
        return source

    def requests(self, rows) -> list[ThumbnailRequest]:
        """The engine calls that give the thumbnails of ``rows`` (page positions in order)."""
        rows = np.asarray(rows, dtype=np.int64)
        member, own = self.locate(rows)
        out = []
        for i in np.unique(member):
            at = np.flatnonzero(member == i)
            table = self.members[i].table
            ids = table["label"].to_numpy(np.int64)[own[at]]
            frames = table["frame"].to_numpy(np.int64)[own[at]] if "frame" in table else None
            out.append(ThumbnailRequest(self.thumbnail_source(int(i)), ids, frames, at))
        return out

    def describe(self, rows) -> pd.DataFrame:
        """Per row: ``row``, ``image``, ``label``, ``frame`` (-1: none), ``cluster`` (None),
        ``class_name`` (annotation or prediction, ``""``), ``annotated`` (bool), ``probability`` (NaN) and
        ``colour`` (the class's RGBA, or None): captions, tooltips and frames."""
        rows = np.asarray(rows, dtype=np.int64)
        member, own = self.locate(rows)
        tables = [m.table for m in self.members]

        def pick(name, fill):
            out = np.full(len(rows), fill, dtype=object)
            for i in np.unique(member):
                at = member == i
                if name in tables[i]:
                    out[at] = tables[i][name].to_numpy()[own[at]]
            return out

        annotated = pick(ANNOTATION, "")
        annotated[pd.isna(annotated)] = ""
        predicted = pick("class_predicted", "")
        predicted[pd.isna(predicted)] = ""
        cls = np.where(annotated != "", annotated, predicted)
        colours = [
            self.members[i].class_colours.get(c) if c else None
            for i, c in zip(member, cls, strict=True)
        ]
        probability = pick("class_probability", np.nan).astype(float)
        probability[annotated != ""] = np.nan
        return pd.DataFrame(
            {
                "row": rows,
                "image": np.asarray(self.names, dtype=object)[member],
                "label": pick("label", 0).astype(np.int64),
                "frame": pick("frame", -1).astype(np.int64),
                "cluster": pick("cluster", None),
                "class_name": cls,
                "annotated": annotated != "",
                "probability": probability,
                "colour": colours,
            }
        )

    # ------------------------------------------------------------------ viewer
    def place(self, row: int) -> tuple[object, np.ndarray]:
        """Where segment ``row`` is: its labels layer (None when gone) and its centroid along
        every axis of its labels (its frame and, for a 3D object, its middle plane included;
        in world coordinates through the layer's scale, translation and affine)."""
        from .._images import layout_of
        from ._common import segment_point

        (i,), (r,) = self.locate([row])
        member = self.members[int(i)]
        layer = member.labels_layer
        axes, _, _ = _run_layout(member.run.params, member.table)
        layout = layout_of(np.shape(member.run.labels), axes=axes or "yx")
        point = segment_point(layout, member.table.iloc[int(r)])
        if layer is not None:
            point = np.asarray(layer.data_to_world(point), float)
        return layer, point

    def annotate(self, rows, name: str | None) -> None:
        """Annotate ``rows`` with class ``name`` (None: remove their annotation), in each
        member's results (a class a member lacks is added to it, in its colour elsewhere)."""
        rows = np.asarray(rows, dtype=np.int64)
        member, own = self.locate(rows)
        colour = None
        if name:
            colour = next(
                (m.class_colours[name] for m in self.members if name in m.class_colours), None
            )
            if colour is None:
                raise ValueError(f"no class {name!r}: add it in Classify segments first")
        for i in np.unique(member):
            results = self.members[int(i)]
            if name and name not in results.class_colours:
                results.set_classes({**results.class_colours, name: colour})
            results.annotate_rows(own[member == i].tolist(), name)


def _run_layout(params: dict, table: pd.DataFrame) -> tuple[str | None, object, int | None]:
    """The axes, spacing and channel axis (counted in the whole image) of a run's thumbnails.

    The run's own when it says them (``axes``/``spacing`` among its ``embed_segments``
    parameters, or its table's ``attrs["layout"]``); else what its table's columns say:
    ``bbox_z0`` is of 3D objects, ``frame`` of a time-lapse, whose channel axis was then
    counted within a frame (``embed_stack``'s) and so moves past the time axis.
    """
    recorded = table.attrs.get("layout") or {}
    axes = params.get("axes") or recorded.get("axes")
    spacing = params.get("spacing", recorded.get("spacing"))
    channel_axis = params.get("channel_axis")
    if axes is None and "bbox_z0" in table:
        axes = "tzyx" if "frame" in table else "zyx"
    elif axes is None and "frame" in table:
        axes = "tyx"
        if channel_axis is not None and channel_axis >= 0:
            channel_axis += 1
    return axes, spacing, channel_axis
