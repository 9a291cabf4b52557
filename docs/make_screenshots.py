"""Screenshots for the README tutorial: embed -> train -> re-embed, in a real napari window.

    xvfb-run -a -s "-screen 0 1600x1000x24" python docs/make_screenshots.py [classify|multi|gallery|refine|backbone]

Writes docs/train_widget.png (training finished: loss and effective-rank plots) and
docs/reembed.png (the map of the trained model next to the map "before"); with ``classify``,
docs/classify_widget.png only (three clicks per class, every cell coloured by its prediction);
with ``multi``, docs/embed_multi.png only (three generated images embedded together, one map
coloured by image, a few neighbouring points selected); with ``gallery``, docs/gallery.png only
(the sample's cells embedded, a patch of the map selected, the Segment gallery showing those
segments, most typical first, and the preview of one point); with ``refine``,
docs/refine_widget.png only (generated nuclei in four states, 10 clicks per class, the encoder
refined from them and accepted: the map and predictions of the refined encoder, the figures
before -> after in Classify segments); with ``backbone``, docs/backbone_picker.png only (the
sample's cells embedded with the masked DINOv2 ViT-S/14 picked in Embed segments, untrained
where its weights are not in the cache: the **Download DINOv2 weights** button shows).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

HERE = Path(__file__).parent


def _wait_until(app, condition, timeout=900.0) -> None:
    """Process Qt events until ``condition()`` (TimeoutError after ``timeout`` s)."""
    t0 = time.time()
    while not condition():
        app.processEvents()
        time.sleep(0.01)
        if time.time() - t0 > timeout:
            raise TimeoutError


def _settle(app, seconds=0.5) -> None:
    """Let Qt lay out changed texts before a screenshot."""
    t0 = time.time()
    while time.time() - t0 < seconds:
        app.processEvents()
        time.sleep(0.01)


def main(only_classify: bool = False) -> None:
    import napari
    from qtpy.QtWidgets import QApplication

    viewer = napari.Viewer(title="napari-segrep tutorial")
    viewer.window.resize(1500, 950)
    app = QApplication.instance()
    viewer.open_sample("napari-segrep", "cells")

    def wait(condition, timeout=900.0):
        _wait_until(app, condition, timeout)

    def settle(seconds=0.5):  # let Qt lay out changed texts before a screenshot
        _settle(app, seconds)

    _, embed = viewer.window.add_plugin_dock_widget("napari-segrep", "Embed segments")
    embed.umap_input.value = False
    embed.run()
    wait(lambda: embed.job is None and embed.points_layer is not None and embed.map_view.settled)

    if only_classify:
        classify_screenshot(viewer, wait, settle)
        viewer.close()
        return

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


def classify_screenshot(viewer, wait, settle) -> None:
    """Classify segments: three clicks per class (the sample's true classes), then predicted."""
    from napari_segrep._sample_data import make_cells

    _, _, classes = make_cells()  # the sample's cells and their classes
    _, widget = viewer.window.add_plugin_dock_widget("napari-segrep", "Classify segments")
    names = sorted(set(classes.values()))
    for name in names:
        widget.add_class(name)
    for name in names:
        labels = [k for k, v in sorted(classes.items()) if v == name][:3]
        widget.annotate_labels(labels, name)
        wait(lambda: widget.job is None)
    wait(lambda: widget.job is None and "class_predicted" in widget.results.table)
    widget.predictions_layer()
    viewer.layers["cells labels predictions"].visible = False
    viewer.layers.selection.active = viewer.layers["cells labels"]
    viewer.reset_view()
    settle()
    viewer.screenshot(str(HERE / "classify_widget.png"), canvas_only=False)
    truth = [classes[int(v)] for v in widget.results.table["label"]]
    right = (widget.results.table["class_predicted"] == truth).mean()
    print("wrote", HERE / "classify_widget.png", f"({right:.2f} of the cells predicted right)")


def multi_screenshot() -> None:
    """Embed segments with three (image, labels) pairs: one map, coloured by image."""
    import napari
    import numpy as np
    from qtpy.QtWidgets import QApplication

    from napari_segrep._sample_data import make_cells

    viewer = napari.Viewer(title="napari-segrep: many images, one map")
    viewer.window.resize(1500, 950)
    app = QApplication.instance()
    pairs = []
    for name, seed in (("plate A", 1), ("plate B", 2), ("plate C", 3)):
        image, labels, _ = make_cells(shape=(512, 512), n_cells=100, seed=seed)
        pairs.append(
            (viewer.add_image(image, name=name), viewer.add_labels(labels, name=f"{name} cells"))
        )
    _, embed = viewer.window.add_plugin_dock_widget("napari-segrep", "Embed segments")
    embed.image_input.value, embed.labels_input.value = [pairs[0][0]], pairs[0][1]
    for image, labels in pairs[1:]:
        embed.multi.add_pair(image, labels)
    embed.run()
    t0 = time.time()
    while not (embed.job is None and embed.points_layer is not None and embed.multi.view.settled):
        app.processEvents()
        time.sleep(0.01)
    while embed.map_model.method != "umap" and time.time() - t0 < 600:  # UMAP, when it comes
        app.processEvents()
        time.sleep(0.01)
    points = embed.points_layer
    # a point of the image on top (plate C) and its nearest neighbours of that image
    rows = np.flatnonzero(points.features["image"].to_numpy() == "plate C cells")
    d = np.linalg.norm(points.data[rows] - points.data[rows[len(rows) // 2]], axis=1)
    points.selected_data = set(rows[np.argsort(d)[:12]].tolist())
    viewer.layers.selection.active = points
    viewer.reset_view()
    t0 = time.time()
    while time.time() - t0 < 0.5:
        app.processEvents()
        time.sleep(0.01)
    viewer.screenshot(str(HERE / "embed_multi.png"), canvas_only=False)
    print("wrote", HERE / "embed_multi.png", f"({len(points.data)} segments, 3 images)")
    viewer.close()


def gallery_screenshot() -> None:
    """The Segment gallery: a patch of the map selected, its segments most typical first."""
    import napari
    import numpy as np
    from qtpy.QtWidgets import QApplication

    viewer = napari.Viewer(title="napari-segrep: segment gallery")
    viewer.window.resize(1500, 1000)
    app = QApplication.instance()
    viewer.open_sample("napari-segrep", "cells")

    def pump(condition=lambda: False, seconds=0.5, timeout=600.0):
        t0 = time.time()
        while not condition() and time.time() - t0 < (timeout if seconds is None else seconds):
            app.processEvents()
            time.sleep(0.01)

    gallery_dock, gallery = viewer.window.add_plugin_dock_widget("napari-segrep", "Segment gallery")
    embed_dock, embed = viewer.window.add_plugin_dock_widget("napari-segrep", "Embed segments")
    embed.run()
    pump(lambda: embed.job is None and embed.points_layer is not None, seconds=None)
    pump(lambda: embed.map_model.method == "umap" and embed.map_view.settled, seconds=None)
    embed_dock.hide()  # the gallery takes the dock's height
    points = embed.points_layer
    d = np.linalg.norm(points.data - points.data[len(points.data) // 3], axis=1)
    rows = np.argsort(d)[:24].tolist()
    points.selected_data = set(rows)
    viewer.layers.selection.active = points
    gallery.order_input.value = "most typical"
    pump(lambda: gallery.loaded and len(gallery.shown_rows) == len(rows), seconds=None)
    gallery.preview_row(rows[3])
    viewer.reset_view()
    pump(seconds=0.8)
    viewer.screenshot(str(HERE / "gallery.png"), canvas_only=False)
    print("wrote", HERE / "gallery.png", f"({len(rows)} segments selected)")
    viewer.close()


def backbone_screenshot() -> None:
    import napari
    from qtpy.QtWidgets import QApplication

    viewer = napari.Viewer(title="napari-segrep: a masked ViT")
    viewer.window.resize(1500, 950)
    app = QApplication.instance()
    viewer.open_sample("napari-segrep", "cells")
    _, embed = viewer.window.add_plugin_dock_widget("napari-segrep", "Embed segments")
    embed.umap_input.value = False
    embed.backbone_input.value = "vit_small_patch14_reg4_dinov2"
    embed.run()
    _wait_until(
        app, lambda: embed.job is None and embed.points_layer is not None and embed.map_view.settled
    )
    _settle(app)
    viewer.reset_view()
    viewer.screenshot(str(HERE / "backbone_picker.png"), canvas_only=False)
    print("wrote", HERE / "backbone_picker.png")
    viewer.close()


def refine_screenshot() -> None:
    """Classify segments on the generated nuclei (benchmarks/_ssl_tasks.py): 10 clicks per
    class, Refine encoder with these annotations, Accept."""
    import sys

    import napari
    import numpy as np
    from qtpy.QtWidgets import QApplication

    sys.path.insert(0, str(HERE.parent / "benchmarks"))
    import _ssl_tasks

    (image, labels, classes), _, names = _ssl_tasks.nuclei(seed=0, n=400)
    viewer = napari.Viewer(title="napari-segrep: refine the encoder")
    viewer.window.resize(1500, 950)
    app = QApplication.instance()
    viewer.add_image(image, name="nuclei")
    viewer.add_labels(labels, name="nuclei labels")

    def wait(condition, timeout=1800.0):
        t0 = time.time()
        while not condition():
            app.processEvents()
            time.sleep(0.01)
            if time.time() - t0 > timeout:
                viewer.close()  # cancels the work in flight, and waits for it
                raise TimeoutError

    _, embed = viewer.window.add_plugin_dock_widget("napari-segrep", "Embed segments")
    embed.umap_input.value = False
    embed.run()
    wait(lambda: embed.job is None and embed.points_layer is not None and embed.map_view.settled)
    _, widget = viewer.window.add_plugin_dock_widget("napari-segrep", "Classify segments")
    for name in names:
        widget.add_class(name)
    rng = np.random.default_rng(0)
    for c, name in enumerate(names):
        mine = [lab for lab, k in sorted(classes.items()) if k == c]
        widget.annotate_labels(list(rng.permutation(mine)[:10]), name)
        wait(lambda: widget.job is None)
    wait(lambda: widget.job is None and "class_predicted" in widget.results.table)
    part = widget.refinement
    wait(lambda: part.engine_loaded)
    part.update()
    part.refine()
    wait(lambda: part.job is None)
    print(part.comparison.value)
    if part.candidate is not None:
        part.accept()
    wait(lambda: widget.job is None and embed.map_view.settled)
    viewer.reset_view()
    t0 = time.time()
    while time.time() - t0 < 1.0:
        app.processEvents()
        time.sleep(0.01)
    viewer.screenshot(str(HERE / "refine_widget.png"), canvas_only=False)
    truth = [names[classes[int(v)]] for v in widget.results.table["label"]]
    right = (widget.results.table["class_predicted"] == truth).mean()
    print("wrote", HERE / "refine_widget.png", f"({right:.3f} of the nuclei predicted right)")
    viewer.close()


if __name__ == "__main__":
    import sys

    if "backbone" in sys.argv[1:]:
        backbone_screenshot()
    elif "refine" in sys.argv[1:]:
        refine_screenshot()
    elif "gallery" in sys.argv[1:]:
        gallery_screenshot()
    elif "multi" in sys.argv[1:]:
        multi_screenshot()
    else:
        main(only_classify="classify" in sys.argv[1:])
