"""The training dataset: segments, their windows and their paired views."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_segrep.engine.augment import AugmentConfig
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


# ----------------------------------------------------------------------------- volumes
def blob_volumes(n_volumes=1, *, shape=(10, 40, 40), spacing=(2.0, 0.5, 0.5), n=6, seed=0):
    """``n_volumes`` noisy volumes of ``shape`` and their labels: ``n`` balls each, radii 3-4.5
    physical units at ``spacing`` (a ball of radius 4 spans 4 planes at z step 2 and 16 pixels
    at 0.5)."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(
        *[(np.arange(k) + 0.5) * s for k, s in zip(shape, spacing, strict=True)], indexing="ij"
    )
    extent = [k * s for k, s in zip(shape, spacing, strict=True)]
    images, labels = [], []
    for _ in range(n_volumes):
        lab = np.zeros(shape, np.int32)
        image = rng.normal(0.2, 0.05, shape).astype(np.float32)
        for i in range(n):
            r = rng.uniform(3.0, 4.5)
            c = [rng.uniform(r, e - r) for e in extent]
            inside = sum(((g - ci) / r) ** 2 for g, ci in zip(grids, c, strict=True)) <= 1
            lab[inside] = i + 1
            image[inside] += rng.uniform(0.3, 0.8)
        images.append(image)
        labels.append(lab)
    return images, labels


def test_segment_dataset__a_z_stack_gives_3d_objects_in_isotropic_windows():
    """axes="zyx" with spacing (2, 0.5, 0.5): one sample per 3D object, 3D views; each window is
    resampled to isotropic voxels, so a ball spans as many voxels along z as along y and x."""
    images, labels = blob_volumes(shape=(10, 40, 40), spacing=(2.0, 0.5, 0.5), seed=1)
    ds = SegmentDataset(images, labels, axes="zyx", spacing=(2.0, 0.5, 0.5), crop_size=16)
    n_objects = len(np.unique(labels[0])) - 1
    assert ds.spatial_ndim == 3 and len(ds) + ds.n_skipped == n_objects and len(ds) >= 4
    a, ma, b, mb = ds[0]
    assert a.shape == b.shape == (1, 16, 16, 16) and ma.shape == mb.shape == (1, 16, 16, 16)
    assert ma.dtype == torch.bool and ma.any() and mb.any()
    for i in range(len(ds)):
        _, mask = ds.window(i)
        extent = [int(np.ptp(np.nonzero(mask.numpy())[axis])) + 1 for axis in range(3)]
        assert abs(extent[0] - extent[1]) <= 0.25 * extent[1], extent  # z as y, not 4x fewer
        assert abs(extent[2] - extent[1]) <= 0.25 * extent[1], extent
    # the same stack said to be isotropic: its balls are 4 times flatter along z
    flat = SegmentDataset(images, labels, axes="zyx", crop_size=16)
    _, mask = flat.window(0)
    zs, ys = (np.ptp(np.nonzero(mask.numpy())[axis]) + 1 for axis in (0, 1))
    assert zs < 0.5 * ys


def test_segment_dataset__anisotropic_stacks_never_turn_z_into_y_or_x():
    """With rotations on, the views of an anisotropic stack may rotate and flip y and x only; an
    isotropic one, all 48 symmetries of the cube."""
    images, labels = blob_volumes(seed=2)
    rotations = AugmentConfig(crop_size=16, rotate90=True, flip=True)
    ds = SegmentDataset(images, labels, axes="zyx", spacing=(2.0, 0.5, 0.5), augment=rotations)
    assert len(ds.augment.symmetries) == 8
    assert all(perm[0] == 0 and not flips[0] for perm, flips in ds.augment.symmetries)
    assert ds.augment.planes == [(1, 2)]  # small rotations in the yx plane only
    iso = SegmentDataset(images, labels, axes="zyx", spacing=(0.5, 0.5, 0.5), augment=rotations)
    assert len(iso.augment.symmetries) == 48


def test_segment_dataset__volume_views_depend_on_seed_epoch_and_index_only():
    images, labels = blob_volumes(seed=3)
    ds = SegmentDataset(images, labels, axes="zyx", spacing=(2, 0.5, 0.5), crop_size=16, seed=5)
    first = ds[1]
    torch.manual_seed(999)
    again = ds[1]
    assert all(torch.equal(x, y) for x, y in zip(first, again, strict=True))
    ds.set_epoch(1)
    assert not torch.equal(ds[1][0], first[0])


def test_segment_dataset__a_time_lapse_trains_on_its_frames_as_images(two_images):
    """axes="tyx": each frame is a 2D image (normalised on its own), as a list of the frames
    would be; the channel axis is counted in the whole image."""
    images, labels = two_images
    stack, stack_labels = np.stack(images), np.stack(labels)
    ds = SegmentDataset(stack, stack_labels, axes="tyx", crop_size=32)
    frames = SegmentDataset(images, labels, crop_size=32)
    assert ds.spatial_ndim == 2 and len(ds) == len(frames) and ds.n_skipped == frames.n_skipped
    for i in range(len(ds)):
        assert all(torch.equal(x, y) for x, y in zip(ds[i], frames[i], strict=True))
    two_channels = np.stack([stack, stack * 2], axis=1)  # (T, C, Y, X)
    multi = SegmentDataset(two_channels, stack_labels, axes="tyx", channel_axis=1, crop_size=32)
    assert multi.in_channels == 2 and len(multi) == len(ds)


def test_segment_dataset__a_time_lapse_of_volumes_gives_3d_objects_per_frame():
    images, labels = blob_volumes(2, seed=4)
    ds = SegmentDataset(np.stack(images), np.stack(labels), axes="tzyx", crop_size=16)
    per_volume = SegmentDataset(images, labels, axes="zyx", crop_size=16)
    assert ds.spatial_ndim == 3 and len(ds) == len(per_volume)
    assert all(torch.equal(x, y) for x, y in zip(ds[3], per_volume[3], strict=True))


def test_segment_dataset__the_axes_of_3d_labels_are_said_never_guessed(two_images):
    images, labels = blob_volumes(seed=5)
    with pytest.raises(ValueError, match=r"pair 0: the labels are 3D .*axes='zyx' for a z-stack"):
        SegmentDataset(images, labels)
    with pytest.raises(ValueError, match="one training run takes 2D images or volumes"):
        # a 2D image and a 4D time-lapse of volumes ("tzyx", said by its dimensions)
        SegmentDataset([two_images[0][0], images[0][None]], [two_images[1][0], labels[0][None]])
    with pytest.raises(ValueError, match=r"b.tif: spacing has 2 values"):
        SegmentDataset(images, labels, axes="zyx", spacing=(1, 1), names=["b.tif"])
    with pytest.raises(ValueError, match=r"image has 2 frames but labels have 3"):
        SegmentDataset(np.stack(two_images[0]), np.stack([two_images[1][0]] * 3), axes="tyx")
    negative = np.stack(two_images[1])
    negative[1, 0, 0] = -1
    with pytest.raises(ValueError, match=r"pair 0: frame 1: labels contain negative values"):
        SegmentDataset(np.stack(two_images[0]), negative, axes="tyx")


def test_segment_dataset__each_pair_may_have_its_own_spacing():
    """Per-pair layouts (as files' metadata give them): each volume's windows and symmetries
    are those of its own spacing, as if trained alone; the run records both."""
    from napari_segrep._images import layout_of
    from napari_segrep.engine.dataset import recorded_layout

    images, labels = blob_volumes(2, seed=6)
    fine, coarse = (0.5, 0.5, 0.5), (2.0, 0.5, 0.5)
    layouts = [layout_of(labels[0], axes="zyx", spacing=coarse), layout_of(labels[1], axes="zyx")]
    rotations = AugmentConfig(crop_size=16, rotate90=True, flip=True)
    both = SegmentDataset(images, labels, axes=layouts, augment=rotations)
    alone = [
        SegmentDataset(images[:1], labels[:1], axes="zyx", spacing=coarse, augment=rotations),
        SegmentDataset(images[1:], labels[1:], axes="zyx", spacing=fine, augment=rotations),
    ]
    assert len(both) == len(alone[0]) + len(alone[1])
    for i in range(len(both)):
        part, k = (0, i) if i < len(alone[0]) else (1, i - len(alone[0]))
        assert all(
            torch.equal(x, y) for x, y in zip(both.window(i), alone[part].window(k), strict=True)
        )
        if part == 0:  # views are seeded by the index: the first volume's are the same
            assert all(torch.equal(x, y) for x, y in zip(both[i], alone[0][k], strict=True))
    assert [len(augment.symmetries) for augment in both._augments] == [8, 48]  # per volume
    assert recorded_layout(both.layouts) == ("zyx", (coarse, None))
    assert recorded_layout([layout_of((8, 8))] * 2) == (None, None)  # 2D: as before
