"""The names of a training run folder's entries (``napari-segrep train --log-dir RUN``,
``train_ssl(checkpoint_dir=RUN)``, Train SegRep's run folder); torch-free.

::

    RUN/
      config.yaml       the resolved settings (CONFIG_NAME)
      last.pt           the training checkpoint (CHECKPOINT_NAME)
      history.csv       one row per optimiser step (command line)
      quality.csv       one row per epoch, the start first (command line)
      charts/           loss.png, quality.png (CHARTS_DIR)
      tensorboard/      event file, projector (TENSORBOARD_DIR)

What each holds and when it is written: the README's "The run folder".
"""

from __future__ import annotations

__all__ = ["CHARTS_DIR", "CHECKPOINT_NAME", "CONFIG_NAME", "TENSORBOARD_DIR"]

#: The training checkpoint, written at every epoch end and when a run stops.
CHECKPOINT_NAME = "last.pt"
#: The resolved settings, written when training starts (``--config`` reads it back).
CONFIG_NAME = "config.yaml"
#: ``loss.png`` and ``quality.png``, redrawn at every epoch end and when a run stops.
CHARTS_DIR = "charts"
#: TensorBoard's logs (scalars and the embedding projector).
TENSORBOARD_DIR = "tensorboard"
