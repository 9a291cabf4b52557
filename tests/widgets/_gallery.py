"""What the Segment gallery's tests share: docking it, waiting for a page."""

from __future__ import annotations

from ._embed import run_and_wait

TIMEOUT_MS = 120_000


def dock_gallery(viewer):
    """The Segment gallery docked from the manifest, as a user opens it."""
    _, gallery = viewer.window.add_plugin_dock_widget("napari-segrep", "Segment gallery")
    return gallery


def wait_loaded(qtbot, gallery, n=None):
    """Until every thumbnail of the page is there (and the page has ``n`` of them)."""
    qtbot.waitUntil(
        lambda: gallery.loaded and (n is None or len(gallery.shown_rows) == n),
        timeout=TIMEOUT_MS,
    )


def embed_layer(viewer, qtbot, *, labels_layer=None):
    """Embed segments docked and run (crop 32, PCA map) on ``labels_layer`` (or the default
    choice); returns the widget once its map is shown."""
    _, embed = viewer.window.add_plugin_dock_widget("napari-segrep", "Embed segments")
    embed.crop_input.value = 32
    embed.umap_input.value = False
    if labels_layer is not None:
        embed.labels_input.value = labels_layer
    run_and_wait(qtbot, embed)
    return embed
