"""Exceptions users and callers catch: importable without torch (the CLI catches them)."""

from __future__ import annotations

__all__ = ["Cancelled", "TrainingDiverged"]


class Cancelled(Exception):  # noqa: N818 - the name users catch
    """Raised when ``should_stop()`` asked a long computation to stop; nothing partial is
    returned."""


class TrainingDiverged(RuntimeError):
    """Training stopped because the model became unusable: the loss became NaN or infinite, or
    a weight, buffer or the encoder's embeddings did (checked at every epoch end, before every
    checkpoint and when stopping).  The last good checkpoint is kept; no unusable model is
    saved or returned."""
