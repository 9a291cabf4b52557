"""What the widgets share within one napari session."""

from __future__ import annotations

import gc
import os
import sys
import threading
from contextlib import contextmanager

#: The encoder trained in this session (set by "Train SegRep"), offered by "Embed segments".
trained_encoder = None
#: Devices that work here (found by the warm-up; None until then).
devices: list[str] | None = None

_lock = threading.Lock()
_listeners: list = []
_started = False
#: Held while the session warms up and while the engine loads: a job that needs the engine
#: waits for it instead of competing with it (see :func:`load_engine`).
_engine_lock = threading.Lock()
_engine_loaded = False
_classifier_tools_lock = threading.Lock()
_classifier_tools_loaded = False


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


def load_engine() -> None:
    """Import torch, torchvision and the engine without freezing napari's event loop; call from
    a background thread (the warm-up, or a job before it imports the engine).

    Importing them in a thread is not enough: the import holds the GIL, hence napari's event
    loop, in two long stretches.  ``dlopen`` of torch's libraries (libtorch_cpu alone is half a
    gigabyte) runs under the GIL for 0.2-0.4 s: they are loaded first through a ctypes call,
    which releases it (:func:`preload_torch_libraries`).  And the import creates about a
    million objects, so Python's full garbage collections come one after the other, each
    scanning napari's whole heap with the GIL held (0.1-0.3 s apiece, measured): the collector
    is paused while the modules load, and what they created is then moved out of its reach
    (``gc.freeze``: module-level objects live as long as the process anyway).  The longest
    GIL hold while the engine loads went from 0.22-0.41 s to 0.02-0.03 s (tested).
    """
    global _engine_loaded
    with _engine_lock:
        if _engine_loaded:
            return
        with collector_paused():
            preload_torch_libraries()
            import torch  # noqa: F401

            from ..engine import embed  # noqa: F401 - torchvision and the backbones
        _engine_loaded = True


def load_classifier_tools() -> None:
    """Import what training a classifier needs (scikit-learn, scipy) the way
    :func:`load_engine` imports torch: in a background thread, with the collector paused (the
    import creates hundreds of thousands of objects; full collections scanning napari's heap
    would hold the GIL).  Once per session; the Classify widget starts it when it opens, its
    first training calls it too."""
    global _classifier_tools_loaded
    with _classifier_tools_lock:
        if _classifier_tools_loaded:
            return
        with collector_paused():
            import sklearn.linear_model  # noqa: F401
            import sklearn.model_selection  # noqa: F401
        _classifier_tools_loaded = True


def start_loading_classifier_tools() -> None:
    """:func:`load_classifier_tools` in a daemon thread (nothing when already loaded)."""
    if not _classifier_tools_loaded:
        threading.Thread(
            target=load_classifier_tools, name="napari-segrep classifier tools", daemon=True
        ).start()


@contextmanager
def collector_paused():
    """No garbage collection while the block runs (in any thread: the collector is the
    process's); the objects it created (and all older ones) are then frozen out of the
    collector's reach, so later collections stay short.  The price: cycles that are garbage
    at the two freezes are never freed, a bounded amount, once per session."""
    enabled = gc.isenabled()
    gc.freeze()  # napari's heap: collections during the block scan only what it creates
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if enabled:
            gc.enable()


def preload_torch_libraries() -> None:
    """``dlopen`` torch's large shared libraries through ctypes, which releases the GIL, so
    that ``import torch`` then finds them loaded (on Linux; elsewhere, or on any failure, the
    import loads them itself as usual)."""
    if not sys.platform.startswith("linux") or "torch" in sys.modules:
        return
    try:
        import ctypes
        import importlib.util
        from pathlib import Path

        spec = importlib.util.find_spec("torch")
        if spec is None or spec.origin is None:
            return
        folder = Path(spec.origin).parent / "lib"
        dlopen = ctypes.CDLL(None).dlopen
        dlopen.argtypes = [ctypes.c_char_p, ctypes.c_int]
        dlopen.restype = ctypes.c_void_p
        # dependencies first, each found by its soname when the next one (and torch) loads
        for name in ("libc10.so", "libtorch_cpu.so", "libtorch.so", "libtorch_python.so"):
            if (folder / name).is_file():
                dlopen(os.fsencode(folder / name), os.RTLD_NOW | os.RTLD_LOCAL)
    except (OSError, AttributeError, ValueError, ImportError):  # an optimisation only
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
    few = {None: np.zeros(4), 0: np.zeros(4), 1: np.ones(4), 2: np.ones(4)}
    # more than 255 distinct colours (every segment in its own: colour by label, by class with
    # the probability as alpha) take napari's 16-bit texture path, compiled separately
    shades = np.linspace(0.0, 1.0, 300)
    many = {None: np.zeros(4), 0: np.zeros(4)}
    many.update({i + 1: np.array([s, 1 - s, 0.5, 1.0]) for i, s in enumerate(shades)})
    for colours in (few, many):
        colormap = DirectLabelColormap(color_dict=colours)
        for dtype in dtypes:
            data = (np.arange(400).reshape(20, 20) % len(colours)).astype(dtype)
            _cast_labels_data_to_texture_dtype_direct(data, colormap)


def pretrained_available(backbone: str = "resnet18", weights: str = "imagenet") -> bool:
    """Whether ``backbone``'s weight set ``weights`` lies whole in the torch cache now (a
    ``stat`` once :func:`check_weights_files` has hashed the file: the verdict is
    remembered per version of the file)."""
    from ..weights import weights_info

    try:
        return weights_info(backbone, weights=weights).usable
    except (ValueError, OSError):
        return False


def check_weights_files() -> None:
    """Check every catalogue weights file in the torch cache (its size and SHA-256, once per
    version of the file: :func:`napari_segrep.weights.file_problem` remembers the verdict), so
    that the pickers' checks in napari's thread then cost a ``stat``.  Torch-free; a few
    tenths of a second per large file, once: call from a background thread."""
    from ..catalogue import published_files

    for ws, backbones in published_files().values():
        pretrained_available(backbones[0], ws.name)


def _warm_up(label_dtypes) -> None:
    global devices
    found = ["cpu"]
    # A Run clicked meanwhile waits for the lock rather than sharing the CPU and the GIL with
    # the warm-up: its embedding then runs as fast as headless.  Label colours come first (the
    # first selection after the map needs them; compiled during the embedding they would slow
    # it), then torch; a job that takes the lock first loads the engine itself.
    with _engine_lock:
        try:
            with collector_paused():
                warm_up_label_colours(label_dtypes)
        except Exception:  # noqa: BLE001 - an optimisation only
            pass
    try:
        check_weights_files()  # before the pickers re-read their choices (on the devices)
    except Exception:  # noqa: BLE001 - an optimisation only: the pickers check themselves
        pass
    try:
        load_engine()
        from ..engine.devices import available_devices

        found = available_devices()
    except Exception:  # noqa: BLE001 - the defaults stay ("auto", "cpu"); Run reports errors
        pass
    with _lock:
        devices = found
        listeners = list(_listeners)
        _listeners.clear()
    for relay in listeners:
        _notify(relay)
