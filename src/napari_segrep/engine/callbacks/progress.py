"""Progress: the caller's ``on_step(record)`` and ``on_quality(record)`` (``train_ssl``'s, the
widget's live plot, the CLI's ``history.csv`` / ``quality.csv``)."""

from __future__ import annotations

from collections.abc import Callable

from .base import Callback

__all__ = ["ProgressCallback"]


class ProgressCallback(Callback):
    """Calls ``on_step`` with every step record and ``on_quality`` with every quality record:
    the start's first (when resuming, the run's start record from the checkpoint), then one per
    epoch end (after its checkpoint is written: put this callback after the checkpoint's)."""

    def __init__(
        self,
        on_step: Callable[[dict], object] | None = None,
        on_quality: Callable[[dict], object] | None = None,
    ) -> None:
        self.on_step, self.on_quality = on_step, on_quality

    def on_train_start(self, trainer, record: dict) -> None:
        if self.on_quality is None:
            return
        if "quality" in record:
            self.on_quality(dict(record["quality"]))
        elif trainer.quality:  # resumed: its start first, the reference
            self.on_quality(dict(trainer.quality[0]))

    def on_step_end(self, trainer, record: dict) -> None:
        if self.on_step is not None:
            self.on_step(record)

    def on_epoch_end(self, trainer, record: dict) -> None:
        if "quality" in record and self.on_quality is not None:
            self.on_quality(dict(record["quality"]))
