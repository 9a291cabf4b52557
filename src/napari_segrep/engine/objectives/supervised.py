"""The supervised objective (``supervised``): refine the encoder from the user's annotations.

The SimCLR seed's supervised model (weighted cross-entropy on the self-supervised encoder),
built so that the few annotated segments teach the encoder without the unlabelled majority
losing its say.  A batch item is one segment seen twice, as for the contrastive objective,
plus its class (``-1``: not annotated) and its dataset index:
``(view_a, mask_a, view_b, mask_b, target, index)`` (``SegmentDataset(targets=...)``).  The
loss has two terms:

- **supervised contrastive** (SupCon, Khosla et al. 2020) on the projection head's output, over
  every segment of the batch: a view's positives are the other views of the same segment and,
  for an annotated segment, every view of an annotated segment of the same class.  On a batch
  without annotations it is NT-Xent exactly: the self-supervised loss keeps shaping the space
  on all segments, and the annotations pull each class together in it;
- **weighted cross-entropy** (``loss_classes``) of a linear classifier on the standardised embedding
  (the pooled features the user's classifier reads), on the annotated views only, each class
  weighted by the inverse of its share of the batch's annotated views.

Each epoch draws every training segment once and the annotated ones again until they make up
about :data:`ANNOTATED_SHARE` of it, each class equally (:meth:`training_indices`): a few clicks
among thousands of segments still reach every batch, each time under another augmentation.
Dual masking holds as for every objective: the encoder is the same masked encoder, so no pixel
outside a segment changes its embedding, its loss or a gradient.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..heads import ProjectionHead, _BatchNorm1d
from .base import Objective, StepLoss

__all__ = ["ANNOTATED_SHARE", "SupervisedObjective", "supcon_loss"]

#: Crops of each micro-batch kept for the health check's eval-mode forward pass.
PROBE_CROPS = 8
#: About this fraction of every epoch's items are annotated segments (repeated, each class
#: as often), however few the annotations are.
ANNOTATED_SHARE = 0.25
#: No annotated segment is drawn more than this many times per epoch.
MAX_REPEATS = 32
#: SupCon's temperature (NT-Xent's default).
TEMPERATURE = 0.2
#: The weight of the cross-entropy term (the SupCon term's is 1).
CLASS_LOSS_WEIGHT = 1.0


def supcon_loss(z: Tensor, groups: Tensor, *, temperature: float = TEMPERATURE) -> Tensor:
    r"""Supervised contrastive loss of ``(M, D)`` embeddings with ``(M,)`` group ids.

    For the anchor :math:`k` with positives :math:`P(k) = \{j \ne k : g_j = g_k\}`,

    .. math::

        \ell_k = -\frac{1}{|P(k)|} \sum_{p \in P(k)}
            \log \frac{\exp(u_k^\top u_p / \tau)}{\sum_{j \ne k} \exp(u_k^\top u_j / \tau)}

    averaged over the anchors with at least one positive (``u`` L2-normalised).  With every
    group of size 2 (two views of each sample) it is NT-Xent.
    """
    u = F.normalize(z.float(), dim=1)
    logits = (u @ u.T) / temperature
    eye = torch.eye(len(u), dtype=torch.bool, device=u.device)
    logits = logits.masked_fill(eye, float("-inf"))
    log_p = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    positive = (groups[:, None] == groups[None, :]) & ~eye
    n_pos = positive.sum(1)
    has = n_pos > 0
    per_anchor = -(log_p.masked_fill(~positive, 0.0).sum(1)[has] / n_pos[has])
    return per_anchor.mean()


class _SupervisedHead(nn.Module):
    """The projection head (SupCon's space) and the linear classifier (on the embedding)."""

    def __init__(self, dim: int, hidden: int, out: int, n_classes: int) -> None:
        super().__init__()
        self.projection = ProjectionHead(dim, hidden, out)
        # standardised first: an encoder's pooled features can be of any scale (an untrained
        # one's are small), and a linear layer on them would learn at their scale's pace
        self.classifier = nn.Sequential(_BatchNorm1d(dim), nn.Linear(dim, n_classes))


class _SupervisedModel(nn.Module):
    """``(projection, class logits)`` of ``encoder(images, masks)``: the module DDP wraps."""

    def __init__(self, encoder: nn.Module, head: _SupervisedHead) -> None:
        super().__init__()
        self.encoder, self.head = encoder, head

    def forward(self, images: Tensor, masks: Tensor) -> tuple[Tensor, Tensor]:
        h = self.encoder(images, masks)
        return self.head.projection(h), self.head.classifier(h)


class SupervisedObjective(Objective):
    """SupCon on all segments + weighted cross-entropy on the annotated ones (module docstring).

    Parameters
    ----------
    config : TrainConfig
        Reads ``classes`` (the annotated classes; target ``i`` is ``classes[i]``),
        ``projection_hidden``, ``projection_dim`` and ``seed``.
    distributed : bool
        Unused: each process's batch is its own (SupCon's negatives are the local batch).
    """

    name = "supervised"
    state_keys = ("supervision",)
    views = 2
    #: The dataset items carry ``(target, index)`` after the two views.
    needs_targets = True

    def __init__(self, config, *, distributed: bool = False) -> None:
        self.config = config
        self.loss = nn.Module()  # no state of its own: the trainer's ``loss`` property
        self._targets: Tensor | None = None

    @classmethod
    def check_config(cls, config) -> None:
        classes = config.classes or ()
        if len(classes) < 2:
            raise ValueError(
                "the supervised objective refines the encoder from annotations of at least 2 "
                "classes: use refine_encoder(...) or napari-segrep train --annotations ANN.csv"
            )

    def training_indices(self, dataset, train: np.ndarray) -> np.ndarray:
        """``train`` and the annotated segments among them again, each class as often, until
        they are about :data:`ANNOTATED_SHARE` of the epoch (at most :data:`MAX_REPEATS` draws
        of one segment)."""
        targets = np.asarray(dataset.targets, np.int64)
        self._targets = torch.from_numpy(targets.copy())
        train = np.asarray(train, np.int64)
        labelled = train[targets[train] >= 0]
        if not len(labelled):
            raise ValueError(
                "none of the annotated segments is among the training segments: annotate "
                "segments of these images"
            )
        n_classes = len(self.config.classes)
        per_class = ANNOTATED_SHARE / (1 - ANNOTATED_SHARE) * len(train) / n_classes
        extra = []
        for c in range(n_classes):
            members = labelled[targets[labelled] == c]
            if not len(members):
                continue
            repeats = min(MAX_REPEATS, max(0, math.ceil(per_class / len(members)) - 1))
            extra.append(np.tile(members, repeats))
        return np.sort(np.concatenate([train, *extra]))

    def build_model(self, encoder: nn.Module) -> nn.Module:
        cfg = self.config
        with torch.random.fork_rng(devices=[]):  # the head from the seed, the state untouched
            torch.manual_seed(cfg.seed + 2)
            head = _SupervisedHead(
                encoder.embedding_dim,
                cfg.projection_hidden,
                cfg.projection_dim,
                len(cfg.classes),
            )
        return _SupervisedModel(encoder, head)

    def compute(
        self,
        model: nn.Module,
        batch,
        *,
        to_device: Callable[[Tensor], Tensor],
        autocast: Callable[[], contextlib.AbstractContextManager],
    ) -> StepLoss:
        a, ma, b, mb, target, index = (to_device(t) for t in batch)
        probe = (a[:PROBE_CROPS].detach().clone(), ma[:PROBE_CROPS].detach().clone())
        n_classes = len(self.config.classes)
        with autocast():
            z, logits = model(torch.cat([a, b]), torch.cat([ma, mb]))
        # a view's group: its class when annotated, else its own segment (the other view)
        groups = torch.where(target >= 0, target, n_classes + index).repeat(2)
        contrastive = supcon_loss(z, groups)
        targets = target.repeat(2)
        labelled = targets >= 0
        if labelled.any():
            counts = torch.bincount(targets[labelled], minlength=n_classes).float()
            present = counts > 0
            weight = torch.where(present, counts.sum() / (present.sum() * counts), 0.0)
            classes = CLASS_LOSS_WEIGHT * F.cross_entropy(
                logits.float()[labelled], targets[labelled], weight=weight
            )
        else:
            classes = logits.sum() * 0.0  # every parameter in the graph (DDP)
        loss = contrastive + classes
        terms = {"contrastive": contrastive.detach(), "classes": classes.detach()}
        return StepLoss(loss=loss, n_crops=2 * len(a), probe=probe, terms=terms)

    def state(self) -> dict:
        targets = self._targets if self._targets is not None else torch.zeros(0, dtype=torch.int64)
        return {"supervision": {"targets": targets.clone()}}

    def load_state(self, ckpt: dict, *, source: str) -> None:
        saved = ckpt["supervision"]
        theirs = saved.get("targets") if isinstance(saved, dict) else None
        if not isinstance(theirs, Tensor) or (
            self._targets is not None and not torch.equal(theirs, self._targets)
        ):
            raise ValueError(
                f"{source} was refined from other annotations (or other segments): start a new "
                "run (another log folder) to refine from these"
            )
