"""The training dataset: segments, their windows and their paired views."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_segrep.engine.dataset import SegmentDataset

from ..conftest import disc_labels


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


def test_segment_dataset__the_embedding_input_checks_name_the_pair(two_images):
    images, labels = two_images
    huge = images[1].astype(np.float64)
    huge[3, 3] = 1e39  # finite in float64, Inf in float32
    rgb_labels = np.stack([labels[1]] * 3, -1).astype(np.uint8)
    for image, lab, match in (
        (huge, labels[1], "b.tif: image values reach 1e\\+39, beyond float32 range"),
        (images[1], rgb_labels, "b.tif: labels look like an RGB image"),
        (np.zeros((0, 64)), np.zeros((0, 64), int), r"b.tif: the image is empty"),
    ):
        with pytest.raises(ValueError, match=match):
            SegmentDataset([images[0], image], [labels[0], lab], names=["a.tif", "b.tif"])
