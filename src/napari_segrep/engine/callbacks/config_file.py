"""Config file: ``RUN/config.yaml``, the run's resolved settings, written at the start of
training (after the run folder is claimed, before the first step), so a run stopped at any
moment has it.  A resumed run's folder keeps the config it started with."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from .base import Callback

__all__ = ["ConfigFileCallback"]


class ConfigFileCallback(Callback):
    """Writes ``text`` (or ``text(config)``, given the run's
    :class:`~napari_segrep.engine.train_config.TrainConfig` with its epochs resolved) to
    ``path``, atomically, by process 0, unless the run resumed and ``path`` exists."""

    def __init__(self, path: str | os.PathLike, text: str | Callable[[object], str]) -> None:
        self.path = Path(path)
        self.text = text

    def on_train_start(self, trainer, record: dict) -> None:
        if not trainer.dist.is_main:
            return
        resumed = trainer.global_step > 0 or ("quality" not in record and bool(trainer.quality))
        if resumed and self.path.exists():
            return
        from ...io import atomic_write, write_failure

        text = self.text(trainer.config) if callable(self.text) else self.text
        try:
            atomic_write(self.path, lambda fh: fh.write(text.encode("utf-8")))
        except OSError as exc:
            raise write_failure(self.path, exc, what="config") from exc
