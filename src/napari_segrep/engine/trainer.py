"""The training loop: :class:`Trainer` holds the models, optimiser, schedule, loss, sampler and
quality monitor of a run, and :meth:`Trainer.steps` is a generator of step records (one per
optimiser step); :func:`~napari_segrep.engine.training.train_ssl` drives it.

Reproducibility: the sample order of each epoch comes from ``DistributedSampler(seed,
epoch)``, the views of each sample from a generator seeded by ``(seed, epoch, index)``, the
models from ``seed``.  A checkpoint stores the position inside the epoch, so on the CPU a run
stopped and resumed gives the same losses and weights as an uninterrupted one (tested).

Quality: before the first step and at every epoch end, the encoder's effective rank and view
agreement are measured on a fixed monitor set of the segments
(:mod:`napari_segrep.engine.quality`), held back from training when there are enough segments.
The evaluation runs in eval mode without gradients and leaves the random state untouched, so it
changes no training result; its records are checkpointed with the rest.
"""

from __future__ import annotations

import contextlib
import copy
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader, DistributedSampler

from ..errors import TrainingDiverged
from .checkpoint import (
    load_state_checked,
    load_state_into,
    load_training_checkpoint,
    save_checkpoint,
)
from .dataset import SegmentDataset
from .devices import resolve_device
from .distributed import _distributed_setup
from .encoder import SegmentEncoder
from .heads import ProjectionHead, _SSLModel
from .health import diverged_error, unusable_reason
from .losses import make_loss
from .masking import MaskedBatchNorm
from .optim import LARS, param_groups_for_lars, warmup_cosine_schedule
from .pipeline import _fast_layout as fast_layout
from .pipeline import check_spatial_dims
from .quality import (
    QualityMonitor,
    RepresentationCollapseWarning,
    choose_monitor,
    collapse_message,
    is_collapsed,
)
from .train_config import TrainConfig, steps_per_epoch

__all__ = ["Trainer"]


class Trainer:
    """The training loop's state and its step generator (see
    :func:`~napari_segrep.engine.training.train_ssl`).

    Attributes
    ----------
    split : MonitorSplit
        The monitor set and the indices the training sampler draws from
        (:func:`~napari_segrep.engine.quality.choose_monitor` of ``config.seed``,
        ``config.monitor_size``, ``config.monitor_hold_out``).
    history : list of dict
        Step records.
    quality : list of dict
        Quality records: the start's, then one per completed epoch.
    """

    def __init__(
        self,
        dataset: SegmentDataset,
        config: TrainConfig,
        *,
        encoder: SegmentEncoder | None = None,
        device: str = "auto",
    ) -> None:
        self.config = config
        self.dataset = dataset
        self.split = choose_monitor(
            len(dataset),
            seed=config.seed,
            size=config.monitor_size,
            hold_out=config.monitor_hold_out,
        )
        self.train_indices = self.split.train
        self.monitor = (
            QualityMonitor(dataset, self.split.monitor, batch_size=config.batch_size)
            if len(self.split.monitor)
            else None
        )
        self.dist = _distributed_setup(str(device))
        if self.dist.enabled and torch.cuda.is_available() and str(device) in ("auto", "cuda"):
            self.device = torch.device("cuda", self.dist.local_rank)
            torch.cuda.set_device(self.device)
        else:
            self.device = resolve_device(device)
        if encoder is None:
            encoder = SegmentEncoder(
                config.backbone, in_channels=dataset.in_channels, seed=config.seed
            )
        else:
            encoder = copy.deepcopy(encoder)
            if encoder.in_channels != dataset.in_channels:
                raise ValueError(
                    f"the encoder takes {encoder.in_channels} channel(s), the images have "
                    f"{dataset.in_channels}"
                )
        check_spatial_dims(encoder, dataset.layout)  # a 2D encoder for volumes...: the fix
        encoder.image_masking = config.image_masking
        encoder.feature_masking = config.feature_masking
        encoder.freeze_batchnorm_stats = config.batchnorm_stats == "frozen"
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed + 2)
            head = ProjectionHead(
                encoder.embedding_dim, config.projection_hidden, config.projection_dim
            )
        self.model = _SSLModel(encoder, head)
        if self.dist.enabled and config.sync_batchnorm:
            for m in self.model.modules():
                if isinstance(m, MaskedBatchNorm):  # encoder and head, 2D and 3D
                    m.sync = True
        self.model.to(self.device)
        #: The pipeline's fast layouts (4D channels_last, the layout cuDNN prefers under
        #: autocast; 5D ``MEMORY_FORMAT_3D``), on CUDA.
        self.fast_layouts = False
        if self.device.type == "cuda":
            self.use_fast_layouts()
        self.loss = make_loss(
            config.loss,
            dim=config.projection_dim,
            gather_distributed=config.gather_distributed and self.dist.enabled,
            **config.loss_kwargs,
        ).to(self.device)
        self.lr = config.effective_lr(self.dist.world_size)
        wd = config.effective_weight_decay()
        # The head is new in every run, the encoder is what the user keeps: the head learns at
        # head_lr_scale times the encoder's rate (fine-tuning practice).
        groups = param_groups_for_lars(self.model.encoder, wd)
        for group in param_groups_for_lars(self.model.head, wd):
            groups.append({**group, "lr": self.lr * config.head_lr_scale})
        if config.optimizer == "lars":
            self.optimizer = LARS(groups, lr=self.lr)
        else:
            self.optimizer = torch.optim.AdamW(
                [{k: v for k, v in g.items() if k != "lars_exclude"} for g in groups], lr=self.lr
            )
        self.steps_per_epoch = self._steps_per_epoch()
        if config.epochs is None:  # resolved once the data is known, and stored so
            config = self.config = replace(
                config, epochs=config.resolve_epochs(self.steps_per_epoch)
            )
        self.total_steps = self.steps_per_epoch * config.epochs
        self.scheduler = warmup_cosine_schedule(
            self.optimizer,
            warmup_steps=round(config.warmup_fraction * self.total_steps),
            total_steps=self.total_steps,
        )
        self.ddp_model: nn.Module = self.model
        if self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp_model = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        self.amp_dtype = None
        if config.amp and self.device.type == "cuda":
            self.amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.epoch = 0  # epochs completed
        self.epoch_step = 0  # optimiser steps done inside the current epoch
        self.global_step = 0
        self.history: list[dict] = []
        self.quality: list[dict] = []
        self._collapse_warned = False
        self._probe: tuple[Tensor, Tensor] | None = None  # a few crops of the last micro-batch
        self._checked_step: int | None = None  # the step check_healthy() last passed

    # ------------------------------------------------------------------ data
    def _sampler(self, epoch: int) -> DistributedSampler:
        """The sampler of positions in :attr:`train_indices` (the same on every rank)."""
        sampler = DistributedSampler(
            range(len(self.train_indices)),
            num_replicas=self.dist.world_size,
            rank=self.dist.rank,
            shuffle=True,
            seed=self.config.seed,
            drop_last=True,
        )
        sampler.set_epoch(epoch)
        return sampler

    def _per_rank_batch(self) -> int:
        return min(self.config.batch_size, len(self.train_indices) // self.dist.world_size)

    def _steps_per_epoch(self) -> int:
        n, batch, ws = len(self.train_indices), self._per_rank_batch(), self.dist.world_size
        return steps_per_epoch(
            n, batch=batch, grad_accumulate=self.config.grad_accumulate, world_size=ws
        )

    def _loader(self, epoch: int, skip_steps: int) -> DataLoader:
        self.dataset.set_epoch(epoch)
        order = [int(self.train_indices[i]) for i in self._sampler(epoch)]
        batch = self._per_rank_batch()
        micro = [order[i : i + batch] for i in range(0, len(order) - batch + 1, batch)]
        micro = micro[: self.steps_per_epoch * self.config.grad_accumulate]
        micro = micro[skip_steps * self.config.grad_accumulate :]
        return DataLoader(
            self.dataset,
            batch_sampler=micro,
            num_workers=self.config.num_workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
        )

    def use_fast_layouts(self) -> None:
        """Keep every 4D weight and crop channels_last and every 5D one in
        ``pipeline.MEMORY_FORMAT_3D`` (as :class:`~napari_segrep.engine.pipeline.BatchEncoder`
        does: a 3D backbone may hold 2D convolutions too, on planes of a volume).  On CUDA from the start; numbers as without."""
        self.model._apply(fast_layout)
        self.fast_layouts = True

    # ------------------------------------------------------------------ loop
    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _to_device(self, x: Tensor) -> Tensor:
        x = x.to(self.device, non_blocking=True)
        if self.fast_layouts and x.dtype.is_floating_point:
            x = fast_layout(x)
        return x

    def steps(self):
        """Generator of records until ``config.epochs``: a step record per optimiser step,
        ``{"epoch_end": n, "quality": record}`` at the end of epoch ``n`` (``"quality"`` when
        monitoring), and ``{"quality": record}`` first when the run has no quality record yet."""
        cfg = self.config
        self.model.train()
        self.loss.train()
        if self.monitor is not None and not self.quality:
            yield {"quality": self.evaluate_quality()}
        while self.epoch < cfg.epochs:
            loader = self._loader(self.epoch, self.epoch_step)
            micro_batches = iter(loader)
            while self.epoch_step < self.steps_per_epoch:
                t0 = time.perf_counter()
                self.optimizer.zero_grad(set_to_none=True)
                total, n_crops, terms = 0.0, 0, {}
                for _ in range(cfg.grad_accumulate):
                    a, ma, b, mb = (self._to_device(t) for t in next(micro_batches))
                    self._probe = (a[:8].detach().clone(), ma[:8].detach().clone())
                    with self._autocast():
                        z = self.ddp_model(torch.cat([a, b]), torch.cat([ma, mb]))
                        za, zb = z.float().chunk(2)
                        loss = self.loss(za, zb)
                    if not torch.isfinite(loss):
                        raise self._diverged(f"the loss became {loss.item()}", self.global_step + 1)
                    self.scaler.scale(loss / cfg.grad_accumulate).backward()
                    total += float(loss.detach()) / cfg.grad_accumulate
                    for name, value in getattr(self.loss, "terms", {}).items():
                        terms[name] = terms.get(name, 0.0) + float(value) / cfg.grad_accumulate
                    n_crops += 2 * len(a)
                self.scaler.step(self.optimizer)
                self.scaler.update()
                lr = self.scheduler.get_last_lr()[0]
                self.scheduler.step()
                self.epoch_step += 1
                self.global_step += 1
                seconds = time.perf_counter() - t0
                record = {
                    "epoch": self.epoch + 1,
                    "step": self.global_step,
                    "epoch_step": self.epoch_step,
                    "steps_per_epoch": self.steps_per_epoch,
                    "total_steps": self.total_steps,
                    "loss": total,
                    **{f"loss_{name}": value for name, value in terms.items()},
                    "lr": lr,
                    "crops_per_s": n_crops * self.dist.world_size / max(seconds, 1e-9),
                }
                self.history.append(record)
                yield record
            self.check_healthy()  # before the epoch's checkpoint: only a usable model is saved
            self.epoch += 1
            self.epoch_step = 0
            end = {"epoch_end": self.epoch}
            if self.monitor is not None:
                end["quality"] = self.evaluate_quality()
            yield end

    # ------------------------------------------------------------------ quality
    def evaluate_quality(self) -> dict:
        """Measure the encoder on the monitor set now, append the record to :attr:`quality`
        and return a copy; warn (:class:`RepresentationCollapseWarning`, once, rank 0) when
        the effective rank has collapsed since the start.

        Rank 0 computes and broadcasts, so every rank records the same figures (every rank must
        call).  Eval mode, no gradient, the modules' modes and the random state restored:
        training goes on exactly as without it.
        """
        figures = torch.zeros(2, dtype=torch.float64)
        if self.dist.is_main:
            rank, agreement = self.monitor.evaluate(
                self.model.encoder, device=self.device, autocast=self._autocast
            )
            figures = torch.tensor([rank, agreement], dtype=torch.float64)
        if self.dist.enabled:
            shared = figures.to(self.device)
            dist.broadcast(shared, src=0)
            figures = shared.cpu()
        rank, agreement = (float(v) for v in figures)
        start = self.quality[0] if self.quality else None
        losses = [r["loss"] for r in self.history if r["epoch"] == self.epoch]
        record = {
            "epoch": self.epoch,
            "step": self.global_step,
            "loss": float(np.mean(losses)) if losses and self.epoch_step == 0 else None,
            "effective_rank": rank,
            "view_agreement": agreement,
            "monitor": self.split.kind,
            "n": len(self.monitor),
            "collapsed": start is not None and is_collapsed(rank, start["effective_rank"]),
        }
        self.quality.append(record)
        if record["collapsed"] and not self._collapse_warned:
            self._collapse_warned = True
            if self.dist.is_main:
                warnings.warn(
                    collapse_message(record, start), RepresentationCollapseWarning, stacklevel=2
                )
        return dict(record)

    def _diverged(self, what: str, step: int) -> TrainingDiverged:
        lr, optimizer = self.scheduler.get_last_lr()[0], self.config.optimizer
        return diverged_error(what, epoch=self.epoch + 1, step=step, lr=lr, optimizer=optimizer)

    def check_healthy(self) -> None:
        """Raise :class:`TrainingDiverged` unless the model is usable
        (:func:`~napari_segrep.engine.health.unusable_reason`: finite weights, buffers, loss and
        optimiser state, finite eval-mode embeddings of a few crops of the last micro-batch).
        Run at every epoch end, before every save and when stopping (all ranks)."""
        if self._checked_step == self.global_step:
            return
        state = {k: m.state_dict() for k, m in self.model.named_children()}
        state.update(loss_state=self.loss.state_dict(), optimizer=self.optimizer.state_dict())
        reason = unusable_reason(self.model.encoder, state, self._probe, self._autocast)
        if self._any_rank(reason is not None):
            raise self._diverged(
                reason or "another process found the model unusable", self.global_step
            )
        self._checked_step = self.global_step

    # ------------------------------------------------------------------ checkpoints
    def state(self) -> dict:
        encoder = self.model.encoder
        head = self.model.head
        return {
            "kind": "training",
            "encoder_config": encoder.config(),
            "encoder": {k: v.detach().cpu() for k, v in encoder.state_dict().items()},
            "head": {k: v.detach().cpu() for k, v in head.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "loss_state": {k: v.detach().cpu() for k, v in self.loss.state_dict().items()},
            "epoch": self.epoch,
            "epoch_step": self.epoch_step,
            "global_step": self.global_step,
            "rng": {"torch": torch.get_rng_state()},
            "config": self.config.to_dict(),
            "history": list(self.history),
            "quality": list(self.quality),
            "monitor": {
                "indices": [int(i) for i in self.split.monitor],
                "held_back": self.split.held_back,
            },
            "world_size": self.dist.world_size,
        }

    def save(self, path: str | os.PathLike) -> Path | None:
        """Write a checkpoint (rank 0 only; other ranks return None), after
        :meth:`check_healthy` (all ranks): an unusable model is never saved."""
        self.check_healthy()
        if not self.dist.is_main:
            return None
        return save_checkpoint(self.state(), path)

    def load(self, path: str | os.PathLike) -> None:
        """Restore a training checkpoint written by :meth:`save`."""
        ckpt = load_training_checkpoint(path)  # complete, finite (or a ValueError)
        for key, ours, saved in self.config.resume_differences(ckpt["config"]):
            warnings.warn(
                f"resuming {path} with {key}={ours!r}, but it was trained with {saved!r}: the "
                "run will not match an uninterrupted one",
                stacklevel=3,
            )
        self.model.encoder.load_checkpoint_state(
            ckpt["encoder_config"], ckpt["encoder"], source=str(path)
        )
        load_state_checked(self.model.head, ckpt["head"], what="head", source=str(path))
        source = str(path)
        load_state_into(self.optimizer, ckpt["optimizer"], what="optimizer state", source=source)
        load_state_into(self.scheduler, ckpt["scheduler"], what="scheduler state", source=source)
        load_state_into(self.scaler, ckpt["scaler"], what="scaler state", source=source)
        loss_state = ckpt["loss_state"]
        upgrade = getattr(self.loss, "upgrade_state_dict", None)  # older checkpoints
        if upgrade is not None and isinstance(loss_state, dict):
            loss_state = upgrade(loss_state)
        load_state_checked(self.loss, loss_state, what="loss_state", source=str(path))
        self.epoch, self.epoch_step = int(ckpt["epoch"]), int(ckpt["epoch_step"])
        self.global_step = int(ckpt["global_step"])
        self.history = list(ckpt.get("history", []))
        self.quality = [dict(r) for r in ckpt.get("quality", [])]
        saved = ckpt.get("monitor")
        ours = {"indices": [int(i) for i in self.split.monitor], "held_back": self.split.held_back}
        if isinstance(saved, dict) and saved != ours:
            warnings.warn(
                f"resuming {path} with another monitor set than it was trained with "
                f"({len(ours['indices'])} segments, held back: {ours['held_back']}; it had "
                f"{len(saved.get('indices', []))}, held back: {saved.get('held_back')}): the run "
                "will not match an uninterrupted one, and its quality figures change basis",
                stacklevel=3,
            )
        torch.set_rng_state(ckpt["rng"]["torch"])
        self.model.to(self.device)

    def stop_requested(self, should_stop: Callable[[], bool] | None) -> bool:
        """``should_stop()``, agreed across ranks (any rank asking stops all).  When stopping,
        :meth:`check_healthy` runs first: a stopped run never returns an unusable model."""
        stop = self._any_rank(bool(should_stop()) if should_stop is not None else False)
        if stop:
            self.check_healthy()
        return stop

    def _any_rank(self, flag: bool) -> bool:
        """True when ``flag`` is True on any rank (every rank must call)."""
        if not self.dist.enabled:
            return flag
        value = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item() > 0)
