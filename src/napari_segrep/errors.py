"""Exceptions users and callers catch: importable without torch (the CLI catches them)."""

from __future__ import annotations

__all__ = ["Cancelled", "TrainingDiverged"]


class Cancelled(Exception):  # noqa: N818 - the name users catch
    """Raised when ``should_stop()`` asked a long computation to stop; nothing partial is
    returned."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""
