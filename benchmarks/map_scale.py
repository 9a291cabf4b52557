"""Maps of 100,000 points: is napari fast enough for the selection, the highlight and colours?

A real napari viewer (needs a display: ``xvfb-run``; software OpenGL there, so paints cost
more than on a GPU) with a uint32 labels layer of 102,400 segments (a 3200 x 3200 grid of
10 x 10 squares) and a points layer of 102,400 points.  Each case is one change (alternating
between two states, so every repeat really changes something), timed from the call to the
end of the call (``set``) and to the end of the next canvas paint (``paint``: Qt events are
processed until the canvas's draw event has fired), after a warm-up; median and max.

(a) ``DirectLabelColormap`` with a dict of every label (the selected bright, the others dim);
(b) the same with only the selected labels named and ``None`` (the default) dim, for 100,
    10,000 and 50,000 selected labels (what the package's ``MapView`` does today);
(c) other ways: a ``CyclicLabelColormap`` kept and ``show_selected_label`` on while the
    selected label changes; ``layer.opacity``; an RGBA overlay image painted by
    ``_label_colours.paint_labels`` (a lookup table, one numpy gather); an indexed overlay:
    a uint8 labels layer painted through ``_label_colours.indexed_colours`` (each label's
    palette index) whose ``DirectLabelColormap`` names only the palette
    (``index_colormap``): napari draws uint8 labels without re-mapping their pixels;
(d) points: selection of 1,000 and 50,000 points, face colours of every point;
(e) the package's ``MapView`` end to end: rows selected in the results model -> points
    selected and labels highlighted, painted.

    xvfb-run -a -s "-screen 0 1600x1000x24" nice -n 10 python benchmarks/map_scale.py
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from _common import write_json

TARGET_MS = 200.0
DIMMED = np.array([0.6, 0.6, 0.6, 0.15])


def grid_labels(side: int, cell: int) -> np.ndarray:
    per_row = side // cell
    rows = np.arange(side)[:, None] // cell
    cols = np.arange(side)[None, :] // cell
    return (rows * per_row + cols + 1).astype(np.uint32)


class Painter:
    """Counts the canvas's paints; ``wait(t0)``: process Qt events until one ends after
    ``t0`` and return its end time."""

    def __init__(self, viewer, app) -> None:
        self.app, self.last = app, 0.0
        canvas = viewer.window._qt_viewer.canvas._scene_canvas
        canvas.events.draw.connect(self._drawn, position="last")
        self._canvas = canvas

    def _drawn(self, event=None) -> None:
        self.last = time.perf_counter()

    def wait(self, t0: float, timeout: float = 30.0) -> float:
        self._canvas.update()
        while self.last <= t0 and time.perf_counter() - t0 < timeout:
            self.app.processEvents()
        return self.last


def measure(painter: Painter, actions: list, repeats: int) -> dict:
    """Run ``actions`` in turn (the first ``len(actions)`` runs are the warm-up)."""
    sets, paints = [], []
    for i in range(len(actions) + repeats):
        painter.wait(time.perf_counter())  # start from a painted, idle canvas
        t0 = time.perf_counter()
        actions[i % len(actions)]()
        t1 = time.perf_counter()
        t2 = painter.wait(t1)
        if i >= len(actions):
            sets.append((t1 - t0) * 1e3)
            paints.append((t2 - t0) * 1e3)
    return {
        "set_median_ms": statistics.median(sets),
        "set_max_ms": max(sets),
        "paint_median_ms": statistics.median(paints),
        "paint_max_ms": max(paints),
        "repeats": repeats,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--side", type=int, default=3200)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--mapview", action="store_true", help="also MapView end to end")
    parser.add_argument(
        "--only-mapview", action="store_true", help="MapView end to end only (about 2 min)"
    )
    args = parser.parse_args()
    if args.only_mapview:
        only_mapview(args)
        return

    import napari
    from napari.utils.colormaps import CyclicLabelColormap, DirectLabelColormap
    from qtpy.QtWidgets import QApplication

    from napari_segrep._widgets._label_colours import (
        index_colormap,
        indexed_colours,
        label_lut,
        paint_labels,
    )

    labels = grid_labels(args.side, 10)
    n = int(labels.max())
    ids = np.arange(1, n + 1)
    rng = np.random.default_rng(0)
    colours = np.concatenate([rng.uniform(0.2, 1, (n, 3)), np.ones((n, 1))], axis=1)
    viewer = napari.Viewer(show=True)
    app = QApplication.instance()
    layer = viewer.add_labels(labels, name="cells")
    coords = rng.normal(size=(n, 2)) * args.side / 8 + [args.side / 2, args.side * 1.6]
    points = viewer.add_points(coords, size=args.side / 400, name="map")
    viewer.reset_view()
    painters = [Painter(viewer, app)]  # the last one: the current viewer's
    original = layer.colormap
    cases: dict[str, dict] = {}

    def run(name, actions, repeats=args.repeats):
        cases[name] = measure(painters[-1], actions, repeats)
        c = cases[name]
        print(f"  ... {name}: paint median {c['paint_median_ms']:.0f} ms", flush=True)

    selections = {k: [rng.choice(ids, k, replace=False) for _ in range(2)] for k in (100, 10_000,
                  50_000)}  # fmt: skip

    def direct_full(sel):
        bright = np.isin(ids, sel)
        cols = np.where(bright[:, None], colours, DIMMED)
        d = {None: DIMMED, 0: np.zeros(4)}
        d.update(zip(ids.tolist(), cols, strict=True))
        return lambda: setattr(layer, "colormap", DirectLabelColormap(color_dict=d))

    def direct_few(sel):
        d = {None: DIMMED, 0: np.zeros(4)}
        d.update(zip(sel.tolist(), colours[sel - 1], strict=True))
        return lambda: setattr(layer, "colormap", DirectLabelColormap(color_dict=d))

    print("map_scale: measuring", flush=True)
    run("(0) repaint alone (nothing changed): the floor", [lambda: None, lambda: None])
    run("(a) Direct, dict of all labels (100 bright)",
        [direct_full(s) for s in selections[100]], repeats=3)  # fmt: skip
    for k, sels in selections.items():
        run(f"(b) Direct, {k} selected + None default", [direct_few(s) for s in sels],
            repeats=3 if k > 100 else args.repeats)  # fmt: skip

    cyclic = CyclicLabelColormap(colors=original.colors, seed=0.5)

    def cyclic_select(label):
        def act():
            layer.selected_label = int(label)

        return act

    layer.colormap = cyclic
    layer.show_selected_label = True
    run("(c) Cyclic + show_selected_label, label change", [cyclic_select(5), cyclic_select(7)])
    layer.show_selected_label = False
    run("(c) layer.opacity", [lambda: setattr(layer, "opacity", 0.3),
                              lambda: setattr(layer, "opacity", 0.7)])  # fmt: skip

    # the overlay: the labels layer keeps its colormap, hidden colours (opacity 0, still
    # pickable), an RGBA image of the highlight drawn in its place
    overlay = viewer.add_image(np.zeros((*labels.shape, 4), np.uint8), rgb=True, name="hl")

    def overlay_paint(sel):
        def act():
            lut = label_lut(ids, colours, selected=sel, dimmed=DIMMED)
            overlay.data = paint_labels(labels, lut)

        return act

    for k, sels in selections.items():
        run(f"(c) RGBA overlay (paint_labels), {k} selected", [overlay_paint(s) for s in sels])

    def overlay_all(cols):
        return lambda: setattr(overlay, "data", paint_labels(labels, label_lut(ids, cols)))

    by_class = np.array([[0.9, 0.2, 0.2, 1], [0.2, 0.6, 0.9, 1]])[ids % 2]
    run("(c) RGBA overlay, every label coloured (class)",
        [overlay_all(by_class), overlay_all(colours)])  # fmt: skip
    d_class = {None: DIMMED, 0: np.zeros(4)}
    d_class.update(zip(ids.tolist(), by_class, strict=True))
    run("(a) Direct, every label coloured (class)",
        [lambda: setattr(layer, "colormap", DirectLabelColormap(color_dict=d_class)),
         direct_full(selections[100][0])], repeats=3)  # fmt: skip
    viewer.layers.remove(overlay)
    layer.colormap = original

    # the indexed overlay: a uint8 labels layer (napari draws it without re-mapping pixels)
    # whose colormap names only the palette (a few dozen colours)
    cyclic_colours = original.map(ids.astype(np.uint32))  # the layer's own (49) colours
    index, palette = indexed_colours(ids, cyclic_colours, selected=selections[100][0])
    hl = viewer.add_labels(paint_labels(labels, index), name="hl idx")
    hl.colormap = index_colormap(palette)

    def indexed_set(sel, in_place):
        def act():
            index, palette = indexed_colours(ids, cyclic_colours, selected=sel, dimmed=DIMMED)
            if in_place and index.dtype == hl.data.dtype:
                paint_labels(labels, index, out=hl.data)
            else:
                hl.data = paint_labels(labels, index)
            hl.colormap = index_colormap(palette)  # (refreshes)

        return act

    for k, sels in selections.items():
        run(f"(c) indexed uint8 labels overlay, {k} selected",
            [indexed_set(s, True) for s in sels])  # fmt: skip
    run("(c) indexed overlay, 100 selected, data reassigned",
        [indexed_set(s, False) for s in selections[100]])  # fmt: skip
    class_index, class_palette = indexed_colours(ids, by_class)
    all_index, all_palette = indexed_colours(ids, cyclic_colours)

    def indexed_all(index, palette):
        def act():
            paint_labels(labels, index, out=hl.data)
            hl.colormap = index_colormap(palette)

        return act

    run("(c) indexed overlay, every label coloured (class / own)",
        [indexed_all(class_index, class_palette), indexed_all(all_index, all_palette)])  # fmt: skip
    viewer.layers.remove(hl)

    for k in (1_000, 50_000):
        sel = [set(rng.choice(n, k, replace=False).tolist()) for _ in range(2)]
        run(f"(d) points selection of {k}",
            [lambda s=s: setattr(points, "selected_data", s) for s in sel])  # fmt: skip
    points.selected_data = set()
    run("(d) points face colour of all",
        [lambda: setattr(points, "face_color", colours), lambda: setattr(points, "face_color",
         np.roll(colours, 1, axis=0))])  # fmt: skip

    report(cases, n, args.side)
    write_json("map_scale", {"n": n, "side": args.side, "cases": cases})
    if args.mapview:
        # in a viewer of its own (removing the layers above and reusing this one crashed
        # vispy under Xvfb once)
        viewer.close()
        viewer = napari.Viewer(show=True)
        painters.append(Painter(viewer, app))
        mapview_cases(viewer, labels, run, rng, app)
        report({k: v for k, v in cases.items() if k.startswith("(e)")}, n, args.side)
        write_json("map_scale", {"n": n, "side": args.side, "cases": cases})


def only_mapview(args) -> None:
    """The (e) cases alone, in a fresh viewer."""
    import napari
    from qtpy.QtWidgets import QApplication

    labels = grid_labels(args.side, 10)
    viewer = napari.Viewer(show=True)
    app = QApplication.instance()
    painter = Painter(viewer, app)
    cases: dict[str, dict] = {}

    def run(name, actions, repeats=args.repeats):
        cases[name] = measure(painter, actions, repeats)
        print(f"  ... {name}: paint median {cases[name]['paint_median_ms']:.0f} ms", flush=True)

    mapview_cases(viewer, labels, run, np.random.default_rng(0), app)
    report(cases, int(labels.max()), args.side)
    write_json("map_scale_mapview", {"n": int(labels.max()), "side": args.side, "cases": cases})


def report(cases: dict, n: int, side: int) -> None:
    print(
        f"\nmap_scale  (xvfb-run -a -s '-screen 0 1600x1000x24' nice -n 10 python "
        f"benchmarks/map_scale.py)\n  {n} segments ({side}x{side} uint32), {n} points;"
        f" target: change -> painted <= {TARGET_MS:.0f} ms"
    )
    print(f"  {'case':58s} {'set med':>8s} {'set max':>8s} {'paint med':>9s} {'paint max':>9s}")
    for name, c in cases.items():
        ok = "ok" if c["paint_median_ms"] <= TARGET_MS else "SLOW"
        print(
            f"  {name:58s} {c['set_median_ms']:8.0f} {c['set_max_ms']:8.0f}"
            f" {c['paint_median_ms']:9.0f} {c['paint_max_ms']:9.0f}  {ok}"
        )
    print("  ms; set: the call itself; paint: the call until the canvas has painted", flush=True)


def mapview_cases(viewer, labels, run, rng, app) -> None:
    """The package's MapView on a synthetic results table (PCA coordinates of random
    embeddings), fed selections through the results model."""
    import pandas as pd

    from napari_segrep._widgets._map_view import MapView
    from napari_segrep._widgets._results import RunSetup, SegmentResults
    from napari_segrep.analysis.reduce import pca_map

    n = int(labels.max())
    layer = viewer.add_labels(labels, name="cells")
    emb = rng.normal(size=(n, 8)).astype(np.float32)
    table = pd.DataFrame({"label": np.arange(1, n + 1)})
    table = pd.concat([table, pd.DataFrame(emb).add_prefix("emb_")], axis=1)
    run_setup = RunSetup(encoder=None, params={}, image=labels, labels=labels, stack=False)
    results = SegmentResults(layer, table, pca_map(emb), run_setup)
    view = MapView(viewer)
    view.attach(results)
    for _ in range(50):
        app.processEvents()
        time.sleep(0.02)
    for k in (1, 100, 1_000, 5_000, 10_000, 50_000):
        sel = [rng.choice(n, k, replace=False).tolist() for _ in range(2)]
        run(f"(e) MapView: select {k} rows -> highlight", [
            lambda s=s: results.select_rows(s) for s in sel],
            repeats=3 if k > 1000 else 5)  # fmt: skip
    results.select_rows(())
    if "cluster" not in table:
        ids = rng.integers(1, 11, n)
        run("(e) MapView: set_clusters (colour by cluster)",
            [lambda: results.set_clusters(ids), lambda: results.set_clusters(ids[::-1].copy())],
            repeats=3)  # fmt: skip


if __name__ == "__main__":
    main()
