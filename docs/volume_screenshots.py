"""Screenshots of volumes in napari for the README: a z-stack through Embed segments and the
Segment gallery, in a real napari window.

    xvfb-run -a -s "-screen 0 1600x1000x24" python docs/volume_screenshots.py

A generated z-stack of nuclei-like objects of three kinds (round, elongated, flat; sizes
varied, randomly turned), imaged with planes twice as far apart as the pixels: the layers'
``scale`` is the voxel spacing (2, 1, 1), so napari draws them with the right aspect.  Embed
segments is told the layer is a z-stack (the inline question), embeds every 3D object with
the fast CPU mode (``resnet18_planes``: the 2D dual-masked network on each object's three
orthogonal planes), clusters the embeddings (k-means, 3) and colours by cluster; a patch of
the map is selected.  Writes

- docs/volume_map.png: the 3D view (``ndisplay = 3``) tilted to show the objects in depth,
  the selected points' objects in their cluster's colours, the others dimmed;
- docs/volume_gallery.png: the same session with the Segment gallery showing the selected
  objects (z-, y- and x-planes side by side, outlined), the 2D view on the middle plane of one
  of them.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
SPACING = (2.0, 1.0, 1.0)  # (dz, dy, dx): planes twice as far apart as the pixels
LEVELS = {"round": (0.7, 0.85), "elongated": (0.35, 0.5), "flat": (0.5, 0.7)}
#: Each kind's semi-axes (physical units, before its random size factor) and texture: smooth,
#: or bright spots (foci) on a dimmer body.
KINDS = {
    "round": ((8.0, 8.0, 8.0), "grainy"),
    "elongated": ((16.0, 5.5, 5.5), "smooth"),
    "flat": ((11.0, 11.0, 4.0), "spotty"),
}


def _rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    return q * np.sign(np.diag(r))


def make_zstack(
    shape=(40, 224, 224), n_per_kind: int = 14, seed: int = 3
) -> tuple[np.ndarray, np.ndarray, dict[int, str]]:
    """A (Z, Y, X) float32 z-stack of nuclei-like ellipsoids, its labels, each label's kind.

    Objects are placed in physical coordinates (voxels of :data:`SPACING`), apart from each
    other and from the edges; each has its own brightness and a fine texture."""
    rng = np.random.default_rng(seed)
    grid = [(np.arange(n) + 0.5) * d for n, d in zip(shape, SPACING, strict=True)]
    points = np.stack(np.meshgrid(*grid, indexing="ij"), axis=-1)
    extent = np.array(shape) * np.array(SPACING)
    labels = np.zeros(shape, np.int32)
    image = rng.normal(0.12, 0.03, shape).astype(np.float32)
    kinds: dict[int, str] = {}
    centres: list[tuple[np.ndarray, float]] = []
    order = [kind for kind in KINDS for _ in range(n_per_kind)]
    rng.shuffle(order)
    for kind in order:
        radii = np.array(KINDS[kind][0]) * rng.uniform(0.75, 1.25)
        reach = radii.max()
        margin = np.array([min(reach, extent[0] / 2 - 2), reach, reach]) + 1
        for _ in range(300):  # a place clear of the others and of the edges
            centre = rng.uniform(margin, extent - margin)
            if all(np.linalg.norm(centre - c) > reach + r + 2 for c, r in centres):
                break
        else:
            continue
        centres.append((centre, reach))
        local = (points - centre) @ _rotation(rng)
        inside = ((local / radii) ** 2).sum(axis=-1) <= 1
        if not inside.any():
            continue
        label = len(kinds) + 1
        labels[inside] = label
        kinds[label] = kind
        level = rng.uniform(*LEVELS[kind])
        n = int(inside.sum())
        if KINDS[kind][1] == "spotty":
            image[inside] = 0.8 * level + 0.4 * (rng.random(n) < 0.05) + rng.normal(0, 0.03, n)
        else:
            grain = 0.12 if KINDS[kind][1] == "grainy" else 0.03
            image[inside] = level + rng.normal(0, grain, n)
    return image, labels, kinds


def main() -> None:
    import napari
    from qtpy.QtCore import Qt
    from qtpy.QtWidgets import QApplication

    image, labels, kinds = make_zstack()
    viewer = napari.Viewer(title="napari-segrep: a z-stack")
    viewer.window.resize(1500, 1000)
    app = QApplication.instance()

    def pump(condition=lambda: False, seconds=0.5, timeout=900.0):
        t0 = time.time()
        limit = timeout if seconds is None else seconds
        while not condition():
            app.processEvents()
            time.sleep(0.01)
            if time.time() - t0 > limit:
                if seconds is None:
                    raise TimeoutError
                return

    viewer.add_image(
        image, name="nuclei", scale=SPACING, colormap="gray", contrast_limits=(0.2, 1.0)
    )
    layer = viewer.add_labels(labels, name="nuclei labels", scale=SPACING)
    embed_dock, embed = viewer.window.add_plugin_dock_widget("napari-segrep", "Embed segments")
    embed.axes_question.answer("zyx")  # the inline question: "z-stack" clicked
    embed.volume_model_input.reset_choices()
    embed.volume_model_input.value = "resnet18_planes"
    embed.normalize_input.value = "segment"  # each object's own contrast: shape and texture
    t0 = time.time()
    embed.run()
    pump(lambda: embed.job is None and embed.points_layer is not None, seconds=None)
    pump(lambda: embed.map_view.settled, seconds=None)
    seconds = time.time() - t0
    pump(lambda: embed.map_model.method == "umap" and embed.map_view.settled, seconds=None)
    embed.cluster_k.value = 3
    embed.cluster()
    embed.colour_by.value = "cluster"
    table, points = embed.table, embed.points_layer

    # a patch of the map: the points nearest a flat object's, their objects highlighted
    flat = next(i for i, v in enumerate(table["label"]) if kinds[int(v)] == "flat")
    d = np.linalg.norm(points.data - points.data[flat], axis=1)
    rows = np.argsort(d)[:6].tolist()
    points.selected_data = set(rows)
    viewer.layers.selection.active = layer
    viewer.dims.ndisplay = 3
    viewer.reset_view()
    camera = viewer.camera
    camera.angles = (0.0, 45.0, -60.0)  # tilted: the objects in depth, the map beside
    camera.zoom *= 1.15
    pump(seconds=1.0)
    _close_notifications(viewer)
    viewer.screenshot(str(HERE / "volume_map.png"), canvas_only=False)
    truth = [kinds[int(v)] for v in table["label"]]
    clusters = table["cluster"].to_numpy()
    print(
        "wrote",
        HERE / "volume_map.png",
        f"({len(table)} objects, {embed.volume_model_input.value}, Run -> map {seconds:.1f} s; "
        f"clusters by kind: {_crosstab(clusters, truth)})",
    )

    gallery_dock, gallery = viewer.window.add_plugin_dock_widget("napari-segrep", "Segment gallery")
    embed_dock.hide()  # the gallery takes the dock's height
    viewer.window._qt_window.resizeDocks([gallery_dock], [470], Qt.Horizontal)
    viewer.dims.ndisplay = 2
    viewer.layers.selection.active = points
    gallery.order_input.value = "most typical"
    gallery.size_input.value = 96
    pump(lambda: gallery.loaded and len(gallery.shown_rows) == len(rows), seconds=None)
    gallery.go_to(rows[0], select=False)  # 2D view on its middle plane
    gallery.preview_row(rows[0])
    viewer.reset_view()
    pump(seconds=1.0)
    _close_notifications(viewer)
    viewer.screenshot(str(HERE / "volume_gallery.png"), canvas_only=False)
    print("wrote", HERE / "volume_gallery.png", f"({len(rows)} objects selected)")
    viewer.close()


def _close_notifications(viewer) -> None:
    """Close napari's notification toasts ("3 clusters"): they would cover the canvas."""
    from napari._qt.dialogs.qt_notification import NapariQtNotification

    for toast in viewer.window._qt_window.findChildren(NapariQtNotification):
        toast.close()


def _crosstab(clusters: np.ndarray, truth: list[str]) -> str:
    out = []
    for c in sorted(set(clusters.tolist())):
        kinds = [k for k, cc in zip(truth, clusters, strict=True) if cc == c]
        out.append(f"{c}: " + ", ".join(f"{kinds.count(k)} {k}" for k in KINDS if k in kinds))
    return "; ".join(out)


if __name__ == "__main__":
    main()
