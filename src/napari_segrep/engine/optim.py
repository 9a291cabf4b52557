"""Optimiser and learning-rate schedule for self-supervised training.

- :class:`LARS`: layer-wise adaptive rate scaling (You et al., 2017), the optimiser of SimCLR,
  VICReg and TiCo's large-batch recipes;
- :func:`param_groups_for_lars`: biases and normalisation parameters out of LARS adaptation and
  weight decay;
- :func:`encoder_param_groups`: the encoder's groups: its backbone's own ``param_groups`` when it
  has one (a ViT: layer-wise lr decay), :func:`param_groups_for_lars` otherwise (a ResNet);
- :func:`warmup_cosine_schedule`: linear warm-up then cosine decay, per optimiser step.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim.lr_scheduler import LambdaLR

__all__ = ["LARS", "encoder_param_groups", "param_groups_for_lars", "warmup_cosine_schedule"]


class LARS(torch.optim.Optimizer):
    r"""SGD with momentum and a layer-wise trust ratio (LARS).

    For every parameter tensor :math:`p` with gradient :math:`g` in a group without
    ``lars_exclude``:

    .. math::

        g &\leftarrow g + \lambda p

        t &= \eta \frac{\lVert p \rVert}{\lVert g \rVert + \epsilon}
             \text{ if } \lVert p \rVert > 0 \text{ and } \lVert g \rVert > 0
             \text{, else } 1

        \mu &\leftarrow m \mu + t g

        p &\leftarrow p - \mathrm{lr}\, \mu

    (:math:`\lambda` weight decay, :math:`\eta` trust coefficient, :math:`m` momentum, norms
    over the whole tensor).  In a group with ``lars_exclude=True`` (biases, normalisation
    parameters) the trust ratio is 1 and there is no weight decay: plain SGD with momentum.

    Parameters
    ----------
    params : iterable of Tensor or of dict
        Parameters, or parameter groups (dicts) which may override any option below and set
        ``lars_exclude=True``; see :func:`param_groups_for_lars`.
    lr : float
        Learning rate, ``>= 0``.
    momentum : float
        Momentum :math:`m`, in ``[0, 1)``.
    weight_decay : float
        Weight decay :math:`\lambda`, ``>= 0``; applied before the trust ratio.
    trust_coefficient : float
        :math:`\eta > 0`.
    eps : float
        :math:`\epsilon \ge 0`, added to the gradient norm.

    Notes
    -----
    The momentum buffers are the optimiser's state (``state[p]["momentum_buffer"]``) and
    round-trip through ``state_dict()`` / ``load_state_dict()``, so training resumes exactly.
    A parameter whose gradient is ``None`` is skipped (its buffer is left as is).

    References
    ----------
    .. [1] Y. You, I. Gitman and B. Ginsburg, "Large Batch Training of Convolutional
       Networks", 2017. arXiv:1708.03888

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> model = nn.Linear(4, 2)
    >>> opt = LARS(param_groups_for_lars(model, weight_decay=1e-6), lr=0.1)
    >>> model(torch.randn(8, 4)).pow(2).mean().backward()
    >>> opt.step()
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float,
        *,
        momentum: float = 0.9,
        weight_decay: float = 1e-6,
        trust_coefficient: float = 0.001,
        eps: float = 1e-8,
    ) -> None:
        _check_options(
            lr=lr,
            momentum=momentum,
            weight_decay=weight_decay,
            trust_coefficient=trust_coefficient,
            eps=eps,
        )
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "weight_decay": weight_decay,
            "trust_coefficient": trust_coefficient,
            "eps": eps,
            "lars_exclude": False,
        }
        super().__init__(params, defaults)
        for group in self.param_groups:
            _check_options(**{k: group[k] for k in defaults if k != "lars_exclude"})

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # noqa: D102
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            exclude = bool(group["lars_exclude"])
            weight_decay = group["weight_decay"]
            momentum = group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("LARS does not support sparse gradients")
                g = p.grad
                if not exclude:
                    if weight_decay != 0.0:
                        g = g.add(p, alpha=weight_decay)
                    p_norm = torch.linalg.vector_norm(p)
                    g_norm = torch.linalg.vector_norm(g)
                    trust = torch.where(
                        (p_norm > 0) & (g_norm > 0),
                        group["trust_coefficient"] * p_norm / (g_norm + group["eps"]),
                        torch.ones_like(p_norm),
                    )
                    g = g * trust
                state = self.state[p]
                buf = state.get("momentum_buffer")
                if buf is None:
                    buf = state["momentum_buffer"] = g.detach().clone()
                else:
                    buf.mul_(momentum).add_(g)
                p.add_(buf, alpha=-group["lr"])
        return loss


def _check_options(
    *, lr: float, momentum: float, weight_decay: float, trust_coefficient: float, eps: float
) -> None:
    if not lr >= 0.0:
        raise ValueError(f"lr must be >= 0, got {lr!r}")
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
    if not weight_decay >= 0.0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")
    if not trust_coefficient > 0.0:
        raise ValueError(f"trust_coefficient must be > 0, got {trust_coefficient!r}")
    if not eps >= 0.0:
        raise ValueError(f"eps must be >= 0, got {eps!r}")


def param_groups_for_lars(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Split ``model``'s trainable parameters into LARS parameter groups.

    Parameters
    ----------
    model : nn.Module
        Every parameter with ``requires_grad`` is placed once (shared parameters too).
    weight_decay : float
        Weight decay of the adapted group, ``>= 0``.

    Returns
    -------
    list of dict
        ``{"params": [...], "weight_decay": weight_decay}`` for tensors with ``ndim >= 2``
        (convolution and linear weights), then ``{"params": [...], "weight_decay": 0.0,
        "lars_exclude": True}`` for tensors with ``ndim <= 1`` (biases, BatchNorm/LayerNorm
        weights and biases).  A group with no parameter is left out.  Also accepted by
        :class:`torch.optim.SGD` / ``AdamW``, which ignore ``lars_exclude``.
    """
    if not weight_decay >= 0.0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")
    adapted: list[nn.Parameter] = []
    excluded: list[nn.Parameter] = []
    for p in model.parameters():  # parameters() already de-duplicates shared tensors
        if p.requires_grad:
            (excluded if p.ndim <= 1 else adapted).append(p)
    groups: list[dict[str, Any]] = []
    if adapted:
        groups.append({"params": adapted, "weight_decay": float(weight_decay)})
    if excluded:
        groups.append({"params": excluded, "weight_decay": 0.0, "lars_exclude": True})
    return groups


def encoder_param_groups(
    encoder: nn.Module, lr: float, weight_decay: float
) -> list[dict[str, Any]]:
    """The optimiser's parameter groups for a :class:`~napari_segrep.engine.encoder.
    SegmentEncoder`.

    A backbone with ``param_groups(lr, weight_decay, *, pretrained)`` (a ViT,
    :meth:`~napari_segrep.engine.backbones.vit.MaskedViT.param_groups`) sets its own groups
    (each with its ``lr``), told whether the encoder's weights are pretrained (it has a
    ``weights_source``: ImageNet/DINOv2 weights or a checkpoint) so it picks its decay.  Any other backbone gets
    :func:`param_groups_for_lars` of the whole encoder, exactly as before (groups without an
    ``lr``: they learn at the optimiser's).

    Parameters
    ----------
    encoder : nn.Module
        Has a ``backbone`` attribute.
    lr : float
        The encoder's (top layer's) learning rate.
    weight_decay : float

    Returns
    -------
    list of dict
        Every trainable parameter of ``encoder`` once (a SegmentEncoder's parameters are all
        its backbone's: the input statistics are buffers).
    """
    backbone = getattr(encoder, "backbone", None)
    if not hasattr(backbone, "param_groups"):
        return param_groups_for_lars(encoder, weight_decay)
    pretrained = getattr(encoder, "weights_source", None) is not None
    return backbone.param_groups(lr, weight_decay, pretrained=pretrained)


class _WarmupCosine:
    """Learning-rate factor at a step; an object (not a closure) so ``LambdaLR.state_dict``
    records its settings."""

    def __init__(self, warmup_steps: int, total_steps: int, final_ratio: float) -> None:
        self.warmup_steps = warmup_steps
        self.total_steps = total_steps
        self.final_ratio = final_ratio

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        decay_steps = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / decay_steps)
        cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.final_ratio + (1.0 - self.final_ratio) * cosine


def warmup_cosine_schedule(
    optimizer: torch.optim.Optimizer,
    *,
    warmup_steps: int,
    total_steps: int,
    final_ratio: float = 0.0,
) -> LambdaLR:
    r"""Linear warm-up, then cosine decay of every group's learning rate.

    Call ``scheduler.step()`` after every ``optimizer.step()``.  During optimiser step ``s``
    (counting from 0) the learning rate is ``base_lr * f(s)`` with, for ``W = warmup_steps``
    and ``T = total_steps``,

    .. math::

        f(s) = \begin{cases}
            \dfrac{s + 1}{W} & s < W \\[1ex]
            r + (1 - r)\, \dfrac{1 + \cos\!\left(\pi \min\!\left(1, \frac{s - W}{\max(1, T - W)}
            \right)\right)}{2} & s \ge W
        \end{cases}

    so it climbs from ``1/W`` to 1 over the first ``W`` steps, is 1 at step ``W``, reaches
    ``r = final_ratio`` at step ``T`` and stays there.

    Parameters
    ----------
    optimizer : torch.optim.Optimizer
        Its groups' current ``lr`` become the base learning rates.
    warmup_steps : int
        ``W``, ``0 <= W <= T``; 0 starts the cosine at once.
    total_steps : int
        ``T >= 1``.
    final_ratio : float
        ``r``, in ``[0, 1]``: the final learning rate as a fraction of the base one.

    Returns
    -------
    torch.optim.lr_scheduler.LambdaLR
        Its ``state_dict()`` holds the step count and the schedule's settings and round-trips
        through ``load_state_dict()``.
    """
    for name, value in (("warmup_steps", warmup_steps), ("total_steps", total_steps)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name} must be an int, got {value!r}")
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if not 0 <= warmup_steps <= total_steps:
        raise ValueError(
            f"warmup_steps must be in [0, total_steps={total_steps}], got {warmup_steps}"
        )
    if not 0.0 <= final_ratio <= 1.0:
        raise ValueError(f"final_ratio must be in [0, 1], got {final_ratio!r}")
    return LambdaLR(optimizer, _WarmupCosine(warmup_steps, total_steps, float(final_ratio)))
