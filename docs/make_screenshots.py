"""Screenshots for the README tutorial: embed -> train -> re-embed, in a real napari window.

    xvfb-run -a -s "-screen 0 1600x1000x24" python docs/make_screenshots.py

Writes docs/train_widget.png (training finished: loss and effective-rank plots) and docs/reembed.png (the map of
the trained model next to the map "before").
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

HERE = Path(__file__).parent


def main() -> None:
    import napari
    from qtpy.QtWidgets import QApplication

    viewer = napari.Viewer(title="napari-segrep tutorial")
    viewer.window.resize(1500, 950)
    app = QApplication.instance()
    viewer.open_sample("napari-segrep", "cells")

    def wait(condition, timeout=900.0):
        t0 = time.time()
        while not condition():
            app.processEvents()
            time.sleep(0.01)
            if time.time() - t0 > timeout:
                raise TimeoutError

    def settle(seconds=0.5):  # let Qt lay out changed texts before a screenshot
        t0 = time.time()
        while time.time() - t0 < seconds:
            app.processEvents()
            time.sleep(0.01)

    _, embed = viewer.window.add_plugin_dock_widget("napari-segrep", "Embed segments")
    embed.umap_input.value = False
    embed.run()
    wait(lambda: embed.job is None and embed.points_layer is not None and embed.map_view.settled)

    _, train = viewer.window.add_plugin_dock_widget("napari-segrep", "Train SegRep")
    train.epochs_input.value = 8
    train.batch_input.value = 32
    train.device_input.value = "cpu"
    train.checkpoint_dir_input.value = Path(tempfile.mkdtemp(prefix="segrep-tutorial-")) / "run"
    train.run()
    wait(lambda: train.job is None)
    viewer.reset_view()
    settle()
    viewer.screenshot(str(HERE / "train_widget.png"), canvas_only=False)

    train.reembed()
    wait(lambda: embed.job is None and embed.agreement is not None and embed.map_view.settled)
    viewer.reset_view()
    settle()
    viewer.screenshot(str(HERE / "reembed.png"), canvas_only=False)
    print(
        "wrote",
        HERE / "train_widget.png",
        HERE / "reembed.png",
        f"(agreement {embed.agreement:.2f})",
    )
    viewer.close()


if __name__ == "__main__":
    main()
