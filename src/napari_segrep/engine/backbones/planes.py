"""The fast CPU mode for volumes: a 3D object seen through three orthogonal planes by the 2D
masked ResNet-18 (backbone ``"resnet18_planes"``).

What it does with a batch of 3D crops ``x`` (B, C, S, S, S) and masks (B, 1, S, S, S)::

    for each axis (z, y, x): the plane through the object   -> (B, C, S, S) and its 2D mask
    stack the three                                          -> (3B, C, S, S), one batch
    the 2D MaskedResNet, dual-masked as in 2D                -> (3B, 512)
    concatenate the three views of each object               -> (B, 3 * 512)

**Which plane.**  Along each axis, the non-empty plane nearest the mask's centre of mass (the
lower one on a tie).  For an object that is connected, the plane through its centre of mass is
never empty (the object covers every plane between its first and its last), so that plane is
the one taken; the "nearest non-empty" rule only matters for a label made of separate pieces,
and guarantees a non-empty plane whenever the mask is not empty.  The centre of mass moves
little when a mask changes a little, so the chosen planes, and the embedding, are stable; the
plane of largest area (the other natural choice) jumps from end to end of an object whose
sections have nearly equal areas (a cylinder, a cube).  The choice depends on the mask alone,
computed in integers (exact, the same on every device): nothing outside the object can change
which planes are seen.  Without a mask (feature masking off) the planes go through the crop's
centre, where the data path centres the object.

**Views kept apart.**  The three views are concatenated (``embedding_dim = 3 * 512``) rather
than averaged: the z-plane of a z-stack is its best-resolved view, and which view saw an
elongation or a flat side is information (a disc lying in the image plane and one standing on
its edge differ).  Measured on generated volumes of three shape classes
(``benchmarks/volume_encoders.py``): concatenation scores a higher k-NN accuracy than the
area-weighted mean of the three views (see the README's "Volumes" figures).

**Dual masking as in 2D.**  Each plane is cut with its own 2D mask, the slice of the 3D mask:
the 2D network zeroes every activation outside it (masked BatchNorm at every level, masked
pooling), and the encoder has zeroed the input voxels outside the 3D mask before, so no voxel
outside the object reaches the embedding.  The three planes of an object share one batch with
those of the other objects (training-mode BatchNorm statistics are pooled over the in-mask
positions of all of them, as over the crops of a 2D batch).

This is micro-sam's 2.5D idea (2D features of the planes of a volume), but dual-masked, so no
context, and spacing-aware: the crops it gets are resampled to near-isotropic voxels by the data
path, so its three planes show the object's true proportions.

The module *is* a torchvision ResNet (a :class:`~.resnet.MaskedResNet` subclass): its state-dict
keys are torchvision's, so :meth:`load_imagenet_state` loads torchvision's 2D ImageNet weights
as they are (registered with resnet18's ``imagenet_url``: one cached file serves both).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.models.resnet import BasicBlock

from .resnet import MaskedResNet, imagenet_url

__all__ = [
    "PLANES",
    "MaskedResNetPlanes",
    "MaskedResNetSlices",
    "build_resnet18_planes",
    "build_resnet18_slices",
    "plane_indices",
    "planes_of",
]

#: The three views, in the order their features are concatenated: the plane normal to z (its
#: rows y, columns x), to y (rows z, columns x), to x (rows z, columns y).
PLANES = ("z", "y", "x")


def plane_indices(mask: Tensor | None, size: tuple[int, int, int], batch: int) -> Tensor:
    """The index of the plane taken along each axis, for each object.

    Parameters
    ----------
    mask : (B, 1, D, H, W) Tensor or None
        The objects (``> 0.5`` is inside; bool accepted).  ``None``: the crop's centre.
    size : (D, H, W)
    batch : int
        ``B`` (used when ``mask`` is None).

    Returns
    -------
    (B, 3) int64 Tensor
        Per object, the z, y and x index of its planes: along each axis the non-empty plane
        nearest the mask's centre of mass, the lower one on a tie (0 for an empty mask).
    """
    if mask is None:
        centre = torch.tensor([s // 2 for s in size], dtype=torch.int64)
        return centre.expand(batch, 3).clone()
    inside = (mask > 0.5 if mask.dtype != torch.bool else mask)[:, 0]
    chosen = []
    for axis in range(3):
        others = tuple(d for d in (1, 2, 3) if d != axis + 1)
        area = inside.sum(dim=others, dtype=torch.int64)  # (B, n): voxels in each plane
        n = area.shape[1]
        index = torch.arange(n, device=area.device, dtype=torch.int64)
        total = area.sum(dim=1, keepdim=True)
        moment = (area * index).sum(dim=1, keepdim=True)
        # |index - centre of mass| * total, in integers: exact, no rounding to break ties
        distance = (index * total - moment).abs()
        distance = distance.masked_fill(area == 0, torch.iinfo(torch.int64).max)
        chosen.append(distance.argmin(dim=1))  # the first minimum: the lower plane on a tie
    return torch.stack(chosen, dim=1)


def planes_of(x: Tensor, indices: Tensor) -> Tensor:
    """The three planes of each crop, stacked view by view.

    Parameters
    ----------
    x : (B, C, S, S, S) Tensor
    indices : (B, 3) int64 Tensor
        From :func:`plane_indices`.

    Returns
    -------
    (3B, C, S, S) Tensor
        Rows ``0..B-1``: the z-planes (y, x); ``B..2B-1``: the y-planes (z, x); ``2B..3B-1``:
        the x-planes (z, y).
    """
    rows = torch.arange(x.shape[0], device=x.device)
    indices = indices.to(x.device)
    return torch.cat(
        [
            x[rows, :, indices[:, 0]],  # (B, C, H, W)
            x[rows, :, :, indices[:, 1]],  # (B, C, D, W)
            x[rows, :, :, :, indices[:, 2]],  # (B, C, D, H)
        ]
    )


class MaskedResNetPlanes(MaskedResNet):
    """A 2D :class:`~.resnet.MaskedResNet` that embeds 3D crops from three orthogonal planes
    through each object (see the module docstring).

    Parameters
    ----------
    block, layers, in_channels, width, seed
        As :class:`~.resnet.MaskedResNet` (the 2D network that sees the planes; the same
        weights see all three).
    combine : {"concat", "mean"}
        ``"concat"`` (the registered backbone): the three views side by side,
        ``embedding_dim = 3 * 8 * width * block.expansion``.  ``"mean"``: their mean weighted
        by each plane's in-mask area (equal weights without a mask), ``8 * width *
        block.expansion`` (kept for the benchmark that chose between them).

    Attributes
    ----------
    embedding_dim : int
    view_dim : int
        The size of one view's features (512 for resnet18).
    """

    def __init__(
        self,
        block: type = BasicBlock,
        layers: list[int] | None = None,
        *,
        in_channels: int = 3,
        width: int = 64,
        seed: int = 0,
        combine: str = "concat",
    ) -> None:
        if combine not in ("concat", "mean"):
            raise ValueError(f"combine must be 'concat' or 'mean', got {combine!r}")
        super().__init__(
            block, [2, 2, 2, 2] if layers is None else layers,
            in_channels=in_channels, width=width, seed=seed,
        )  # fmt: skip
        self.combine = combine
        self.view_dim: int = self.embedding_dim
        if combine == "concat":
            self.embedding_dim = len(PLANES) * self.view_dim

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """Embed a batch of 3D crops from their three planes.

        Parameters
        ----------
        x : (B, in_channels, S, S, S) float Tensor
            Cubic crops (the data path cuts cubes).
        mask : (B, 1, S, S, S) 0/1 Tensor of ``x``'s dtype, optional
            ``None``: no feature masking (planes through the crop's centre, torchvision's
            forward pass on each).

        Returns
        -------
        (B, embedding_dim) Tensor
        """
        if x.ndim != 5 or len(set(x.shape[2:])) != 1:
            raise ValueError(
                f"the planes backbone embeds cubic 3D crops (B, C, S, S, S), got {tuple(x.shape)}"
            )
        b = x.shape[0]
        indices = plane_indices(mask, tuple(x.shape[2:]), b)
        plane_masks = None if mask is None else planes_of(mask, indices)
        views = super().forward(planes_of(x, indices), plane_masks)  # (3B, view_dim)
        views = views.view(len(PLANES), b, self.view_dim)
        if self.combine == "concat":
            return views.permute(1, 0, 2).reshape(b, self.embedding_dim)
        if plane_masks is None:
            return views.mean(dim=0)
        area = plane_masks.sum(dim=(1, 2, 3)).view(len(PLANES), b, 1)
        return (views * area).sum(dim=0) / area.sum(dim=0).clamp_min(1.0)


class MaskedResNetSlices(MaskedResNet):
    """A 2D :class:`~.resnet.MaskedResNet` that embeds 3D crops from every z-slice of each
    object: the mean of the slices' features weighted by their in-mask areas (see the module
    docstring, "Slices").

    Parameters
    ----------
    block, layers, in_channels, width, seed
        As :class:`~.resnet.MaskedResNet`.

    Attributes
    ----------
    embedding_dim : int
        ``8 * width * block.expansion`` (512 for resnet18).
    """

    def __init__(
        self,
        block: type = BasicBlock,
        layers: list[int] | None = None,
        *,
        in_channels: int = 3,
        width: int = 64,
        seed: int = 0,
    ) -> None:
        super().__init__(
            block, [2, 2, 2, 2] if layers is None else layers,
            in_channels=in_channels, width=width, seed=seed,
        )  # fmt: skip

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """Embed a batch of 3D crops from their z-slices.

        Parameters
        ----------
        x : (B, in_channels, D, H, W) float Tensor
        mask : (B, 1, D, H, W) 0/1 Tensor of ``x``'s dtype, optional
            ``None``: no feature masking (every slice, equal weights, torchvision's forward
            pass on each).

        Returns
        -------
        (B, embedding_dim) Tensor
            Zero for an empty mask.
        """
        if x.ndim != 5:
            raise ValueError(
                f"the slices backbone embeds 3D crops (B, C, D, H, W), got {tuple(x.shape)}"
            )
        b, _, d, h, w = x.shape
        if mask is None:
            area = x.new_full((b, d), float(h * w))
        else:
            area = mask.sum(dim=(1, 3, 4))  # (B, D): in-mask pixels of each slice
        obj, z = torch.nonzero(area > 0, as_tuple=True)  # the slices that hold the object
        slices = x[obj, :, z]  # (N, C, H, W)
        feats = super().forward(slices, None if mask is None else mask[obj, :, z])
        # Weighted sum per object through a dense (B, D, E) table: deterministic on every
        # device (an index_add_ is not on CUDA).
        table = feats.new_zeros(b, d, feats.shape[1])
        table[obj, z] = feats * area[obj, z].to(feats.dtype)[:, None]
        return table.sum(dim=1) / area.sum(dim=1, keepdim=True).clamp_min(1.0).to(feats.dtype)


def build_resnet18_planes(*, in_channels: int = 3, seed: int = 0) -> MaskedResNetPlanes:
    """The registered ``"resnet18_planes"``: resnet18 on three planes, views concatenated
    (1536-d)."""
    return MaskedResNetPlanes(BasicBlock, [2, 2, 2, 2], in_channels=in_channels, seed=seed)


def build_resnet18_slices(*, in_channels: int = 3, seed: int = 0) -> MaskedResNetSlices:
    """The registered ``"resnet18_slices"``: resnet18 on every z-slice, area-weighted mean
    (512-d)."""
    return MaskedResNetSlices(BasicBlock, [2, 2, 2, 2], in_channels=in_channels, seed=seed)


#: torchvision's resnet18 ImageNet weights: the same cached file as ``"resnet18"``.
IMAGENET_URL = imagenet_url("resnet18")


def planes_builder(name: str):
    """``build(*, in_channels, seed)`` for ``"resnet18_planes"`` or ``"resnet18_slices"``."""
    builders = {"resnet18_planes": build_resnet18_planes, "resnet18_slices": build_resnet18_slices}
    try:
        return builders[name]
    except KeyError:
        raise ValueError(f"unknown plane mode {name!r}; choose one of {sorted(builders)}") from None
