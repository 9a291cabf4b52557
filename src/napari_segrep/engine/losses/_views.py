"""Input handling shared by the losses."""

from __future__ import annotations

from torch import Tensor

from ..distributed import gather


def paired_views(z_a: Tensor, z_b: Tensor, *, gather_distributed: bool) -> tuple[Tensor, Tensor]:
    """Check that ``z_a`` and ``z_b`` are ``(N, D)`` of one shape; with ``gather_distributed``,
    return both gathered from every rank (with gradients)."""
    if z_a.ndim != 2 or z_a.shape != z_b.shape:
        raise ValueError(
            f"z_a and z_b must be (N, D) of the same shape, got {tuple(z_a.shape)} "
            f"and {tuple(z_b.shape)}"
        )
    if gather_distributed:
        return gather(z_a), gather(z_b)
    return z_a, z_b
