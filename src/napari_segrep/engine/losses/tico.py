"""TiCo: transformation invariance and covariance contrast (Zhu et al., 2022)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._views import paired_views

__all__ = ["TiCoLoss"]


class TiCoLoss(nn.Module):
    r"""TiCo loss: pull the two views together, push every embedding away from the directions
    the recent batches occupied.

    With :math:`z` the L2-normalised rows of each view and :math:`C` a running estimate of the
    second-moment matrix of the first view,

    .. math::

        C &\leftarrow \beta C + (1 - \beta)\, \mathrm{sg}\!\left(\tfrac{1}{N} Z_a^\top Z_a\right)

        L &= -\frac{1}{N} \sum_i \langle z_{a,i}, z_{b,i} \rangle
             + \frac{\rho}{N} \sum_i z_{a,i}^\top C\, z_{a,i}

    where :math:`\mathrm{sg}` stops the gradient: :math:`C` is a constant for autograd, and the
    loss uses the *updated* :math:`C` (as lightly's implementation does).

    :math:`C` starts as the first batch's second-moment matrix, not at zero (the paper and
    lightly start at zero): from zero, the covariance term is ``(1 - beta)`` of its size at the
    first step and grows over the first ``~1 / (1 - beta)`` steps, so the displayed loss *rises*
    at the start of every run, which users read as divergence.  Started from the first batch,
    the loss is on its steady scale from the first step.

    Parameters
    ----------
    dim : int
        Embedding (projection) dimension ``D``; the size of the ``(D, D)`` covariance buffer.
    beta : float
        Exponential-moving-average coefficient of the covariance, in ``[0, 1)``.
    rho : float
        Weight of the covariance-contrast term, ``>= 0``.
    gather_distributed : bool
        Gather both views from every rank (with gradients) before computing the loss, so the
        covariance is estimated on the global batch.  No effect outside a multi-process
        ``torch.distributed`` run.

    Attributes
    ----------
    C : (D, D) Tensor
        Running covariance, a persistent buffer: it is in ``state_dict()``, moves with
        ``.to()``, and resumes from checkpoints.  Updated by ``forward`` in training mode
        only; in eval mode the loss is computed with the would-be update, which is not stored.
    initialized : () bool Tensor
        Whether ``C`` holds an estimate yet (set by the first training-mode call), a
        persistent buffer.  A state dict without it (checkpoints written before it existed)
        loads as initialised when its ``C`` is non-zero.
    terms : dict of str to () Tensor
        The two terms of the last call, detached, which add up to the loss:
        ``"invariance"`` (minus the mean cosine similarity of the two views, in [-1, 1]) and
        ``"covariance"`` (:math:`\rho` times the covariance-contrast term).

    Notes
    -----
    ``forward(z_a, z_b)``: ``z_a`` and ``z_b`` are ``(N, D)`` embeddings of two views of the
    same ``N`` samples (row ``i`` of each is the same sample); returns a scalar.  The
    arithmetic runs in the wider of the embeddings' dtype and ``C``'s dtype (float32 under
    autocast).  The loss is not symmetric: only ``z_a`` enters the covariance term, as in the
    paper.

    References
    ----------
    .. [1] J. Zhu, R. M. Moraes, S. Karakulak, V. Sobol, A. Canziani and Y. LeCun, "TiCo:
       Transformation Invariance and Covariance Contrast for Self-Supervised Visual
       Representation Learning", 2022. arXiv:2206.10698

    Examples
    --------
    >>> import torch
    >>> loss_fn = TiCoLoss(dim=8)
    >>> z_a, z_b = torch.randn(16, 8), torch.randn(16, 8)
    >>> loss_fn(z_a, z_b).shape
    torch.Size([])
    >>> loss_fn.C.shape
    torch.Size([8, 8])
    """

    C: Tensor

    def __init__(
        self,
        dim: int,
        *,
        beta: float = 0.9,
        rho: float = 20.0,
        gather_distributed: bool = False,
    ) -> None:
        super().__init__()
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be a positive int, got {dim!r}")
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"beta must be in [0, 1), got {beta!r}")
        if not rho >= 0.0:
            raise ValueError(f"rho must be >= 0, got {rho!r}")
        self.dim = dim
        self.beta = float(beta)
        self.rho = float(rho)
        self.gather_distributed = bool(gather_distributed)
        self.register_buffer("C", torch.zeros(dim, dim), persistent=True)
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool), persistent=True)
        self.terms: dict[str, Tensor] = {}

    def extra_repr(self) -> str:  # noqa: D102
        return f"dim={self.dim}, beta={self.beta}, rho={self.rho}"

    def forward(self, z_a: Tensor, z_b: Tensor) -> Tensor:
        """TiCo loss of two ``(N, D)`` views; a scalar.  Updates ``C`` in training mode."""
        z_a, z_b = paired_views(z_a, z_b, gather_distributed=self.gather_distributed)
        if z_a.shape[1] != self.dim:
            raise ValueError(f"embeddings have dimension {z_a.shape[1]}, the loss {self.dim}")
        if z_a.shape[0] < 1:
            raise ValueError("empty batch")

        dtype = torch.promote_types(z_a.dtype, self.C.dtype)
        z_a = F.normalize(z_a.to(dtype), dim=1)
        z_b = F.normalize(z_b.to(dtype), dim=1)
        batch_cov = (z_a.T @ z_a).detach() / z_a.shape[0]
        # Before the first update C is the batch's own: no warm-up from zero (and no host sync).
        previous = torch.where(
            self.initialized.to(z_a.device), self.C.to(device=z_a.device, dtype=dtype), batch_cov
        )
        cov = self.beta * previous + (1.0 - self.beta) * batch_cov
        if self.training:
            with torch.no_grad():
                self.C.copy_(cov)
                self.initialized.fill_(True)

        invariance = -(z_a * z_b).sum(dim=1).mean()
        covariance = self.rho * ((z_a @ cov) * z_a).sum(dim=1).mean()
        self.terms = {"invariance": invariance.detach(), "covariance": covariance.detach()}
        return invariance + covariance

    @staticmethod
    def upgrade_state_dict(state: dict, prefix: str = "") -> dict:
        """``state`` with ``initialized`` added when it lacks it (a checkpoint written before
        the flag existed): true when its ``C`` is non-zero.  Returns a new dict."""
        state = dict(state)
        key = prefix + "initialized"
        if key not in state and prefix + "C" in state:
            state[key] = torch.as_tensor(bool(torch.as_tensor(state[prefix + "C"]).any()))
        return state

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        key = prefix + "initialized"
        if key not in state_dict and prefix + "C" in state_dict:
            state_dict[key] = self.upgrade_state_dict(state_dict, prefix)[key]
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
