"""The pages of the segment gallery (a mixin of :class:`~.gallery.SegmentGalleryWidget`):
requests to the worker, thumbnails arriving in chunks, captions and class frames, and the PNG
montage of a page.

A request (:class:`Request`) either carries its rows or an ``order()`` computed in the worker
(the most typical first, the nearest neighbours); the worker sends the rows, then the page's
thumbnails :data:`CHUNK` at a time.  Each request has a token: what arrives for an older one is
dropped, and a new request cancels the running job and starts when it has ended.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ._gallery_grid import framed
from ._jobs import start_job, watch_close

__all__ = ["CHUNK", "PAGE", "GalleryPages", "Request"]

#: Thumbnails per page.
PAGE = 200
#: Thumbnails per message from the worker (they appear in steps of this many).
CHUNK = 20


@dataclass
class Request:
    """One page to show: ``rows`` (or ``order()``, computed in the worker, giving rows and
    notes), page ``page`` at ``size`` pixels."""

    token: int
    rows: np.ndarray | None
    order: object | None
    page: int
    size: int
    masked: bool
    notes: dict = field(default_factory=dict)


class GalleryPages:
    """Paging, loading and drawing thumbnails; uses the widget's ``source``, ``grid``,
    ``status``, ``page_label``, the size and masked inputs, and its ``_what``."""

    def _init_pages(self) -> None:
        self.job = None
        self._pending: Request | None = None
        self._token = 0
        self._rows = np.zeros(0, np.int64)  # what the current choice shows, in order
        self._notes: dict[int, str] = {}  # row -> an extra caption line (distance, "query")
        self._page = 0
        self._thumbs: dict[int, np.ndarray] = {}  # page position -> thumbnail (undecorated)

    @property
    def shown_rows(self) -> list[int]:
        """The map rows of the page, in order."""
        lo = self._page * PAGE
        return [int(r) for r in self._rows[lo : lo + PAGE]]

    @property
    def loaded(self) -> bool:
        """Whether every thumbnail of the page is shown (and nothing is being computed)."""
        return (
            self.job is None and self._pending is None and len(self._thumbs) == len(self.shown_rows)
        )

    def thumbnail(self, position: int) -> np.ndarray:
        """The thumbnail at ``position`` of the page, as computed (without the class frame)."""
        return self._thumbs[position]

    def _show_nothing(self, why: str):
        self._token += 1  # thumbnails still coming are for something else now
        self._pending = None
        if self.job is not None:
            self.job.cancel()
        self._rows, self._notes, self._page, self._thumbs = np.zeros(0, np.int64), {}, 0, {}
        self.grid.show_rows([], [], [])
        self.page_label.value = ""
        self.status.value = why
        return None

    # ------------------------------------------------------------------ pages
    def go_to_page(self, page: int):
        pages = max(1, -(-len(self._rows) // PAGE))
        if not 0 <= page < pages or page == self._page:
            return None
        return self._request_page(page, rows=self._rows, notes=self._notes)

    def _request_page(self, page: int, *, rows=None, order=None, notes=None):
        self._token += 1
        request = Request(
            token=self._token,
            rows=None if rows is None else np.asarray(rows, np.int64),
            order=order,
            page=page,
            size=int(self.size_input.value),
            masked=bool(self.masked_input.value),
            notes=dict(notes or {}),
        )
        if rows is not None:
            self._lay_out(request.token, request.rows, request.notes, page)
        else:
            self._thumbs = {}
            self.status.value = f"Finding {self._what}..."
        self._pending = request
        if self.job is not None:
            self.job.cancel()  # the next request starts when it has ended
            return None
        return self._start_pending()

    def _start_pending(self):
        request, self._pending = self._pending, None
        if request is None or self.source is None:
            return None
        source, token = self.source, request.token

        def call(progress, should_stop):
            from ..errors import Cancelled

            rows = request.rows
            if request.order is not None:
                rows, notes = request.order()
                progress.message(("rows", token, rows, notes, request.page))
            lo = request.page * PAGE
            for part in source.requests(rows[lo : lo + PAGE]):
                for start in range(0, len(part.ids), CHUNK):
                    if should_stop():
                        raise Cancelled()
                    take = slice(start, start + CHUNK)
                    frames = None if part.frames is None else part.frames[take]
                    thumbs = part.source.thumbnails(
                        part.ids[take], frame=frames, size=request.size, masked=request.masked
                    )
                    progress.message(("thumbnails", token, part.positions[take], thumbs))
            return token

        watch_close(self.native.window())  # closing napari cancels and waits for it
        self.job = start_job(
            call,
            desc="Thumbnails",
            on_result=lambda _token: None,
            on_error=self._on_error,
            on_done=self._on_job_done,
            on_message=self._on_message,
        )
        return self.job.worker

    def _on_job_done(self) -> None:
        self.job = None
        if self._pending is not None:
            self._start_pending()
        elif self.source is not None and len(self._thumbs) == len(self.shown_rows):
            self._show_status()

    def _on_message(self, message) -> None:
        kind, token = message[0], message[1]
        if token != self._token:
            return  # for a page no longer asked for
        if kind == "rows":
            _, _, rows, notes, page = message
            self._lay_out(token, np.asarray(rows, np.int64), notes, page)
            return
        _, _, positions, thumbs = message
        for position, thumb in zip(positions, thumbs, strict=True):
            self._thumbs[int(position)] = thumb
        self._decorate(positions)

    def _lay_out(self, token: int, rows: np.ndarray, notes: dict, page: int) -> None:
        """Placeholders for the page's thumbnails, with their captions."""
        self._rows, self._notes, self._page, self._thumbs = rows, notes, page, {}
        shown = self.shown_rows
        captions, tips = self._captions(shown)
        self.grid.set_size(int(self.size_input.value))
        self.grid.show_rows(shown, captions, tips)
        pages = max(1, -(-len(rows) // PAGE))
        lo = page * PAGE
        self.page_label.value = (
            f"{lo + 1}-{lo + len(shown)} of {len(rows)}" if len(rows) else "none"
        )
        self.previous_button.enabled, self.next_button.enabled = page > 0, page + 1 < pages
        self.status.value = f"{self._what}: loading {len(shown)} thumbnails..."

    def _show_status(self) -> None:
        self.status.value = (
            f"{self._what}: {len(self._rows)} segments; "
            "click a thumbnail to go to it, Ctrl/Shift-click to choose several."
        )

    # ------------------------------------------------------------------ captions and frames
    def _captions(self, rows) -> tuple[list[str], list[str]]:
        """Each thumbnail's caption (image, label, frame; class or note) and tooltip."""
        if not len(rows):
            return [], []
        group = self.source.is_group
        captions, tips = [], []
        for rec in self.source.describe(rows).itertuples(index=False):
            frame = f" t{rec.frame}" if rec.frame >= 0 else ""
            second = self._notes.get(int(rec.row), "")
            if rec.class_name:
                sure = "*" if rec.annotated else ""
                if not rec.annotated and np.isfinite(rec.probability):
                    sure = f" {rec.probability:.2f}"
                second = f"{rec.class_name}{sure}" + (f" {second}" if second else "")
            first = f"{rec.image} {rec.label}" if group else f"{rec.label}"
            captions.append(f"{first}{frame}" + (f"\n{second}" if second else ""))
            tip = [f"image: {rec.image}", f"label: {rec.label}"]
            if rec.frame >= 0:
                tip.append(f"frame: {rec.frame}")
            if rec.cluster is not None:
                tip.append(f"cluster: {rec.cluster}")
            if rec.class_name:
                how = "annotated" if rec.annotated else f"predicted, {rec.probability:.2f}"
                tip.append(f"class: {rec.class_name} ({how})")
            if self._notes.get(int(rec.row)):
                tip.append(self._notes[int(rec.row)])
            tips.append("\n".join(tip))
        return captions, tips

    def _decorate(self, positions) -> None:
        """Show the thumbnails at ``positions`` (those computed) with their class's frame, and
        their captions as the classes are now."""
        shown = self.shown_rows
        positions = [int(p) for p in positions if int(p) < len(shown)]
        if not positions or self.source is None:
            return
        rows = [shown[p] for p in positions]
        info = self.source.describe(rows)
        captions, tips = self._captions(rows)
        for i, position in enumerate(positions):
            self.grid.set_text(position, captions[i], tips[i])
            thumb = self._thumbs.get(position)
            if thumb is not None:
                self.grid.set_thumbnail(position, framed(thumb, info["colour"].iloc[i]))

    # ------------------------------------------------------------------ export
    def export_montage(self, path=None, *, overwrite: bool | None = None):
        """Write the page's thumbnails, with their captions and class colours, as a PNG
        montage (a save dialog when ``path`` is None; an existing file is replaced only when
        ``overwrite`` is True or the user says yes).  Returns the path, or None."""
        from napari.utils.notifications import show_info

        from ..analysis.montage import write_montage
        from ._common import save_path

        shown = self.shown_rows
        if not shown:
            raise ValueError("Nothing to export: the gallery is empty.")
        if len(self._thumbs) < len(shown):
            raise ValueError("The thumbnails are still loading: export when all are shown.")
        name = self._what.split(" (")[0].replace(" ", "_") or "gallery"
        path = save_path(
            self.native,
            path,
            title="Export the gallery as a PNG montage",
            suggestion=f"{name}.png",
            file_filter="PNG (*.png)",
            overwrite=overwrite,
        )
        if path is None:
            return None
        info = self.source.describe(shown)
        captions, _ = self._captions(shown)
        lo = self._page * PAGE
        title = f"{self._what}: {lo + 1}-{lo + len(shown)} of {len(self._rows)}"
        thumbs = np.stack([self._thumbs[i] for i in range(len(shown))])
        try:
            write_montage(
                path,
                thumbs,
                captions,
                colours=list(info["colour"]),
                title=title,
                overwrite=True,
            )
        except OSError as exc:
            raise RuntimeError(f"Export failed: {exc}") from exc
        show_info(f"Wrote {path}")
        self.status.value = f"Wrote {path}"
        return path
