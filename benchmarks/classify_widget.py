"""Classify segments in napari: is retraining on every click fast enough, and does napari stay
responsive meanwhile?

napari opens on generated ellipses (two classes: elongated or round, from their measured axis
ratio), Embed segments embeds them, then Classify segments gets 2 classes and a click every
``--interval`` seconds (the widget's ``annotate_labels``, what a click on a segment calls),
alternating classes.  Every click retrains and predicts every segment in a worker.  Measured:
the time a click takes in the GUI thread, the time from a click to its predictions being shown
(coloured), and the longest stall of napari's event loop (a 10 ms heartbeat timer).  Baseline:
the same ``train_classifier`` + ``predict`` headless on the same table, in the same run.

    xvfb-run -a python benchmarks/classify_widget.py              # 2,025 segments
    xvfb-run -a python benchmarks/classify_widget.py --grid 70    # 4,900 segments
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--grid", type=int, default=45, help="grid x grid segments")
    parser.add_argument("--clicks", type=int, default=20)
    parser.add_argument("--interval", type=float, default=0.7, help="seconds between clicks")
    args = parser.parse_args()

    from _common import make_ellipse_labels, make_image
    from skimage.measure import regionprops_table

    side = args.grid * 38
    labels = make_ellipse_labels((side, side), (args.grid, args.grid), radius=(8, 13), seed=0)
    image = make_image(labels, seed=0)
    props = regionprops_table(
        labels, properties=("label", "axis_minor_length", "axis_major_length")
    )
    ratio = props["axis_minor_length"] / np.maximum(props["axis_major_length"], 1e-9)
    truth = dict(zip(props["label"].tolist(), np.where(ratio < 0.75, "long", "round"), strict=True))

    import napari
    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QApplication

    viewer = napari.Viewer(show=True)
    app = QApplication.instance()
    viewer.add_image(image, name="img")
    viewer.add_labels(labels, name="cells")

    def wait(condition, timeout=1800.0):
        end = time.perf_counter() + timeout
        while not condition():
            if time.perf_counter() > end:
                raise TimeoutError("the session did not get there in time")
            app.processEvents()
            time.sleep(0.002)

    # what napari's GUI thread spends on each kind of redraw
    from napari_segrep._widgets._map_view import MapView

    spent: dict[str, list[float]] = {}
    for name in ("_redraw_classes", "_flush_layer_features"):
        original = getattr(MapView, name)

        def timed(self, _original=original, _name=name):
            t0 = time.perf_counter()
            _original(self)
            spent.setdefault(_name, []).append((time.perf_counter() - t0) * 1e3)

        setattr(MapView, name, timed)

    _, embed = viewer.window.add_plugin_dock_widget("napari-segrep", "Embed segments")
    embed.crop_input.value = 32
    embed.umap_input.value = False
    embed.run()
    wait(lambda: embed.job is None and embed.map_view.settled)
    n = len(embed.results.table)
    print(f"{n} segments embedded (crop 32); clicking {args.clicks} times")

    _, widget = viewer.window.add_plugin_dock_widget("napari-segrep", "Classify segments")
    widget.add_class("long")
    widget.add_class("round")
    rng = np.random.default_rng(0)
    picks = {c: rng.permutation([k for k, v in truth.items() if v == c]) for c in ("long", "round")}

    ticks: list[float] = []
    heartbeat = QTimer()
    heartbeat.setInterval(10)
    heartbeat.timeout.connect(lambda: ticks.append(time.perf_counter()))
    heartbeat.start()
    gui_ms, latency_ms = [], []
    for i in range(args.clicks):
        name = ("long", "round")[i % 2]
        label = int(picks[name][i // 2])
        shown = widget.results.table
        t0 = time.perf_counter()
        widget.annotate_labels([label], name)
        gui_ms.append((time.perf_counter() - t0) * 1e3)
        if i >= 3:  # from the 4th click on (2 per class) every click trains
            wait(lambda s=shown: widget.job is None and widget.results.table is not s)
            wait(lambda: widget.job is None and "class_predicted" in widget.results.table)
            latency_ms.append((time.perf_counter() - t0) * 1e3)
        end = t0 + args.interval
        wait(lambda e=end: time.perf_counter() > e)
    heartbeat.stop()
    stall = max(np.diff(ticks)) if len(ticks) > 1 else float("nan")

    table = widget.results.table
    predicted = table["class_predicted"].to_numpy()
    right = np.mean([predicted[r] == truth[int(v)] for r, v in enumerate(table["label"])])

    from napari_segrep.analysis.classify import train_classifier

    annotations = widget.results.annotation_frame()
    headless = []
    for _ in range(5):
        t0 = time.perf_counter()
        train_classifier(table, annotations).predict(table)
        headless.append((time.perf_counter() - t0) * 1e3)
    base = statistics.median(headless)
    lat = statistics.median(latency_ms)
    print(f"segments                         {n}")
    print(
        f"click, GUI thread (median / max) {statistics.median(gui_ms):.1f} / {max(gui_ms):.1f} ms"
    )
    print(f"click -> predictions shown       {lat:.0f} ms median, {max(latency_ms):.0f} ms max")
    print(f"headless train + predict         {base:.0f} ms (median of 5)")
    print(f"ratio shown / headless           {lat / base:.2f}")
    print(f"longest event-loop stall         {stall * 1e3:.0f} ms")
    for name, values in spent.items():
        print(
            f"{name:32s} {statistics.median(values):.0f} ms median, {max(values):.0f} max "
            f"({len(values)} times)"
        )
    print(f"accuracy after {args.clicks} clicks         {right:.3f}")
    viewer.close()


if __name__ == "__main__":
    main()
