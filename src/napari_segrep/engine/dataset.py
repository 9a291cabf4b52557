"""Training data: every segment of a set of (image, labels) pairs, as two augmented views.

In-memory arrays (:class:`SegmentDataset`); files are paired by :func:`napari_segrep.io.pair_files`.
Each sample's views are drawn from a generator seeded by ``(seed, epoch, index)``, so a run is
reproducible whatever the number of loader workers, and a resumed run sees exactly the views
the uninterrupted run would have seen.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

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

__all__ = ["SegmentDataset"]


class SegmentDataset(Dataset):
    """All segments of ``images``/``labels`` with at least ``min_size`` pixels.

    Parameters
    ----------
    images, labels : sequences of ndarrays
        Pairs as accepted by :func:`napari_segrep.embed_segments` (2D, RGB, or multichannel with
        ``channel_axis``; integer labels of the same (Y, X) shape).  A single array is accepted
        for each.
    crop_size : int
        Side of the views (the rule of :func:`~napari_segrep.engine.inputs.check_crop_size`,
        against the largest image).
    min_size : int
        Segments with fewer pixels are skipped (counted in ``n_skipped``).
    context : float
        The window a view is cropped from is ``context`` times the segment's longer side (at
        least ``crop_size``).
    normalize : as for ``embed_segments``
        Computed once per image.
    augment : AugmentConfig, optional
        ``crop_size`` is taken from here when given.
    seed : int
        Seed of the per-sample view generators.

    Items are ``(view_a, mask_a, view_b, mask_b)``: (C, S, S) float32 and (1, S, S) bool.
    """

    def __init__(
        self,
        images: np.ndarray | Sequence[np.ndarray],
        labels: np.ndarray | Sequence[np.ndarray],
        *,
        crop_size: int = 64,
        channel_axis: int | None = None,
        normalize="image",
        min_size: int = 16,
        context: float = 1.25,
        augment: AugmentConfig | None = None,
        seed: int = 0,
        names: Sequence[str] | None = None,
    ) -> None:
        if isinstance(images, np.ndarray):
            images = [images]
        if isinstance(labels, np.ndarray):
            labels = [labels]
        images, labels = list(images), list(labels)
        if len(images) != len(labels):
            raise ValueError(f"got {len(images)} images but {len(labels)} label images")
        if not images:
            raise ValueError("no image given: pass at least one (image, labels) pair")
        names = list(names) if names is not None else [f"pair {i}" for i in range(len(images))]
        self.augment = PairedAugment(augment or AugmentConfig(crop_size=crop_size))
        self.crop_size = self.augment.config.crop_size
        self.context = float(context)
        self.seed = int(seed)
        self.epoch = 0
        self._images, self._tables, self._norms = [], [], []
        index: list[tuple[int, int]] = []
        self.n_skipped = 0
        pairs = []  # every pair is checked before any work
        for p, (image, lab) in enumerate(zip(images, labels, strict=True)):
            try:
                image_cf = as_channels_first(image, channel_axis=channel_axis)
                pairs.append((image_cf, validate_labels(lab, image_cf.shape[1:])))
                check_image_values(image_cf)
            except (TypeError, ValueError) as exc:
                raise type(exc)(f"{names[p]}: {exc}") from None
            if image_cf.shape[0] != pairs[0][0].shape[0]:
                raise ValueError(
                    f"{names[p]} has {image_cf.shape[0]} channel(s), the first image "
                    f"{pairs[0][0].shape[0]}: all images must have the same channels"
                )
        check_crop_size(self.crop_size, (max(max(im.shape[1:]) for im, _ in pairs),))
        for p, (image_cf, lab) in enumerate(pairs):
            table = segment_table(lab)
            for message in labels_warnings(table):
                warnings.warn(f"{names[p]}: {message}", UserWarning, stacklevel=2)
            area = table.geometry["area"].to_numpy()
            keep = np.flatnonzero(area >= min_size)
            self.n_skipped += len(area) - len(keep)
            index += [(p, int(k)) for k in keep]
            self._images.append(image_cf)
            self._tables.append(table)
            self._norms.append(resolve_normalization(image_cf, normalize))
        self.in_channels = int(pairs[0][0].shape[0])
        self._index = index

    def __len__(self) -> int:
        return len(self._index)

    def set_epoch(self, epoch: int) -> None:
        """Views depend on the epoch (like ``DistributedSampler.set_epoch``)."""
        self.epoch = int(epoch)

    def window(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The context window of sample ``i``: image (C, W, W) float32 and mask (W, W) bool."""
        p, k = self._index[i]
        table = self._tables[p]
        sl = table.slices[k]
        side = max(self.crop_size, math.ceil(bbox_side(sl) * self.context))
        img, mask = segment_window(
            self._images[p],
            table.search_labels,
            sl,
            int(table.ids[k]),
            side=side,
            norm=self._norms[p],
        )
        return torch.from_numpy(img), torch.from_numpy(mask)

    def __getitem__(self, i: int):
        image, mask = self.window(i)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self._sample_seed(i))
            a, ma, b, mb = self.augment(image, mask)
        return a, ma[None], b, mb[None]

    def _sample_seed(self, i: int) -> int:
        seq = np.random.SeedSequence([self.seed, self.epoch, i])
        return int(seq.generate_state(1, dtype=np.uint64)[0] >> 1)
