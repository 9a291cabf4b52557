"""NT-Xent, the normalised temperature-scaled cross-entropy of SimCLR (Chen et al., 2020)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._views import paired_views

__all__ = ["NTXentLoss"]


class NTXentLoss(nn.Module):
    r"""NT-Xent: each embedding must pick out the other view of its sample among ``2N - 1``.

    The two views are stacked into ``2N`` L2-normalised embeddings :math:`u_k`.  For the anchor
    :math:`k` with positive :math:`p(k)` (the other view of the same sample),

    .. math::

        \ell_k = -\log \frac{\exp(u_k^\top u_{p(k)} / \tau)}
                            {\sum_{j \ne k} \exp(u_k^\top u_j / \tau)},
        \qquad L = \frac{1}{2N} \sum_{k=1}^{2N} \ell_k

    so the ``2N - 2`` other embeddings of the batch are the negatives.

    Parameters
    ----------
    temperature : float
        :math:`\tau > 0`.
    gather_distributed : bool
        Gather both views from every rank (with gradients) before computing the loss, so the
        negatives come from the global batch.  No effect outside a multi-process
        ``torch.distributed`` run.

    Attributes
    ----------
    terms : dict
        Always empty: NT-Xent is a single term (the attribute exists for every loss).

    Notes
    -----
    ``forward(z_a, z_b)``: ``z_a`` and ``z_b`` are ``(N, D)`` embeddings of two views of the
    same ``N >= 2`` samples (row ``i`` of each is the same sample); returns a scalar.
    Similarities are computed in at least float32.  The loss is symmetric in the two views.
    Its minimum for a batch of ``N`` is above 0; :math:`\log(2N - 1)` is the value for
    embeddings that carry no information.

    References
    ----------
    .. [1] T. Chen, S. Kornblith, M. Norouzi and G. Hinton, "A Simple Framework for Contrastive
       Learning of Visual Representations", ICML 2020. arXiv:2002.05709

    Examples
    --------
    >>> import torch
    >>> _ = torch.manual_seed(0)
    >>> loss_fn = NTXentLoss(temperature=0.5)
    >>> z = torch.randn(16, 8)
    >>> bool(loss_fn(z, z) < loss_fn(z, torch.randn(16, 8)))
    True
    """

    def __init__(self, *, temperature: float = 0.2, gather_distributed: bool = False) -> None:
        super().__init__()
        if not temperature > 0.0:
            raise ValueError(f"temperature must be > 0, got {temperature!r}")
        self.temperature = float(temperature)
        self.gather_distributed = bool(gather_distributed)
        self.terms: dict[str, Tensor] = {}

    def extra_repr(self) -> str:  # noqa: D102
        return f"temperature={self.temperature}"

    def forward(self, z_a: Tensor, z_b: Tensor) -> Tensor:
        """NT-Xent loss of two ``(N, D)`` views; a scalar."""
        z_a, z_b = paired_views(z_a, z_b, gather_distributed=self.gather_distributed)
        n = z_a.shape[0]
        if n < 2:
            raise ValueError(f"NT-Xent needs at least 2 samples (negatives), got {n}")

        dtype = torch.promote_types(z_a.dtype, torch.float32)
        u = F.normalize(torch.cat([z_a, z_b], dim=0).to(dtype), dim=1)
        logits = (u @ u.T) / self.temperature
        self_pairs = torch.eye(2 * n, dtype=torch.bool, device=u.device)
        logits = logits.masked_fill(self_pairs, float("-inf"))
        idx = torch.arange(n, device=u.device)
        positives = torch.cat([idx + n, idx])
        return F.cross_entropy(logits, positives)
