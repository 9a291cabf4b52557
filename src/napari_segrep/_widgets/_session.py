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


def start_warm_up(relay) -> None:
    """Start the session's warm-up thread once; ``relay.ready.emit(devices)`` when done (now,
    if it already is).  A relay whose widget is gone is skipped."""
    global _started
    with _lock:
        if devices is not None:
            _notify(relay)
            return
        _listeners.append(relay)
        if _started:
            return
        _started = True
    threading.Thread(target=_warm_up, name="napari-segrep warm-up", daemon=True).start()


def _notify(relay) -> None:
    try:
        relay.ready.emit(list(devices or ["cpu"]))
    except RuntimeError:  # the widget (and its relay) was deleted meanwhile
        pass


def _warm_up() -> None:
    global devices, imagenet_available
    found = ["cpu"]
    try:
        from ..engine.devices import available_devices
        from ..engine.encoder import imagenet_cache_path

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
    try:
        from ..analysis.reduce import warm_up_umap

        warm_up_umap()
    except Exception:  # noqa: BLE001 - the first map then compiles instead
        pass
