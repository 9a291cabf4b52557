"""``torch.distributed`` runs (DDP under torchrun): joining the process group, and
differentiable collectives.

The collectives are built on the public ``all_gather``/``all_reduce`` (every backend, gloo
included), since ``torch.distributed.nn.functional`` is deprecated in torch 2.14.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["all_reduce_sum", "gather", "world_size"]


@dataclass
class _Dist:
    """This process's place in the run: ``world_size`` processes, this one ``rank``."""

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _distributed_setup(device: str) -> _Dist:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist()
    if not dist.is_initialized():
        use_cuda = torch.cuda.is_available() and device in ("auto", "cuda")
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return _Dist(dist.get_world_size(), dist.get_rank(), int(os.environ.get("LOCAL_RANK", "0")))


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
    if world_size() <= 1:
        return z
    return _AllGather.apply(z)


def world_size() -> int:
    """Processes in the default group (1 when torch.distributed is not initialised)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def all_reduce_sum(t: Tensor) -> Tensor:
    """Sum ``t`` over all ranks, with gradients (the backward pass sums the ranks' gradients,
    as every rank's result depends on every rank's input).  ``t`` itself on one process."""
    if world_size() <= 1:
        return t
    return _AllReduceSum.apply(t)


class _AllReduceSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, t: Tensor) -> Tensor:  # noqa: D102
        out = t.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # noqa: D102
        grad = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


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
