"""Self-supervised losses, one per file, each with its paper.

All take two ``(N, D)`` embeddings of two views of the same ``N`` samples and return a scalar:

- :class:`TiCoLoss` (``"tico"``): Zhu et al. 2022, arXiv:2206.10698; keeps a running covariance
  buffer, so it needs the projection dimension;
- :class:`NTXentLoss` (``"ntxent"``): SimCLR, Chen et al. 2020, arXiv:2002.05709;
- :class:`VICRegLoss` (``"vicreg"``): Bardes et al. 2022, arXiv:2105.04906.

Build one by name with :func:`make_loss`.
"""

from __future__ import annotations

from torch import nn

from .ntxent import NTXentLoss
from .tico import TiCoLoss
from .vicreg import VICRegLoss

__all__ = ["LOSSES", "NTXentLoss", "TiCoLoss", "VICRegLoss", "make_loss"]

LOSSES: dict[str, type[nn.Module]] = {
    "tico": TiCoLoss,
    "ntxent": NTXentLoss,
    "vicreg": VICRegLoss,
}


def make_loss(name: str, *, dim: int, **kwargs) -> nn.Module:
    """Build the loss registered as ``name``.

    Parameters
    ----------
    name : {"tico", "ntxent", "vicreg"}
        Key of :data:`LOSSES` (case-sensitive).
    dim : int
        Projection dimension ``D`` of the embeddings the loss will receive.  Passed to
        :class:`TiCoLoss` (its covariance buffer is ``(D, D)``); checked and ignored by the
        others.
    **kwargs
        Keyword hyper-parameters of the loss class (e.g. ``temperature=0.2``); unknown ones
        raise ``TypeError``.

    Returns
    -------
    nn.Module
        ``loss(z_a, z_b) -> scalar`` for ``(N, D)`` embeddings.

    Examples
    --------
    >>> make_loss("ntxent", dim=128, temperature=0.2)
    NTXentLoss(temperature=0.2)
    """
    try:
        cls = LOSSES[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown loss {name!r}; choose one of {sorted(LOSSES)}") from None
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise ValueError(f"dim must be a positive int, got {dim!r}")
    if cls is TiCoLoss:
        return cls(dim, **kwargs)
    return cls(**kwargs)
