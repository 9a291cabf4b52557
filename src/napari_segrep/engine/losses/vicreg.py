"""VICReg: variance-invariance-covariance regularisation (Bardes, Ponce and LeCun, 2022)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._views import paired_views

__all__ = ["VICRegLoss"]


class VICRegLoss(nn.Module):
    r"""VICReg loss: invariance between views, plus variance and decorrelation within each view.

    .. math::

        L = \lambda\, s(Z_a, Z_b) + \mu\, [v(Z_a) + v(Z_b)] + \nu\, [c(Z_a) + c(Z_b)]

    with, for ``(N, D)`` embeddings,

    - invariance :math:`s = \frac{1}{ND} \sum_{i,d} (z_{a,id} - z_{b,id})^2` (mean squared error);
    - variance :math:`v(Z) = \frac{1}{D} \sum_d \max(0, \gamma - \sqrt{\mathrm{Var}(z_{\cdot d})
      + \epsilon})`, with the unbiased variance over the batch;
    - covariance :math:`c(Z) = \frac{1}{D} \sum_{d \ne e} \mathrm{Cov}(Z)_{de}^2`, with the
      unbiased (``N - 1``) covariance matrix.

    The two branches' variance and covariance terms are *summed*, as in the paper's equation (6)
    and pseudo-code (the official training script halves the variance term).

    Parameters
    ----------
    sim_weight : float
        :math:`\lambda`, weight of the invariance term, ``>= 0``.
    var_weight : float
        :math:`\mu`, weight of the variance term, ``>= 0``.
    cov_weight : float
        :math:`\nu`, weight of the covariance term, ``>= 0``.
    eps : float
        :math:`\epsilon > 0`, keeps the square root differentiable at zero variance.
    gamma : float
        :math:`\gamma > 0`, target standard deviation of every dimension.
    gather_distributed : bool
        Gather both views from every rank (with gradients) before computing the loss, so the
        variance and covariance are estimated on the global batch.  No effect outside a
        multi-process ``torch.distributed`` run.

    Attributes
    ----------
    terms : dict of str to () Tensor
        The weighted terms of the last call, detached, which add up to the loss:
        ``"invariance"`` (:math:`\lambda s`), ``"variance"`` (:math:`\mu [v(Z_a) + v(Z_b)]`)
        and ``"covariance"`` (:math:`\nu [c(Z_a) + c(Z_b)]`).

    Notes
    -----
    ``forward(z_a, z_b)``: ``z_a`` and ``z_b`` are ``(N, D)`` embeddings (not normalised) of
    two views of the same ``N >= 2`` samples; returns a scalar, computed in at least float32.

    References
    ----------
    .. [1] A. Bardes, J. Ponce and Y. LeCun, "VICReg: Variance-Invariance-Covariance
       Regularization for Self-Supervised Learning", ICLR 2022. arXiv:2105.04906

    Examples
    --------
    >>> import torch
    >>> loss_fn = VICRegLoss()
    >>> loss_fn(torch.randn(32, 8), torch.randn(32, 8)).shape
    torch.Size([])
    """

    def __init__(
        self,
        *,
        sim_weight: float = 25.0,
        var_weight: float = 25.0,
        cov_weight: float = 1.0,
        eps: float = 1e-4,
        gamma: float = 1.0,
        gather_distributed: bool = False,
    ) -> None:
        super().__init__()
        for name, value in (
            ("sim_weight", sim_weight),
            ("var_weight", var_weight),
            ("cov_weight", cov_weight),
        ):
            if not value >= 0.0:
                raise ValueError(f"{name} must be >= 0, got {value!r}")
        if not eps > 0.0:
            raise ValueError(f"eps must be > 0, got {eps!r}")
        if not gamma > 0.0:
            raise ValueError(f"gamma must be > 0, got {gamma!r}")
        self.sim_weight = float(sim_weight)
        self.var_weight = float(var_weight)
        self.cov_weight = float(cov_weight)
        self.eps = float(eps)
        self.gamma = float(gamma)
        self.gather_distributed = bool(gather_distributed)
        self.terms: dict[str, Tensor] = {}

    def extra_repr(self) -> str:  # noqa: D102
        return (
            f"sim_weight={self.sim_weight}, var_weight={self.var_weight}, "
            f"cov_weight={self.cov_weight}, eps={self.eps}, gamma={self.gamma}"
        )

    def forward(self, z_a: Tensor, z_b: Tensor) -> Tensor:
        """VICReg loss of two ``(N, D)`` views; a scalar."""
        z_a, z_b = paired_views(z_a, z_b, gather_distributed=self.gather_distributed)
        if z_a.shape[0] < 2:
            raise ValueError(f"VICReg needs at least 2 samples (variance), got {z_a.shape[0]}")

        dtype = torch.promote_types(z_a.dtype, torch.float32)
        z_a, z_b = z_a.to(dtype), z_b.to(dtype)
        invariance = self.sim_weight * F.mse_loss(z_a, z_b)
        variance = self.var_weight * (self._variance(z_a) + self._variance(z_b))
        covariance = self.cov_weight * (self._covariance(z_a) + self._covariance(z_b))
        self.terms = {
            "invariance": invariance.detach(),
            "variance": variance.detach(),
            "covariance": covariance.detach(),
        }
        return invariance + variance + covariance

    def _variance(self, z: Tensor) -> Tensor:
        std = torch.sqrt(z.var(dim=0) + self.eps)
        return F.relu(self.gamma - std).mean()

    @staticmethod
    def _covariance(z: Tensor) -> Tensor:
        n, d = z.shape
        z = z - z.mean(dim=0)
        cov = (z.T @ z) / (n - 1)
        off_diagonal = cov - torch.diag_embed(torch.diagonal(cov))
        return off_diagonal.pow(2).sum() / d
