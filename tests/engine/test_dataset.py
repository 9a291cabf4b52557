"""Paired augmentation and the training dataset."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from napari_segrep.engine.augment import AugmentConfig, PairedAugment
from napari_segrep.engine.dataset import SegmentDataset
from napari_segrep.io import pair_files

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


@pytest.fixture(scope="module")
def two_images():
    rng = np.random.default_rng(0)
    images = [rng.random((64, 64)).astype(np.float32) for _ in range(2)]
    labels = [
        disc_labels((64, 64), [(15, 15, 6), (40, 40, 9), (50, 10, 1)]),
        disc_labels((64, 64), [(20, 44, 7), (45, 20, 5)]),
    ]
    return images, labels


def test_segment_dataset__items_shapes_and_skipped_small_segments(two_images):
    images, labels = two_images
    ds = SegmentDataset(images, labels, crop_size=32, min_size=16)
    assert len(ds) == 4 and ds.n_skipped == 1  # the 5-pixel disc
    a, ma, b, mb = ds[0]
    assert a.shape == b.shape == (1, 32, 32) and ma.shape == mb.shape == (1, 32, 32)
    assert ma.dtype == torch.bool and ma.any() and mb.any()


def test_segment_dataset__views_depend_on_seed_epoch_and_index_only(two_images):
    images, labels = two_images
    ds = SegmentDataset(images, labels, crop_size=32, seed=5)
    first = ds[2]
    torch.manual_seed(999)  # the global generator plays no part...
    again = ds[2]
    assert all(torch.equal(x, y) for x, y in zip(first, again, strict=True))
    state = torch.get_rng_state()
    ds[1]
    assert torch.equal(state, torch.get_rng_state())  # ...and is left untouched
    ds.set_epoch(1)
    assert not torch.equal(ds[2][0], first[0])
    other_seed = SegmentDataset(images, labels, crop_size=32, seed=6)
    assert not torch.equal(other_seed[2][0], first[0])


def test_segment_dataset__window_holds_the_segment_at_native_scale(two_images):
    images, labels = two_images
    ds = SegmentDataset(images, labels, crop_size=32, normalize=None)
    image, mask = ds.window(1)  # the radius-9 disc of image 0
    assert image.shape[-1] == 32 and int(mask.sum()) == int((labels[0] == 2).sum())
    np.testing.assert_array_equal(
        np.sort(image[0][mask].numpy()), np.sort(images[0][labels[0] == 2])
    )


def test_segment_dataset__bad_input_names_the_pair(two_images):
    images, labels = two_images
    with pytest.raises(ValueError, match="broken.tif"):
        SegmentDataset(
            [images[0], images[1]], [labels[0], labels[1][:30]], names=["ok.tif", "broken.tif"]
        )
    with pytest.raises(ValueError, match="2 images but 1 label"):
        SegmentDataset(images, labels[:1])
    with pytest.raises(ValueError, match="channel"):
        SegmentDataset([images[0], np.stack([images[1]] * 3, -1)], labels)


def test_pair_files__matches_by_stem_and_lists_unmatched(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    for name in ("a.tif", "b.png", "c.tif"):
        (tmp_path / "images" / name).write_bytes(b"x")
    for name in ("a_labels.tif", "b.png", "z_mask.tif"):
        (tmp_path / "labels" / name).write_bytes(b"x")
    with pytest.raises(ValueError) as info:
        pair_files(data_dir=tmp_path)
    assert "c.tif" in str(info.value) and "z_mask.tif" in str(info.value)
    (tmp_path / "images" / "c.tif").unlink()
    (tmp_path / "labels" / "z_mask.tif").unlink()
    pairs = pair_files(data_dir=tmp_path)
    assert [(i.name, lab.name) for i, lab in pairs] == [
        ("a.tif", "a_labels.tif"),
        ("b.png", "b.png"),
    ]
    with pytest.raises(ValueError, match="no image file matched"):
        pair_files(str(tmp_path / "nothing" / "*.tif"), str(tmp_path / "labels" / "*"))
    with pytest.raises(ValueError, match="images/ and labels/"):
        pair_files(data_dir=tmp_path / "images")
