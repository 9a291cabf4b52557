"""Several labels layers embedded together: one map, one table, one selection.

A :class:`ResultsGroup` holds the :class:`~._results.SegmentResults` of each labels layer of a
multi-pair run (each layer keeps its own results: its rows, as embedding it alone gives them)
and what they share: the map fitted on all rows together, clusters computed on all rows, one
selection across the layers, and how the points are coloured (also ``"image"``).  It changes
the members; the members' events tell the views (:mod:`._group_view`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from napari.utils.events import EmitterGroup

from ._results import COLOUR_MODES, SegmentResults, embed_run

__all__ = ["GROUP_COLOUR_MODES", "MapPart", "ResultsGroup", "embed_pairs_run"]

#: How the points of a group can be coloured: the members' modes, and by image.
GROUP_COLOUR_MODES = (*COLOUR_MODES, "image")


@dataclass
class MapPart:
    """One member's rows of a map fitted on the whole group: its ``coords``; ``transform``
    places new rows in the whole map."""

    whole: object  # the group's map model (PCA MapModel or RemoteMap)
    coords: np.ndarray

    @property
    def method(self) -> str:
        return self.whole.method

    def transform(self, emb: np.ndarray) -> np.ndarray:
        return self.whole.transform(emb)


def _n_rows(labels: np.ndarray, layout) -> int:
    """Rows the embedding gives for ``labels`` of ``layout``: one per label (and frame, for a
    time-lapse)."""
    frames = labels if layout.has_time else [labels]
    return sum(int(np.count_nonzero(np.unique(f))) for f in frames)


def embed_pairs_run(
    pairs: Sequence,
    weights,
    params: dict,
    *,
    progress,
    should_stop,
    backbone: str | None = None,
    volume_backbone: str | None = None,
    **run,
):
    """What a multi-pair Run computes in its worker thread: each pair embedded alone (one
    encoder, the same settings) with :func:`~._results.embed_run`, and one PCA map of all rows.

    Parameters
    ----------
    pairs : sequence of (image, labels, layout, channel_axis, image_layer_names)
        One per pair, in order (``layout``: the labels' :class:`~napari_segrep._images.Layout`;
        the pairs' objects are all 2D or all 3D: one model embeds them).
    weights : None, a weight set ("imagenet", "dinov2"), a checkpoint path or a SegmentEncoder
        The model (:func:`~napari_segrep.engine.embed.encoder_for`), built once for all pairs.
    params : dict
        ``embed_segments``' options but ``channel_axis`` (each pair's own).
    progress : callable(done, total)
        Segments embedded out of all pairs' segments; its ``message((i, n))``, when it has
        one, is called as pair ``i`` of ``n`` starts.
    should_stop : callable() -> bool
        Polled between batches (``Cancelled``: nothing is returned).
    backbone, volume_backbone : str, optional
        The backbone of a new encoder for 2D objects, for 3D objects.
    **run
        ``model`` and ``checkpoint``, recorded in each :class:`~._results.RunSetup`.

    Returns
    -------
    parts : list of (DataFrame, RunSetup)
        Each pair's table (what embedding it alone gives) and run.
    map_model : MapModel
        The PCA map of all rows, pairs in order.
    """
    from ..analysis.reduce import pca_map
    from ..analysis.tables import embedding_matrix

    totals = [_n_rows(np.asarray(p[1]), p[2]) for p in pairs]
    grand, done, parts = max(sum(totals), 1), 0, []
    encoder = weights
    tell = getattr(progress, "message", None)  # the job's messages to the GUI thread
    for i, ((image, labels, layout, axis, names), total) in enumerate(
        zip(pairs, totals, strict=True)
    ):
        if tell is not None:
            tell((i, len(pairs)))

        def report(d, _t, _done=done):
            progress(min(_done + d, grand), grand)

        df, _, setup = embed_run(
            image,
            labels,
            encoder,
            {**params, "channel_axis": axis},
            layout=layout,
            image_layers=names,
            progress=report,
            should_stop=should_stop,
            backbone=backbone,
            volume_backbone=volume_backbone,
            **run,
        )
        encoder = setup.encoder  # built once, shared by every pair
        parts.append((df, setup))
        done += total
    all_rows = np.concatenate([embedding_matrix(df) for df, _ in parts])
    return parts, pca_map(all_rows)


class ResultsGroup:
    """The members' results embedded together (``names``: their ``image`` column values).

    Events: ``selection`` (the selection across members changed), ``colour_by``, ``points``
    (a member's rows, map, classes or colours changed: the points redraw), ``closed``.
    """

    def __init__(self, members: Sequence[SegmentResults], names: Sequence[str], map_model):
        if len(members) != len(names) or len(set(names)) != len(names):
            raise ValueError("one unique image name per member is needed")
        self.events = EmitterGroup(
            source=self, selection=None, colour_by=None, points=None, closed=None
        )
        self.members, self.names = list(members), [str(n) for n in names]
        self._colour_by = "image"
        for member in self.members:
            for emitter, callback in self._member_links(member):
                emitter.connect(callback)
        self.set_map(map_model)

    def _member_links(self, member):
        """The (emitter, callback) pairs that link a member's events to the group."""
        ev = member.events
        changed = [(e, self._on_member_changed) for e in (ev.table, ev.map, ev.classes)]
        return [
            (ev.selection, self._on_member_selection),
            (ev.colour_by, self._on_member_colour_by),
            *changed,
            (ev.closed, self._on_member_closed),
        ]

    # ------------------------------------------------------------------ state
    @property
    def sizes(self) -> list[int]:
        return [len(m.table) for m in self.members]

    @property
    def offsets(self) -> np.ndarray:
        """Where each member's rows start in the group's rows (and one past the end)."""
        return np.concatenate([[0], np.cumsum(self.sizes)]).astype(int)

    @property
    def table(self) -> pd.DataFrame:
        """Every member's table, ``image`` first, members in order."""
        parts = [m.table.assign(image=n) for m, n in zip(self.members, self.names, strict=True)]
        out = pd.concat(parts, ignore_index=True)
        return out[["image", *[c for c in out.columns if c != "image"]]]

    @property
    def images(self) -> np.ndarray:
        """Each row's image name."""
        return np.repeat(np.asarray(self.names, dtype=object), self.sizes)

    @property
    def coords(self) -> np.ndarray:
        return np.concatenate([m.coords for m in self.members])

    @property
    def map_method(self) -> str:
        return self.map_model.method

    @property
    def selection(self) -> frozenset[int]:
        """Selected rows of the group."""
        offsets = self.offsets
        return frozenset(
            int(offsets[i] + r) for i, m in enumerate(self.members) for r in m.selection
        )

    @property
    def colour_by(self) -> str:
        return self._colour_by

    @colour_by.setter
    def colour_by(self, value: str) -> None:
        if value not in GROUP_COLOUR_MODES:
            raise ValueError(f"colour_by={value!r}: choose one of {GROUP_COLOUR_MODES}")
        member_mode = "label" if value == "image" else value
        for member in self.members:
            with member.events.colour_by.blocker(self._on_member_colour_by):
                member.colour_by = member_mode
        if value == "cluster" and not all("cluster" in m.table for m in self.members):
            value = "label"
        if value == "class" and not any(m.class_colours for m in self.members):
            value = "label"
        if value != self._colour_by:
            self._colour_by = value
            self.events.colour_by()

    def member_rows(self, rows: Iterable[int]) -> list[np.ndarray]:
        """The group's ``rows`` as each member's own rows."""
        rows, offsets = np.asarray(sorted(int(r) for r in rows), dtype=np.int64), self.offsets
        return [
            rows[(rows >= lo) & (rows < hi)] - lo
            for lo, hi in zip(offsets[:-1], offsets[1:], strict=True)
        ]

    # ------------------------------------------------------------------ changes
    def select_rows(self, rows: Iterable[int]) -> None:
        """Select the group's ``rows``: each member selects its own (and highlights them)."""
        for member, own in zip(self.members, self.member_rows(rows), strict=True):
            with member.events.selection.blocker(self._on_member_selection):
                member.select_rows(own.tolist())
        self.events.selection()

    def set_map(self, map_model) -> None:
        """A map of all rows (PCA, UMAP, refit): each member gets its part."""
        coords = np.asarray(map_model.coords, float)
        if coords.shape != (int(self.offsets[-1]), 2):
            raise ValueError(f"map coordinates must be ({self.offsets[-1]}, 2), got {coords.shape}")
        self.map_model, offsets = map_model, self.offsets
        with self.events.points.blocker():
            for i, member in enumerate(self.members):
                member.set_map(MapPart(map_model, coords[offsets[i] : offsets[i + 1]]))
        self.events.points()

    def set_clusters(self, ids: np.ndarray) -> None:
        """Cluster ids of all rows (computed on all rows together): each member gets its part,
        so one id means one cluster in every image."""
        ids, offsets = np.asarray(ids), self.offsets
        if ids.shape != (int(offsets[-1]),):
            raise ValueError(f"one cluster id per row is needed, got shape {ids.shape}")
        with self.events.points.blocker():
            for i, member in enumerate(self.members):
                with member.events.colour_by.blocker(self._on_member_colour_by):
                    member.set_clusters(ids[offsets[i] : offsets[i + 1]])
        self.colour_by = "cluster"
        self.events.points()

    def _on_member_selection(self, event=None) -> None:
        """A member's selection changed by itself (a click on a segment, its selected label):
        that selection only, as with one layer."""
        source = event.source if event is not None else None
        for member in self.members:
            if member is not source:
                with member.events.selection.blocker(self._on_member_selection):
                    member.select_rows(())
        self.events.selection()

    def _on_member_colour_by(self, event=None) -> None:
        """A member was recoloured elsewhere (the classifier colours by class): all follow."""
        source = event.source if event is not None else None
        if source is not None and source.colour_by != self._colour_by:
            self.colour_by = source.colour_by

    def _on_member_changed(self, event=None) -> None:
        self.events.points()

    def _on_member_closed(self, event=None) -> None:
        self.close()

    # ------------------------------------------------------------------ export
    def export_frame(self) -> pd.DataFrame:
        """One table: ``image``, then each member's export (label, geometry, map, cluster,
        emb_*), members in order."""
        parts = []
        for member, name in zip(self.members, self.names, strict=True):
            part = member.export_frame()
            part.insert(0, "image", name)
            parts.append(part)
        return pd.concat(parts, ignore_index=True)

    def provenance(self) -> dict:
        """The first member's provenance, for all rows and naming every pair."""
        out = self.members[0].provenance()
        pairs = [
            {
                "image": name,
                "labels_layer": m.labels_layer.name if m.labels_layer is not None else None,
                "image_layers": m.run.image_layers,
                "image_shape": list(m.run.image.shape),
                "normalization": m.run.normalization,
            }
            for m, name in zip(self.members, self.names, strict=True)
        ]
        out.update(n_segments=int(self.offsets[-1]), pairs=pairs, labels_layer=None)
        if isinstance(out.get("inputs"), dict):
            out["inputs"] = {"pairs": pairs}
        return out

    def close(self) -> None:
        """Unlink from the members (their results stay, each for its own layer)."""
        members, self.members = self.members, []
        for member in members:
            for emitter, callback in self._member_links(member):
                emitter.disconnect(callback)
        if members:
            self.events.closed()
