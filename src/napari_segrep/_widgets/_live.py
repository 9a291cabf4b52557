"""Live embedding while annotating: painting, erasing or filling a labels layer re-embeds only
the segments whose pixels changed, and their rows and points follow.

Debounced (one update after a burst of paint events); one update at a time.  The diff is
:func:`~napari_segrep.engine.segments.changed_segments`, the embedding
``embed_segments(..., only=ids)`` with the run's own encoder and parameters (a z-stack's
axes and spacing included: its objects are embedded again as 3D objects), and the rows are
replaced by :meth:`~._results.SegmentResults.replace_rows`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from qtpy.QtCore import QTimer

from ._jobs import Job, start_job
from ._results import SegmentResults

__all__ = ["LiveEmbedding"]

LIVE_DEBOUNCE_MS = 150
_EDIT_EVENTS = ("labels_update", "paint", "data")


class LiveEmbedding:
    """Follow one results model's labels layer while ``enabled``.

    ``busy()`` says when not to start (a full run is going); ``on_applied(n_embedded,
    n_removed)`` and ``on_error(exc)`` report to the widget.
    """

    def __init__(
        self,
        *,
        busy: Callable[[], bool],
        on_applied: Callable[[int, int], None],
        on_error: Callable[[BaseException], None],
    ) -> None:
        self.results: SegmentResults | None = None
        self.job: Job | None = None
        self._busy, self._on_applied, self._on_error = busy, on_applied, on_error
        self._layer = None
        self._timer = QTimer()
        self._timer.setSingleShot(True)
        self._timer.setInterval(LIVE_DEBOUNCE_MS)
        self._timer.timeout.connect(self.update)

    def follow(self, results: SegmentResults | None) -> None:
        """Re-embed edits of ``results``' labels layer (None: stop following).  Time-lapses
        (a ``frame`` column) are not followed; 2D images and z-stacks are (a z-stack's changed
        objects are embedded again as 3D objects)."""
        if results is not None and results.run.layout.has_time:
            results = None
        layer = results.labels_layer if results is not None else None
        if self._layer is not None:
            for name in _EDIT_EVENTS:
                getattr(self._layer.events, name).disconnect(self._on_labels_edited)
        self.results, self._layer = results, layer
        if layer is not None:
            for name in _EDIT_EVENTS:
                getattr(layer.events, name).connect(self._on_labels_edited)

    def _on_labels_edited(self, event=None) -> None:
        self._timer.start()  # debounced: one update after a burst of paint events

    def update(self) -> None:
        """Re-embed the segments whose pixels changed since they were last embedded."""
        results = self.results
        if results is None or results.labels_layer is None or self._busy():
            return
        if self.job is not None:  # one at a time: try again when it is done
            self._timer.start()
            return
        from ..engine.segments import changed_segments

        current = np.array(results.labels_layer.data, copy=True)
        if current.shape != results.run.labels.shape:
            return
        changed, removed = changed_segments(results.run.labels, current)
        if not changed.size and not removed.size:
            return
        run, map_model = results.run, results.map_model

        def call(progress, should_stop):
            from ..analysis.tables import embedding_matrix
            from ..engine.embed import embed_segments

            if not changed.size:
                return None, np.empty((0, 2))
            df = embed_segments(run.image, current, run.encoder, only=changed, **run.params)
            # placed here, not in the GUI thread: the map process may be busy or paused
            return df, np.asarray(map_model.transform(embedding_matrix(df)), float)

        def apply(result) -> None:
            if self.results is not results:  # newer results replaced these meanwhile
                return
            if results.map_model is not map_model:  # a new map meanwhile: place them again
                self._timer.start()
                return
            df, coords = result
            results.replace_rows(df, removed, labels_now=current, coords=coords)
            self._on_applied(0 if df is None else len(df), len(removed))

        self.job = start_job(
            call,
            desc="Live embedding",
            on_result=apply,
            on_error=self._on_error,
            on_done=self._on_done,
        )

    def _on_done(self) -> None:
        self.job = None
