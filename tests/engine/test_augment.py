"""Paired augmentation: one draw of geometry for image and mask, views keep the segment."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from napari_segrep.engine.augment import AugmentConfig, PairedAugment

from ..conftest import disc_labels

NO_INTENSITY = {
    "brightness": 0.0,
    "contrast": 0.0,
    "gamma": (1.0, 1.0),
    "blur_probability": 0.0,
    "noise_std": 0.0,
    "saturation": 0.0,
}


def test_paired_augment__geometry_is_shared_by_image_and_mask():
    """With intensity changes off and an image equal to its mask, every view's image is its
    mask (up to interpolation at the outline): one draw of geometry for both."""
    mask = torch.from_numpy(disc_labels((80, 80), [(40, 34, 14)]) > 0)
    mask[30:50, 44:50] = True  # break the symmetry so rotations and flips matter
    aug = PairedAugment(AugmentConfig(crop_size=48, **NO_INTENSITY))
    for seed in range(20):
        torch.manual_seed(seed)
        view, vmask = aug.view(mask[None].float(), mask)
        agree = ((view[0] > 0.5) == vmask).float().mean()
        assert agree > 0.97, (seed, float(agree))
        assert vmask.dtype == torch.bool and view.shape == (1, 48, 48)


def test_paired_augment__intensity_touches_the_image_only():
    mask = torch.zeros(64, 64, dtype=torch.bool)
    mask[20:40, 20:44] = True
    image = torch.rand(3, 64, 64)
    geometry_only = PairedAugment(AugmentConfig(crop_size=32, **NO_INTENSITY))
    full = PairedAugment(
        AugmentConfig(
            crop_size=32,
            brightness=0.5,
            contrast=0.5,
            noise_std=0.1,
            blur_probability=1.0,
            saturation=0.5,
        )
    )
    torch.manual_seed(3)
    img_a, mask_a = geometry_only.view(image, mask)
    torch.manual_seed(3)
    img_b, mask_b = full.view(image, mask)
    assert torch.equal(mask_a, mask_b)
    assert not torch.allclose(img_a, img_b)


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000), y=st.integers(0, 59), x=st.integers(0, 59), size=st.integers(1, 4)
)
def test_paired_augment__views_never_lose_the_segment(seed, y, x, size):
    """Aggressive crops of a tiny off-centre segment: a view is redrawn until it keeps it."""
    mask = torch.zeros(64, 64, dtype=torch.bool)
    mask[y : y + size, x : x + size] = True
    aug = PairedAugment(AugmentConfig(crop_size=32, crop_scale=(0.05, 0.2)))
    torch.manual_seed(seed)
    _, ma, _, mb = aug(torch.rand(1, 64, 64), mask)
    needed = min(4, int(mask.sum()))
    assert int(ma.sum()) >= min(needed, 1) and int(mb.sum()) >= min(needed, 1)


def test_paired_augment__bad_config_and_empty_mask():
    with pytest.raises(ValueError, match="crop_scale"):
        AugmentConfig(crop_scale=(0.0, 1.0))
    with pytest.raises(ValueError, match="crop_size"):
        AugmentConfig(crop_size=4)
    with pytest.raises(ValueError, match="empty mask"):
        PairedAugment().view(torch.rand(1, 32, 32), torch.zeros(32, 32, dtype=torch.bool))
