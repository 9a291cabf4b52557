"""TensorBoard: ``RUN/tensorboard/``, read with ``tensorboard --logdir RUN/tensorboard``.

- scalars per optimiser step: ``loss``, each ``loss_<term>``, ``lr``, ``crops_per_s``;
- scalars per epoch (at the epoch's last step; the start at step 0): ``effective_rank``,
  ``view_agreement``;
- the **embedding projector** of the monitor set (tag ``monitor``): the encoder's embeddings of
  the first view of each monitored segment, with the masked crops as the sprite and the
  segment's image and label as metadata, at the start (step 0) and at the end of training
  (also when a run stops early), so the PROJECTOR tab shows how the space changed.

Process 0 writes; the embeddings are computed in eval mode without gradients, with the modules'
modes and the random state restored (:meth:`QualityMonitor.embed
<napari_segrep.engine.quality.QualityMonitor.embed>`): a run trains bit for bit the same with or
without this callback.  A resumed run opens the writer with ``purge_step`` just after its
checkpoint, so the events a crashed run logged after its last checkpoint are dropped.

TensorBoard is an optional extra (``pip install "napari-segrep[tensorboard]"``).  Without it a
run that did not ask for it explicitly says once that TensorBoard logging is off, and how to
turn it on; everything else works.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from .base import Callback

__all__ = ["TENSORBOARD_MISSING", "TensorBoardCallback", "tensorboard_available"]

#: What a run says (once) when TensorBoard is not installed.
TENSORBOARD_MISSING = (
    "TensorBoard logging is off: the tensorboard package is not installed (pip install "
    '"napari-segrep[tensorboard]" turns it on)'
)
#: The projector's tag.
PROJECTOR_TAG = "monitor"


def tensorboard_available() -> bool:
    """Can ``torch.utils.tensorboard`` be imported (is the tensorboard package installed)?"""
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        return False
    return True


class TensorBoardCallback(Callback):
    """Logs the run into ``folder`` (``RUN/tensorboard``); see the module docstring.

    Parameters
    ----------
    folder : path
    required : bool
        True: TensorBoard must be installed (checked by the caller before any work); False:
        without it, warn once and log nothing.
    """

    def __init__(self, folder: str | os.PathLike, *, required: bool = False) -> None:
        self.folder = Path(folder)
        self.required = required
        self.writer = None
        self._thumbnails: np.ndarray | None = None
        self._metadata: list[list[str]] | None = None

    # ------------------------------------------------------------------ hooks
    def on_train_start(self, trainer, record: dict) -> None:
        if not trainer.dist.is_main:
            return
        resumed = trainer.global_step > 0 or ("quality" not in record and bool(trainer.quality))
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            if self.required:
                raise
            warnings.warn(TENSORBOARD_MISSING, UserWarning, stacklevel=2)
            return
        # After a resume, drop what a crashed run logged after its checkpoint's step.
        purge = trainer.global_step + 1 if resumed else None
        self.writer = SummaryWriter(str(self.folder), purge_step=purge)
        if resumed:
            self._keep_projector_config()
        else:
            if "quality" in record:
                self._quality_scalars(record["quality"])
            self._projector(trainer)
        self.writer.flush()

    def on_step_end(self, trainer, record: dict) -> None:
        if self.writer is None:
            return
        step = record["step"]
        for key in ("loss", *sorted(k for k in record if k.startswith("loss_")), "lr"):
            self._scalar(key, record[key], step)
        self._scalar("crops_per_s", record["crops_per_s"], step)

    def on_epoch_end(self, trainer, record: dict) -> None:
        if self.writer is None:
            return
        if "quality" in record:
            self._quality_scalars(record["quality"])
        if trainer.epoch >= trainer.config.epochs:  # the end of training
            self._projector(trainer)
            self.close()
        else:
            self.writer.flush()

    def on_stop(self, trainer, record: dict) -> None:
        if self.writer is None:
            return
        self._projector(trainer)  # where the stopped run is
        self.close()

    def on_train_end(self, trainer, error: BaseException | None) -> None:
        self.close()  # a failed run's scalars up to its last step are on disk

    def close(self) -> None:
        """Flush and close the writer (nothing more is logged)."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    # ------------------------------------------------------------------ writing
    def _scalar(self, tag: str, value, step: int) -> None:
        value = float(value)
        if np.isfinite(value):  # never a NaN/Inf point
            self.writer.add_scalar(tag, value, step)

    def _quality_scalars(self, quality: dict) -> None:
        for key in ("effective_rank", "view_agreement"):
            self._scalar(key, quality[key], quality["step"])

    def _projector(self, trainer) -> None:
        """The monitor set's embeddings at the current step (once per step)."""
        monitor = trainer.quality_callback.monitor
        step = trainer.global_step
        if monitor is None or (self.folder / f"{step:05d}" / PROJECTOR_TAG).exists():
            return
        z, _ = monitor.embed(
            trainer.model.encoder, device=trainer.device, autocast=trainer.autocast
        )
        if not bool(np.isfinite(z.numpy()).all()):
            return  # never a NaN in the projector (the health check says why)
        if self._thumbnails is None:
            self._thumbnails = _sprite_thumbnails(*monitor.first_views())
            dataset = trainer.dataset
            self._metadata = [
                [str(i), *(str(v) for v in dataset.segment(i))] for i in monitor.indices
            ]
        import torch

        self.writer.add_embedding(
            z,
            metadata=self._metadata,
            metadata_header=["index", "image", "label"],
            label_img=torch.from_numpy(self._thumbnails),
            global_step=step,
            tag=PROJECTOR_TAG,
        )

    def _keep_projector_config(self) -> None:
        """A resumed run's writer starts with the projector entries already in the folder
        (``SummaryWriter`` rewrites ``projector_config.pbtxt`` from its own list)."""
        path = self.folder / "projector_config.pbtxt"
        if not path.exists():
            return
        from google.protobuf import text_format
        from tensorboard.plugins.projector.projector_config_pb2 import ProjectorConfig

        config = ProjectorConfig()
        text_format.Parse(path.read_text(encoding="utf-8"), config)
        self.writer._projector_config = config  # what add_embedding appends to


def _sprite_thumbnails(images, masks) -> np.ndarray:
    """``(M, 3, S, S)`` float32 in [0, 1]: each crop as the encoder sees it (the segment's
    pixels, black outside its mask; a volume's middle plane), outlined in yellow."""
    from .._thumb_draw import inner_boundary, to_rgb

    images, masks = images.float().numpy(), masks.numpy().astype(bool)[:, 0]
    if images.ndim == 5:  # (M, C, D, H, W): the middle plane
        mid = images.shape[2] // 2
        images, masks = images[:, :, mid], masks[:, mid]
    rgb = np.stack([to_rgb(image * mask) for image, mask in zip(images, masks, strict=True)])
    rgb[inner_boundary(masks)] = (255, 210, 0)
    return np.moveaxis(rgb, -1, 1).astype(np.float32) / 255.0
