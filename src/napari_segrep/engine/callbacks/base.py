"""The callback interface: what watches a training run without changing it.

The loop (:class:`~napari_segrep.engine.trainer.Trainer`) calls every callback's hooks, in the
order of its ``callbacks``, at these moments:

==========================  ==============================================================
``on_train_start(t, rec)``  before the first step of :meth:`Trainer.steps` (also after a
                            resume); keys added to ``rec`` are reported (yielded) when any
``on_loss(t, loss)``        after each micro-batch's forward pass, before its backward
``on_step_end(t, rec)``     after each optimiser step; ``rec`` is the step record
``before_epoch_end(t)``     after an epoch's last step, before the counters move
``on_epoch_end(t, rec)``    the counters moved (``t.epoch`` epochs completed); ``rec`` is
                            ``{"epoch_end": t.epoch}``, keys added to it are reported
``on_stop(t, rec)``         the run stops early (``should_stop``); ``rec`` is the last record
``before_save(t)``          before every checkpoint is written (all processes)
``on_train_end(t, error)``  :meth:`Trainer.run` ends, however: finished, stopped (``error``
                            None) or failed (``error``: the exception, e.g. a divergence,
                            raised on after every callback had this hook; a callback's own
                            failure here is then a warning, never in its place)
==========================  ==============================================================

A callback's part of a training checkpoint is :meth:`Callback.state` /
:meth:`Callback.load_state` (plain values and tensors).  Every process calls every hook (a hook
that computes on one process broadcasts).  A callback never touches the random state, the
model's modes or the data order: a run trains the same with or without it (tested for the
quality figures).

Built in (:mod:`napari_segrep.engine.callbacks`): health, quality, checkpoint, progress.  A
chart or TensorBoard logger is a new file here implementing ``on_step_end`` / ``on_epoch_end``.
"""

from __future__ import annotations

__all__ = ["Callback"]


class Callback:
    """A no-op at every hook; subclasses override what they need (see the module docstring)."""

    def on_train_start(self, trainer, record: dict) -> None:
        pass

    def on_loss(self, trainer, loss) -> None:
        pass

    def on_step_end(self, trainer, record: dict) -> None:
        pass

    def before_epoch_end(self, trainer) -> None:
        pass

    def on_epoch_end(self, trainer, record: dict) -> None:
        pass

    def on_stop(self, trainer, record: dict) -> None:
        pass

    def before_save(self, trainer) -> None:
        pass

    def on_train_end(self, trainer, error: BaseException | None) -> None:
        pass

    def state(self) -> dict:
        """This callback's part of a training checkpoint (top-level keys)."""
        return {}

    def load_state(self, ckpt: dict, *, source: str) -> None:
        """Restore :meth:`state` from a training checkpoint ``ckpt`` read from ``source``."""
