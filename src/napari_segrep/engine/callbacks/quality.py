"""Quality: the encoder's effective rank and view agreement on a fixed monitor set, before the
first step and at every epoch end (:mod:`napari_segrep.engine.quality`).

The evaluation runs in eval mode without gradients and leaves the random state untouched, so it
changes no training result; its records are checkpointed (``"quality"``, ``"monitor"``).
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
import torch.distributed as dist

from ..quality import (
    QualityMonitor,
    RepresentationCollapseWarning,
    collapse_message,
    is_collapsed,
)
from .base import Callback

__all__ = ["QualityCallback"]


class QualityCallback(Callback):
    """Measures the encoder on the monitor set ``split.monitor`` and adds ``"quality"`` to the
    start's and every epoch end's record (nothing when the monitor set is empty:
    ``monitor_size=0``).

    Attributes
    ----------
    records : list of dict
        The start's record, then one per completed epoch (see ``train_ssl``'s ``on_quality``).
    """

    def __init__(self, dataset, split, *, batch_size: int) -> None:
        self.split = split
        self.monitor = (
            QualityMonitor(dataset, split.monitor, batch_size=batch_size)
            if len(split.monitor)
            else None
        )
        self.records: list[dict] = []
        self._collapse_warned = False

    def on_train_start(self, trainer, record: dict) -> None:
        if self.monitor is not None and not self.records:
            record["quality"] = self.evaluate(trainer)

    def on_epoch_end(self, trainer, record: dict) -> None:
        if self.monitor is not None:
            record["quality"] = self.evaluate(trainer)

    def evaluate(self, trainer) -> dict:
        """Measure the encoder now, append the record to :attr:`records` and return a copy;
        warn (:class:`RepresentationCollapseWarning`, once, rank 0) when the effective rank has
        collapsed since the start.

        Rank 0 computes and broadcasts, so every rank records the same figures (every rank must
        call).  Eval mode, no gradient, the modules' modes and the random state restored:
        training goes on exactly as without it.
        """
        figures = torch.zeros(2, dtype=torch.float64)
        if trainer.dist.is_main:
            rank, agreement = self.monitor.evaluate(
                trainer.model.encoder, device=trainer.device, autocast=trainer.autocast
            )
            figures = torch.tensor([rank, agreement], dtype=torch.float64)
        if trainer.dist.enabled:
            shared = figures.to(trainer.device)
            dist.broadcast(shared, src=0)
            figures = shared.cpu()
        rank, agreement = (float(v) for v in figures)
        start = self.records[0] if self.records else None
        losses = [r["loss"] for r in trainer.history if r["epoch"] == trainer.epoch]
        record = {
            "epoch": trainer.epoch,
            "step": trainer.global_step,
            "loss": float(np.mean(losses)) if losses and trainer.epoch_step == 0 else None,
            "effective_rank": rank,
            "view_agreement": agreement,
            "monitor": self.split.kind,
            "n": len(self.monitor),
            "collapsed": start is not None and is_collapsed(rank, start["effective_rank"]),
        }
        self.records.append(record)
        if record["collapsed"] and not self._collapse_warned:
            self._collapse_warned = True
            if trainer.dist.is_main:
                warnings.warn(
                    collapse_message(record, start), RepresentationCollapseWarning, stacklevel=2
                )
        return dict(record)

    def _monitor_state(self) -> dict:
        return {"indices": [int(i) for i in self.split.monitor], "held_back": self.split.held_back}

    def state(self) -> dict:
        return {"quality": list(self.records), "monitor": self._monitor_state()}

    def load_state(self, ckpt: dict, *, source: str) -> None:
        self.records = [dict(r) for r in ckpt.get("quality", [])]
        saved, ours = ckpt.get("monitor"), self._monitor_state()
        if isinstance(saved, dict) and saved != ours:
            warnings.warn(
                f"resuming {source} with another monitor set than it was trained with "
                f"({len(ours['indices'])} segments, held back: {ours['held_back']}; it had "
                f"{len(saved.get('indices', []))}, held back: {saved.get('held_back')}): the run "
                "will not match an uninterrupted one, and its quality figures change basis",
                stacklevel=4,
            )
