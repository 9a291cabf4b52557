"""Gather embeddings from every process of a ``torch.distributed`` run, keeping gradients."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["gather"]


def gather(z: Tensor) -> Tensor:
    """Concatenate ``z`` from every rank along the batch axis, with gradients.

    Parameters
    ----------
    z : (N, D) Tensor
        This rank's embeddings.  Every rank must pass the same shape (use ``drop_last=True``).

    Returns
    -------
    (world_size * N, D) Tensor
        Rank 0's rows first, then rank 1's, ...  ``z`` itself, unchanged, when
        ``torch.distributed`` is unavailable, not initialised, or has a single process.

    Notes
    -----
    The backward pass sums, over the ranks, the gradients every rank computed for these rows
    (the semantics of ``torch.distributed.nn.functional.all_gather``, which torch 2.14
    deprecates; this uses only the public ``all_gather`` and ``all_reduce`` collectives, so it
    works on every backend, gloo included).  When each rank computes the same loss on the
    gathered batch, this rank's rows get ``world_size`` times the gradient of that loss;
    DistributedDataParallel's gradient averaging divides it back, so the parameters receive
    exactly the gradient of the loss on the global batch.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() <= 1:
        return z
    return _AllGather.apply(z)


class _AllGather(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z: Tensor) -> Tensor:  # noqa: D102
        z = z.contiguous()
        parts = [torch.empty_like(z) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, z)
        ctx.rows = z.shape[0]
        ctx.rank = dist.get_rank()
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # noqa: D102
        grad = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows]
