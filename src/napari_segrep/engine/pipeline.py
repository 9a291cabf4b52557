"""The two halves of embedding, shared by :func:`~napari_segrep.engine.embed.embed_segments`
(one image, in process) and :func:`~napari_segrep.engine.collection.iter_embed_images` (many
images, optionally prepared in worker processes).

* **Prepare** (CPU only, no model): :func:`prepare_segments` validates an image and its labels,
  builds the segment table and the normalisation, and collects what the labels look like
  (warnings, returned as messages so a worker process can send them back);
  :meth:`PreparedImage.batches` then yields the crop batches.
* **Encode** (the model): :class:`BatchEncoder` runs the encoder on crop batches on its device;
  :func:`on_device` moves batches there (pinned memory and a side CUDA stream, one batch
  ahead, on CUDA); :class:`EmbeddingRows` gathers one image's embeddings, checks them and makes
  the table.

Because both callers go through these same functions with the same batches, a segment's row is
bit-identical whichever path embedded it.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from .inputs import as_channels_first, check_crop_size, check_image_values, validate_labels
from .segments import (
    GEOMETRY_COLUMNS,
    Normalization,
    SegmentTable,
    iter_crop_batches,
    labels_warnings,
    resolve_normalization,
    segment_table,
)

__all__ = [
    "BatchEncoder",
    "EmbeddingRows",
    "PreparedImage",
    "check_channels",
    "embedding_columns",
    "empty_result",
    "nonfinite_embeddings",
    "on_device",
    "positive_int",
    "prepare_segments",
    "warn_messages",
]

#: Message of the warning for labels without any segment.
NO_SEGMENT = "labels contain no segment (all zero): returning an empty table"
# channels_last: 1.14x faster than contiguous for the masked encoder on CPU
# (benchmarks/masking_overhead.py); the layout cuDNN prefers under autocast on CUDA.
MEMORY_FORMAT = torch.channels_last
# 5D tensors (volumes, 3D kernels): contiguous.  channels_last_3d was no faster for the masked
# resnet18_3d on CPU (0.94-1.05x, 1 and 2 threads, benchmarks/masking_overhead_3d.py; CUDA not
# measured); channels_last itself takes 4D tensors only.
MEMORY_FORMAT_3D = torch.contiguous_format


def embedding_columns(dim: int) -> list[str]:
    """``emb_0 ... emb_{dim-1}``."""
    return [f"emb_{i}" for i in range(dim)]


def empty_result(dim: int) -> pd.DataFrame:
    """The table of no segment: the right columns and dtypes, length 0."""
    data: dict = {"label": np.empty(0, np.int64)}
    for col in GEOMETRY_COLUMNS:
        data[col] = np.empty(0, np.int64 if col.startswith(("bbox", "area")) else np.float64)
    for col in embedding_columns(dim):
        data[col] = np.empty(0, np.float32)
    return pd.DataFrame(data)


def positive_int(value, name: str) -> int:
    """``value`` as an int; ``ValueError`` naming ``name`` unless a positive integer."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def check_channels(in_channels: int, n_channels: int) -> None:
    """``ValueError`` with the fix when an encoder's channels differ from an image's."""
    if in_channels != n_channels:
        raise ValueError(
            f"the encoder takes {in_channels} channel(s) but the image has {n_channels}: "
            "pass channel_axis for multichannel images, or an encoder with in_channels="
            f"{n_channels}"
        )


# ----------------------------------------------------------------------------- prepare
@dataclass
class PreparedImage:
    """One 2D image, ready to crop: ``image_cf`` (C, Y, X), its segment ``table``, the
    normalisation ``norm``, the checked ``crop_size`` and ``batch_size``, and ``messages``:
    what :func:`~napari_segrep.engine.segments.labels_warnings` says about the labels (to be
    warned as ``UserWarning`` by whoever reports to the user)."""

    image_cf: np.ndarray
    table: SegmentTable
    norm: Normalization
    crop_size: int
    batch_size: int
    messages: list[str] = field(default_factory=list)

    @property
    def n_channels(self) -> int:
        return int(self.image_cf.shape[0])

    def __len__(self) -> int:
        return len(self.table)

    def batches(self, *, mask_image: bool = True) -> Iterator:
        """The crop batches (:class:`~napari_segrep.engine.segments.CropBatch`), in table
        order; memory is bounded by one batch."""
        return iter_crop_batches(
            self.image_cf,
            self.table,
            crop_size=self.crop_size,
            batch_size=self.batch_size,
            norm=self.norm,
            mask_image=mask_image,
        )


def prepare_segments(
    image: np.ndarray,
    labels: np.ndarray,
    *,
    in_channels: int | None = None,
    crop_size: int = 64,
    batch_size: int = 128,
    channel_axis: int | None = None,
    normalize: str | Sequence[float] | None = "image",
    only: Sequence[int] | None = None,
) -> PreparedImage:
    """The CPU half of :func:`~napari_segrep.engine.embed.embed_segments`: validate, build the
    segment table and the normalisation.  No model, no torch forward: safe in a worker process.

    Parameters
    ----------
    image : (Y, X), (Y, X, 3) or multichannel ndarray
    labels : (Y, X) integer ndarray
    in_channels : int, optional
        The encoder's channels, checked against the image's when given.
    crop_size, batch_size, channel_axis, normalize, only
        As for ``embed_segments``.

    Returns
    -------
    PreparedImage

    Raises
    ------
    ValueError, TypeError
        What ``embed_segments`` refuses, with the same messages.
    """
    image_cf = as_channels_first(image, channel_axis=channel_axis)
    labels = validate_labels(labels, image_cf.shape[1:])
    check_image_values(image_cf)
    crop_size = check_crop_size(crop_size, image_cf.shape[1:])
    batch_size = positive_int(batch_size, "batch_size")
    if in_channels is not None:
        check_channels(in_channels, image_cf.shape[0])
    norm = resolve_normalization(image_cf, normalize)
    table = segment_table(labels, only=only)
    messages = labels_warnings(table) if only is None else []
    return PreparedImage(image_cf, table, norm, crop_size, batch_size, messages)


# ----------------------------------------------------------------------------- encode
def _autocast(device: torch.device):
    if device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return contextlib.nullcontext()


class BatchEncoder:
    """The encoder on ``device`` in eval mode, as a context manager that gives back its
    previous mode on exit; calling it embeds one batch of crops under ``inference_mode`` (and
    autocast on CUDA).

    The grad mode is entered per call, not for the whole ``with`` block, so a generator that
    yields inside the block does not leak inference mode into its caller's code.
    """

    def __init__(self, encoder, device: torch.device):
        self.encoder = encoder
        self.device = torch.device(device)
        self._was_training: bool | None = None

    def __enter__(self) -> BatchEncoder:
        self._was_training = self.encoder.training
        # every 4D weight in MEMORY_FORMAT, every 5D one in MEMORY_FORMAT_3D (a 3D backbone
        # may hold both: 2D convolutions on planes of a volume)
        self.encoder.eval().to(self.device)._apply(_fast_layout)
        return self

    def __exit__(self, *exc) -> None:
        self.encoder.train(bool(self._was_training))

    def __call__(self, images: torch.Tensor, masks: torch.Tensor) -> np.ndarray:
        """``(B, C, S, S)`` crops and ``(B, 1, S, S)`` masks (``(B, C, S, S, S)`` and
        ``(B, 1, S, S, S)`` for a 3D encoder), on the device -> ``(B, D)`` float32 embeddings
        (numpy)."""
        with torch.inference_mode(), _autocast(self.device):
            z = self.encoder(_fast_layout(images), masks)
            return z.float().cpu().numpy()


def _fast_layout(t: torch.Tensor) -> torch.Tensor:
    """``t`` in :data:`MEMORY_FORMAT` if 4D, :data:`MEMORY_FORMAT_3D` if 5D, else as it is."""
    if t.ndim == 4:
        return t.contiguous(memory_format=MEMORY_FORMAT)
    if t.ndim == 5:
        return t.contiguous(memory_format=MEMORY_FORMAT_3D)
    return t


def _as_tensor(array) -> torch.Tensor:
    return array if isinstance(array, torch.Tensor) else torch.from_numpy(array)


def on_device(batches: Iterable, device: torch.device) -> Iterator[tuple]:
    """``(batch, images, masks)`` for each crop batch (``batch.images`` / ``batch.masks``
    numpy arrays or tensors), the two tensors on ``device``; an item without crops
    (``images`` None) passes through in order as ``(item, None, None)``.

    On CUDA the copies are ``non_blocking`` (asynchronous from pinned memory, which the
    collection's DataLoader provides) on a side stream, issued one item ahead, so the next
    batch travels while the current one is encoded; the compute stream waits for the copy
    before using it.  Elsewhere: the arrays as tensors, moved (no copy on the CPU).
    """
    device = torch.device(device)
    if device.type != "cuda":
        for batch in batches:
            if getattr(batch, "images", None) is None:
                yield batch, None, None
            else:
                images = _as_tensor(batch.images).to(device)
                yield batch, images, _as_tensor(batch.masks).to(device)
        return
    stream = torch.cuda.Stream(device)
    ahead = None
    for batch in batches:
        staged = (batch, None, None)
        if getattr(batch, "images", None) is not None:
            with torch.cuda.stream(stream):
                images = _as_tensor(batch.images).to(device, non_blocking=True)
                masks = _as_tensor(batch.masks).to(device, non_blocking=True)
            staged = (batch, images, masks)
        if ahead is not None:
            yield _ready(ahead, stream)
        ahead = staged
    if ahead is not None:
        yield _ready(ahead, stream)


def _ready(staged: tuple, stream) -> tuple:
    """The staged item, once the compute stream has waited for its copy (and the caching
    allocator knows that the compute stream uses the tensors)."""
    batch, images, masks = staged
    if images is None:
        return staged
    current = torch.cuda.current_stream(images.device)
    current.wait_stream(stream)
    images.record_stream(current)
    masks.record_stream(current)
    return batch, images, masks


class EmbeddingRows:
    """One image's embeddings, filled batch by batch (any order), then made into its table.

    ``geometry`` is the segment table's geometry (``label`` then the geometry columns);
    ``normalization`` the description recorded in ``attrs``.
    """

    def __init__(self, geometry: pd.DataFrame, dim: int, *, normalization: dict, crop_size: int):
        self.geometry = geometry
        self.normalization = normalization
        self.crop_size = int(crop_size)
        self.out = np.empty((len(geometry), dim), np.float32)
        self.scales = np.ones(len(geometry), np.float64)
        self.filled = 0

    def __len__(self) -> int:
        return len(self.geometry)

    @property
    def complete(self) -> bool:
        return self.filled >= len(self.geometry)

    def add(self, start: int, z: np.ndarray, scales, encoder) -> None:
        """Rows ``start .. start + len(z)``; ``ValueError`` naming the model and the segments
        when an embedding is NaN or Inf (no table of NaN is ever returned)."""
        stop = start + len(z)
        self.out[start:stop] = z
        if not np.isfinite(self.out[start:stop]).all():  # (B, D): cheap
            raise nonfinite_embeddings(encoder, self.geometry, start, stop, self.out)
        self.scales[start:stop] = np.asarray(scales, np.float64)
        self.filled += len(z)

    def frame(self, encoder) -> pd.DataFrame:
        """The table: geometry, ``scale``, ``emb_*``; ``attrs`` normalisation, encoder, crop."""
        result = self.geometry.copy()
        result["scale"] = self.scales
        dim = self.out.shape[1]
        emb = pd.DataFrame(self.out, columns=embedding_columns(dim), index=result.index)
        out = pd.concat([result, emb], axis=1)
        out.attrs["normalization"] = self.normalization  # what was used, for provenance
        out.attrs["encoder"] = encoder.record()  # config + sha256 (classifiers check it)
        out.attrs["crop_size"] = self.crop_size  # with the encoder: how to embed more alike
        return out


def nonfinite_embeddings(encoder, geometry, start: int, stop: int, out: np.ndarray) -> ValueError:
    """The error for NaN/Inf embeddings, naming the model and the likely cause."""
    source = encoder.weights_source
    if source is None:
        model = f"an untrained {encoder.backbone_name} (seed {encoder.seed})"
    elif source == "imagenet":
        model = f"{encoder.backbone_name} with ImageNet weights"
    else:
        model = f"{encoder.backbone_name} from {source}"
    bad = ~np.isfinite(out[start:stop]).all(axis=1)
    labels = geometry["label"].to_numpy()[start:stop][bad]
    shown = ", ".join(map(str, labels[:5])) + (", ..." if len(labels) > 5 else "")
    return ValueError(
        f"the encoder ({model}) gave NaN or Inf embeddings (segments {shown}): the model is "
        "probably diverged or corrupt (e.g. trained with too high a learning rate), or the image "
        "values are extreme (try normalize='image'). Use another checkpoint, or train again "
        "with a lower learning rate."
    )


def warn_messages(messages: Iterable[str], *, stacklevel: int = 2) -> None:
    """Warn each message as a ``UserWarning`` (``stacklevel`` counted from the caller)."""
    for message in messages:
        warnings.warn(message, UserWarning, stacklevel=stacklevel + 1)
