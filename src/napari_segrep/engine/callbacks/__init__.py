"""What watches a training run, one callback per file (the interface: :mod:`.base`).

- :class:`HealthCallback` (:mod:`.health`): finite loss, usable model before every checkpoint;
- :class:`QualityCallback` (:mod:`.quality`): effective rank and view agreement per epoch;
- :class:`CheckpointCallback` (:mod:`.checkpoint`): ``last.pt`` per epoch and when stopped;
- :class:`ProgressCallback` (:mod:`.progress`): the caller's ``on_step`` / ``on_quality``;
- the run folder's (:func:`run_folder_callbacks`, after the checkpoint's):
  :class:`ConfigFileCallback` (:mod:`.config_file`): ``config.yaml`` when training starts;
  :class:`ChartsCallback` (:mod:`.charts`): ``charts/loss.png``, ``charts/quality.png``;
  :class:`TensorBoardCallback` (:mod:`.tensorboard`): scalars and the embedding projector.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from .base import Callback
from .charts import ChartsCallback
from .checkpoint import CheckpointCallback
from .config_file import ConfigFileCallback
from .health import HealthCallback
from .progress import ProgressCallback
from .quality import QualityCallback
from .tensorboard import TENSORBOARD_MISSING, TensorBoardCallback, tensorboard_available

__all__ = [
    "Callback",
    "ChartsCallback",
    "CheckpointCallback",
    "ConfigFileCallback",
    "HealthCallback",
    "ProgressCallback",
    "QualityCallback",
    "TensorBoardCallback",
    "run_folder_callbacks",
    "run_folder_entries",
]


def run_folder_entries(
    *, config: object = None, charts: bool = False, tensorboard: bool | None = False
) -> tuple[str, ...]:
    """The names :func:`run_folder_callbacks` (same arguments) writes into a run folder besides
    the checkpoint: a new run refuses a folder that holds any of them."""
    from ..run_folder import CHARTS_DIR, CONFIG_NAME, TENSORBOARD_DIR

    names = (CONFIG_NAME,) if config is not None else ()
    names += (CHARTS_DIR,) if charts else ()
    return names + ((TENSORBOARD_DIR,) if tensorboard is not False else ())


def run_folder_callbacks(
    folder: str | os.PathLike,
    *,
    config: str | Callable[[object], str] | None = None,
    charts: bool = False,
    tensorboard: bool | None = False,
) -> list[Callback]:
    """The callbacks that fill a run folder besides its checkpoint, in order: ``config.yaml``
    (``config``: its text, or a callable of the run's TrainConfig), the charts, TensorBoard
    (``tensorboard``: True, required, an ``ImportError`` with the fix when it is not
    installed, raised here, before any work; None: when installed, else a warning once).
    ``train_ssl`` puts them after the checkpoint's."""
    from ..run_folder import CHARTS_DIR, CONFIG_NAME, TENSORBOARD_DIR

    folder = Path(folder)
    out: list[Callback] = []
    if config is not None:
        out.append(ConfigFileCallback(folder / CONFIG_NAME, config))
    if charts:
        out.append(ChartsCallback(folder / CHARTS_DIR))
    if tensorboard and not tensorboard_available():
        raise ImportError(TENSORBOARD_MISSING.replace("logging is off", "logging was asked for"))
    if tensorboard is not False:
        out.append(TensorBoardCallback(folder / TENSORBOARD_DIR, required=bool(tensorboard)))
    return out
