"""The "label next" part of the Classify segments widget: the segments the model is least sure
of (:func:`~napari_segrep.analysis.classify.suggest_next`), and going to one (select it,
centre the view on it, move to its frame and middle plane)."""

from __future__ import annotations

from magicgui.widgets import PushButton, Select

__all__ = ["N_SUGGESTIONS", "Suggestions"]

N_SUGGESTIONS = 10


class Suggestions:
    """A mixin of :class:`~.classify.ClassifySegmentsWidget` (it uses ``viewer``, ``results``
    and ``_require_results``)."""

    def add_suggestion_widgets(self) -> None:
        self._suggested_rows: list[int] = []
        self._suggestion_texts: list[str] = []
        self.suggestions = Select(
            label="label next (least sure)", choices=lambda _w=None: self._suggestion_texts
        )
        self.next_button = PushButton(text="Next suggestion")

    def update_suggestions(self, predictions) -> None:
        """The least sure segments of these predictions (of the followed table), not
        annotated yet."""
        from ..analysis.classify import suggest_next

        results = self.results
        suggested = suggest_next(predictions, n=N_SUGGESTIONS, exclude=results.annotations != "")
        self._suggested_rows = suggested.index.to_list()
        self._suggestion_texts = [
            f"label {int(results.table['label'].iloc[r])}  (margin {m:.2f})"
            for r, m in zip(self._suggested_rows, suggested["margin"], strict=True)
        ]
        with self.suggestions.changed.blocked():
            self.suggestions.reset_choices()

    def _on_suggestion_chosen(self, *_) -> None:
        chosen = self.suggestions.value
        if chosen:
            self.go_to_row(self._suggested_rows[self.suggestions.choices.index(chosen[0])])

    def next_suggestion(self) -> int | None:
        """Go to the segment the model is least sure of (not annotated yet); its row."""
        rows = [r for r in self._suggested_rows if self.results.annotations[r] == ""]
        if not rows:
            return None
        self.go_to_row(rows[0])
        return rows[0]

    def go_to_row(self, row: int) -> None:
        """Select the segment of ``row`` (and its point) and centre the view on it: the camera
        on its centroid, the dims on its frame and, for a 3D object, its middle plane."""
        from ._common import centre_on_segment

        results = self._require_results()
        layer = results.labels_layer
        if layer is not None and layer in self.viewer.layers:
            centre_on_segment(self.viewer, layer, results.run.layout, results.table.iloc[row])
        results.select_rows([row])
