"""Charts: ``RUN/charts/loss.png`` (the loss, its terms and the learning rate per step) and
``RUN/charts/quality.png`` (effective rank and view agreement per epoch, the start included),
drawn with Pillow (:mod:`napari_segrep.engine._charts_draw`).

Redrawn at the start (after a resume: the whole run so far, from the checkpoint's history and
quality records), at every epoch end, when the run stops and when it fails (a divergence: the
loss up to its last step); each written atomically, by
process 0 only.  Non-finite values are left out of the lines.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from .base import Callback

__all__ = ["ChartsCallback", "loss_chart", "quality_chart"]


class ChartsCallback(Callback):
    """Writes ``folder/loss.png`` and ``folder/quality.png`` (``folder``: ``RUN/charts``)."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)

    def on_train_start(self, trainer, record: dict) -> None:
        self.draw(trainer)

    def on_epoch_end(self, trainer, record: dict) -> None:
        self.draw(trainer)

    def on_stop(self, trainer, record: dict) -> None:
        if "epoch_end" not in record:  # an epoch end's charts are already drawn
            self.draw(trainer)

    def on_train_end(self, trainer, error: BaseException | None) -> None:
        if error is not None:  # a failed run (a divergence): its loss up to the last step
            self.draw(trainer)

    def draw(self, trainer) -> None:
        """Both charts from the trainer's history and quality records (process 0 only)."""
        if not trainer.dist.is_main:
            return
        from ...io import atomic_write_files, write_failure
        from .._charts_draw import png_bytes

        loss = png_bytes(loss_chart(trainer.history, trainer.steps_per_epoch, trainer.config))
        quality = png_bytes(quality_chart(trainer.quality, trainer.config))
        self.folder.mkdir(parents=True, exist_ok=True)
        writes = {
            self.folder / "loss.png": lambda fh: fh.write(loss),
            self.folder / "quality.png": lambda fh: fh.write(quality),
        }
        try:
            atomic_write_files(writes)
        except OSError as exc:  # disk full...: one line; the previous charts are kept
            raise write_failure(self.folder / "loss.png", exc, what="chart") from exc


def _describe(config) -> str:
    from ..objectives import objective_name

    objective = objective_name(config)  # a pretext task has its own (pixel) loss
    task = f"{config.loss} loss" if objective == "contrastive" else f"{objective} objective"
    return (
        f"{task}, {config.optimizer}, batch {config.batch_size}, "
        f"crops {config.crop_size} px, {config.backbone}, seed {config.seed}"
    )


def loss_chart(history: list[dict], steps_per_epoch: int, config):
    """The loss chart (a PIL image): the loss and its terms per optimiser step, the learning
    rate below."""
    from .._charts_draw import Panel, Series, draw_chart

    steps = [r["step"] for r in history]
    terms = sorted({k for r in history for k in r if k.startswith("loss_")})
    losses = [Series("loss", steps, [r["loss"] for r in history])]
    losses += [
        Series(k.removeprefix("loss_"), steps, [r.get(k, math.nan) for r in history]) for k in terms
    ]
    lr = [Series("learning rate (encoder)", steps, [r["lr"] for r in history])]
    total = steps_per_epoch * (config.epochs or 0)
    last = steps[-1] if steps else 0
    bounds = [steps_per_epoch * e for e in range(1, (last // max(steps_per_epoch, 1)) + 1)]
    note = _describe(config) + (f"; step {last} of {total}" if total else "")
    return draw_chart(
        "Training loss",
        [Panel("loss (per step)", losses), Panel("learning rate", lr)],
        xlabel="optimiser step (dashed: epoch ends)",
        epoch_bounds=bounds,
        note=note if history else note + "; no step yet",
    )


def quality_chart(records: list[dict], config):
    """The quality chart (a PIL image): effective rank and view agreement of the monitor set
    per epoch (0: the start)."""
    from .._charts_draw import Panel, Series, draw_chart

    epochs = [r["epoch"] for r in records]
    first = records[0] if records else {}
    note = (
        f"{first['n']} {first['monitor']} segments monitored; " if first else "no monitor set; "
    ) + _describe(config)
    n = first.get("n") or 0
    chance = (1.0 / n, "chance") if n else None
    return draw_chart(
        "Embedding quality (monitor set)",
        [
            Panel(
                "effective rank",
                [Series("effective rank", epochs, [r["effective_rank"] for r in records], True)],
            ),
            Panel(
                "view agreement",
                [Series("view agreement", epochs, [r["view_agreement"] for r in records], True)],
                ylim=(0.0, 1.0),
                reference=chance,
            ),
        ],
        xlabel="epochs completed (0: before training)",
        note=note,
    )
