"""From Run to the map in napari: 2,000 and 10,000 segments.

For each size: time from ``widget.run()`` to the PCA map on screen (embedding included), to the
UMAP map, and the UMAP fit alone after the JIT warm-up (headless, same data).  Needs a display:
run it under ``xvfb-run -a`` on a headless machine.

    xvfb-run -a python benchmarks/map_timing.py           # ~3 min on 2 CPU cores
    xvfb-run -a python benchmarks/map_timing.py --quick
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from _common import make_ellipse_labels, make_image, write_json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    # (grid rows/cols, image side): ~36 px cells holding ellipses of radius 8-14 px
    sizes = [(17, 612)] if args.quick else [(45, 1620), (100, 3600)]

    import napari
    from qtpy.QtWidgets import QApplication

    from napari_segrep.analysis.reduce import umap_map, warm_up_umap

    t = time.perf_counter()
    warm_up_umap()
    print(
        "map_timing  (xvfb-run -a python benchmarks/map_timing.py"
        f"{' --quick' if args.quick else ''})"
    )
    print(f"  UMAP JIT warm-up (first use in a process): {time.perf_counter() - t:.1f} s")
    results = {}
    app = None
    for grid, side in sizes:
        labels = make_ellipse_labels((side, side), (grid, grid), radius=(8, 14), seed=0)
        image = make_image(labels, seed=0)
        n_found = len(np.unique(labels)) - 1
        viewer = napari.Viewer(show=True)
        app = app or QApplication.instance()
        viewer.add_image(image, name="img")
        viewer.add_labels(labels, name="cells")
        _, widget = viewer.window.add_plugin_dock_widget("napari-segrep", "Embed segments")
        t0 = time.perf_counter()
        widget.run()
        first = umap_done = None
        while time.perf_counter() - t0 < 900:
            app.processEvents()
            points = widget.points_layer
            if points is not None and first is None:
                first = time.perf_counter() - t0
            if points is not None and points.metadata.get("map_method") == "umap":
                umap_done = time.perf_counter() - t0
                break
            time.sleep(0.005)
        emb = widget.table.filter(like="emb_").to_numpy()
        viewer.close()
        t1 = time.perf_counter()
        umap_map(emb)
        umap_alone = time.perf_counter() - t1
        results[n_found] = {
            "run_to_pca_map_s": first,
            "run_to_umap_map_s": umap_done,
            "umap_fit_after_warm_up_s": umap_alone,
        }
        print(
            f"  {n_found:6d} segments ({side}x{side}): Run -> PCA map {first:.1f} s, "
            f"Run -> UMAP map {umap_done:.1f} s; UMAP fit alone (after warm-up) "
            f"{umap_alone:.1f} s"
            + (
                "   target <= 15 s: " + ("MEETS" if umap_alone <= 15 else "MISSES")
                if n_found >= 10000
                else ""
            )
        )
    write_json("map_timing", results)


if __name__ == "__main__":
    main()
