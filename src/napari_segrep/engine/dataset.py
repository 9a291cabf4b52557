"""Training data: every segment of a set of (image, labels) pairs, as two augmented views.

In-memory arrays (:class:`SegmentDataset`); files are paired by :func:`napari_segrep.io.pair_files`.
What each pair's axes are is asked of :func:`napari_segrep._images.layout_of` (never decided
from ``ndim``): 2D images (``"yx"``), time-lapses of 2D images (``"tyx"``: each frame is an
image), volumes (``"zyx"``: 3D objects) and time-lapses of volumes (``"tzyx"``).

Each sample's views are drawn from a generator seeded by ``(seed, epoch, index)``, so a run is
reproducible whatever the number of loader workers, and a resumed run sees exactly the views
the uninterrupted run would have seen.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from .._images import AxesUnknown, Layout, frame_channel_axis, layout_of
from .augment import AugmentConfig, PairedAugment
from .inputs import check_crop_size, check_image_values
from .segments import (
    as_channels_first,
    bbox_side,
    labels_warnings,
    resolve_normalization,
    segment_table,
    segment_window,
    validate_labels,
)

__all__ = [
    "MAX_WINDOW_CROPS",
    "SegmentDataset",
    "pair_lists",
    "check_pairs",
    "pair_layouts",
    "recorded_layout",
    "refuse_rgb_labels",
]

#: A volume's training window is at most this many crop sides along each axis: a larger
#: object's window is downscaled first (a view keeps ``crop_size`` voxels per axis anyway), so
#: an organoid does not cost a gigabyte per sample.
MAX_WINDOW_CROPS = 4


def pair_layouts(
    labels: Sequence,
    *,
    axes: str | Layout | Sequence[str | Layout | None] | None = None,
    spacing=None,
    names: Sequence[str] | None = None,
    how: str = "axes={axes!r}",
) -> list[Layout]:
    """The :class:`~napari_segrep._images.Layout` of every label image (an array or its shape),
    checked before any work.

    ``axes``/``spacing`` apply to all of them, or ``axes`` is a sequence with one entry per
    label image (a Layout brings its spacing: volumes of several voxel sizes, as their files'
    metadata say).  3D labels without axes raise :class:`~napari_segrep._images.AxesUnknown`
    phrased with ``how``; all pairs must have objects of the same dimension (one encoder
    trains on them).

    Raises
    ------
    ValueError
        Naming the pair (``names``) and the fix.
    """
    n = len(labels)
    names = list(names) if names is not None else [f"pair {i}" for i in range(n)]
    if isinstance(axes, (list, tuple)):
        if len(axes) != n:
            raise ValueError(f"got {len(axes)} layouts (axes) for {n} label images")
        each = list(axes)
    else:
        each = [axes] * n
    layouts = []
    for name, lab, said in zip(names, labels, each, strict=True):
        shape = lab if isinstance(lab, tuple) else tuple(np.shape(lab))
        pair_spacing, source = spacing, "given"
        if isinstance(said, Layout):
            if spacing is None:
                pair_spacing, source = said.spacing, said.spacing_source
            said = said.axes
        try:
            layouts.append(layout_of(shape, axes=said, spacing=pair_spacing, spacing_source=source))
        except AxesUnknown as exc:
            raise ValueError(f"{name}: {exc.message(how)}") from None
        except ValueError as exc:
            raise ValueError(f"{name}: {exc}") from None
    if layouts and len({lay.spatial_ndim for lay in layouts}) > 1:
        first = layouts[0]
        other = next(i for i, lay in enumerate(layouts) if lay.spatial_ndim != first.spatial_ndim)
        raise ValueError(
            f"{names[other]} has {layouts[other].spatial_ndim}D objects (axes "
            f"{layouts[other].axes!r}) but {names[0]} {first.spatial_ndim}D ({first.axes!r}): "
            "one training run takes 2D images or volumes, not both"
        )
    return layouts


def recorded_layout(layouts: Sequence[Layout]) -> tuple:
    """``(axes, spacing)`` as a run's configuration records its pairs' layouts: None where every
    pair has the default (2D, or 4D labels' ``"tzyx"``; no spacing), one value shared by all
    pairs, or a tuple of one per pair where they differ."""

    def one(values):
        values = list(values)
        return values[0] if all(v == values[0] for v in values) else tuple(values)

    default = all(lay.axes in ("yx", "tzyx") for lay in layouts)
    axes = None if default else one(lay.axes for lay in layouts)
    spacing = one(lay.spacing for lay in layouts)
    return axes, spacing


def check_pairs(
    images: np.ndarray | Sequence[np.ndarray],
    labels: np.ndarray | Sequence[np.ndarray],
    *,
    axes: str | Layout | None = None,
    spacing=None,
    channel_axis: int | None = None,
    names: Sequence[str] | None = None,
    how: str = "axes={axes!r}",
) -> list[Layout]:
    """Check (image, labels) pairs as :class:`SegmentDataset` takes them, without finding their
    segments: what their axes are (:func:`pair_layouts`, 3D labels without ``axes`` phrased with
    ``how``), image and labels of one grid, numeric images within float32 range, integer labels,
    the same channels everywhere.  Returns each pair's layout.

    Raises
    ------
    ValueError or TypeError
        Naming the pair (``names``; its frame in a time-lapse) and the fix.
    """
    return _checked_units(
        images, labels, axes=axes, spacing=spacing, channel_axis=channel_axis, names=names, how=how
    )[0]


def pair_lists(images, labels) -> tuple[list, list]:
    """``images`` and ``labels`` as two lists of as many pairs (one array: one pair);
    ``ValueError`` for unequal numbers or none."""
    if isinstance(images, np.ndarray):
        images = [images]
    if isinstance(labels, np.ndarray):
        labels = [labels]
    images, labels = list(images), list(labels)
    if len(images) != len(labels):
        raise ValueError(f"got {len(images)} images but {len(labels)} label images")
    if not images:
        raise ValueError("no image given: pass at least one (image, labels) pair")
    return images, labels


def _checked_units(images, labels, *, axes, spacing, channel_axis, names, how="axes={axes!r}"):
    """``(layouts, units)``: every pair checked (see :func:`check_pairs`) and cut into the
    images training sees (:class:`_Unit`: the pair, or each frame of a time-lapse)."""
    images, labels = pair_lists(images, labels)
    names = list(names) if names is not None else [f"pair {i}" for i in range(len(images))]
    if axes is None:
        for image, lab, name in zip(images, labels, names, strict=True):
            refuse_rgb_labels(image, lab, channel_axis=channel_axis, name=name)
    layouts = pair_layouts(labels, axes=axes, spacing=spacing, names=names, how=how)
    units: list[_Unit] = []
    for image, lab, layout, name in zip(images, labels, layouts, names, strict=True):
        try:
            units += _units(image, lab, layout, channel_axis=channel_axis, name=name)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"{name}: {exc}") from None
    if not units:
        raise ValueError("the time-lapses have no frame: nothing to train on")
    first = units[0].image.shape[0]
    for unit in units:
        if unit.image.shape[0] != first:
            raise ValueError(
                f"{unit.name} has {unit.image.shape[0]} channel(s), the first image {first}: "
                "all images must have the same channels"
            )
    return layouts, units


class SegmentDataset(Dataset):
    """All segments of ``images``/``labels`` with at least ``min_size`` pixels (voxels).

    Parameters
    ----------
    images, labels : sequences of ndarrays
        Pairs as accepted by :func:`napari_segrep.embed_segments`: 2D, RGB, or multichannel with
        ``channel_axis``; volumes and time-lapses as ``axes`` says.  A single array is accepted
        for each.
    axes : "yx", "zyx", "tyx", "tzyx", a Layout, None, or a sequence of them
        What every label image's axes are (:func:`napari_segrep._images.layout_of`): None is
        ``"yx"`` for 2D labels and ``"tzyx"`` for 4D ones; 3D labels must say (a z-stack,
        ``"zyx"``, gives 3D objects; a time-lapse, ``"tyx"``, 2D images, one per frame).  A
        sequence gives each pair its own (Layouts bring their spacing).
    spacing : (dz, dy, dx), optional
        The voxel size of volumes (of all of them).  Each object's window is resampled to near-isotropic voxels
        (the finest spacing), as :func:`~napari_segrep.embed_segments` does, and the 3D
        augmentation never rotates or flips across axes of different spacing
        (:mod:`napari_segrep.engine.augment3d`).
    crop_size : int
        Side of the views (the rule of :func:`~napari_segrep.engine.inputs.check_crop_size`,
        against the largest image).
    min_size : int
        Segments with fewer pixels (voxels) are skipped (counted in ``n_skipped``).
    context : float
        The window a view is cropped from is ``context`` times the segment's longer side (at
        least ``crop_size``; for volumes on the isotropic grid, at most
        :data:`MAX_WINDOW_CROPS` crop sides).
    normalize : as for ``embed_segments``
        Computed once per image (per frame of a time-lapse).
    augment : AugmentConfig, optional
        ``crop_size`` is taken from here when given.
    seed : int
        Seed of the per-sample view generators.
    image_masking : bool
        Volumes resampled to isotropic voxels: interpolate the object's voxels alone (no voxel
        outside it leaks in, as for embedding), or, False (training without image masking), with
        their context.
    names : sequence of str, optional
        Named in errors and warnings.
    views : {2, 1}
        Views per item (the objective's :attr:`~napari_segrep.engine.objectives.Objective.views`).

    Items are ``(view_a, mask_a, view_b, mask_b)``: (C, S, S) float32 and (1, S, S) bool;
    (C, S, S, S) and (1, S, S, S) for volumes.  With ``views=1``: ``(view, mask, key)``, the
    view being the two-view item's ``view_a`` and ``key`` an int64 scalar seeded by ``(seed,
    epoch, index)`` as the views are: the seed of what the objective draws for this item
    (hidden patches, noise), so that is reproducible and resumable too.  After
    :meth:`annotate`, two-view items also carry ``(target, index)``: the segment's class
    (int64, ``-1`` when not annotated) and its dataset index (the supervised objective's).
    """

    #: Each sample's annotated class (``-1``: none), or None (:meth:`annotate`).
    targets: np.ndarray | None = None

    def __init__(
        self,
        images: np.ndarray | Sequence[np.ndarray],
        labels: np.ndarray | Sequence[np.ndarray],
        *,
        axes: str | Layout | None = None,
        spacing=None,
        crop_size: int = 64,
        channel_axis: int | None = None,
        normalize="image",
        min_size: int = 16,
        context: float = 1.25,
        augment: AugmentConfig | None = None,
        seed: int = 0,
        image_masking: bool = True,
        names: Sequence[str] | None = None,
        views: int = 2,
    ) -> None:
        if views not in (1, 2):
            raise ValueError(f"views must be 1 or 2, got {views!r}")
        #: Views per item: 2 ``(a, ma, b, mb)`` or 1 ``(view, mask, key)``.
        self.views = int(views)
        layouts, units = _checked_units(
            images, labels, axes=axes, spacing=spacing, channel_axis=channel_axis, names=names
        )
        #: Each pair's layout.
        self.layouts = layouts
        #: The first pair's layout (all pairs have objects of its dimension).
        self.layout = layouts[0]
        #: 2: 2D segments; 3: 3D objects (the encoder's ``spatial_dims`` must match).
        self.spatial_ndim = self.layout.spatial_ndim
        config = augment or AugmentConfig(crop_size=crop_size)
        augments: dict = {}  # one per voxel spacing: the symmetries it allows

        def augment_for(layout: Layout):
            if not layout.is_volume:
                return augments.setdefault(None, PairedAugment(config))
            from .augment3d import PairedAugment3d

            # Windows are resampled to isotropic voxels; which axes may be rotated or flipped
            # is the acquisition's spacing's call (z stays z in an anisotropic stack).
            key = layout.voxel_spacing
            return augments.setdefault(key, PairedAugment3d(config, symmetry_spacing=key))

        self._augments = [augment_for(unit.layout) for unit in units]
        #: The first image's augmentation (all share their config; volumes of other spacings
        #: allow other symmetries).
        self.augment = self._augments[0]
        self.crop_size = self.augment.config.crop_size
        self.context = float(context)
        self.seed = int(seed)
        self.image_masking = bool(image_masking)
        self.epoch = 0
        self._images, self._tables, self._norms, self._factors = [], [], [], []
        index: list[tuple[int, int]] = []
        self.n_skipped = 0
        first = units[0].image.shape[0]
        factors = [_isotropy_factors(unit.layout) for unit in units]
        longest = max(
            max(np.asarray(unit.image.shape[1:]) * f)
            for unit, f in zip(units, factors, strict=True)
        )
        check_crop_size(self.crop_size, (int(math.ceil(longest)),))
        messages: list[tuple[_Unit, str]] = []
        for u, unit in enumerate(units):
            image_cf, lab, frame = unit.image, unit.labels, unit.layout
            table = segment_table(lab, layout=frame) if frame.is_volume else segment_table(lab)
            messages += [(unit, message) for message in labels_warnings(table)]
            area = table.geometry["area"].to_numpy()
            keep = np.flatnonzero(area >= min_size)
            self.n_skipped += len(area) - len(keep)
            index += [(u, int(k)) for k in keep]
            self._images.append(image_cf)
            self._tables.append(table)
            self._norms.append(resolve_normalization(image_cf, normalize))
            self._factors.append(factors[u])
        for message in _grouped(messages):
            warnings.warn(message, UserWarning, stacklevel=2)
        self.in_channels = int(first)
        self._index = index

    def __len__(self) -> int:
        return len(self._index)

    def segment(self, i: int) -> tuple[int, int]:
        """``(image, label)`` of sample ``i``: the image it is cut from (its position among the
        pairs, a time-lapse's frames counted one by one) and its label id."""
        u, k = self._index[i]
        return u, int(self._tables[u].ids[k])

    def annotate(self, classes: dict) -> int:
        """Set :attr:`targets` from ``{(image, label): class index}`` (``image`` as
        :meth:`segment` counts them); returns how many samples are annotated.  Annotations of
        segments the dataset does not have (skipped as too small, or absent) are ignored: the
        caller compares the count."""
        targets = np.full(len(self), -1, np.int64)
        for i in range(len(self)):
            targets[i] = classes.get(self.segment(i), -1)
        self.targets = targets
        return int((targets >= 0).sum())

    def set_epoch(self, epoch: int) -> None:
        """Views depend on the epoch (like ``DistributedSampler.set_epoch``)."""
        self.epoch = int(epoch)

    def window(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The context window of sample ``i``: image (C, W, W) float32 and mask (W, W) bool;
        (C, W, W, W) and (W, W, W) on the isotropic grid for a volume."""
        u, k = self._index[i]
        table = self._tables[u]
        sl, lab = table.slices[k], int(table.ids[k])
        if self.spatial_ndim == 3 or (self._factors[u] != 1.0).any():
            img, mask = self._resampled_window(u, sl, lab)
        else:  # 2D, square pixels: as it always was
            side = max(self.crop_size, math.ceil(bbox_side(sl) * self.context))
            img, mask = segment_window(
                self._images[u], table.search_labels, sl, lab, side=side, norm=self._norms[u]
            )
        return torch.from_numpy(img), torch.from_numpy(mask)

    def _resampled_window(self, u: int, sl, lab: int) -> tuple[np.ndarray, np.ndarray]:
        """An object's window on near-isotropic voxels (the finest spacing), ``context`` times
        its longest side, at most :data:`MAX_WINDOW_CROPS` crop sides (larger objects are
        downscaled to fit), as :func:`~napari_segrep.engine._resample.resampled_crop` makes
        the crops of ``embed_segments`` (volumes, and 2D images of anisotropic pixels)."""
        from ._resample import resampled_crop
        from .segments import normalised

        table, factors = self._tables[u], self._factors[u]
        extent = np.asarray([s.stop - s.start for s in sl], np.float64)
        longest = float(max(extent * factors))
        cap = MAX_WINDOW_CROPS * self.crop_size
        side = max(self.crop_size, math.ceil(longest * self.context))
        if side > cap:  # shrink the grid so that the object plus its context fills the cap
            factors = factors * (cap / (longest * self.context))
            side = cap
        norm = self._norms[u]
        if (factors == 1.0).all():  # isotropic, native scale: the raw window, as in 2D
            return segment_window(
                self._images[u], table.search_labels, sl, lab, side=side, norm=norm
            )
        img, mask, _ = resampled_crop(
            self._images[u],
            table.search_labels,
            sl,
            lab,
            crop_size=side,
            factors=factors,
            normalise=lambda raw, m: normalised(raw, m, norm),
            mask_image=self.image_masking,
        )
        return img, mask

    def __getitem__(self, i: int):
        image, mask = self.window(i)
        augment = self._augments[self._index[i][0]]
        if self.views == 1:  # view a of the two-view item (the same draws), and a key
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self._sample_seed(i))
                a, ma = augment.view(image, mask)
            return a, ma[None], torch.tensor(self._sample_seed(i, 1), dtype=torch.int64)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self._sample_seed(i))
            a, ma, b, mb = augment(image, mask)
        if self.targets is not None:
            target = torch.tensor(int(self.targets[i]), dtype=torch.int64)
            return a, ma[None], b, mb[None], target, torch.tensor(i, dtype=torch.int64)
        return a, ma[None], b, mb[None]

    def _sample_seed(self, i: int, *stream: int) -> int:
        seq = np.random.SeedSequence([self.seed, self.epoch, i, *stream])
        return int(seq.generate_state(1, dtype=np.uint64)[0] >> 1)


@dataclass
class _Unit:
    """One image a pair trains on: the pair itself, or one frame of a time-lapse."""

    image: np.ndarray  # (C, *spatial)
    labels: np.ndarray
    layout: Layout  # of one frame: "yx" or "zyx"
    pair: str
    frame: int | None = None

    @property
    def name(self) -> str:
        return self.pair if self.frame is None else f"{self.pair} frame {self.frame}"


def _units(image, lab, layout: Layout, *, channel_axis, name: str) -> list[_Unit]:
    """The images one pair trains on, checked: the pair, or each frame of a time-lapse
    (``channel_axis`` counted in the whole image)."""
    spatial = layout.spatial_ndim
    if not layout.has_time:
        image_cf = as_channels_first(image, channel_axis=channel_axis, spatial_ndim=spatial)
        lab = validate_labels(lab, image_cf.shape[1:])
        check_image_values(image_cf)
        return [_Unit(image_cf, lab, layout, name)]
    image, lab = np.asarray(image), np.asarray(lab)
    if image.ndim == 0 or image.shape[0] != lab.shape[0]:
        got = "no axis" if image.ndim == 0 else f"{image.shape[0]} frames"
        raise ValueError(
            f"image has {got} but labels have {lab.shape[0]} (axes {layout.axes!r}): the "
            "leading (time) axes must match"
        )
    axis = frame_channel_axis(channel_axis, layout, image.ndim)
    out = []
    for t in range(lab.shape[0]):
        try:
            image_cf = as_channels_first(image[t], channel_axis=axis, spatial_ndim=spatial)
            frame_labels = validate_labels(lab[t], image_cf.shape[1:])
            check_image_values(image_cf)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"frame {t}: {exc}") from None
        out.append(_Unit(image_cf, frame_labels, layout.frame_layout, name, t))
    return out


def refuse_rgb_labels(image, lab, *, channel_axis, name: str) -> None:
    """Labels ``(Y, X, 3|4)`` beside a 2D image of that grid are a coloured rendering of a label
    image, not a volume nor a time-lapse: refused as such, naming the pair (before the question
    of their axes, which would be the wrong one)."""
    shape = np.shape(lab)
    if len(shape) != 3 or shape[-1] not in (3, 4):
        return
    try:
        image_cf = as_channels_first(image, channel_axis=channel_axis)
    except (TypeError, ValueError):
        return
    if image_cf.shape[1:] == shape[:2]:
        try:
            validate_labels(lab, image_cf.shape[1:])
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"{name}: {exc}") from None


def _isotropy_factors(layout: Layout) -> np.ndarray:
    """How much finer the near-isotropic grid is than the raw one along each axis (ones without
    spacing)."""
    if layout.spacing is None:
        return np.ones(layout.spatial_ndim)
    from ._resample import isotropy_factors

    return isotropy_factors(layout.spacing, layout.spatial_ndim)


def _grouped(messages: list[tuple[_Unit, str]]) -> list[str]:
    """``name: message`` for each warning; the frames of one time-lapse that warn alike, once
    (naming the frames)."""
    from .embed import stack_messages

    out, frames = [], {}
    for unit, message in messages:
        if unit.frame is None:
            out.append(f"{unit.pair}: {message}")
        else:
            frames.setdefault(unit.pair, []).append((unit.frame, message))
    for pair, found in frames.items():
        out += [f"{pair}: {m}" for m in stack_messages(found)]
    return out
