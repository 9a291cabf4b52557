"""Unsupervised quality figures of an encoder's embeddings, followed during training.

Self-supervised training has no labels to score against, and its loss says little about the
embeddings users get (TiCo's and VICReg's losses can fall while the representation collapses).
Two figures on the **encoder's** embeddings (what ``embed_segments`` returns, not the projection
head's), on a fixed monitor set of the user's own segments, say more:

- :func:`effective_rank` (RankMe): how many directions the embeddings really use.  A collapse
  (every segment mapped to nearly the same point, or onto a line) shows as a fall towards 1.
- :func:`view_agreement`: the fraction of segments recognised under the augmentations: embed
  two augmented views of each monitored segment, and count how often a view's nearest
  neighbour among the other views is the other view of the *same* segment.  1 means the
  network tells every segment apart from the others whatever the augmentation did; chance is
  ``1 / N``.

:class:`QualityMonitor` holds the monitor set (chosen by :func:`choose_monitor`), its fixed
views, and evaluates both figures without touching the training's randomness or state.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

__all__ = [
    "COLLAPSE_FRACTION",
    "MAX_MONITOR",
    "MIN_TRAINING_SEGMENTS",
    "MONITOR_FRACTION",
    "MonitorSplit",
    "QualityMonitor",
    "RepresentationCollapseWarning",
    "choose_monitor",
    "collapse_message",
    "effective_rank",
    "is_collapsed",
    "view_agreement",
]

#: Fraction of the segments held back for monitoring (at most :data:`MAX_MONITOR`).
MONITOR_FRACTION = 0.1
#: The most segments monitored (two views each are embedded at every epoch end).
MAX_MONITOR = 256
#: Segments are held back only when at least this many remain for training.
MIN_TRAINING_SEGMENTS = 200
#: A run has collapsed when its effective rank falls below this fraction of its start value.
COLLAPSE_FRACTION = 0.3
#: The pseudo-epoch whose per-sample generators draw the monitor set's fixed views: the views
#: come from ``(seed, MONITOR_EPOCH, index)``, never from a training epoch's ``(seed, epoch,
#: index)`` (training epochs are far fewer).
MONITOR_EPOCH = 2**31 - 1


class RepresentationCollapseWarning(UserWarning):
    """The embeddings collapsed during training (see :func:`collapse_message`)."""


def effective_rank(z: Tensor | np.ndarray, *, eps: float = 1e-7) -> float:
    r"""RankMe: the effective rank of an embedding matrix (Garrido et al., 2023).

    With :math:`\sigma_k` the singular values of ``z``,

    .. math::

        p_k = \frac{\sigma_k}{\lVert \sigma \rVert_1} + \epsilon, \qquad
        \mathrm{RankMe}(z) = \exp\Big(-\sum_k p_k \log p_k\Big)

    Parameters
    ----------
    z : (N, D) Tensor or ndarray
        One embedding per row (not centred, as in the paper).
    eps : float
        :math:`\epsilon`, keeps :math:`\log` finite for zero singular values.

    Returns
    -------
    float
        Between about 1 and ``min(N, D)``: ``r`` for a matrix of rank ``r`` whose non-zero
        singular values are equal, about 1 for a collapsed (constant, or all-zero) matrix.
        Computed in float64.

    References
    ----------
    .. [1] Q. Garrido, R. Balestriero, L. Najman and Y. LeCun, "RankMe: Assessing the
       Downstream Performance of Pretrained Self-Supervised Representations by Their Rank",
       ICML 2023. arXiv:2210.02885

    Examples
    --------
    >>> import torch
    >>> round(effective_rank(torch.eye(5)), 3)
    5.0
    >>> round(effective_rank(torch.ones(8, 4)), 3)
    1.0
    """
    z = torch.as_tensor(z).detach()
    if z.ndim != 2 or z.shape[0] < 1 or z.shape[1] < 1:
        raise ValueError(f"z must be a non-empty (N, D) matrix, got shape {tuple(z.shape)}")
    sigma = torch.linalg.svdvals(z.to(device="cpu", dtype=torch.float64))
    total = sigma.sum()
    p = sigma / total if total > 0 else torch.zeros_like(sigma)
    p = p + eps
    return float(torch.exp(-(p * torch.log(p)).sum()))


def view_agreement(z_a: Tensor | np.ndarray, z_b: Tensor | np.ndarray) -> float:
    """Top-1 retrieval of the other view: how often a segment is recognised under the
    augmentations.

    Both sets are centred by the mean of all ``2N`` embeddings, then compared by cosine
    similarity.  For each row ``i`` of ``z_a``, is its most similar row of ``z_b`` row ``i``
    (the other view of the same segment)?  And the same from ``z_b`` to ``z_a``.  The result
    is the fraction of hits over both directions.

    Parameters
    ----------
    z_a, z_b : (N, D) Tensor or ndarray
        Embeddings of two views of the same ``N >= 2`` segments (row ``i`` of each is segment
        ``i``).

    Returns
    -------
    float
        In ``[0, 1]``: 1 when every segment's two views are each other's nearest neighbours
        ("the network recognises every segment under the augmentations"); about ``1 / N``
        (chance) for embeddings unrelated to the segment, and exactly ``1 / N`` for collapsed
        (constant) embeddings.  Ties go to the lowest index.  Computed in float64.

    Notes
    -----
    Centring matters: embeddings after ReLU and mean pooling share a large common component,
    which would make every cosine similarity close to 1.

    Examples
    --------
    >>> import torch
    >>> z = torch.randn(10, 4)
    >>> view_agreement(z, z)
    1.0
    """
    a = torch.as_tensor(z_a).detach().to(device="cpu", dtype=torch.float64)
    b = torch.as_tensor(z_b).detach().to(device="cpu", dtype=torch.float64)
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(
            f"z_a and z_b must be (N, D) of the same shape, got {tuple(a.shape)} and "
            f"{tuple(b.shape)}"
        )
    n = a.shape[0]
    if n < 2:
        raise ValueError(f"view agreement needs at least 2 segments, got {n}")
    mean = torch.cat([a, b]).mean(dim=0)
    a = nn.functional.normalize(a - mean, dim=1)
    b = nn.functional.normalize(b - mean, dim=1)
    similarity = a @ b.T
    target = torch.arange(n)
    hits = (similarity.argmax(dim=1) == target).sum() + (similarity.argmax(dim=0) == target).sum()
    return float(hits) / (2 * n)


def is_collapsed(rank: float, start: float) -> bool:
    """Has the effective rank collapsed: fallen below :data:`COLLAPSE_FRACTION` of its
    ``start`` value, or (from a start of at least 2) below 1.5, one direction or little more?"""
    if not (math.isfinite(rank) and math.isfinite(start)):
        return False
    return rank < COLLAPSE_FRACTION * start or (start >= 2.0 and rank < 1.5)


def collapse_message(record: dict, start: dict) -> str:
    """What a collapse means and what to try, for the quality ``record`` and the ``start``
    record."""
    return (
        f"the embeddings collapsed: their effective rank fell from {start['effective_rank']:.1f} "
        f"to {record['effective_rank']:.1f} at epoch {record['epoch']} (step {record['step']}), "
        "so the model maps different segments to nearly the same embedding and they can no "
        "longer be told apart. Train again with a lower learning rate, or another loss "
        "(e.g. ntxent)."
    )


@dataclass(frozen=True)
class MonitorSplit:
    """Which segments are monitored and which are trained on.

    Attributes
    ----------
    monitor : (M,) ndarray of int
        Dataset indices of the monitor set, ascending (empty when monitoring is off).
    train : (T,) ndarray of int
        Dataset indices the training sampler draws from, ascending.
    held_back : bool
        True when the monitor set is left out of training; False when it is a subset of the
        training segments.
    """

    monitor: np.ndarray
    train: np.ndarray
    held_back: bool

    @property
    def kind(self) -> str:
        """``"held-back"`` or ``"training"`` (the records' ``monitor`` value)."""
        return "held-back" if self.held_back else "training"


def choose_monitor(
    n: int, *, seed: int, size: int | None = None, hold_out: bool | None = None
) -> MonitorSplit:
    """Choose the monitor set among ``n`` segments, deterministically from ``seed``.

    Parameters
    ----------
    n : int
        Segments in the dataset.
    seed : int
        The run's seed: the same seed gives the same choice.
    size : int, optional
        Segments to monitor.  ``None``: :data:`MONITOR_FRACTION` of the segments (at least 2,
        at most :data:`MAX_MONITOR`) when they are held back, otherwise up to
        :data:`MAX_MONITOR` of the training segments.  ``0``: no monitoring.
    hold_out : bool, optional
        Leave the monitor set out of training.  ``None``: only when at least
        :data:`MIN_TRAINING_SEGMENTS` segments remain for training (below that, every segment
        is worth more for training than for an unbiased figure).

    Returns
    -------
    MonitorSplit
    """
    if isinstance(size, bool) or not (size is None or (isinstance(size, int) and size >= 0)):
        raise ValueError(f"monitor_size must be None or an integer >= 0, got {size!r}")
    if size == 1:
        raise ValueError("monitor_size must be 0 (off) or at least 2")
    if hold_out not in (None, True, False):
        raise ValueError(f"monitor_hold_out must be None, True or False, got {hold_out!r}")
    everything = np.arange(n)
    if size == 0 or n < 2:
        return MonitorSplit(np.arange(0), everything, held_back=False)
    held = size if size is not None else min(MAX_MONITOR, max(2, round(MONITOR_FRACTION * n)))
    if hold_out is None:
        hold_out = n - held >= MIN_TRAINING_SEGMENTS
    if hold_out and n - held < 2:
        raise ValueError(
            f"{n} segment(s) are too few to hold {held} back for monitoring: training needs at "
            "least 2 (monitor fewer, or monitor training segments)"
        )
    if not hold_out:
        held = min(n, size if size is not None else MAX_MONITOR)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), MONITOR_EPOCH, 1]))
    monitor = np.sort(rng.choice(n, size=held, replace=False))
    train = np.setdiff1d(everything, monitor) if hold_out else everything
    return MonitorSplit(monitor, train, held_back=bool(hold_out))


class QualityMonitor:
    """The monitor set's fixed views, and the figures of an encoder on them.

    Parameters
    ----------
    dataset : SegmentDataset
        The training dataset (not modified: its views for the monitor set are drawn from a
        shallow copy set to the pseudo-epoch :data:`MONITOR_EPOCH`).
    indices : (M,) array of int
        The monitor set (:attr:`MonitorSplit.monitor`), at least 2.
    batch_size : int
        Segments per forward pass.

    Notes
    -----
    The views are the same at every evaluation, in every process and after a resume: each
    comes from the dataset's per-sample generator seeded by ``(seed, MONITOR_EPOCH, index)``.
    They are kept in memory after the first evaluation when they take at most
    :attr:`CACHE_BYTES`.
    """

    CACHE_BYTES = 256 * 2**20

    def __init__(self, dataset, indices, *, batch_size: int = 64) -> None:
        self.indices = [int(i) for i in indices]
        if len(self.indices) < 2:
            raise ValueError("a monitor set needs at least 2 segments")
        self.batch_size = max(1, int(batch_size))
        self._dataset = copy.copy(dataset)
        self._dataset.views = 2  # view agreement compares two views, whatever training draws
        self._dataset.targets = None  # and the views alone, annotated or not
        self._dataset.set_epoch(MONITOR_EPOCH)
        self._cache: list[tuple[Tensor, ...]] | None = None

    def __len__(self) -> int:
        return len(self.indices)

    def _batches(self):
        if self._cache is not None:
            yield from self._cache
            return
        batches, size = [], 0
        for start in range(0, len(self.indices), self.batch_size):
            items = [self._dataset[i] for i in self.indices[start : start + self.batch_size]]
            batch = tuple(torch.stack(parts) for parts in zip(*items, strict=True))
            size += sum(t.numel() * t.element_size() for t in batch)
            batches.append(batch)
            yield batch
        if size <= self.CACHE_BYTES:
            self._cache = batches

    def embed(
        self,
        encoder: nn.Module,
        *,
        device: torch.device | str = "cpu",
        autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    ) -> tuple[Tensor, Tensor]:
        """The encoder's eval-mode embeddings of both views: two ``(M, D)`` float32 CPU tensors.

        No gradient; every module's training flag is restored afterwards; the global random
        state (CPU and CUDA) is left as it was."""
        modes = [(m, m.training) for m in encoder.modules()]
        cuda = torch.device(device).type == "cuda" and torch.cuda.is_initialized()
        devices = list(range(torch.cuda.device_count())) if cuda else []
        out_a, out_b = [], []
        try:
            encoder.eval()
            with torch.random.fork_rng(devices=devices), torch.no_grad():
                for a, ma, b, mb in self._batches():
                    with autocast():
                        z = encoder(torch.cat([a, b]).to(device), torch.cat([ma, mb]).to(device))
                    za, zb = z.float().cpu().chunk(2)
                    out_a.append(za)
                    out_b.append(zb)
        finally:
            for m, mode in modes:
                m.training = mode
        return torch.cat(out_a), torch.cat(out_b)

    def evaluate(self, encoder: nn.Module, **kwargs) -> tuple[float, float]:
        """``(effective_rank, view_agreement)`` of the encoder on the monitor set: RankMe of
        both views' embeddings stacked (``2M`` rows), and :func:`view_agreement`; NaN for both
        when an embedding is not finite.  Keyword arguments go to :meth:`embed`."""
        z_a, z_b = self.embed(encoder, **kwargs)
        if not bool(torch.isfinite(z_a).all() and torch.isfinite(z_b).all()):
            return float("nan"), float("nan")
        return effective_rank(torch.cat([z_a, z_b])), view_agreement(z_a, z_b)

    def first_views(self) -> tuple[Tensor, Tensor]:
        """The first view of every monitored segment and its mask, as the encoder sees them:
        ``(M, C, *crop)`` float32 and ``(M, 1, *crop)`` bool CPU tensors (the thumbnails of
        TensorBoard's projector)."""
        images, masks = [], []
        for a, ma, _, _ in self._batches():
            images.append(a)
            masks.append(ma)
        return torch.cat(images), torch.cat(masks)
