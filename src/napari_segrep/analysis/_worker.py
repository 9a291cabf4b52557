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
    until ``requests`` ends (the napari process closed it, or ended)."""
    try:
        os.nice(19)  # only idle CPU: never slow the embedding or the GUI
    except (AttributeError, OSError):
        pass
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
        pickle.dump(answer, answers, protocol=pickle.HIGHEST_PROTOCOL)
        answers.flush()


def main() -> None:
    """Entry point of the child (``python -m napari_segrep.analysis._worker``): requests on
    stdin, answers on the original stdout; anything libraries print goes to stderr."""
    answers = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # a stray print must not corrupt the answers
    sys.stdout = sys.stderr
    serve(sys.stdin.buffer, answers)


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
