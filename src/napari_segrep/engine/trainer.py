"""The training loop: :class:`Trainer` holds what every run has, whatever it optimises (the
data order, the optimiser and its schedule, AMP, DistributedDataParallel, the counters), and
:meth:`Trainer.steps` is a generator of step records (one per optimiser step);
:func:`~napari_segrep.engine.training.train_ssl` drives it through :meth:`Trainer.run`.

What is optimised is the **objective**'s (:mod:`napari_segrep.engine.objectives`: what a batch
item is, the head, the loss); what watches the run are the **callbacks**
(:mod:`napari_segrep.engine.callbacks`: health, quality, checkpoint, progress).  The loop calls
them and knows neither.

Reproducibility: the sample order of each epoch comes from ``DistributedSampler(seed,
epoch)``, the views of each sample from a generator seeded by ``(seed, epoch, index)``, the
models from ``seed``.  A checkpoint stores the position inside the epoch, so on the CPU a run
stopped and resumed gives the same losses and weights as an uninterrupted one (tested).

Quality: before the first step and at every epoch end, the encoder's effective rank and view
agreement are measured on a fixed monitor set of the segments
(:class:`~napari_segrep.engine.callbacks.QualityCallback`), held back from training when there
are enough segments.  The evaluation changes no training result; its records are checkpointed
with the rest.
"""

from __future__ import annotations

import contextlib
import copy
import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader, DistributedSampler

from .callbacks import Callback, HealthCallback, QualityCallback
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
from .health import diverged_error
from .masking import MaskedBatchNorm
from .objectives import Objective, make_objective, objective_name
from .optim import LARS, encoder_param_groups, param_groups_for_lars, warmup_cosine_schedule
from .pipeline import _fast_layout as fast_layout
from .pipeline import check_spatial_dims
from .quality import choose_monitor
from .train_config import TrainConfig, steps_per_epoch

__all__ = ["Trainer"]


class Trainer:
    """The training loop's state and its step generator (see
    :func:`~napari_segrep.engine.training.train_ssl`).

    Parameters
    ----------
    dataset : SegmentDataset
    config : TrainConfig
    encoder : SegmentEncoder, optional
        Starting point (copied); default an untrained ``config.backbone`` from ``config.seed``.
    device : str
    objective : Objective, optional
        What is optimised; default :func:`~napari_segrep.engine.objectives.make_objective` of
        ``config``.
    callbacks : sequence of Callback
        Called after the built-in ones (:attr:`health`, :attr:`quality_callback`), in order.

    Attributes
    ----------
    split : MonitorSplit
        The monitor set and the indices the training sampler draws from
        (:func:`~napari_segrep.engine.quality.choose_monitor` of ``config.seed``,
        ``config.monitor_size``, ``config.monitor_hold_out``).
    model : nn.Module
        The objective's model: ``model.encoder`` (what the user keeps) and ``model.head``.
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
        objective: Objective | None = None,
        callbacks: Sequence[Callback] = (),
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
        self.dist = _distributed_setup(str(device))
        if self.dist.enabled and torch.cuda.is_available() and str(device) in ("auto", "cuda"):
            self.device = torch.device("cuda", self.dist.local_rank)
            torch.cuda.set_device(self.device)
        else:
            self.device = resolve_device(device)
        encoder = self._starting_encoder(encoder)
        self.objective = objective or make_objective(config, distributed=self.dist.enabled)
        if self.objective.needs_targets and getattr(dataset, "targets", None) is None:
            raise ValueError(
                f"the {self.objective.name!r} objective trains on annotated segments: build the "
                "dataset with SegmentDataset(..., targets=...)"
            )
        self.train_indices = np.asarray(
            self.objective.training_indices(dataset, self.split.train), np.int64
        )
        if getattr(dataset, "views", 2) != self.objective.views:
            raise ValueError(
                f"the {self.objective.name!r} objective trains on {self.objective.views} view(s) "
                f"per segment, the dataset draws {dataset.views}: build it with "
                f"SegmentDataset(..., views={self.objective.views})"
            )
        self.model = self.objective.build_model(encoder)
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
        self.objective.to(self.device)
        self.lr = config.effective_lr(self.dist.world_size)
        wd = config.effective_weight_decay()
        # The head is new in every run, the encoder is what the user keeps: the head learns at
        # head_lr_scale times the encoder's rate (fine-tuning practice).
        groups = encoder_param_groups(self.model.encoder, self.lr, wd)
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
        #: A few crops of the last micro-batch (the health check embeds them in eval mode).
        self.probe: tuple[Tensor, Tensor] | None = None
        self.health = HealthCallback()
        self.quality_callback = QualityCallback(dataset, self.split, batch_size=config.batch_size)
        self.callbacks: list[Callback] = [self.health, self.quality_callback, *callbacks]

    def _starting_encoder(self, encoder: SegmentEncoder | None) -> SegmentEncoder:
        """A copy of ``encoder`` (or a new one from the config), set up as the config says."""
        config, dataset = self.config, self.dataset
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
        return encoder

    @property
    def loss(self) -> nn.Module:
        """The objective's loss module."""
        return self.objective.loss

    @property
    def quality(self) -> list[dict]:
        """The quality records (:attr:`QualityCallback.records`)."""
        return self.quality_callback.records

    def _emit(self, hook: str, *args) -> None:
        for callback in self.callbacks:
            getattr(callback, hook)(self, *args)

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
    def autocast(self):
        """The context the forward passes run in (AMP on CUDA when ``config.amp``)."""
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
        ``{"epoch_end": n, ...}`` at the end of epoch ``n`` (with ``"quality"`` when
        monitoring), and first ``{"quality": record}`` when the run has no quality record yet:
        each record as the callbacks completed it."""
        cfg = self.config
        self.model.train()
        self.objective.train()
        start: dict = {}
        self._emit("on_train_start", start)
        if start:
            yield start
        while self.epoch < cfg.epochs:
            loader = self._loader(self.epoch, self.epoch_step)
            micro_batches = iter(loader)
            while self.epoch_step < self.steps_per_epoch:
                t0 = time.perf_counter()
                self.optimizer.zero_grad(set_to_none=True)
                total, n_crops, terms = 0.0, 0, {}
                for _ in range(cfg.grad_accumulate):
                    out = self.objective.compute(
                        self.ddp_model,
                        next(micro_batches),
                        to_device=self._to_device,
                        autocast=self.autocast,
                    )
                    self.probe = out.probe
                    self._emit("on_loss", out.loss)
                    self.scaler.scale(out.loss / cfg.grad_accumulate).backward()
                    total += float(out.loss.detach()) / cfg.grad_accumulate
                    for name, value in out.terms.items():
                        terms[name] = terms.get(name, 0.0) + float(value) / cfg.grad_accumulate
                    n_crops += out.n_crops
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
                self._emit("on_step_end", record)
                yield record
            self._emit("before_epoch_end")  # health: only a usable model is checkpointed
            self.epoch += 1
            self.epoch_step = 0
            end = {"epoch_end": self.epoch}
            self._emit("on_epoch_end", end)
            yield end

    def run(self, should_stop: Callable[[], bool] | None = None) -> bool:
        """Train to ``config.epochs``, polling ``should_stop`` after every record; True when it
        stopped before the last epoch was complete.  However it ends, the callbacks'
        ``on_train_end`` run last (a failure's exception is raised on after them)."""
        try:
            for record in self.steps():
                if self.stop_requested(should_stop, record):
                    stopped = self.epoch < self.config.epochs
                    break
            else:
                stopped = False
        except BaseException as exc:
            self._end(exc)
            raise
        self._end(None)
        return stopped

    def _end(self, error: BaseException | None) -> None:
        """Every callback's ``on_train_end``; after a failure, a callback failing here is a
        warning (the run's own error is the one the caller sees)."""
        for callback in self.callbacks:
            try:
                callback.on_train_end(self, error)
            except Exception as exc:
                if error is None:
                    raise
                warnings.warn(
                    f"{type(callback).__name__} could not finish after the run failed: {exc}",
                    stacklevel=3,
                )

    def diverged(self, what: str, step: int):
        """The :class:`~napari_segrep.errors.TrainingDiverged` for ``what`` at ``step`` of the
        current epoch, with advice."""
        lr, optimizer = self.scheduler.get_last_lr()[0], self.config.optimizer
        return diverged_error(what, epoch=self.epoch + 1, step=step, lr=lr, optimizer=optimizer)

    def check_healthy(self) -> None:
        """Raise :class:`TrainingDiverged` unless the model is usable
        (:class:`~napari_segrep.engine.callbacks.HealthCallback`).  Run at every epoch end,
        before every save and when stopping (all ranks)."""
        self.health.check(self)

    # ------------------------------------------------------------------ checkpoints
    def state(self) -> dict:
        """A training checkpoint: the loop's state, the objective's, the callbacks'."""
        encoder = self.model.encoder
        head = self.model.head
        out = {
            "kind": "training",
            "encoder_config": encoder.config(),
            "encoder": {k: v.detach().cpu() for k, v in encoder.state_dict().items()},
            "head": {k: v.detach().cpu() for k, v in head.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            **self.objective.state(),
            "epoch": self.epoch,
            "epoch_step": self.epoch_step,
            "global_step": self.global_step,
            "rng": {"torch": torch.get_rng_state()},
            "config": self.config.to_dict(),
            "history": list(self.history),
        }
        for callback in self.callbacks:
            out.update(callback.state())
        out["world_size"] = self.dist.world_size
        return out

    def save(self, path: str | os.PathLike) -> Path | None:
        """Write a checkpoint (rank 0 only; other ranks return None), after the callbacks'
        ``before_save`` (all ranks; the health check: an unusable model is never saved)."""
        self._emit("before_save")
        if not self.dist.is_main:
            return None
        return save_checkpoint(self.state(), path)

    def load(self, path: str | os.PathLike) -> None:
        """Restore a training checkpoint written by :meth:`save`."""
        # complete, finite (or a ValueError), with the objective's own state
        ckpt = load_training_checkpoint(
            path, objective_keys=self.objective.state_keys, objective=objective_name(self.config)
        )
        for key, ours, saved in self.config.resume_differences(ckpt["config"]):
            warnings.warn(
                f"resuming {path} with {key}={ours!r}, but it was trained with {saved!r}: the "
                "run will not match an uninterrupted one",
                stacklevel=3,
            )
        source = str(path)
        self.model.encoder.load_checkpoint_state(
            ckpt["encoder_config"], ckpt["encoder"], source=source
        )
        load_state_checked(self.model.head, ckpt["head"], what="head", source=source)
        load_state_into(self.optimizer, ckpt["optimizer"], what="optimizer state", source=source)
        load_state_into(self.scheduler, ckpt["scheduler"], what="scheduler state", source=source)
        load_state_into(self.scaler, ckpt["scaler"], what="scaler state", source=source)
        self.objective.load_state(ckpt, source=source)
        self.epoch, self.epoch_step = int(ckpt["epoch"]), int(ckpt["epoch_step"])
        self.global_step = int(ckpt["global_step"])
        self.history = list(ckpt.get("history", []))
        for callback in self.callbacks:
            callback.load_state(ckpt, source=source)
        torch.set_rng_state(ckpt["rng"]["torch"])
        self.model.to(self.device)

    def stop_requested(
        self, should_stop: Callable[[], bool] | None, record: dict | None = None
    ) -> bool:
        """``should_stop()``, agreed across ranks (any rank asking stops all).  When stopping,
        the callbacks' ``on_stop`` run (the health check first: a stopped run never returns an
        unusable model; then the checkpoint)."""
        stop = self.any_rank(bool(should_stop()) if should_stop is not None else False)
        if stop:
            self._emit("on_stop", record if record is not None else {})
        return stop

    def any_rank(self, flag: bool) -> bool:
        """True when ``flag`` is True on any rank (every rank must call)."""
        if not self.dist.enabled:
            return flag
        value = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item() > 0)
