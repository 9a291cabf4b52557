"""The CPU side of :func:`~napari_segrep.engine.collection.iter_embed_images`: read each image,
validate it, build its segment table and normalisation, cut its crop batches, as a stream of
:class:`StreamItem` s, made in this process or in ``torch.utils.data`` worker processes.

Per image the stream holds one ``"plane"`` item per frame with segments of a time-lapse (a 2D
image or a volume always has one, even without segments), each followed by its ``"batch"``
items, then ``"end"``; or, if the image cannot be embedded, ``"error"`` carrying the exception
(a worker then stops: it is re-raised in the main process, naming the image, when that image's
turn comes).  What the image's axes are comes from the ``axes``/``spacing`` options
(:func:`napari_segrep._images.layout_of`): 3D labels without ``axes`` are that image's error.

With workers, image ``i`` goes to worker ``i % num_workers``; the DataLoader hands their items
over in turn, so items of a few images interleave and the consumer puts them back in order.
Memory: each worker holds one image (and its labels) at a time; at most
``prefetch_factor * num_workers`` items wait in between.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from .._images import frame_channel_axis
from .embed import check_frames, resolve_layout
from .inputs import as_channels_first
from .pipeline import prepare_segments

__all__ = ["StreamItem", "image_items", "image_stream"]

#: What a bad image raises that is reported naming the image.
IMAGE_ERRORS = (ValueError, TypeError, OSError)


@dataclass
class StreamItem:
    """One item of the stream (see the module docstring): ``kind`` is ``"plane"``,
    ``"batch"``, ``"end"`` or ``"error"``; ``image`` its index, ``plane`` its frame (None
    without a time axis).  A plane carries ``info``: ``geometry`` (the segment table),
    ``normalization``, ``crop_size``, ``channels``, ``messages`` (the labels' warnings),
    ``layout`` (the frame's :class:`~napari_segrep._images.Layout`); a batch ``start``,
    ``images``, ``masks``, ``scales`` (tensors); an end ``info["channels"]``, ``info["stack"]``
    (a time-lapse: ``frame`` column) and ``info["layout"]``; an error ``error``.
    """

    kind: str
    image: int
    plane: int | None = None
    start: int = 0
    images: torch.Tensor | None = None
    masks: torch.Tensor | None = None
    scales: torch.Tensor | None = None
    info: dict = field(default_factory=dict)
    error: BaseException | None = None

    def pin_memory(self, *_args) -> StreamItem:
        """The same item, its crops in page-locked memory (what the DataLoader's pinning
        thread calls), so they can be copied to the GPU asynchronously."""
        if self.images is None:
            return self
        images, masks = self.images.pin_memory(), self.masks.pin_memory()
        return StreamItem(self.kind, self.image, self.plane, self.start, images, masks, self.scales)


def _read(item):
    from ..io import read_image

    return read_image(item) if isinstance(item, str | os.PathLike) else item


def image_items(
    index: int,
    image,
    label_image,
    *,
    options: dict,
    in_channels: int | None,
    mask_image: bool,
) -> Iterator[StreamItem]:
    """The stream of one image (arrays or file paths, read here): its frames, their crop
    batches, its end; or its error.  ``options``: ``prepare_segments``' keyword arguments
    (``crop_size``, ``batch_size``, ``channel_axis``, ``normalize``, ``only``) and ``axes``,
    ``spacing`` (as for ``embed_segments``: with a time axis, ``channel_axis`` is counted in
    the whole image)."""
    try:
        options = dict(options)
        axes, spacing = options.pop("axes", None), options.pop("spacing", None)
        image = _read(image)
        label_image = np.asarray(_read(label_image))
        layout = resolve_layout(label_image, axes, spacing)
        frame = layout.frame_layout
        if layout.has_time:
            image, label_image = check_frames(image, label_image, "frames")
            options["channel_axis"] = frame_channel_axis(
                options.get("channel_axis"), layout, image.ndim
            )
            planes = [(t, image[t], label_image[t]) for t in range(label_image.shape[0])]
            channels = as_channels_first(
                image[0], channel_axis=options["channel_axis"], spatial_ndim=frame.spatial_ndim
            )
        else:
            planes = [(None, image, label_image)]
            channels = None
        for t, plane_image, plane_labels in planes:
            prepared = prepare_segments(
                plane_image, plane_labels, layout=frame, in_channels=in_channels, **options
            )
            if t is not None and len(prepared) == 0:
                continue  # as embed_stack: empty planes give no rows and no warnings
            yield StreamItem(
                "plane",
                index,
                t,
                info={
                    "geometry": prepared.table.geometry,
                    "normalization": prepared.norm.describe(),
                    "crop_size": prepared.crop_size,
                    "channels": prepared.n_channels,
                    "messages": prepared.messages,
                    "layout": frame,
                },
            )
            for batch in prepared.batches(mask_image=mask_image):
                yield StreamItem(
                    "batch",
                    index,
                    t,
                    batch.start,
                    torch.from_numpy(batch.images),  # tensors: shared memory between processes
                    torch.from_numpy(batch.masks),
                    torch.from_numpy(batch.scales),
                )
        n_channels = prepared.n_channels if channels is None else channels.shape[0]
        yield StreamItem(
            "end",
            index,
            info={"channels": int(n_channels), "stack": layout.has_time, "layout": layout},
        )
    except IMAGE_ERRORS as exc:
        yield StreamItem("error", index, error=exc)


class _ImageDataset(torch.utils.data.IterableDataset):
    """The images' streams; in a worker, only the images ``i % num_workers == worker id``.
    ``layouts``: each image's :class:`~napari_segrep._images.Layout` (its ``axes`` option),
    or None (the ``options``' own)."""

    def __init__(self, images: Sequence, labels: Sequence, *, layouts=None, **kwargs):
        super().__init__()
        self.images, self.labels, self.layouts, self.kwargs = images, labels, layouts, kwargs

    def __iter__(self) -> Iterator[StreamItem]:
        info = torch.utils.data.get_worker_info()
        first, step = (0, 1) if info is None else (info.id, info.num_workers)
        for i in range(first, len(self.images), step):
            kwargs = self.kwargs
            if self.layouts is not None:
                options = {**kwargs["options"], "axes": self.layouts[i], "spacing": None}
                kwargs = {**kwargs, "options": options}
            for item in image_items(i, self.images[i], self.labels[i], **kwargs):
                yield item
                if item.kind == "error":
                    return  # the main process raises it: nothing after it is needed


def _as_is(item):
    return item


class image_stream:  # noqa: N801 - used like a function, closed like a file
    """The stream of all images (an iterator of :class:`StreamItem`), in this process
    (``num_workers=0``: images one after the other, in order) or from ``num_workers`` worker
    processes (a ``torch.utils.data.DataLoader``, ``batch_size=None``; ``pin_memory``: crops in
    page-locked memory); ``layouts``: one :class:`~napari_segrep._images.Layout` per image
    (else the ``options``' ``axes``/``spacing`` for all).  :meth:`close` (or ``with``) shuts
    the workers down at once."""

    def __init__(
        self,
        images: Sequence,
        labels: Sequence,
        *,
        num_workers: int = 0,
        pin_memory: bool = False,
        **kwargs,
    ):
        dataset = _ImageDataset(images, labels, **kwargs)
        if num_workers == 0:
            self._iter = iter(dataset)
            return
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_size=None,
            num_workers=num_workers,
            collate_fn=_as_is,
            pin_memory=pin_memory,
            prefetch_factor=2,
        )
        self._iter = iter(loader)

    def __iter__(self) -> Iterator[StreamItem]:
        return self._iter

    def __next__(self) -> StreamItem:
        return next(self._iter)

    def __enter__(self) -> image_stream:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Stop: worker processes are shut down and joined (none is left behind)."""
        shutdown = getattr(self._iter, "_shutdown_workers", None)  # DataLoader's own cleanup
        if shutdown is not None:
            shutdown()
        elif hasattr(self._iter, "close"):
            self._iter.close()
