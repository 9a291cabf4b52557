"""The two-view contrastive objective (``contrastive``): SegRep's and SimCLR's training.

A batch item is one segment seen twice, ``(view_a, mask_a, view_b, mask_b)``, as
:class:`~napari_segrep.engine.dataset.SegmentDataset` draws it (each view with its own
augmentation; dual masking inside the encoder).  Both views are embedded in one forward pass
(so BatchNorm sees them together), projected by a :class:`~napari_segrep.engine.heads.ProjectionHead`,
and a self-supervised loss (:mod:`napari_segrep.engine.losses`: NT-Xent, TiCo, VICReg) pulls
the two projections of each segment together.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from torch import Tensor, nn

from ..checkpoint import load_state_checked
from ..heads import ProjectionHead, _SSLModel
from ..losses import make_loss
from .base import Objective, StepLoss

__all__ = ["ContrastiveObjective"]

#: Crops of each micro-batch kept for the health check's eval-mode forward pass.
PROBE_CROPS = 8


class ContrastiveObjective(Objective):
    """Two augmented views of each segment, a projection head, a two-view loss.

    Parameters
    ----------
    config : TrainConfig
        Reads ``loss``, ``loss_kwargs``, ``projection_hidden``, ``projection_dim``, ``seed``
        and ``gather_distributed``.
    distributed : bool
        The run is distributed: the loss gathers the other processes' embeddings when
        ``config.gather_distributed``.
    """

    name = "contrastive"
    state_keys = ("loss_state",)

    def __init__(self, config, *, distributed: bool = False) -> None:
        self.config = config
        self.loss = make_loss(
            config.loss,
            dim=config.projection_dim,
            gather_distributed=config.gather_distributed and distributed,
            **config.loss_kwargs,
        )

    def build_model(self, encoder: nn.Module) -> nn.Module:
        cfg = self.config
        with torch.random.fork_rng(devices=[]):  # the head from the seed, the state untouched
            torch.manual_seed(cfg.seed + 2)
            head = ProjectionHead(encoder.embedding_dim, cfg.projection_hidden, cfg.projection_dim)
        return _SSLModel(encoder, head)

    def to(self, device) -> ContrastiveObjective:
        self.loss.to(device)
        return self

    def train(self) -> None:
        self.loss.train()

    def compute(
        self,
        model: nn.Module,
        batch,
        *,
        to_device: Callable[[Tensor], Tensor],
        autocast: Callable[[], contextlib.AbstractContextManager],
    ) -> StepLoss:
        a, ma, b, mb = (to_device(t) for t in batch)
        probe = (a[:PROBE_CROPS].detach().clone(), ma[:PROBE_CROPS].detach().clone())
        with autocast():
            z = model(torch.cat([a, b]), torch.cat([ma, mb]))
            za, zb = z.float().chunk(2)
            loss = self.loss(za, zb)
        terms = dict(getattr(self.loss, "terms", {}))
        return StepLoss(loss=loss, n_crops=2 * len(a), probe=probe, terms=terms)

    def state(self) -> dict:
        return {"loss_state": {k: v.detach().cpu() for k, v in self.loss.state_dict().items()}}

    def checked_state(self) -> dict:
        return {"loss_state": self.loss.state_dict()}

    def load_state(self, ckpt: dict, *, source: str) -> None:
        loss_state = ckpt["loss_state"]
        upgrade = getattr(self.loss, "upgrade_state_dict", None)  # older checkpoints
        if upgrade is not None and isinstance(loss_state, dict):
            loss_state = upgrade(loss_state)
        load_state_checked(self.loss, loss_state, what="loss_state", source=source)
