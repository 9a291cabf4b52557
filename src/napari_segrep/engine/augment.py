"""Paired image + mask views for self-supervised training.

Geometry (random resized crop around the segment, small affine) goes through
``torchvision.transforms.v2`` with the image wrapped as ``tv_tensors.Image`` and the mask as
``tv_tensors.Mask``: one draw of parameters per call, applied identically to both, the mask with
nearest-neighbour interpolation.  90-degree rotations and flips are exact index operations on
both tensors.  Intensity changes (brightness, contrast, gamma, blur, noise; saturation for RGB)
touch the image only.

A view whose crop lost the segment (fewer than ``min_mask_pixels`` mask pixels left, or all of
them when the segment is smaller) is redrawn; after ``max_redraws`` failures the un-cropped
window is used.  An empty mask never reaches the network.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

__all__ = ["AugmentConfig", "PairedAugment", "jitter_intensity"]


@dataclass(frozen=True)
class AugmentConfig:
    """Augmentation settings (microscopy-appropriate defaults).

    ``crop_scale`` is the range of the fraction of the segment's context window kept by the
    random resized crop; ``brightness`` an additive shift and ``contrast`` a multiplicative factor
    range (as fractions); ``gamma`` a range of exponents; ``noise_std`` the Gaussian noise standard
    deviation on the 0-1 scaled image; ``saturation`` applies to 3-channel images only.
    """

    crop_size: int = 64
    crop_scale: tuple[float, float] = (0.5, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    rotate90: bool = False
    flip: bool = False
    affine_degrees: float = 15.0
    affine_translate: float = 0.05
    affine_scale: tuple[float, float] = (0.9, 1.1)
    brightness: float = 0.2
    contrast: float = 0.2
    gamma: tuple[float, float] = (0.8, 1.25)
    blur_probability: float = 0.3
    blur_sigma: tuple[float, float] = (0.1, 1.5)
    noise_std: float = 0.03
    saturation: float = 0.3
    min_mask_pixels: int = 4
    max_redraws: int = 10

    def __post_init__(self) -> None:
        lo, hi = self.crop_scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"crop_scale must satisfy 0 < low <= high <= 1, got {self.crop_scale}")
        if self.crop_size < 8:
            raise ValueError(f"crop_size must be at least 8, got {self.crop_size}")

    def to_dict(self) -> dict:
        return asdict(self)


class PairedAugment:
    """Draw two augmented views of one segment.

    Call ``augment(image, mask)`` with ``image`` (C, H, W) float (scaled to about 0-1) and
    ``mask`` (H, W) bool: returns ``(view_a, mask_a, view_b, mask_b)``, views (C, S, S) float32
    and masks (S, S) bool, ``S = config.crop_size``.  Randomness comes from torch's global
    generator (the dataset seeds it per sample, so views are reproducible).
    """

    def __init__(self, config: AugmentConfig | None = None) -> None:
        self.config = config or AugmentConfig()
        c = self.config
        self.geometry = v2.Compose(
            [
                v2.RandomResizedCrop(
                    c.crop_size, scale=c.crop_scale, ratio=c.crop_ratio, antialias=True
                ),
                v2.RandomAffine(
                    degrees=c.affine_degrees,
                    translate=(c.affine_translate, c.affine_translate),
                    scale=c.affine_scale,
                ),
            ]
        )

    def __call__(self, image: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        a, ma = self.view(image, mask)
        b, mb = self.view(image, mask)
        return a, ma, b, mb

    def view(self, image: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """One augmented view (C, S, S) and its mask (S, S)."""
        c = self.config
        needed = min(c.min_mask_pixels, int(mask.sum()))
        if needed < 1:
            raise ValueError("cannot augment an empty mask")
        img_t = tv_tensors.Image(image)
        mask_t = tv_tensors.Mask(mask[None].to(torch.uint8))
        for _ in range(c.max_redraws):
            img, m = self.geometry(img_t, mask_t)
            if int(m.sum()) >= needed:
                break
        else:  # the crop kept losing the segment: use the whole window
            img = TF.resize(image, [c.crop_size, c.crop_size], antialias=True)
            m = TF.resize(
                mask_t, [c.crop_size, c.crop_size], interpolation=v2.InterpolationMode.NEAREST
            )
            if int(m.sum()) < 1:
                m = torch.nn.functional.adaptive_max_pool2d(mask[None].float(), c.crop_size) > 0
        img, m = torch.as_tensor(img), torch.as_tensor(m)[0].bool()
        if c.rotate90:
            k = int(torch.randint(4, ()))
            img, m = torch.rot90(img, k, (-2, -1)), torch.rot90(m, k, (-2, -1))
        if c.flip and bool(torch.rand(()) < 0.5):
            img, m = img.flip(-1), m.flip(-1)
        return self._intensity(img.float()).contiguous(), m.contiguous()

    def _intensity(self, img: Tensor) -> Tensor:
        return jitter_intensity(img, self.config, blur=_blur_2d)


def _blur_2d(img: Tensor, sigma: float) -> Tensor:
    return TF.gaussian_blur(img, kernel_size=[5, 5], sigma=[sigma, sigma])


def jitter_intensity(
    img: Tensor, config: AugmentConfig, *, blur: Callable[[Tensor, float], Tensor]
) -> Tensor:
    """The intensity changes of a view (the image only, never its mask), drawn from torch's
    global generator in a fixed order: contrast, brightness, gamma, saturation (3 channels),
    blur, noise.

    Parameters
    ----------
    img : (C, *S) float Tensor
        A view, 2D (``S = (H, W)``) or 3D (``S = (D, H, W)``).
    config : AugmentConfig
    blur : callable(img, sigma) -> img
        The Gaussian blur of the view's dimension; ``sigma`` is drawn from
        ``config.blur_sigma``, in pixels (2D) or in voxels of the finest axis (3D: the blur
        scales it by the spacing).
    """
    c = config
    if c.contrast:
        img = img * (1 + c.contrast * (2 * torch.rand(()) - 1))
    if c.brightness:
        img = img + c.brightness * (2 * torch.rand(()) - 1)
    if c.gamma != (1.0, 1.0):
        lo, hi = torch.log(torch.tensor(c.gamma, dtype=torch.float32))
        gamma = torch.exp(lo + (hi - lo) * torch.rand(()))
        img = img.clamp_min(0) ** gamma
    if img.shape[0] == 3 and c.saturation:
        grey = img.mean(0, keepdim=True)
        img = grey + (img - grey) * (1 + c.saturation * (2 * torch.rand(()) - 1))
    if c.blur_probability and bool(torch.rand(()) < c.blur_probability):
        lo, hi = c.blur_sigma
        img = blur(img, float(lo + (hi - lo) * torch.rand(())))
    if c.noise_std:
        img = img + c.noise_std * torch.randn_like(img)
    return img
