"""``napari-segrep demo``: napari with the generated cells, the widget docked, the run started."""

from __future__ import annotations

import sys
from pathlib import Path

__all__ = ["run_demo"]


def run_demo(
    *, quit_when_done: bool = False, screenshot: str | Path | None = None, timeout_s: float = 300.0
) -> int:
    """Open napari on the "cells" sample, dock **Embed segments** and press Run.

    With ``quit_when_done`` (or ``screenshot``) the viewer closes itself once the UMAP map is
    shown (after saving the screenshot of the whole window, with a few points selected so the
    linking shows); otherwise napari runs until the user closes it.
    """
    import napari
    from qtpy.QtCore import QTimer

    viewer = napari.Viewer(title="napari-segrep demo")
    viewer.window.resize(1500, 900)
    viewer.open_sample("napari-segrep", "cells")
    _, widget = viewer.window.add_plugin_dock_widget("napari-segrep", "Embed segments")
    widget.run()
    if not (quit_when_done or screenshot):
        napari.run()
        return 0

    state = {"elapsed": 0.0, "rc": 1}
    timer = QTimer()
    timer.setInterval(200)

    def check() -> None:
        state["elapsed"] += 0.2
        points = widget.points_layer
        done = points is not None and points.metadata.get("map_method") == "umap"
        if not done and state["elapsed"] < timeout_s:
            return
        timer.stop()
        if done:
            _select_a_group(widget)
            viewer.reset_view()
            if screenshot:
                viewer.screenshot(str(screenshot), canvas_only=False)
            print(
                f"demo: {len(widget.table)} segments embedded, map: "
                f"{points.metadata['map_method']}",
                flush=True,
            )
            state["rc"] = 0
        else:
            print(f"demo: no map after {timeout_s:.0f} s ({widget.status.value})", file=sys.stderr)
        viewer.close()

    timer.timeout.connect(check)
    timer.start()
    napari.run()
    return state["rc"]


def _select_a_group(widget) -> None:
    """Select the points nearest to one point of the map, so the screenshot shows the link."""
    import numpy as np

    coords = widget.map_model.coords
    d = ((coords - coords[0]) ** 2).sum(1)
    widget.points_layer.selected_data = set(np.argsort(d)[:12].tolist())
