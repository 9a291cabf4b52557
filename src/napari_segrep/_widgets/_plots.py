"""Small live line plots for the dock widgets (no plotting dependency)."""

from __future__ import annotations

import numpy as np
from qtpy.QtCore import QPointF, Qt
from qtpy.QtGui import QColor, QPainter, QPen
from qtpy.QtWidgets import QWidget

__all__ = ["LinePlot", "LossCurve"]


class LinePlot(QWidget):
    """A minimal live line plot (no plotting dependency): ``values`` in order, an optional
    horizontal ``reference`` line (dashed), a ``title`` in the top right corner."""

    def __init__(self, title: str, *, color=(80, 200, 255), markers: bool = False) -> None:
        super().__init__()
        self.title = title
        self.values: list[float] = []
        self.reference: float | None = None
        self._color = QColor(*color)
        self._markers = markers
        self.setMinimumHeight(110)

    def clear(self) -> None:
        self.values = []
        self.reference = None
        self.update()

    def add(self, value: float) -> None:
        self.values.append(float(value))
        self.update()

    def set_reference(self, value: float | None) -> None:
        self.reference = None if value is None else float(value)
        self.update()

    def paintEvent(self, event) -> None:  # noqa: N802 - Qt's name
        painter = QPainter(self)
        painter.fillRect(self.rect(), QColor(38, 41, 48))
        painter.setPen(QColor(180, 180, 180))
        finite = [v for v in self.values if np.isfinite(v)]
        if not finite:
            painter.drawText(self.rect(), Qt.AlignmentFlag.AlignCenter, self.title)
            return
        w, h, m = self.width(), self.height(), 14
        painter.drawText(
            0, 0, w - 4, h, Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignTop, self.title
        )
        ref = self.reference if self.reference is not None and np.isfinite(self.reference) else None
        bounds = finite + ([ref] if ref is not None else [])
        lo, hi = min(bounds), max(bounds)
        span = hi - lo or 1.0
        painter.drawText(4, 12, f"{hi:.3g}")
        painter.drawText(4, h - 3, f"{lo:.3g}")
        n = max(len(self.values) - 1, 1)

        def y(v: float) -> float:
            return m + (h - 2 * m) * (1 - (v - lo) / span)

        if ref is not None:
            pen = QPen(QColor(200, 200, 120), 1)
            pen.setStyle(Qt.PenStyle.DashLine)
            painter.setPen(pen)
            painter.drawLine(QPointF(m, y(ref)), QPointF(w - m, y(ref)))
        points = [
            QPointF(m + (w - 2 * m) * i / n, y(v))
            for i, v in enumerate(self.values)
            if np.isfinite(v)
        ]
        painter.setPen(QPen(self._color, 2))
        painter.drawPolyline(points)
        if self._markers:
            painter.setBrush(self._color)
            for point in points:
                painter.drawEllipse(point, 2.5, 2.5)


class LossCurve(LinePlot):
    """The loss per step."""

    def __init__(self) -> None:
        super().__init__("loss")
