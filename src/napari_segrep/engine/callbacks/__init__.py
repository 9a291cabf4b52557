"""What watches a training run, one callback per file (the interface: :mod:`.base`).

- :class:`HealthCallback` (:mod:`.health`): finite loss, usable model before every checkpoint;
- :class:`QualityCallback` (:mod:`.quality`): effective rank and view agreement per epoch;
- :class:`CheckpointCallback` (:mod:`.checkpoint`): ``last.pt`` per epoch and when stopped;
- :class:`ProgressCallback` (:mod:`.progress`): the caller's ``on_step`` / ``on_quality``.

Next (issue 24): ``charts.py`` (``charts/loss.png``, ``charts/quality.png``) and
``tensorboard.py`` (scalars, the embedding projector), each a :class:`Callback` that
``train_ssl`` adds to the list after the checkpoint's.
"""

from __future__ import annotations

from .base import Callback
from .checkpoint import CheckpointCallback
from .health import HealthCallback
from .progress import ProgressCallback
from .quality import QualityCallback

__all__ = [
    "Callback",
    "CheckpointCallback",
    "HealthCallback",
    "ProgressCallback",
    "QualityCallback",
]
