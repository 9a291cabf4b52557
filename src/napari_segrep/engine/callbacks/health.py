"""Health: a run stops, with advice, as soon as the model is unusable.

A NaN or Inf loss stops the step before its backward pass; at every epoch end, before every
checkpoint and when stopping, the model must be usable
(:func:`~napari_segrep.engine.health.unusable_reason`: finite weights, buffers, loss and
optimiser state, finite eval-mode embeddings of a few crops of the last micro-batch), agreed
across processes.  An unusable model is never saved nor returned; the last good checkpoint is
kept.
"""

from __future__ import annotations

import torch

from ..health import unusable_reason
from .base import Callback

__all__ = ["HealthCallback"]


class HealthCallback(Callback):
    """Raises :class:`~napari_segrep.errors.TrainingDiverged` when the model is unusable."""

    def __init__(self) -> None:
        self._checked_step: int | None = None  # the step check() last passed

    def on_loss(self, trainer, loss) -> None:
        if not torch.isfinite(loss):
            raise trainer.diverged(f"the loss became {loss.item()}", trainer.global_step + 1)

    def before_epoch_end(self, trainer) -> None:  # before the epoch's checkpoint
        self.check(trainer)

    def before_save(self, trainer) -> None:
        self.check(trainer)

    def on_stop(self, trainer, record: dict) -> None:
        self.check(trainer)

    def check(self, trainer) -> None:
        """Raise unless the model is usable (all processes must call; once per step)."""
        if self._checked_step == trainer.global_step:
            return
        state = {k: m.state_dict() for k, m in trainer.model.named_children()}
        state.update(trainer.objective.checked_state())
        state.update(optimizer=trainer.optimizer.state_dict())
        reason = unusable_reason(trainer.model.encoder, state, trainer.probe, trainer.autocast)
        if trainer.any_rank(reason is not None):
            raise trainer.diverged(
                reason or "another process found the model unusable", trainer.global_step
            )
        self._checked_step = trainer.global_step
