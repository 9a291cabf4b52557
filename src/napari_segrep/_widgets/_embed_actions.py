"""What Embed segments does with results once they are shown: the UMAP map, refit, clusters,
colour by, a labels layer from the selection, export.  The same actions for one labels layer
(``widget.results``, a :class:`~._results.SegmentResults`) and for several embedded together
(``widget.group``, a :class:`~._group.ResultsGroup`): both hold a table, a map, clusters and a
selection; the maths is in ``analysis``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from napari.layers import Labels
from napari.utils.notifications import show_info

from ._common import export_table

__all__ = ["ResultsActions"]


class ResultsActions:
    """Mixed into :class:`~.embed.EmbedSegmentsWidget` (which provides ``results``, ``multi``,
    ``viewer``, ``status``, ``colour_by``, ``cluster_method``, ``cluster_k``, ``umap_input``,
    ``_on_error`` and ``_compare_with_previous``)."""

    @property
    def group(self):
        """The results of several pairs embedded together (None after a one-pair run)."""
        return self.multi.group

    def _shown(self):
        """What the map shows: the group of a multi-pair run, or the one layer's results."""
        return self.group if self.group is not None else self.results

    def _colour_choices(self, _widget=None) -> list[str]:
        return ["label", "cluster", "class"] + (["image"] if self.group is not None else [])

    def _on_colour_by_chosen(self, *_) -> None:
        shown = self._shown()
        if shown is not None and self.colour_by.value is not None:
            shown.colour_by = self.colour_by.value

    def _on_results_colour_by(self, event=None) -> None:
        shown = self._shown()
        if shown is not None:
            self.colour_by.value = shown.colour_by

    # ------------------------------------------------------------------ maps
    def _start_umap(self) -> None:
        """Fit UMAP on every row shown in the session's map process (never in napari's: see
        ``_map_process``); the map replaces the PCA preview when it arrives."""
        from ..analysis.tables import embedding_matrix
        from ._map_process import RemoteMap, map_process

        shown, process, key = self._shown(), map_process(), RemoteMap.next_key()
        n_rows = len(shown.table)
        self._map_request = key
        said = self.status.value.split(" Map:")[0]  # "N segments embedded."

        def done(ok: bool, value) -> None:
            if self._map_request != key or self._shown() is not shown:
                return  # newer results or a newer map replaced this one meanwhile
            self._map_request = None
            if not ok:
                self._on_error(RuntimeError(f"UMAP map failed: {value}"))
                return
            if len(shown.table) != n_rows:
                return  # live edits changed the rows meanwhile: 'Refit map' fits them all
            method, coords = value
            shown.set_map(RemoteMap(process, key, method, coords))
            self.status.value = f"{said} Map: UMAP"
            self._compare_with_previous()

        process.submit("fit", key, embedding_matrix(shown.table), 0, on_done=done)

    def refit_map(self) -> None:
        """Fit the 2D map again on all current embeddings (PCA now, then UMAP if chosen)."""
        from ..analysis.reduce import pca_map
        from ..analysis.tables import embedding_matrix

        shown = self._shown()
        if shown is None:
            raise RuntimeError("Run the embedding first.")
        emb = embedding_matrix(shown.table)
        shown.set_map(pca_map(emb))
        if self.umap_input.value and len(emb) >= 4:
            self._start_umap()

    # ------------------------------------------------------------------ clusters, selection, CSV
    def cluster(self) -> np.ndarray:
        """Cluster the embeddings (KMeans k, or HDBSCAN; of every image together after a
        multi-pair run); ids from 1, 0 = noise."""
        from ..analysis.cluster import cluster_embeddings
        from ..analysis.tables import embedding_matrix

        shown = self._shown()
        if shown is None:
            raise RuntimeError("Run the embedding first.")
        ids = cluster_embeddings(
            embedding_matrix(shown.table),
            method=self.cluster_method.value,
            k=int(self.cluster_k.value),
        )
        shown.set_clusters(ids)
        show_info(f"{len(set(ids.tolist()) - {0})} clusters")
        return ids

    def labels_from_selection(self) -> Labels | list[Labels] | None:
        """A new labels layer holding only the selected segments (after a multi-pair run, one
        per labels layer with selected segments, as a list)."""
        group = self.group
        members = group.members if group is not None else [self.results]
        made = []
        for results in members:
            selected = results.selected_labels() if results is not None else set()
            layer = results.labels_layer if results is not None else None
            if not selected or layer is None:
                continue
            data = np.asarray(layer.data)
            out = np.where(np.isin(data, list(selected)), data, 0)
            made.append(
                self.viewer.add_labels(
                    out,
                    name=f"{layer.name} selection",
                    scale=layer.scale,
                    translate=layer.translate,
                )
            )
        if not made:
            show_info("Select points in the map first.")
            return None
        return made if group is not None else made[0]

    def export_table(self) -> pd.DataFrame:
        """(image,) label, geometry, map_0, map_1, map_method, cluster, emb_*."""
        return self._shown().export_frame()

    def export_csv(self, path: str | Path | None = None, *, overwrite: bool | None = None):
        """Write the table (one table with an ``image`` column after a multi-pair run) and its
        JSON sidecar (the same provenance as the CLI's).  Asks before replacing a file unless
        ``overwrite`` says; returns the path, or None when nothing was written."""
        shown = self._shown()
        if shown is None:
            raise RuntimeError("Run the embedding first.")
        name = "images" if self.group is not None else shown.labels_layer.name
        return export_table(
            self.native,
            shown.export_frame(),
            shown.provenance(),
            path,
            title="Export CSV",
            suggestion=f"{name}.csv",
            overwrite=overwrite,
        )
