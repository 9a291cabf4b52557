"""The objective interface: what a training run optimises.

The training loop (:class:`~napari_segrep.engine.trainer.Trainer`) knows the data order, the
optimiser, the schedule, AMP, DDP and the counters; it does not know what a batch item is, which
head sits on the encoder or what the loss is.  An :class:`Objective` says those three things:

- **the model**: :meth:`Objective.build_model` wraps the encoder with the objective's head into
  the one module that DistributedDataParallel wraps (it has ``.encoder`` and ``.head``; the head
  learns at ``head_lr_scale`` times the encoder's rate);
- **the batch item**: :meth:`Objective.compute` unpacks a micro-batch of the dataset, moves it
  to the device and returns a :class:`StepLoss`;
- **the loss and its state**: :meth:`Objective.state` / :meth:`Objective.load_state` are the
  objective's part of a training checkpoint (plain tensors: checkpoints load without pickles).

A new objective is a new file in this folder,
registered in :data:`napari_segrep.engine.objectives.OBJECTIVES`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field

from torch import Tensor, nn

__all__ = ["Objective", "StepLoss"]


@dataclass
class StepLoss:
    """What :meth:`Objective.compute` returns for one micro-batch.

    Attributes
    ----------
    loss : scalar Tensor
        What the loop back-propagates (divided by ``grad_accumulate``).
    terms : dict of str to float or scalar Tensor
        The loss's named terms, each already weighted so they add up to ``loss`` (reported as
        ``loss_<name>`` in the step records); empty when the loss has none.
    n_crops : int
        Crops the encoder embedded (for ``crops_per_s``).
    probe : (images, masks)
        A few of the micro-batch's crops (detached copies) on which the encoder, in eval mode,
        must embed finite values (:mod:`napari_segrep.engine.health`).
    """

    loss: Tensor
    n_crops: int
    probe: tuple[Tensor, Tensor]
    terms: dict = field(default_factory=dict)


class Objective:
    """What a training run optimises (see the module docstring).  Subclasses set
    :attr:`name` and implement every method below."""

    #: The registry key (``TrainConfig``'s choice).
    name: str = ""
    #: The top-level checkpoint keys :meth:`state` writes, each a dict of tensors (checked
    #: before a resume begins: a checkpoint of another objective is refused, naming the key).
    state_keys: tuple[str, ...] = ()
    #: Views per batch item (``SegmentDataset(views=...)``): 2, ``(view_a, mask_a, view_b,
    #: mask_b)``; 1, ``(view, mask, key)`` (``key`` seeds what the objective draws per item).
    views: int = 2

    #: The dataset items carry ``(target, index)`` after the views
    #: (``SegmentDataset(targets=...)``): the annotated class of the segment (``-1``: none)
    #: and its dataset index.
    needs_targets: bool = False

    @classmethod
    def check_config(cls, config) -> None:
        """A ``ValueError`` (one line, with the fix) when ``config`` cannot train this
        objective; checked by ``train_ssl`` before any data is read."""

    def training_indices(self, dataset, train):
        """The dataset indices one epoch draws from (in any order; the loop shuffles them):
        ``train`` (the segments not held back for monitoring), which an objective may repeat
        some of (the supervised one: its annotated segments)."""
        return train

    def build_model(self, encoder: nn.Module) -> nn.Module:
        """The module trained and wrapped by DistributedDataParallel: it has ``.encoder`` (the
        given one) and ``.head`` (new in every run, checkpointed under ``"head"``)."""
        raise NotImplementedError

    def to(self, device) -> Objective:
        """Move the objective's own modules (the loss) to ``device``; returns self.  The
        default: an objective without modules of its own."""
        return self

    def train(self) -> None:
        """Put the objective's own modules in training mode (the loop trains the model).  The
        default: an objective without modules of its own."""

    def compute(
        self,
        model: nn.Module,
        batch,
        *,
        to_device: Callable[[Tensor], Tensor],
        autocast: Callable[[], contextlib.AbstractContextManager],
    ) -> StepLoss:
        """The loss of one micro-batch (``batch`` as the dataset's ``DataLoader`` yields it):
        ``model`` is what :meth:`build_model` returned, possibly wrapped by DDP; tensors go to
        the device through ``to_device``, the forward pass runs in ``autocast()``."""
        raise NotImplementedError

    def state(self) -> dict:
        """The objective's own state for a training checkpoint: ``{key: {name: CPU tensor}}``
        for each of :attr:`state_keys`, besides the model's (the loop saves ``"encoder"`` and
        ``"head"``)."""
        raise NotImplementedError

    def load_state(self, ckpt: dict, *, source: str) -> None:
        """Restore :meth:`state` from a training checkpoint ``ckpt`` read from ``source``."""
        raise NotImplementedError

    def checked_state(self) -> dict:
        """Tensors that must stay finite (checked before every checkpoint), by name."""
        return self.state()
