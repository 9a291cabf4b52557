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

from .._images import Layout
from ._resample import crop_geometry, isotropy_factors
from .inputs import as_channels_first, check_crop_size, check_image_values, validate_labels
from .segments import (
    Normalization,
    SegmentTable,
    frame_layout_of,
    geometry_columns,
    iter_crop_batches,
    labels_warnings,
    resolve_normalization,
    segment_table,
)

__all__ = [
    "DEFAULT_CROP_SIZE",
    "MANY_OBJECTS",
    "MIN_SCALE",
    "VOLUME_CROP_SIZE",
    "BatchEncoder",
    "EmbeddingRows",
    "PreparedImage",
    "check_channels",
    "check_spatial_dims",
    "default_crop_size",
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


#: ``crop_size=None``: the side of a 2D crop, and of a volume's cube (a 64^3 crop is 8x the
#: voxels of a 32^3 one, and 32^3 = 32,768 voxels is 8x a 64x64 crop's pixels already).
DEFAULT_CROP_SIZE = 64
VOLUME_CROP_SIZE = 32
#: The smallest downscale of a volume's object into its crop (more: it is refused, named).
MIN_SCALE = 1 / 64
#: From this many objects in one volume, a warning says the cost before the work.
MANY_OBJECTS = 100_000


def default_crop_size(layout: Layout, backbone: str | None = None) -> int:
    """What ``crop_size=None`` means for objects of ``layout`` seen by ``backbone``: the
    backbone's own crop when it has one (:mod:`napari_segrep.catalogue`: 112 for the ViTs, a
    7x7 or 8x8 token grid), else :data:`DEFAULT_CROP_SIZE` (64) in 2D and
    :data:`VOLUME_CROP_SIZE` (32) for volumes."""
    if backbone is not None:
        from .backbones import BACKBONES

        spec = BACKBONES.get(backbone)
        if spec is not None and spec.default_crop and spec.spatial_dims == layout.spatial_ndim:
            return int(spec.default_crop)
    return VOLUME_CROP_SIZE if layout.is_volume else DEFAULT_CROP_SIZE


def empty_result(dim: int, *, layout: Layout | None = None) -> pd.DataFrame:
    """The table of no segment: the right columns and dtypes (those of ``layout``'s objects,
    2D when None), length 0; ``attrs["layout"]`` when ``layout`` is given."""
    data: dict = {"label": np.empty(0, np.int64)}
    for col in geometry_columns(2 if layout is None else layout.spatial_ndim):
        data[col] = np.empty(0, np.int64 if col.startswith(("bbox", "area")) else np.float64)
    for col in embedding_columns(dim):
        data[col] = np.empty(0, np.float32)
    out = pd.DataFrame(data)
    if layout is not None:
        out.attrs["layout"] = layout.describe()
    return out


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


def check_spatial_dims(encoder, layout: Layout) -> None:
    """``ValueError`` with the fix when ``encoder`` (its ``spatial_dims``) embeds crops of
    another dimension than ``layout``'s objects: a 2D encoder for a volume, or the reverse."""
    dims = int(getattr(encoder, "spatial_dims", 2))
    if dims == layout.spatial_ndim:
        return
    name, channels = encoder.backbone_name, encoder.in_channels
    if layout.is_volume:
        raise ValueError(
            f"the encoder {name!r} embeds 2D crops but the objects are 3D (axes "
            f"{layout.axes!r}): use a 3D encoder, SegmentEncoder('resnet18_3d', in_channels="
            f"{channels}) (native 3D) or SegmentEncoder('resnet18_planes', in_channels="
            f"{channels}) (fast, three orthogonal planes); a stack of 2D images is a time-lapse, "
            "axes='tyx'"
        )
    raise ValueError(
        f"the encoder {name!r} embeds 3D volumes but the objects are 2D (axes {layout.axes!r}): "
        f"use a 2D backbone, e.g. SegmentEncoder('resnet18', in_channels={channels}); a "
        "z-stack's labels are 3D, axes='zyx'"
    )


def _channels_first(image, labels, *, channel_axis, layout: Layout) -> np.ndarray:
    """``image`` as ``(C, *spatial)`` for ``layout``'s objects, a 2D image given for a volume's
    labels (and the reverse) named as such."""
    image = np.asarray(image) if not hasattr(image, "ndim") else image
    shape, lab = tuple(np.shape(image)), tuple(np.shape(labels))
    if layout.is_volume and image.ndim == 2:
        raise ValueError(
            f"the labels are a volume (Z, Y, X) {lab} but the image is 2D {shape}: give the "
            "volume's image (the same (Z, Y, X) grid), or 2D labels for a 2D image"
        )
    if (
        not layout.is_volume
        and channel_axis is None
        and image.ndim == 3
        and shape[-1] not in (3, 4)
        and shape[1:] == lab
    ):
        raise ValueError(
            f"the labels are 2D {lab} but the image is 3D {shape}: for a z-stack give its 3D "
            "labels (axes='zyx'); for a multichannel 2D image pass channel_axis=0"
        )
    return as_channels_first(image, channel_axis=channel_axis, spatial_ndim=layout.spatial_ndim)


def _check_volume_objects(table: SegmentTable, crop_size: int) -> list[str]:
    """Before any crop of a volume: refuse an object that would shrink more than 1/MIN_SCALE
    times into its crop (naming it and the fix); the cost, as a message, of very many
    objects."""
    geometry, layout = table.geometry, table.layout
    axes = layout.spatial_axes
    if len(geometry):
        extent = np.stack(
            [(geometry[f"bbox_{a}1"] - geometry[f"bbox_{a}0"]).to_numpy() for a in axes], axis=1
        )
        factors = isotropy_factors(layout.spacing, len(axes))
        longest = (extent * factors).max(axis=1)
        worst = int(np.argmax(longest))
        scale, _ = crop_geometry(extent[worst], factors, crop_size)
        if scale < MIN_SCALE:
            label = int(geometry["label"].iloc[worst])
            need = int(np.ceil(longest[worst] * MIN_SCALE))
            raise ValueError(
                f"object {label} spans {longest[worst]:.0f} voxels (on the finest spacing's grid) "
                f"along its longest axis, bounding box {tuple(int(v) for v in extent[worst])}: "
                f"fitting it into a {crop_size}^3 crop would shrink it {1 / scale:.0f}x (at most "
                f"{1 / MIN_SCALE:.0f}x), leaving no detail. Is label {label} really one object "
                "(not the background or a whole-volume mask)? Otherwise use crop_size >= "
                f"{need}, or downsample the volume first"
            )
    n = len(geometry)
    if n < MANY_OBJECTS:
        return []
    voxels = n * crop_size**3
    volume = table.search_labels.size
    small = int((geometry["area"].to_numpy() <= 8).sum())
    return [
        f"{n:,} objects in one volume ({small:,} of them of 8 voxels or fewer): each is embedded "
        f"from its own {crop_size}^3 crop, {voxels:.2g} voxels through the encoder in all "
        f"({voxels / volume:.0f}x the volume's {volume:.2g}): expect a long run. Embed fewer "
        "(only=...), use a smaller crop_size, or check the labels (specks of a few voxels are "
        "often noise: skimage.morphology.remove_small_objects)"
    ]


# ----------------------------------------------------------------------------- prepare
@dataclass
class PreparedImage:
    """One frame (a 2D image or a volume), ready to crop: ``image_cf`` (C, *spatial), its
    segment ``table`` (``table.layout``: its axes and spacing), the normalisation ``norm``, the
    checked ``crop_size`` and ``batch_size``, and ``messages``: what
    :func:`~napari_segrep.engine.segments.labels_warnings` says about the labels, and the cost
    of very many objects in a volume (to be warned as ``UserWarning`` by whoever reports to the
    user)."""

    image_cf: np.ndarray
    table: SegmentTable
    norm: Normalization
    crop_size: int
    batch_size: int
    messages: list[str] = field(default_factory=list)

    @property
    def layout(self) -> Layout:
        """The frame's layout (``"yx"`` or ``"zyx"``, with its spacing)."""
        return self.table.layout

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
    layout: Layout | None = None,
    in_channels: int | None = None,
    crop_size: int | None = None,
    batch_size: int = 128,
    channel_axis: int | None = None,
    normalize: str | Sequence[float] | None = "image",
    only: Sequence[int] | None = None,
) -> PreparedImage:
    """The CPU half of :func:`~napari_segrep.engine.embed.embed_segments`: validate, build the
    segment table and the normalisation.  No model, no torch forward: safe in a worker process.

    Parameters
    ----------
    image : (Y, X), (Y, X, 3), (Z, Y, X) or ndarray with channels
    labels : (Y, X) or (Z, Y, X) integer ndarray
        One frame.
    layout : Layout, optional
        The frame's layout (``layout_of(labels, axes="zyx", spacing=...)`` for a volume);
        None: 2D labels (3D ones raise :class:`~napari_segrep._images.AxesUnknown`).
    in_channels : int, optional
        The encoder's channels, checked against the image's when given.
    crop_size : int, optional
        None: :func:`default_crop_size` (64 in 2D, 32 for volumes).
    batch_size, channel_axis, normalize, only
        As for ``embed_segments``.

    Returns
    -------
    PreparedImage

    Raises
    ------
    ValueError, TypeError
        What ``embed_segments`` refuses, with the same messages.
    """
    layout = frame_layout_of(labels, layout)
    image_cf = _channels_first(image, labels, channel_axis=channel_axis, layout=layout)
    labels = validate_labels(labels, image_cf.shape[1:])
    check_image_values(image_cf)
    if crop_size is None:
        crop_size = default_crop_size(layout)
    crop_size = check_crop_size(crop_size, image_cf.shape[1:])
    batch_size = positive_int(batch_size, "batch_size")
    if in_channels is not None:
        check_channels(in_channels, image_cf.shape[0])
    norm = resolve_normalization(image_cf, normalize)
    table = segment_table(labels, only=only, layout=layout)
    messages = labels_warnings(table) if only is None else []
    if layout.is_volume:
        messages += _check_volume_objects(table, crop_size)
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
    ``normalization`` the description recorded in ``attrs``, and ``layout`` (the frame's
    :class:`~napari_segrep._images.Layout`; None: 2D without spacing).
    """

    def __init__(
        self,
        geometry: pd.DataFrame,
        dim: int,
        *,
        normalization: dict,
        crop_size: int,
        layout: Layout | None = None,
    ):
        self.geometry = geometry
        self.normalization = normalization
        self.crop_size = int(crop_size)
        self.layout = Layout("yx") if layout is None else layout
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
        """The table: geometry, ``scale``, ``emb_*``; ``attrs`` normalisation, encoder, crop,
        layout (axes, spacing and where the spacing came from)."""
        result = self.geometry.copy()
        result["scale"] = self.scales
        dim = self.out.shape[1]
        emb = pd.DataFrame(self.out, columns=embedding_columns(dim), index=result.index)
        out = pd.concat([result, emb], axis=1)
        out.attrs["normalization"] = self.normalization  # what was used, for provenance
        out.attrs["encoder"] = encoder.record()  # config + sha256 (classifiers check it)
        out.attrs["crop_size"] = self.crop_size  # with the encoder: how to embed more alike
        out.attrs["layout"] = self.layout.describe()  # the axes and spacing the crops honoured
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
