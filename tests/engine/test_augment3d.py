"""3D paired augmentation: one geometry for image and mask, views keep the object, and no view
mixes axes of different spacing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from napari_segrep.engine.augment import AugmentConfig
from napari_segrep.engine.augment3d import (
    PairedAugment3d,
    allowed_symmetries,
    apply_symmetry,
    symmetry_groups,
)

from .test_augment import NO_INTENSITY

ROTATIONS = {"rotate90": True, "flip": True}


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Views of small volumes are many tiny operations: one thread is several times faster on a
    busy machine (restored afterwards)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _ellipsoid(shape=(32, 32, 32), centre=(16, 14, 18), radii=(6, 9, 4)) -> torch.Tensor:
    grids = torch.meshgrid(*[torch.arange(n) for n in shape], indexing="ij")
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grids, centre, radii, strict=True)) <= 1


def _z_mixed(view: torch.Tensor) -> tuple[float, bool]:
    """For a view of the marker volume (channel 0: z + 1 inside the window, channel 1: 1
    inside): the largest spread of the z marker within one plane of the view (0 when the view's
    planes are planes of the volume), and whether the planes' markers increase with the view's z
    (False for a volume flipped along z)."""
    marker, inside = view[0], view[1] > 1 - 1e-4
    spread, means = 0.0, []
    for z in range(view.shape[1]):
        values = marker[z][inside[z]]
        if len(values) > 1:
            spread = max(spread, float(values.max() - values.min()))
            means.append(float(values.mean()))
    return spread, bool(np.all(np.diff(means) > 0))


def _marker_volume(shape=(20, 30, 30)):
    z = torch.arange(shape[0], dtype=torch.float32)[:, None, None].expand(shape)
    return torch.stack([z + 1, torch.ones(shape)])


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), dz=st.sampled_from([0.25, 1.5, 2.0, 5.0]))
def test_paired_augment3d__no_view_mixes_z_with_y_or_x_when_the_spacing_differs(seed, dz):
    """Every view of a volume of spacing (dz, 0.5, 0.5), rotations, flips and the small affine
    on: each plane of the view is one plane of the volume (the z marker is constant in it), in
    the volume's order (never flipped along z)."""
    aug = PairedAugment3d(
        AugmentConfig(crop_size=16, affine_degrees=30, **ROTATIONS, **NO_INTENSITY),
        spacing=(dz, 0.5, 0.5),
    )
    volume = _marker_volume()
    mask = torch.zeros(volume.shape[1:], dtype=torch.bool)
    mask[5:15, 8:22, 10:20] = True
    torch.manual_seed(seed)
    for view, _ in (aug.view(volume, mask), aug.view(volume, mask)):
        spread, increasing = _z_mixed(view)
        assert spread < 1e-4 and increasing


def test_paired_augment3d__isotropic_views_do_turn_z_into_y_or_x():
    """The marker test can fail: with isotropic spacing, rotations bring z into the view's
    planes and flip it (small rotations off: they tilt z in every view)."""
    config = AugmentConfig(crop_size=16, affine_degrees=0, **ROTATIONS, **NO_INTENSITY)
    aug = PairedAugment3d(config)
    volume = _marker_volume()
    mask = torch.zeros(volume.shape[1:], dtype=torch.bool)
    mask[5:15, 8:22, 10:20] = True
    torch.manual_seed(0)
    found = [_z_mixed(aug.view(volume, mask)[0]) for _ in range(20)]
    assert any(spread > 1 for spread, _ in found)
    assert any(spread < 1e-4 and not increasing for spread, increasing in found)


def test_paired_augment3d__the_symmetries_the_spacing_allows():
    assert symmetry_groups(None) == symmetry_groups((1.0, 1.02, 0.99)) == ((0, 1, 2),)
    assert symmetry_groups((2.0, 0.5, 0.5)) == ((1, 2),)
    assert symmetry_groups((0.5, 2.0, 0.5)) == ((0, 2),)
    assert symmetry_groups((1.0, 2.0, 3.0)) == ()
    counts = {
        spacing: [
            len(allowed_symmetries(spacing, rotate90=r, flip=f))
            for r, f in ((False, False), (True, False), (False, True), (True, True))
        ]
        for spacing in (None, (2.0, 0.5, 0.5), (1.0, 2.0, 3.0))
    }
    # the cube's 24 rotations and 48 symmetries; the square's 4 and 8; only the identity
    assert counts == {None: [1, 24, 8, 48], (2.0, 0.5, 0.5): [1, 4, 4, 8], (1.0, 2.0, 3.0): [1] * 4}
    volume = torch.arange(2 * 3 * 4).reshape(2, 3, 4)
    for perm, flips in allowed_symmetries((2.0, 0.5, 0.5), rotate90=True, flip=True):
        assert perm[0] == 0 and not flips[0]  # z stays z, in its direction
        out = apply_symmetry(volume, (perm, flips))
        assert out.shape[0] == 2 and torch.equal(out.sum((1, 2)), volume.sum((1, 2)))
    rotations = allowed_symmetries(None, rotate90=True, flip=False)
    assert all(torch.det(_matrix(t)) == 1 for t in rotations)  # proper rotations only


def _matrix(t) -> torch.Tensor:
    perm, flips = t
    m = torch.zeros(3, 3)
    for i in range(3):
        m[i, perm[i]] = -1.0 if flips[i] else 1.0
    return m


@pytest.mark.parametrize("spacing", [None, (2.0, 0.5, 0.5)])
def test_paired_augment3d__geometry_is_shared_by_image_and_mask(spacing):
    """Intensity changes off and an image equal to its mask: every view's image is its mask (up
    to interpolation at the outline), rotations and flips included."""
    mask = _ellipsoid()
    mask[16:20, 14:24, 18:20] = True  # break the symmetries so rotations and flips matter
    aug = PairedAugment3d(AugmentConfig(crop_size=24, **ROTATIONS, **NO_INTENSITY), spacing=spacing)
    for seed in range(10):
        torch.manual_seed(seed)
        view, vmask = aug.view(mask[None].float(), mask)
        assert view.shape == (1, 24, 24, 24) and vmask.shape == (24, 24, 24)
        assert vmask.dtype == torch.bool and view.dtype == torch.float32
        agree = ((view[0] > 0.5) == vmask).float().mean()
        assert agree > 0.97, (seed, float(agree))


def test_paired_augment3d__intensity_touches_the_image_only():
    mask = _ellipsoid()
    image = torch.rand(2, 32, 32, 32)
    geometry_only = PairedAugment3d(AugmentConfig(crop_size=16, **NO_INTENSITY))
    full = PairedAugment3d(
        AugmentConfig(crop_size=16, brightness=0.5, contrast=0.5, noise_std=0.1, blur_probability=1)
    )
    torch.manual_seed(3)
    img_a, mask_a = geometry_only.view(image, mask)
    torch.manual_seed(3)
    img_b, mask_b = full.view(image, mask)
    assert torch.equal(mask_a, mask_b)
    assert not torch.allclose(img_a, img_b)


def test_paired_augment3d__blur_is_a_physical_size_scaled_by_the_spacing():
    """A point blurred in a (2, 0.5, 0.5) volume: sigma 1 voxel along y and x is 0.25 voxel
    along z, the same physical Gaussian."""
    whole = {"crop_scale": (1.0, 1.0), "crop_ratio": (1.0, 1.0), "affine_degrees": 0.0}
    whole |= {"affine_translate": 0.0, "affine_scale": (1.0, 1.0)}
    blur = {**NO_INTENSITY, "blur_probability": 1.0, "blur_sigma": (1.0, 1.0)}
    aug = PairedAugment3d(AugmentConfig(crop_size=16, **whole, **blur), spacing=(2.0, 0.5, 0.5))
    point = torch.zeros(1, 16, 16, 16)
    point[0, 8, 8, 8] = 1.0
    view, _ = aug.view(point, point[0] > 0)
    offsets = torch.arange(-2, 3, dtype=torch.float64)

    def kernel(sigma):  # the discrete Gaussian of 5 taps, as torchvision's 2D blur
        k = torch.exp(-0.5 * (offsets / sigma) ** 2)
        return k / k.sum()

    profiles = (view[0, 6:11, 8, 8], view[0, 8, 6:11, 8], view[0, 8, 8, 6:11])
    z, y, x = (p.double() / p.double().sum() for p in profiles)
    torch.testing.assert_close(y, kernel(1.0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(x, kernel(1.0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(z, kernel(0.25), rtol=1e-5, atol=1e-6)  # 1 voxel * 0.5 / 2


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    corner=st.tuples(st.integers(0, 28), st.integers(0, 28), st.integers(0, 28)),
    size=st.integers(1, 3),
)
def test_paired_augment3d__views_never_lose_the_object(seed, corner, size):
    """Aggressive crops of a tiny off-centre object: a view is redrawn until it keeps it, then
    the whole window is used; a mask is never empty."""
    mask = torch.zeros(32, 32, 32, dtype=torch.bool)
    z, y, x = corner
    mask[z : z + size, y : y + size, x : x + size] = True
    aug = PairedAugment3d(AugmentConfig(crop_size=8, crop_scale=(0.01, 0.05)), spacing=(3, 1, 1))
    torch.manual_seed(seed)
    _, ma, _, mb = aug(torch.rand(1, 32, 32, 32), mask)
    assert ma.any() and mb.any()


def test_paired_augment3d__views_depend_on_the_generator_only():
    mask = _ellipsoid()
    image = torch.rand(1, 32, 32, 32)
    aug = PairedAugment3d(AugmentConfig(crop_size=16, **ROTATIONS), spacing=(2.0, 1.0, 1.0))
    torch.manual_seed(7)
    first = aug(image, mask)
    torch.manual_seed(7)
    again = aug(image, mask)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first[0], first[2])  # the two views differ
    torch.manual_seed(8)
    assert not torch.equal(aug(image, mask)[0], first[0])


def test_paired_augment3d__bad_input():
    aug = PairedAugment3d(AugmentConfig(crop_size=8))
    with pytest.raises(ValueError, match="empty mask"):
        aug.view(torch.rand(1, 8, 8, 8), torch.zeros(8, 8, 8, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"\(C, D, H, W\)"):
        aug.view(torch.rand(1, 8, 8), torch.ones(8, 8, dtype=torch.bool))
    with pytest.raises(ValueError, match="positive"):
        PairedAugment3d(spacing=(0, 1, 1))
    with pytest.raises(ValueError, match="3 spatial axes"):
        PairedAugment3d(spacing=(1, 1))
