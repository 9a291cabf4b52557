"""embed_images(): many images, one table.

Each image is read when its turn comes (a file path) and embedded alone, through the same two
halves as :func:`~napari_segrep.engine.embed.embed_segments` (:mod:`.pipeline`: prepare the
crops, run the encoder on them; a ``(T, Y, X)`` stack plane by plane as
:func:`~napari_segrep.engine.embed.embed_stack`), with the same encoder and settings, so its
rows are exactly what embedding that image alone gives (the same normalisation rule, applied
to that image).  The preparing can run in worker processes (``num_workers``,
:mod:`._image_stream`).  Memory: one image per worker (or one in all) and a few batches in
flight, plus the tables of images not yet handed out (an image that a worker finished before
an earlier one waits as its embeddings, not its crops).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..errors import Cancelled

__all__ = [
    "check_inputs",
    "embed_images",
    "file_layout_hint",
    "image_layouts",
    "image_names",
    "iter_embed_images",
    "merge_parts",
]


def image_names(images: Sequence, names: Sequence[str] | None = None) -> list[str]:
    """The ``image`` column's values: ``names`` when given, else each file's stem (arrays:
    ``image_0``, ``image_1``, ...).  ``ValueError`` when they repeat (rows could not be told
    apart) or do not match the images in number."""
    if names is None:
        names = [
            Path(item).stem if isinstance(item, str | os.PathLike) else f"image_{i}"
            for i, item in enumerate(images)
        ]
    names = [str(n) for n in names]
    if len(names) != len(images):
        raise ValueError(f"{len(names)} names for {len(images)} images: give one name per image")
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        if name in seen:
            raise ValueError(
                f"images {seen[name]} and {i} would both be called {name!r} in the image "
                "column: pass names=[...] (or rename the files)"
            )
        seen[name] = i
    return names


def embed_images(
    images: Sequence,
    labels: Sequence,
    *,
    names: Sequence[str] | None = None,
    encoder=None,
    axes=None,
    spacing=None,
    num_workers: int = 0,
    pin_memory: bool | None = None,
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    **kwargs,
) -> pd.DataFrame:
    """Embed the segments of several images into one table.

    Parameters
    ----------
    images, labels : sequences of arrays or file paths
        Paired by position; a path is read (``napari_segrep.io.read_image``) only when its
        turn comes.  2D images, volumes (z-stacks) or time-lapses of either, as ``axes`` says.
    names : sequence of str, optional
        The ``image`` column's values; default: each image file's stem (``image_<i>`` for
        arrays).  Must be unique.
    encoder : SegmentEncoder, optional
        One encoder for every image (default: the untrained one for the first image's
        channels: resnet18 for 2D objects, ``volume_backbone(device)`` for volumes).  Its dimensions
        must be the objects' (a 3D backbone for volumes).
    axes : "yx", "zyx", "tyx", "tzyx", a Layout, a sequence of them (one per image), or None
        What the labels' axes are, as for ``embed_segments``: one for every image, or one per
        image (None in the sequence: that image's default).  None: for an image given as a
        file, what its TIFF metadata says (OME or ImageJ,
        :func:`napari_segrep._tiff_meta.read_layout_hint`: the image's, else its labels'),
        else ``"yx"`` for 2D labels and ``"tzyx"`` for 4D ones; 3D labels whose axes nobody
        said (z-stack or time-lapse?) are refused before any work, naming the images.  The
        objects must be all 2D or all 3D: one encoder, one embedding space.
    spacing : (dz, dy, dx) or (dy, dx), a sequence of them or of None (one per image), or None
        The voxel size along each spatial axis (objects are resampled to near-isotropic
        voxels); None: what the file's metadata says, else unit voxels.  Recorded per image in
        ``attrs["layout"]``.
    num_workers : int
        Worker processes that read, check, segment-table and crop the images (the CPU work)
        while this process runs the encoder (``torch.utils.data.DataLoader``; image ``i`` is
        prepared by worker ``i % num_workers``, tables still come in the order given).  The
        rows are bit-identical whatever the number.  Default 0 (all in this process), by
        measurement on a 2-core CPU (resnet18, 1024 x 1024 images of 1,000 segments):
        preparing is about 3% of the time (0.08 s of 3 s per image), so workers can save at
        most that while taking cores from the encoder, and ``benchmarks/embed_collection.py``
        found no difference beyond a shared machine's noise.  With a GPU the encoder is fast
        and the CPU work dominates: use 2-4 workers there.
    pin_memory : bool, optional
        Crops in page-locked memory, copied to the GPU asynchronously on a side CUDA stream;
        default: when the device is CUDA.
    progress : callable(done, total), optional
        Images done out of all, after each image.
    should_stop : callable() -> bool, optional
        Polled between batches; :class:`~napari_segrep.errors.Cancelled` when it says stop
        (worker processes are shut down first).
    **kwargs
        ``embed_segments``' options (``crop_size``: None, its default, is 64 for 2D objects
        and 32 for volumes; ``batch_size``, ``device``, ``channel_axis``: with a time axis,
        counted in the whole image; ``normalize``), the same for every image.

    Returns
    -------
    DataFrame
        ``image``, then what ``embed_segments`` gives for that image (``frame`` for
        time-lapses; ``centroid_z``... for volumes), images in the order given.  ``attrs``:
        ``encoder`` (with its ``sha256``), ``crop_size``, and ``normalization`` and
        ``layout`` (axes, spacing and where it came from) per image name.

    Raises
    ------
    ValueError
        Before any work: different numbers of images and labels, repeated names, a file that
        does not exist, labels whose axes are not known or do not fit ``axes``, ``spacing``
        of the wrong length or not positive, 2D and 3D objects together, an encoder of other
        dimensions than the objects'.  Then, naming the image (``"image 'name': ..."``, also from a worker
        process): what ``embed_segments`` refuses (shapes, label values...); ``TypeError``
        and ``OSError`` likewise.

    Warns
    -----
    UserWarning
        What ``embed_segments`` warns about an image's labels, once per image, naming it.

    See Also
    --------
    iter_embed_images : the same, one image's table at a time (for writing parts as they come).
    """
    parts = list(
        iter_embed_images(
            images,
            labels,
            names=names,
            encoder=encoder,
            axes=axes,
            spacing=spacing,
            num_workers=num_workers,
            pin_memory=pin_memory,
            progress=progress,
            should_stop=should_stop,
            **kwargs,
        )
    )
    if not parts:
        raise ValueError("no images: give at least one image and its labels")
    return merge_parts([part for _, part in parts])


def merge_parts(parts: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """One table from per-image tables (as :func:`iter_embed_images` yields them, or read back
    from files), in the order given: ``attrs["normalization"]`` and ``attrs["layout"]`` map
    each image name to its normalisation and its layout (None where a part does not say);
    ``encoder`` and ``crop_size`` are the first part's.

    Raises
    ------
    ValueError
        The parts were embedded by different encoders or crop sizes, hold rows of one image in
        two parts (a part copied under another name), or hold NaN/Inf embedding values: each
        naming the image.
    """
    if not parts:
        raise ValueError("no parts to merge")
    first = parts[0].attrs
    for part in parts[1:]:
        for key in ("encoder", "crop_size"):
            a, b = first.get(key), part.attrs.get(key)
            if isinstance(a, dict) and isinstance(b, dict):
                a, b = a.get("sha256"), b.get("sha256")
            if a != b:
                raise ValueError(
                    f"the parts differ in {key} ({a!r} vs {b!r}): they were not embedded alike, "
                    "so they cannot share one table"
                )
    normalizations, layouts, owner = {}, {}, {}
    for i, part in enumerate(parts):
        for name in dict.fromkeys(part["image"]) if len(part) else ():
            name = str(name)
            if name in owner:
                raise ValueError(
                    f"parts {owner[name]} and {i} both hold rows of image {name!r}: each image "
                    "goes in one part (was a part copied under another name?)"
                )
            owner[name] = i
            normalizations[name] = part.attrs.get("normalization")
            layouts[name] = part.attrs.get("layout")
        emb = part[[c for c in part.columns if str(c).startswith("emb_")]].to_numpy(np.float64)
        if not np.isfinite(emb).all():
            name = part["image"].iloc[0] if len(part) else i
            raise ValueError(
                f"the part of image {name!r} holds NaN or Inf embedding values: embed that "
                "image again"
            )
    out = pd.concat(list(parts), ignore_index=True)
    out.attrs = {
        "encoder": first.get("encoder"),
        "crop_size": first.get("crop_size"),
        "normalization": normalizations,
        "layout": layouts,
    }
    return out


def check_inputs(images: Sequence, labels: Sequence, names: Sequence[str] | None) -> list[str]:
    """Refuse, before any work, what :func:`embed_images` cannot do: unequal numbers of images
    and labels, repeated names, files that do not exist.  Returns the image names."""
    images, labels = list(images), list(labels)
    if len(images) != len(labels):
        raise ValueError(
            f"{len(images)} images but {len(labels)} label images: give one label image per "
            "image, in the same order"
        )
    names = image_names(images, names)
    missing = [
        str(p)
        for p in (*images, *labels)
        if isinstance(p, str | os.PathLike) and not Path(p).is_file()
    ]
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise ValueError(f"no such file: {', '.join(missing[:5])}{more}")
    return names


def image_layouts(
    images: Sequence,
    labels: Sequence,
    names: Sequence[str],
    *,
    axes=None,
    spacing=None,
) -> list:
    """Each image's :class:`~napari_segrep._images.Layout`, before any work (from the arrays'
    shapes, or the files' headers): ``axes`` and ``spacing`` as :func:`embed_images` takes
    them (one for all, or one per image), else a file's TIFF metadata
    (:func:`file_layout_hint`), else :func:`~napari_segrep._images.layout_of`'s default.

    Raises
    ------
    ValueError
        Naming the images: 3D labels whose axes nobody said (all of them at once, with the
        fix), axes or spacing that do not fit the labels, per-image sequences of the wrong
        length, 2D and 3D objects together (one encoder embeds one kind).
    """
    from .._images import AxesUnknown, Layout, layout_of

    n = len(images)
    axes_each = _per_image(axes, n, "axes", lambda v: v is None or isinstance(v, str | Layout))
    spacing_each = _per_image(spacing, n, "spacing", lambda v: v is None or _is_numbers(v))
    out, unknown, problems = [], [], []
    for name, image, label_image, axes_i, spacing_i in zip(
        names, images, labels, axes_each, spacing_each, strict=True
    ):
        try:
            shape = _shape(label_image)
            if isinstance(axes_i, Layout):  # as it is (the command line resolved it)
                out.append(
                    layout_of(
                        shape,
                        axes=axes_i.axes,
                        spacing=axes_i.spacing if spacing_i is None else spacing_i,
                        spacing_source=axes_i.spacing_source if spacing_i is None else "given",
                    )
                )
                continue
            hint = None
            if axes_i is None or spacing_i is None:
                hint = file_layout_hint(image, label_image)
            if axes_i is None and hint is not None:
                axes_i = hint[0].axes
            layout = layout_of(shape, axes=axes_i)
            source = "given"
            if spacing_i is None and hint is not None and hint[0].spacing is not None:
                if len(hint[0].spacing) == layout.spatial_ndim:
                    spacing_i = hint[0].spacing
                    source = f"{hint[0].source} metadata of {hint[1]}"
            out.append(layout_of(shape, axes=layout.axes, spacing=spacing_i, spacing_source=source))
        except AxesUnknown as exc:
            unknown.append(f"{name!r} {exc.shape}")
        except ValueError as exc:
            problems.append(f"image {name!r}: {exc}")
    if unknown:
        listed = ", ".join(unknown[:5]) + (
            f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        )
        problems.append(
            f"the labels of image{'s' * (len(unknown) > 1)} {listed} are 3D and neither axes "
            "nor a file's metadata says what they are: pass axes='zyx' for z-stacks (one 3D "
            "object per label) or axes='tyx' for time-lapses (one row per label and frame), "
            "for all images or as a list, one per image"
        )
    if problems:
        raise ValueError(
            "; ".join(problems[:5])
            + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        )
    kinds = {layout.spatial_ndim for layout in out}
    if len(kinds) > 1:
        volumes = [name for name, layout in zip(names, out, strict=True) if layout.is_volume]
        flat = [name for name, layout in zip(names, out, strict=True) if not layout.is_volume]
        raise ValueError(
            f"images {volumes[:3]} hold volumes (3D objects) but {flat[:3]} 2D segments: one "
            "encoder embeds one kind, so one table holds one; embed them separately"
        )
    return out


def _shape(label_image) -> tuple[int, ...]:
    """A label image's shape: an array's, or a file's from its header (no pixels read)."""
    from .input_files import image_header

    if isinstance(label_image, str | os.PathLike):
        return image_header(label_image)[0]
    return tuple(np.shape(label_image))


def _is_numbers(value) -> bool:
    """A spacing of one image: a sequence of numbers (not of sequences)."""
    try:
        return len(value) > 0 and all(isinstance(v, int | float | np.number) for v in value)
    except TypeError:
        return False


def _per_image(value, n: int, name: str, one) -> list:
    """``value`` for each of ``n`` images: ``value`` itself when ``one(value)`` (the same for
    all), else a sequence of ``n`` such values."""
    if one(value):
        return [value] * n
    if isinstance(value, str | bytes) or not hasattr(value, "__len__"):
        raise ValueError(f"{name}={value!r}: give one value for all images, or one per image")
    values = list(value)
    if len(values) != n or not all(one(v) for v in values):
        raise ValueError(
            f"{name} holds {len(values)} values for {n} images: give one {name} for all "
            f"images, or a list of one per image (None: that image's default)"
        )
    return values


def file_layout_hint(image, labels):
    """What the TIFF metadata of an image file (OME or ImageJ), else of its labels file, says
    about the axes and spacing: ``(LayoutHint, file name)``, or None when neither is a file
    that says (:func:`napari_segrep._tiff_meta.read_layout_hint`).  A file whose metadata
    cannot be read says nothing here: reading its pixels names the problem, in its turn."""
    from .._tiff_meta import read_layout_hint

    for item in (image, labels):
        if not isinstance(item, str | os.PathLike):
            continue
        try:
            hint = read_layout_hint(item)
        except (OSError, ValueError):
            continue
        if hint.source and (hint.axes is not None or hint.spacing is not None):
            return hint, Path(item).name
    return None


def iter_embed_images(
    images: Sequence,
    labels: Sequence,
    *,
    names: Sequence[str] | None = None,
    encoder=None,
    axes=None,
    spacing=None,
    num_workers: int = 0,
    pin_memory: bool | None = None,
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    **kwargs,
) -> Iterator[tuple[str, pd.DataFrame]]:
    """:func:`embed_images`, one image at a time: yields ``(name, table)`` per image, in the
    order given, as soon as that image is done.

    Each table has the ``image`` column first and is exactly what :func:`embed_images` gives
    for that image's rows; its ``attrs`` hold ``encoder``, ``crop_size`` and that image's
    ``normalization``.  Inputs are checked (:func:`check_inputs`) before the first image is
    read.  Parameters as for :func:`embed_images`.  Closing the generator early stops the
    worker processes.
    """
    from .._images import layout_of
    from ._image_stream import IMAGE_ERRORS, image_stream
    from .devices import resolve_device
    from .encoder import SegmentEncoder
    from .pipeline import check_spatial_dims, default_crop_size, on_device

    unknown = sorted(set(kwargs) - set(EMBED_OPTIONS))
    if unknown:
        raise TypeError(
            f"unexpected option(s) {', '.join(unknown)}: the options are {', '.join(EMBED_OPTIONS)}"
        )
    if encoder is not None and not isinstance(encoder, SegmentEncoder):
        raise TypeError(f"encoder must be a SegmentEncoder, got {type(encoder).__name__}")
    images, labels = list(images), list(labels)
    names = check_inputs(images, labels, names)
    layouts = image_layouts(images, labels, names, axes=axes, spacing=spacing)
    if encoder is not None and layouts:
        check_spatial_dims(encoder, layouts[0])
    workers = _count(num_workers)
    options = dict(kwargs)
    device = resolve_device(options.pop("device", "auto"))
    pin = device.type == "cuda" if pin_memory is None else bool(pin_memory)
    crop_size = options.get("crop_size")
    if crop_size is None:  # no images: 2D's (nothing is cropped)
        first = layouts[0] if layouts else layout_of((1, 1))
        crop_size = default_crop_size(first, None if encoder is None else encoder.backbone_name)
    collector = _Collector(names, encoder, device, should_stop, crop_size, layouts)
    stream = image_stream(
        images,
        labels,
        num_workers=workers,
        pin_memory=pin and torch.cuda.is_available(),
        layouts=layouts,
        options=options,
        in_channels=None if encoder is None else encoder.in_channels,
        mask_image=True if encoder is None else encoder.image_masking,
    )
    turn = 0
    try:
        for item, crops, masks in on_device(stream, device):
            part = collector.parts.setdefault(
                item.image, _Part(names[item.image], layouts[item.image])
            )
            if part.error is None:
                try:
                    collector.take(item, part, crops, masks)
                except IMAGE_ERRORS as exc:
                    part.error, part.ended = exc, True
            while turn in collector.parts and collector.parts[turn].ended:
                if should_stop is not None and should_stop():  # a worker ran ahead: stop here
                    raise Cancelled("embedding cancelled")
                part = collector.parts.pop(turn)
                collector.pause()
                yield part.name, collector.table(part)
                turn += 1
                if progress is not None:
                    progress(turn, len(images))
    finally:
        collector.pause()
        stream.close()
    if turn != len(images):  # pragma: no cover - a stream that lost an image: a bug
        raise RuntimeError(f"{len(images) - turn} image(s) were never embedded")


#: The options of :func:`embed_images` that it passes on to ``embed_segments``.
EMBED_OPTIONS = ("crop_size", "batch_size", "device", "channel_axis", "normalize", "only")


def _count(num_workers) -> int:
    if (
        isinstance(num_workers, bool)
        or not isinstance(num_workers, int | np.integer)
        or num_workers < 0
    ):
        raise ValueError(f"num_workers must be an integer >= 0, got {num_workers!r}")
    return int(num_workers)


class _Part:
    """One image on its way: its frames' rows (``None``: no time axis), the labels' warnings
    ``(frame, message)``, whether its last item came, its error; ``layout`` its labels'."""

    def __init__(self, name: str, layout):
        self.name, self.layout = name, layout
        self.planes: dict = {}
        self.messages: list[tuple[int | None, str]] = []
        self.ended = False
        self.error: BaseException | None = None


class _Collector:
    """The main process's side: runs the encoder on the stream's batches, fills each image's
    rows, makes its table (warning what its labels look like)."""

    def __init__(self, names, encoder, device, should_stop, crop_size: int, layouts):
        self.names, self.encoder, self.device = names, encoder, device
        self.should_stop = should_stop
        self.crop_size = int(crop_size)
        self.layouts = layouts
        self.parts: dict[int, _Part] = {}
        self._run = None

    def pause(self) -> None:
        """Give the encoder its own mode back (before a table is handed out, and at the end)."""
        if self._run is not None:
            self._run.__exit__(None, None, None)
            self._run = None

    def _encoder_for(self, channels: int):
        from .embed import default_encoder
        from .pipeline import check_channels

        if self.encoder is None:  # the untrained one for the first image's channels
            self.encoder = default_encoder(self.layouts[0], int(channels), self.device)
        check_channels(self.encoder.in_channels, int(channels))
        return self.encoder

    def take(self, item, part: _Part, crops, masks) -> None:
        """One stream item of ``part``'s image (``crops``, ``masks``: a batch's, on the
        device)."""
        from .pipeline import BatchEncoder, EmbeddingRows

        if item.kind == "error":
            raise item.error
        if item.kind == "end":
            if self.encoder is None:  # an image without segments came first
                self._encoder_for(item.info["channels"])
            part.ended = True
            return
        if self.should_stop is not None and self.should_stop():
            raise Cancelled("embedding cancelled")
        if item.kind == "plane":
            info = item.info
            encoder = self._encoder_for(info["channels"])
            part.planes[item.plane] = EmbeddingRows(
                info["geometry"],
                encoder.embedding_dim,
                normalization=info["normalization"],
                crop_size=info["crop_size"],
                layout=info["layout"],
            )
            part.messages += [(item.plane, message) for message in info["messages"]]
            return
        if self._run is None:  # eval mode on the device until pause() (5 ms: not per batch)
            self._run = BatchEncoder(self.encoder, self.device).__enter__()
        z = self._run(crops, masks)
        part.planes[item.plane].add(item.start, z, item.scales.numpy(), self.encoder)

    def table(self, part: _Part) -> pd.DataFrame:
        """``part``'s table (``image`` first), its warnings given; its error raised, naming
        it."""
        from .embed import stack_messages, stack_result
        from .pipeline import NO_SEGMENT, empty_result

        if part.error is not None:
            exc = part.error
            message = f"image {part.name!r}: {exc}"
            try:
                named = type(exc)(message)
            except (TypeError, ValueError):  # an error class built from other arguments
                named = ValueError(message) if isinstance(exc, ValueError) else TypeError(message)
            raise named from exc
        encoder, layout = self.encoder, part.layout
        if layout.has_time:  # a time-lapse: frame column, its frames' warnings merged
            planes = sorted(part.planes)
            unit = "frame" if layout.is_volume else "plane"  # as embed_segments says them
            messages = stack_messages(part.messages, unit=unit)
            frames = [part.planes[t].frame(encoder) for t in planes]
            table = stack_result(frames, planes, encoder, layout=layout.frame_layout)
        else:
            messages = [message for _, message in part.messages]
            rows = part.planes[None]
            if len(rows):
                table = rows.frame(encoder)
            else:
                table = empty_result(encoder.embedding_dim, layout=layout)
        if not len(table):
            messages.append(NO_SEGMENT)
        for message in messages:
            warnings.warn(f"image {part.name!r}: {message}", UserWarning, stacklevel=4)
        table.insert(0, "image", part.name)
        table.attrs = {
            "encoder": encoder.record(),
            "crop_size": self.crop_size,
            "normalization": None if layout.has_time else table.attrs.get("normalization"),
            "layout": layout.describe(),
        }
        return table
