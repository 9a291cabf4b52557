"""The Segment gallery in a real napari viewer: from a selection of map points to 200 thumbnails
on screen, against the issue's target (0.5 s on 10,000 segments in one image) and against the
engine alone (``ThumbnailSource.thumbnails`` of the same 200, measured in the same run).

A 2048 x 2048 uint16 image with 10,000 segments (the headless ``gallery_speed.py`` scene) and
its results model (a table with the engine's bounding boxes and random 512-d embeddings: the
thumbnails do not depend on their values) shown by the package's ``MapView``; the gallery
docked.  Timed from the selection (``points.selected_data = ...``, what a lasso does) until
every thumbnail of the page is in the grid (``gallery.loaded``), Qt events processed
meanwhile:

- 200 random rows selected, the first time (the image's percentiles, the thumbnail source)
  and then warm (a new random 200 each time);
- 5,000 rows selected: the first page of 200;
- 5,000 rows, "most typical" first (the neighbour index is built the first time);
- "more like this": the 24 nearest of one segment among 10,000;
- the hover preview of one point (one 128 px thumbnail, in the GUI thread).

    xvfb-run -a -s "-screen 0 1600x1000x24" nice -n 10 python benchmarks/gallery_widget.py

Figures go to ``benchmarks/out/gallery_widget.json``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from _common import command_line, make_ellipse_labels, make_image, write_json

TARGET_S = 0.5
PAGE = 200


def _wait(app, condition, timeout: float = 120.0) -> float:
    end = time.perf_counter() + timeout
    while not condition():
        if time.perf_counter() > end:
            raise TimeoutError("the gallery did not finish loading")
        app.processEvents()
        time.sleep(0.001)
    return time.perf_counter()


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: a 1024 px image")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)

    import napari
    import pandas as pd
    from qtpy.QtWidgets import QApplication

    from napari_segrep._widgets._map_view import MapView
    from napari_segrep._widgets._results import RunSetup, SegmentResults
    from napari_segrep._widgets.gallery import SegmentGalleryWidget
    from napari_segrep.analysis.reduce import pca_map
    from napari_segrep.engine.segments import segment_table
    from napari_segrep.engine.thumbnails import ThumbnailSource

    shape, grid = ((1024, 1024), (50, 50)) if args.quick else ((2048, 2048), (100, 100))
    labels = make_ellipse_labels(shape, grid, radius=(5.0, 9.0), aspect=(0.5, 1.0))
    image = make_image(labels)
    n = int(labels.max())
    rng = np.random.default_rng(0)
    geometry = segment_table(labels).geometry
    emb = rng.normal(size=(n, 512)).astype(np.float32)
    table = pd.concat([geometry, pd.DataFrame(emb).add_prefix("emb_")], axis=1)

    viewer = napari.Viewer(show=True)
    app = QApplication.instance()
    # what opening Embed segments does in a session: napari's label colouring compiled
    # beforehand (else the first highlight of the selection compiles it in the GUI thread)
    from napari_segrep._widgets._session import warm_up_label_colours

    warm_up_label_colours((str(labels.dtype),))
    viewer.add_image(image, name="img")
    layer = viewer.add_labels(labels, name="cells")
    params = {"normalize": "image", "channel_axis": None}
    run = RunSetup(encoder=None, params=params, image=image, labels=labels, stack=False)
    results = SegmentResults(layer, table, pca_map(emb[:, :8]), run)
    view = MapView(viewer)
    view.attach(results)
    gallery = SegmentGalleryWidget(viewer)
    viewer.window.add_dock_widget(gallery, name="Segment gallery")
    _wait(app, lambda: gallery.source is not None and view.settled)
    for _ in range(20):
        app.processEvents()
        time.sleep(0.01)
    points = view.points_layer
    times: dict[str, list[float]] = {}
    big = min(5000, n // 2)

    def shown(token: int, n_rows: int = PAGE):
        """A new page (asked for after ``token``) is all there."""
        return lambda: (
            gallery._token > token and gallery.loaded and (len(gallery.shown_rows) == n_rows)
        )

    def select(rows) -> float:
        token, t0 = gallery._token, time.perf_counter()
        points.selected_data = set(int(r) for r in rows)
        done = _wait(app, shown(token))
        assert gallery.shown_rows == sorted(int(r) for r in rows)[:PAGE]
        return done - t0

    def page(name: str, seconds: float) -> None:
        times.setdefault(name, []).append(seconds)

    page("200 selected, first time", select(rng.choice(n, PAGE, replace=False)))
    engine = ThumbnailSource(image, labels, normalize="image", table=geometry)
    engine.thumbnails([1])  # the engine alone, warm, for the same pages
    for _ in range(args.repeats):
        rows = rng.choice(n, PAGE, replace=False)
        page("200 selected", select(rows))
        t0 = time.perf_counter()
        engine.thumbnails(table["label"].to_numpy()[np.sort(rows)], size=64)
        page("engine alone: ThumbnailSource, same 200", time.perf_counter() - t0)
    for _ in range(args.repeats):
        page(f"{big:,} selected: first page", select(rng.choice(n, big, replace=False)))
    for i in range(args.repeats):
        gallery.order_input.value = "first"
        _wait(app, lambda: gallery.loaded)
        sel = rng.choice(n, big, replace=False)
        token = gallery._token
        points.selected_data = set(int(r) for r in sel)
        _wait(app, shown(token))
        token, t0 = gallery._token, time.perf_counter()
        gallery.order_input.value = "most typical"
        done = _wait(app, shown(token))
        page(f"{big:,} selected: most typical first" + (" (index built)" if i == 0 else ""),
             done - t0)  # fmt: skip
    gallery.k_input.value = 24
    for _ in range(args.repeats):
        token = gallery._token
        points.selected_data = {int(rng.integers(n))}
        _wait(app, shown(token, 1))
        token, t0 = gallery._token, time.perf_counter()
        gallery.more_like_this()
        done = _wait(app, shown(token, 25))
        page(f"more like this: 24 nearest of {n:,}", done - t0)
        gallery.show_input.value = "selected points"
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        gallery.preview_row(int(rng.integers(n)))
        page("hover preview (128 px, GUI thread)", time.perf_counter() - t0)

    print(
        f"\ngallery_widget  ({command_line()})\n  {shape[0]} x {shape[1]} uint16, {n} segments;"
        f" target: selection -> {PAGE} thumbnails shown <= {TARGET_S:.1f} s"
    )
    print(f"  {'case':52s} {'median':>8s} {'max':>8s}")
    summary = {}
    for name, values in times.items():
        med, worst = statistics.median(values), max(values)
        summary[name] = {"median_s": med, "max_s": worst, "all_s": values}
        print(f"  {name:52s} {med * 1000:6.0f} ms {worst * 1000:6.0f} ms")
    engine_med = summary["engine alone: ThumbnailSource, same 200"]["median_s"]
    widget_med = summary["200 selected"]["median_s"]
    print(f"  widget / engine alone: {widget_med / engine_med:.2f}x")
    viewer.close()
    out = {"command": command_line(), "segments": n, "shape": list(shape), "cases": summary}
    write_json("gallery_widget", out)
    return out


if __name__ == "__main__":
    main()
