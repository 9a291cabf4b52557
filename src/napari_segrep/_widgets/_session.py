"""What the widgets share within one napari session."""

from __future__ import annotations

import threading

#: The encoder trained in this session (set by "Train SegRep"), offered by "Embed segments".
trained_encoder = None
#: Whether torchvision's ImageNet weights lie in the local torch cache (found by the warm-up).
imagenet_available = False
#: Devices that work here (found by the warm-up; None until then).
devices: list[str] | None = None

_lock = threading.Lock()
_listeners: list = []
_started = False


def start_warm_up(relay, *, label_dtypes=()) -> None:
    """Warm the session up once, so the first Run, map and selection do not wait: the map
    process (UMAP compiles there, at low priority, see :mod:`._map_process`) and, in one
    background thread, napari's direct label colouring for ``label_dtypes`` (the highlight),
    torch and the device list.  ``relay.ready.emit(devices)`` when the devices are known (now,
    if they already are).  Call from the GUI thread; a relay whose widget is gone is skipped.
    """
    global _started
    from ._map_process import map_process

    map_process()
    with _lock:
        if devices is not None:
            _notify(relay)
            return
        _listeners.append(relay)
        if _started:
            return
        _started = True
    dtypes = tuple(dict.fromkeys(("int32", *map(str, label_dtypes))))
    threading.Thread(
        target=_warm_up, args=(dtypes,), name="napari-segrep warm-up", daemon=True
    ).start()


def _notify(relay) -> None:
    try:
        relay.ready.emit(list(devices or ["cpu"]))
    except RuntimeError:  # the widget (and its relay) was deleted meanwhile
        pass


def warm_up_label_colours(dtypes) -> None:
    """Compile (or load from numba's disk cache) napari's direct label colouring, which the
    first highlight of selected segments needs, for labels of these dtypes.  A few seconds on
    a cold cache: done here, early, instead of in the GUI thread at the first selection."""
    import numpy as np

    try:
        from napari.utils.colormaps import DirectLabelColormap
        from napari.utils.colormaps.colormap import _cast_labels_data_to_texture_dtype_direct
    except ImportError:  # another napari version: the first selection compiles instead
        return
    colours = {None: np.zeros(4), 0: np.zeros(4), 1: np.ones(4), 2: np.ones(4)}
    for dtype in dtypes:
        data = (np.arange(64).reshape(8, 8) % 3).astype(dtype)
        _cast_labels_data_to_texture_dtype_direct(data, DirectLabelColormap(color_dict=colours))


def _warm_up(label_dtypes) -> None:
    global devices, imagenet_available
    found = ["cpu"]
    try:
        warm_up_label_colours(label_dtypes)
    except Exception:  # noqa: BLE001 - an optimisation only
        pass
    try:
        from ..engine.backbones import imagenet_cache_path
        from ..engine.devices import available_devices

        found = available_devices()
        imagenet_available = imagenet_cache_path("resnet18").is_file()
    except Exception:  # noqa: BLE001 - the defaults stay ("auto", "cpu"); Run reports errors
        pass
    with _lock:
        devices = found
        listeners = list(_listeners)
        _listeners.clear()
    for relay in listeners:
        _notify(relay)
