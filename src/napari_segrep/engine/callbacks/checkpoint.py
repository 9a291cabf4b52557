"""Checkpoint: ``last.pt`` written atomically after every epoch and when a run stops early.

The trainer checks the model's health before every save (an unusable model is never saved); a
failed write (disk full...) is one line naming the file, and the previous checkpoint is kept.
"""

from __future__ import annotations

import os
from pathlib import Path

from .base import Callback

__all__ = ["CheckpointCallback"]


class CheckpointCallback(Callback):
    """Writes the trainer's checkpoint to ``path`` at every epoch end (after the epoch's quality
    record, which it holds) and when the run stops before its last epoch."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def on_epoch_end(self, trainer, record: dict) -> None:
        self.save(trainer)

    def on_stop(self, trainer, record: dict) -> None:
        if trainer.epoch < trainer.config.epochs and "epoch_end" not in record:
            self.save(trainer)  # an epoch end's checkpoint is already written

    def save(self, trainer) -> None:
        from ...io import write_failure

        try:
            trainer.save(self.path)
        except OSError as exc:  # disk full...: one line; the previous checkpoint is kept
            raise write_failure(self.path, exc, what="checkpoint") from exc
