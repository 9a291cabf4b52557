"""The map process: paused while an embedding runs, idle priority, and it never outlives napari
(even while stopped)."""

from __future__ import annotations

import io
import os
import pickle
import subprocess
import sys
import time

import numpy as np
import pytest

from ..conftest import require_napari

require_napari()

from napari_segrep._widgets._map_process import MapProcess  # noqa: E402
from napari_segrep.analysis._worker import serve  # noqa: E402

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc, SCHED_IDLE")


def _state(pid: int) -> str:
    """The process's state letter from /proc (T: stopped; Z: ended, not reaped); '' if gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return ""


def _settles_in(pid: int, states: tuple[str, ...], timeout: float = 30.0) -> bool:
    """Whether the process's state is one of ``states`` within ``timeout`` (signals are
    delivered asynchronously)."""
    end = time.monotonic() + timeout
    while _state(pid) not in states:
        if time.monotonic() > end:
            return False
        time.sleep(0.02)
    return True


def _answers(process: MapProcess, timeout: float) -> bool:
    """Whether the child answers a request within ``timeout`` (an unknown map: an error
    answer, which is an answer)."""
    try:
        process.call("transform", -1, np.zeros((1, 2)), timeout=timeout)
    except RuntimeError as exc:
        assert "KeyError" in str(exc)
        return True
    except TimeoutError:
        return False
    raise AssertionError("an unknown map cannot be transformed")


@linux_only
def test_map_process__idle_priority_and_pause_until_every_pause_is_released():
    process = MapProcess()
    try:
        assert _answers(process, timeout=120)  # started, and answering
        pid = process._process.pid
        assert os.sched_getscheduler(pid) == os.SCHED_IDLE
        first, second = process.pause(), process.pause()
        assert _settles_in(pid, ("T",))
        assert not _answers(process, timeout=1.0)
        first()
        first()  # a release counts once
        time.sleep(0.2)
        assert _state(pid) == "T"
        second()
        assert _settles_in(pid, ("R", "S", "D"))
        assert _answers(process, timeout=60)
    finally:
        process.close()
    assert not process.alive


PARENT = r"""
import os, sys
import numpy as np
from napari_segrep._widgets._map_process import MapProcess

process = MapProcess()
try:
    process.call("transform", -1, np.zeros((1, 2)), timeout=120)
except RuntimeError:
    pass  # it answers
process.pause()
print(process._process.pid, flush=True)
os._exit(0)  # napari ending abruptly: no close, no atexit, the child still stopped
"""


@linux_only
def test_map_process__never_outlives_napari_even_while_stopped():
    done = subprocess.run(
        [sys.executable, "-c", PARENT], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    pid = int(done.stdout.split()[-1])
    assert _settles_in(pid, ("", "Z"))  # killed with its parent (a zombie until reaped)


class _BrokenPipe(io.RawIOBase):
    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        raise BrokenPipeError(32, "Broken pipe")


def test_worker_serve__napari_gone_ends_quietly():
    requests = io.BytesIO(
        pickle.dumps((0, "transform", (-1, np.zeros((1, 2)))))
        + pickle.dumps((1, "transform", (-1, np.zeros((1, 2)))))
    )
    serve(requests, io.BufferedWriter(_BrokenPipe()))  # returns, no BrokenPipeError
    assert requests.tell() < len(requests.getvalue())  # it stopped at the first answer
