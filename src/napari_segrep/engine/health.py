"""Is a model usable? Finite weights and buffers, and finite embeddings in eval mode.

A training run can blow its weights and BatchNorm statistics up (running variances ~1e22)
while every loss stays finite: in eval mode, as ``embed_segments`` runs it, such an encoder
embeds every segment as NaN.  The trainer checks with :func:`unusable_reason` before every
checkpoint and before returning a model.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from torch import Tensor, nn

from ..errors import TrainingDiverged
from .checkpoint import nonfinite_tensors

__all__ = ["diverged_error", "unusable_reason"]


def unusable_reason(
    encoder: nn.Module,
    state: dict,
    probe: tuple[Tensor, Tensor] | None = None,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> str | None:
    """Why a model is unusable, or ``None`` when it is fine.

    Parameters
    ----------
    encoder : SegmentEncoder
    state : dict
        Nested dicts of tensors to check (state dicts of the encoder, head, loss, optimiser).
    probe : (images, masks), optional
        A few crops (``(B, C, S, S)``, ``(B, 1, S, S)``): the encoder in eval mode must embed
        them to finite values.  One small forward pass; the encoder's mode is restored.
    autocast : callable
        The context the forward pass runs in (the trainer's autocast).
    """
    bad = nonfinite_tensors(state)
    if bad:
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        return f"NaN or Inf values in {', '.join(bad[:3])}{more}"
    if probe is None:
        return None
    was_training = encoder.training
    try:
        with torch.no_grad(), autocast():
            z = encoder.eval()(*probe)
    finally:
        encoder.train(was_training)
    if not bool(torch.isfinite(z).all()):
        return "the weights blew up (the encoder now embeds segments as NaN or Inf)"
    return None


def diverged_error(what: str, *, epoch: int, step: int, lr: float, optimizer: str):
    """The :class:`TrainingDiverged` for ``what`` happened at ``epoch``/``step``, with advice."""
    other = " or try optimizer='adamw'" if optimizer == "lars" else ""
    return TrainingDiverged(
        f"{what} at epoch {epoch}, step {step}: training stopped. Lower the learning rate "
        f"(now {lr:.3g}){other}; the last good checkpoint is kept."
    )
