"""The Qt parts of the segment gallery: a grid of thumbnails (a ``QListWidget`` in icon mode:
it lays them out, scrolls, and lets the user click one or Ctrl/Shift-click several) and a
fixed preview of the map point under the mouse."""

from __future__ import annotations

import numpy as np
from qtpy.QtCore import QSignalBlocker, QSize, Qt
from qtpy.QtGui import QIcon, QImage, QPixmap
from qtpy.QtWidgets import QAbstractItemView, QLabel, QListView, QListWidget, QListWidgetItem

__all__ = ["PreviewLabel", "ThumbnailGrid", "framed", "to_pixmap"]

#: Grey of a thumbnail not computed yet.
PLACEHOLDER = 60
_ROW = Qt.ItemDataRole.UserRole


def to_pixmap(rgb: np.ndarray) -> QPixmap:
    """An (S, S, 3) uint8 array as a QPixmap (copied: the array may go)."""
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    h, w = rgb.shape[:2]
    image = QImage(rgb.data, w, h, 3 * w, QImage.Format.Format_RGB888)
    return QPixmap.fromImage(image.copy())


def framed(rgb: np.ndarray, colour, *, width: int = 3) -> np.ndarray:
    """``rgb`` with a frame of ``colour`` (RGB or RGBA in 0-1; None: unchanged)."""
    if colour is None:
        return rgb
    out = rgb.copy()
    value = (np.clip(np.asarray(colour, float)[:3], 0, 1) * 255).round().astype(np.uint8)
    out[:width], out[-width:], out[:, :width], out[:, -width:] = value, value, value, value
    return out


class ThumbnailGrid(QListWidget):
    """Thumbnails in page order; each item holds its map row."""

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.setViewMode(QListView.ViewMode.IconMode)
        self.setResizeMode(QListView.ResizeMode.Adjust)
        self.setMovement(QListView.Movement.Static)
        self.setUniformItemSizes(True)
        self.setWordWrap(True)
        self.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.setMinimumHeight(260)
        self.size = 0
        self.set_size(64)

    def set_size(self, size: int) -> None:
        self.size = int(size)
        self.setIconSize(QSize(self.size, self.size))
        self.setGridSize(QSize(self.size + 18, self.size + 38))

    def show_rows(self, rows, captions, tooltips) -> None:
        """Placeholders for ``rows`` (their thumbnails come with :meth:`set_thumbnails`)."""
        grey = np.full((self.size, self.size, 3), PLACEHOLDER, np.uint8)
        icon = QIcon(to_pixmap(grey))
        blocker = QSignalBlocker(self)  # no selection signals while rows are laid out
        try:
            self.clear()
            for row, caption, tip in zip(rows, captions, tooltips, strict=True):
                item = QListWidgetItem(icon, caption)
                item.setData(_ROW, int(row))
                item.setToolTip(tip)
                item.setTextAlignment(Qt.AlignmentFlag.AlignHCenter | Qt.AlignmentFlag.AlignTop)
                self.addItem(item)
        finally:
            blocker.unblock()

    def set_thumbnail(self, position: int, rgb: np.ndarray) -> None:
        item = self.item(int(position))
        if item is not None:
            item.setIcon(QIcon(to_pixmap(rgb)))

    def set_text(self, position: int, caption: str, tooltip: str) -> None:
        item = self.item(int(position))
        if item is not None:
            item.setText(caption)
            item.setToolTip(tooltip)

    def row_of(self, item: QListWidgetItem) -> int:
        return int(item.data(_ROW))

    def chosen_rows(self) -> list[int]:
        """The rows of the chosen (selected) thumbnails, in page order."""
        items = sorted(self.selectedItems(), key=self.row)
        return [self.row_of(item) for item in items]


class PreviewLabel(QLabel):
    """The thumbnail of the map point under the mouse, at a fixed place."""

    def __init__(self, size: int = 128, parent=None) -> None:
        super().__init__(parent)
        self.setFixedSize(size, size)
        self.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.setStyleSheet("background: #262930;")
        self.row: int | None = None
        self.image: np.ndarray | None = None  # what is shown, as computed

    def show_thumbnail(self, row: int | None, rgb: np.ndarray | None) -> None:
        self.row, self.image = row, rgb
        if rgb is None:
            self.clear()
            return
        pixmap = to_pixmap(rgb)
        if pixmap.width() != self.width():
            pixmap = pixmap.scaled(self.width(), self.height(), Qt.AspectRatioMode.KeepAspectRatio)
        self.setPixmap(pixmap)
