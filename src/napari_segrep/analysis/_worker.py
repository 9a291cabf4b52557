"""The loop of the map process (see ``napari_segrep._widgets._map_process``): UMAP fits and
transforms run here, in a separate low-priority process, never in napari's.

Numpy and umap-learn only: the child process imports neither torch nor Qt.
"""

from __future__ import annotations

import os
import pickle
import sys
from collections.abc import Callable
from typing import BinaryIO

import numpy as np

__all__ = ["main", "serve"]


def serve(requests: BinaryIO, answers: BinaryIO) -> None:
    """Answer pickled ``(id, name, args)`` requests with pickled ``(id, ok, value)``, in order,
    until ``requests`` ends (the napari process closed it, or ended) or nobody reads the
    answers any more."""
    models: dict[int, object] = {}
    while True:
        try:
            request_id, name, args = pickle.load(requests)
        except (EOFError, OSError, pickle.UnpicklingError):
            return
        try:
            answer = (request_id, True, _TASKS[name](models, *args))
        except BaseException as exc:  # noqa: BLE001 - reported to the caller
            answer = (request_id, False, f"{type(exc).__name__}: {exc}")
        try:
            pickle.dump(answer, answers, protocol=pickle.HIGHEST_PROTOCOL)
            answers.flush()
        except (BrokenPipeError, ValueError):  # napari has ended: nobody to answer
            return


def _lowest_priority() -> None:
    """Only idle CPU for this process (and the threads it starts): never slow the embedding or
    the GUI.  On Linux, the SCHED_IDLE policy: any ordinary thread that wakes up takes the core
    back at once.  Nice 19 alone is not enough there: measured in napari's process, a nice-19
    UMAP compile still took 70% of a core and slowed a 2-thread embedding by 15-30%."""
    try:
        os.nice(19)
    except (AttributeError, OSError):
        pass
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):  # not Linux
        pass


def _end_with_parent() -> None:
    """On Linux, be killed when the napari process ends, even while napari has this process
    stopped (``MapProcess.pause``: a stopped process cannot see its input close)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes
        import signal

        ctypes.CDLL(None).prctl(1, int(signal.SIGKILL))  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def main() -> None:
    """Entry point of the child (``python -m napari_segrep.analysis._worker``): requests on
    stdin, answers on the original stdout; anything libraries print goes to stderr."""
    _lowest_priority()
    _end_with_parent()
    answers = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # a stray print must not corrupt the answers
    sys.stdout = sys.stderr
    serve(sys.stdin.buffer, answers)
    try:
        answers.close()
    except OSError:  # the pipe is broken: nothing left to flush
        pass


def _warm_up(models) -> None:
    from .reduce import warm_up_umap

    # the exact-neighbours path only (maps up to 4,096 segments); a larger map compiles
    # pynndescent's path when it is first fitted, here, where it freezes nothing
    warm_up_umap(large=False)


def _fit(models, key: int, emb: np.ndarray, seed: int):
    from .reduce import umap_map

    model = umap_map(emb, seed=seed)
    models.clear()  # the latest map only: live mode transforms against it
    models[key] = model
    return model.method, model.coords


def _transform(models, key: int, emb: np.ndarray):
    return models[key].transform(emb)


_TASKS: dict[str, Callable] = {"warm_up": _warm_up, "fit": _fit, "transform": _transform}


if __name__ == "__main__":
    main()
