"""Paired image + mask views of a 3D object for self-supervised training, respecting anisotropy.

The 3D counterpart of :mod:`napari_segrep.engine.augment` (same :class:`AugmentConfig`, same
intensity changes): a view of a ``(C, D, H, W)`` window is

1. **a random resized crop** in 3D (a box of ``crop_scale`` of the window's volume, the ratio
   of any two of its sides within ``crop_ratio``), resized to ``S x S x S`` voxels
   (``S = config.crop_size``), with **a small affine** (scale jitter ``affine_scale``,
   translation ``affine_translate``, rotations of at most ``affine_degrees``): one sampling
   grid for the image (trilinear, area-smoothed first when it shrinks by 2 or more) and the
   mask (nearest), so they stay aligned;
2. **90-degree rotations and flips** (``rotate90``, ``flip``): exact index operations on both;
3. **intensity** (contrast, brightness, gamma, blur, noise: :func:`~napari_segrep.engine.augment.
   jitter_intensity`) on the image only, the blur a 3D Gaussian whose sigma is scaled by the
   spacing (a physical size: fewer voxels along a coarser axis).

**Anisotropy.** Rotations (small or by 90 degrees), axis swaps and flips act only among axes of
equal spacing (:func:`symmetry_groups`): with spacing ``(2, 0.5, 0.5)`` a view may be
rotated in the yx plane and flipped along y or x, never tilted or flipped along z, never with z
swapped for y or x; with isotropic spacing all 48 symmetries of the cube are allowed.  An axis
with a spacing of its own is left as it is, flips included: it is usually the optical axis,
whose resolution and depth attenuation have a direction no mirror image reproduces.  The rule
takes the *acquisition* spacing (``symmetry_spacing``): a window resampled to isotropic voxels
from a ``(2, 0.5, 0.5)`` stack still sees z four times blurrier than y and x, so z stays z.

A view whose crop lost the object (fewer than ``min_mask_pixels`` mask voxels left, or all of
them when the object is smaller) is redrawn; after ``max_redraws`` failures the un-cropped
window is used.  An empty mask never reaches the network.  Randomness comes from torch's global
generator (the dataset seeds it per sample, so views are reproducible).
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .._images import check_spacing
from .augment import AugmentConfig, jitter_intensity

__all__ = [
    "EQUAL_SPACING_RTOL",
    "PairedAugment3d",
    "SignedPermutation",
    "allowed_symmetries",
    "gaussian_blur3d",
    "symmetry_groups",
]

#: Two axes have equal spacing when they differ by at most this fraction (5%: a swap then
#: stretches the object less than the scale jitter does).
EQUAL_SPACING_RTOL = 0.05

#: ``(perm, flips)``: axis ``i`` of a view is axis ``perm[i]`` of the volume, reversed when
#: ``flips[i]`` (spatial axes 0, 1, 2 = z, y, x).
SignedPermutation = tuple[tuple[int, ...], tuple[bool, ...]]


def symmetry_groups(
    spacing=None, *, rtol: float = EQUAL_SPACING_RTOL
) -> tuple[tuple[int, ...], ...]:
    """The groups of spatial axes (0 = z, 1 = y, 2 = x) with equal spacing, of two axes or more:
    the axes that rotations, swaps and flips may act on.

    Parameters
    ----------
    spacing : (dz, dy, dx), optional
        None: isotropic.
    rtol : float
        Spacings within this relative difference are equal.

    Examples
    --------
    >>> symmetry_groups((2.0, 0.5, 0.5))
    ((1, 2),)
    >>> symmetry_groups(None)
    ((0, 1, 2),)
    >>> symmetry_groups((1.0, 2.0, 3.0))
    ()
    """
    spacing = (1.0, 1.0, 1.0) if spacing is None else check_spacing(spacing, "zyx")

    def equal(a: float, b: float) -> bool:
        return abs(a - b) <= rtol * max(a, b)

    groups: list[tuple[int, ...]] = []
    placed: set[int] = set()
    for i in range(3):
        if i in placed:
            continue
        group = tuple(j for j in range(3) if j not in placed and equal(spacing[i], spacing[j]))
        placed.update(group)
        if len(group) >= 2:
            groups.append(group)
    return tuple(groups)


def allowed_symmetries(
    spacing=None, *, rotate90: bool, flip: bool, rtol: float = EQUAL_SPACING_RTOL
) -> list[SignedPermutation]:
    """The 90-degree rotations and flips a view may get, as :data:`SignedPermutation`s, the
    identity first: axis permutations and reversals within each :func:`symmetry_groups` group;
    ``rotate90`` alone: the proper rotations (determinant +1); ``flip`` alone: reversals of
    axes; both: all of them (48 for isotropic spacing, 8 for a yx pair, 1 without a group)."""
    groups = symmetry_groups(spacing, rtol=rtol)
    group_of = {axis: group for group in groups for axis in group}
    identity: SignedPermutation = ((0, 1, 2), (False, False, False))
    out = [identity]
    if not (rotate90 or flip):
        return out
    for perm in itertools.permutations(range(3)):
        for flips in itertools.product((False, True), repeat=3):
            t = (perm, flips)
            if t == identity:
                continue
            moved = [i for i in range(3) if perm[i] != i or flips[i]]
            if any(perm[i] not in group_of.get(i, ()) for i in moved):
                continue  # an axis alone keeps its place and direction
            if not flip and _determinant(t) < 0:
                continue  # rotations only
            if not rotate90 and perm != (0, 1, 2):
                continue  # flips only
            out.append(t)
    return out


def _determinant(t: SignedPermutation) -> int:
    perm, flips = t
    inversions = sum(perm[i] > perm[j] for i in range(3) for j in range(i + 1, 3))
    return (-1) ** (inversions + sum(flips))


def apply_symmetry(volume: Tensor, t: SignedPermutation) -> Tensor:
    """``volume`` (..., D, H, W) with its last three axes permuted and reversed as ``t`` says."""
    perm, flips = t
    lead = volume.ndim - 3
    out = volume.permute(*range(lead), *(lead + p for p in perm))
    dims = [lead + i for i in range(3) if flips[i]]
    return out.flip(dims) if dims else out


def gaussian_blur3d(image: Tensor, sigma, *, radius: int = 2) -> Tensor:
    """Separable Gaussian blur of ``image`` (C, D, H, W), ``sigma`` one value per axis in
    voxels (a kernel of ``2 * radius + 1`` voxels per axis, reflected at the borders, as
    torchvision's 2D ``gaussian_blur``)."""
    out = image[None]
    c = image.shape[0]
    for axis, s in enumerate(sigma):
        size = out.shape[2 + axis]
        if s <= 0 or size < 2:
            continue
        r = min(radius, size - 1)
        x = torch.arange(-r, r + 1, dtype=image.dtype)
        kernel = torch.exp(-0.5 * (x / float(s)) ** 2)
        kernel = kernel / kernel.sum()
        shape = [1, 1, 1]
        shape[axis] = 2 * r + 1
        weight = kernel.view(1, 1, *shape).repeat(c, 1, 1, 1, 1)
        pad = [0, 0, 0, 0, 0, 0]
        pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = r
        out = F.conv3d(F.pad(out, pad, mode="reflect"), weight, groups=c)
    return out[0]


class PairedAugment3d:
    """Draw two augmented views of one 3D object.

    Parameters
    ----------
    config : AugmentConfig, optional
        The same settings as in 2D (``crop_scale`` is a fraction of the window's volume).
    spacing : (dz, dy, dx), optional
        The voxel size of the windows given (None: isotropic); scales the blur.
    symmetry_spacing : (dz, dy, dx), optional
        The spacing that decides which axes rotations, swaps and flips may act on
        (:func:`symmetry_groups`; default ``spacing``): the acquisition's, also when the windows
        were resampled to isotropic voxels.

    Call ``augment(image, mask)`` with ``image`` (C, D, H, W) float (scaled to about 0-1) and
    ``mask`` (D, H, W) bool: returns ``(view_a, mask_a, view_b, mask_b)``, views (C, S, S, S)
    float32 and masks (S, S, S) bool.
    """

    def __init__(
        self, config: AugmentConfig | None = None, *, spacing=None, symmetry_spacing=None
    ) -> None:
        self.config = config or AugmentConfig()
        self.spacing = (1.0, 1.0, 1.0) if spacing is None else check_spacing(spacing, "zyx")
        self.symmetry_spacing = (
            self.spacing if symmetry_spacing is None else check_spacing(symmetry_spacing, "zyx")
        )
        c = self.config
        self.groups = symmetry_groups(self.symmetry_spacing)
        #: The 90-degree rotations and flips a view may get (the identity alone when off).
        self.symmetries = allowed_symmetries(
            self.symmetry_spacing, rotate90=c.rotate90, flip=c.flip
        )
        #: The planes (pairs of axes) small rotations may act in.
        self.planes = [(i, j) for group in self.groups for i, j in itertools.combinations(group, 2)]

    def __call__(self, image: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        a, ma = self.view(image, mask)
        b, mb = self.view(image, mask)
        return a, ma, b, mb

    def view(self, image: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """One augmented view (C, S, S, S) and its mask (S, S, S)."""
        c = self.config
        if image.ndim != 4 or mask.shape != image.shape[1:]:
            raise ValueError(
                f"a 3D view needs an image (C, D, H, W) and a mask (D, H, W) of the same grid, "
                f"got {tuple(image.shape)} and {tuple(mask.shape)}"
            )
        needed = min(c.min_mask_pixels, int(mask.sum()))
        if needed < 1:
            raise ValueError("cannot augment an empty mask")
        image = image.float()
        maskf = mask.float()[None]
        for _ in range(c.max_redraws):
            img, m = self._sample(image, maskf, self._draw_geometry(image.shape[1:]))
            if int(m.sum()) >= needed:
                break
        else:  # the crop kept losing the object: use the whole window
            img, m = self._sample(image, maskf, _identity_geometry())
            if int(m.sum()) < 1:
                m = F.adaptive_max_pool3d(maskf[None], c.crop_size)[0, 0] > 0
        if len(self.symmetries) > 1:
            t = self.symmetries[int(torch.randint(len(self.symmetries), ()))]
            img, m = apply_symmetry(img, t), apply_symmetry(m, t)
        return self._intensity(img).contiguous(), m.contiguous()

    # ------------------------------------------------------------------ geometry
    def _draw_geometry(self, shape) -> dict:
        """One draw of the crop box (centre and half-sides in the window's normalised
        coordinates, per axis z, y, x) and the small affine (a 3x3 matrix and a translation
        in the view's normalised coordinates)."""
        c = self.config
        lo, hi = c.crop_scale
        volume = lo + (hi - lo) * float(torch.rand(()))
        rlo, rhi = (math.log(v) / 2 for v in c.crop_ratio)
        logs = rlo + (rhi - rlo) * torch.rand(3, dtype=torch.float64)
        sides = (volume ** (1 / 3)) * torch.exp(logs - logs.mean())
        sides = sides.clamp(max=1.0)
        centre = (2 * torch.rand(3, dtype=torch.float64) - 1) * (1 - sides)
        angles = (2 * torch.rand(len(self.planes), dtype=torch.float64) - 1) * math.radians(
            c.affine_degrees
        )
        slo, shi = c.affine_scale
        zoom = slo + (shi - slo) * float(torch.rand(()))
        shift = (2 * torch.rand(3, dtype=torch.float64) - 1) * 2 * c.affine_translate
        rotation = torch.eye(3, dtype=torch.float64)
        for (i, j), angle in zip(self.planes, angles.tolist(), strict=True):
            step = torch.eye(3, dtype=torch.float64)
            cos, sin = math.cos(angle), math.sin(angle)
            step[i, i], step[i, j], step[j, i], step[j, j] = cos, -sin, sin, cos
            rotation = step @ rotation
        return {"centre": centre, "sides": sides, "matrix": rotation / zoom, "shift": shift}

    def _sample(self, image: Tensor, maskf: Tensor, g: dict) -> tuple[Tensor, Tensor]:
        """The view of geometry ``g``: image (C, S, S, S) trilinear, mask (S, S, S) nearest,
        from one sampling grid."""
        s = self.config.crop_size
        axis = (torch.arange(s, dtype=torch.float64) * 2 + 1) / s - 1  # voxel centres
        u = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1)  # (S, S, S, 3) zyx
        v = u @ g["matrix"].T - g["shift"]
        x = g["centre"] + g["sides"] * v  # the window's normalised coordinates, z y x
        grid = x.flip(-1).to(torch.float32)[None]  # grid_sample wants x y z
        source = image
        stretch = float(torch.linalg.matrix_norm(g["matrix"], ord=2))  # 1 / the zoom
        steps = [float(g["sides"][i]) * image.shape[1 + i] / s * stretch for i in range(3)]
        factors = [max(1, int(step)) for step in steps]
        if max(factors) >= 2:  # shrinking: average first (antialiasing), same extent
            size = [max(1, round(n / k)) for n, k in zip(image.shape[1:], factors, strict=True)]
            source = F.interpolate(image[None], size=size, mode="area")[0]
        img = F.grid_sample(
            source[None], grid, mode="bilinear", padding_mode="zeros", align_corners=False
        )[0]
        m = F.grid_sample(
            maskf[None], grid, mode="nearest", padding_mode="zeros", align_corners=False
        )[0, 0]
        return img, m > 0.5

    def _intensity(self, img: Tensor) -> Tensor:
        finest = min(self.spacing)
        ratios = [finest / v for v in self.spacing]
        return jitter_intensity(
            img,
            self.config,
            blur=lambda x, sigma: gaussian_blur3d(x, [sigma * r for r in ratios]),
        )


def _identity_geometry() -> dict:
    eye = torch.eye(3, dtype=torch.float64)
    zeros = torch.zeros(3, dtype=torch.float64)
    return {
        "centre": zeros,
        "sides": torch.ones(3, dtype=torch.float64),
        "matrix": eye,
        "shift": zeros,
    }
