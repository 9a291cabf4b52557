"""The session warm-up loads torch without holding napari's event loop (the GIL) for long."""

from __future__ import annotations

import gc
import json
import subprocess
import sys

import pytest

from ..conftest import require_napari

require_napari()

from napari_segrep._widgets import _session  # noqa: E402

# A Python heartbeat thread measures how long other threads hold the GIL.  Measured here:
# a plain import of the engine in a thread 0.22-0.41 s (torch's dlopen under the GIL, and full
# garbage collections of napari's heap), load_engine() 0.02-0.03 s.
GIL_CEILING_S = 0.1

SCRIPT = r"""
import gc, json, sys, threading, time
import napari  # napari's heap first, as in napari's process
import napari_segrep._widgets
from napari_segrep._widgets import _session

ticks, stop = [], False

def beat():
    while not stop:
        ticks.append(time.perf_counter())
        time.sleep(0.002)

heartbeat = threading.Thread(target=beat)
heartbeat.start()
if sys.argv[1] == "load_engine":
    loader = threading.Thread(target=_session.load_engine)
else:
    loader = threading.Thread(target=lambda: __import__("napari_segrep.engine.embed"))
loader.start()
loader.join()
stop = True
heartbeat.join()
import torch
print(json.dumps({
    "longest_s": max(b - a for a, b in zip(ticks, ticks[1:])),
    "torch_works": float(torch.ones(3).sum()) == 3.0,
    "gc_enabled": gc.isenabled(),
}))
"""


def _longest_gil_hold(how: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, how], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_load_engine__torch_loads_in_a_thread_without_holding_the_gil_for_long():
    report = _longest_gil_hold("load_engine")
    assert report["torch_works"] and report["gc_enabled"]
    assert report["longest_s"] <= GIL_CEILING_S, report


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/self/maps")
def test_preload_torch_libraries__loaded_before_torch_is_imported():
    script = (
        "import sys\n"
        "from napari_segrep._widgets import _session\n"
        "_session.preload_torch_libraries()\n"
        "maps = open('/proc/self/maps').read()\n"
        "print('torch' in sys.modules, 'libtorch_cpu' in maps)\n"
        "import torch\n"
        "print(float(torch.arange(4.0).sum()))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["False", "True", "6.0"]


@pytest.mark.parametrize("enabled", [True, False])
def test_collector_paused__no_collection_inside_state_restored_after(enabled):
    was = gc.isenabled()
    (gc.enable if enabled else gc.disable)()
    try:
        with _session.collector_paused():
            assert not gc.isenabled()
            made_inside = [[] for _ in range(10)]
        assert gc.isenabled() is enabled
        assert gc.get_freeze_count() > 0  # older objects out of the collector's reach
        assert gc.is_tracked(made_inside)
    finally:
        gc.unfreeze()
        (gc.enable if was else gc.disable)()
