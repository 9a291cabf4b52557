"""The fast CPU modes for volumes: the 2D masked ResNet on three orthogonal planes of a 3D
crop, views concatenated (``resnet18_planes``), or on every z-slice of the object, area-weighted
mean (``resnet18_slices``)."""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torchvision.models.resnet import BasicBlock

import napari_segrep as sr
from napari_segrep.engine.backbones import (
    BACKBONES,
    build_backbone,
    get_backbone,
    imagenet_cache_path,
    register_backbone,
)
from napari_segrep.engine.backbones.planes import (
    MaskedResNetPlanes,
    MaskedResNetSlices,
    plane_indices,
    planes_of,
)
from napari_segrep.engine.backbones.resnet import MaskedResNet

#: Shrunken real backbones: the 2D narrow test ResNet (one block per stage, widths 8/16/32/64,
#: 64-d per view) on three planes (192-d), and on the z-slices (64-d).
NARROW_PLANES = "resnet_planes_narrow_test"
NARROW_SLICES = "resnet_slices_narrow_test"
NARROW = [NARROW_PLANES, NARROW_SLICES]


def _register_narrow() -> None:
    for name, cls in ((NARROW_PLANES, MaskedResNetPlanes), (NARROW_SLICES, MaskedResNetSlices)):
        if name not in BACKBONES:
            register_backbone(name, partial(cls, BasicBlock, [1, 1, 1, 1], width=8), spatial_dims=3)


_ENCODERS: dict[tuple, sr.SegmentEncoder] = {}


def _encoder(name: str, *, seed: int = 0, train: bool = False, **masking) -> sr.SegmentEncoder:
    """A 1-channel encoder on a narrow backbone, built once per arguments."""
    _register_narrow()
    key = (name, seed, tuple(sorted(masking.items())))
    if key not in _ENCODERS:
        _ENCODERS[key] = sr.SegmentEncoder(name, in_channels=1, seed=seed, **masking)
    return _ENCODERS[key].train(train)


@pytest.fixture(scope="module")
def narrow_planes() -> sr.SegmentEncoder:
    """A 1-channel encoder on the narrow planes backbone, eval mode (192-d)."""
    return _encoder(NARROW_PLANES)


def ellipsoid(size: int, centre, semi_axes) -> torch.Tensor:
    """(size, size, size) bool Tensor: an axis-aligned ellipsoid."""
    c = torch.arange(size, dtype=torch.float32)
    zz, yy, xx = torch.meshgrid(c, c, c, indexing="ij")
    (cz, cy, cx), (az, ay, ax) = centre, semi_axes
    return ((zz - cz) / az) ** 2 + ((yy - cy) / ay) ** 2 + ((xx - cx) / ax) ** 2 <= 1.0


def random_blobs(b: int, size: int, seed: int) -> torch.Tensor:
    """(b, 1, size, size, size) bool: one random ellipsoid per crop, sometimes two pieces."""
    g = torch.Generator().manual_seed(seed)
    masks = torch.zeros(b, 1, size, size, size, dtype=torch.bool)
    for i in range(b):
        for _ in range(1 + int(torch.randint(0, 2, (1,), generator=g))):
            centre = (torch.rand(3, generator=g) * (size - 6) + 3).tolist()
            semi = (torch.rand(3, generator=g) * (size / 4) + 1).tolist()
            masks[i, 0] |= ellipsoid(size, centre, semi)
    return masks


def _views(enc: sr.SegmentEncoder, x: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """(B, 3, view_dim): the three views of each object's embedding, z, y, x."""
    with torch.inference_mode():
        z = enc(x, masks)
    return z.view(len(x), 3, enc.backbone.view_dim)


def _view_2d(enc: sr.SegmentEncoder, plane: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The 2D network of the planes backbone alone on (B, 1, S, S) planes (image-masked)."""
    with torch.inference_mode():
        return MaskedResNet.forward(enc.backbone, plane * mask, mask.float())


# ---------------------------------------------------------------------- registration
@pytest.mark.parametrize(
    ("name", "cls", "dim"),
    [
        ("resnet18_planes", MaskedResNetPlanes, 3 * 512),
        ("resnet18_slices", MaskedResNetSlices, 512),
    ],
)
def test_resnet18_planes__is_a_3d_backbone_on_resnet18_s_imagenet_file(name, cls, dim):
    spec = get_backbone(name)
    assert spec.spatial_dims == 3
    assert spec.imagenet_url == get_backbone("resnet18").imagenet_url
    assert imagenet_cache_path(name) == imagenet_cache_path("resnet18")
    enc = sr.SegmentEncoder(name, in_channels=2, seed=0)
    assert enc.spatial_dims == 3 and enc.embedding_dim == dim
    assert isinstance(enc.backbone, cls)
    # the 2D network inside is resnet18, key for key (torchvision's names)
    plain = build_backbone("resnet18", in_channels=2, seed=0)
    ours, theirs = enc.backbone.state_dict(), plain.state_dict()
    assert list(ours) == list(theirs) and all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_planes_backbone__refuses_2d_and_non_cubic_crops(narrow_planes):
    with pytest.raises(ValueError, match=r"images must be \(B, 1, D, H, W\)"):
        narrow_planes(torch.rand(2, 1, 16, 16), torch.ones(2, 1, 16, 16, dtype=torch.bool))
    with pytest.raises(
        ValueError, match=r"cubic 3D crops \(B, C, S, S, S\), got \(2, 1, 16, 16, 8"
    ):
        narrow_planes(torch.rand(2, 1, 16, 16, 8), torch.ones(2, 1, 16, 16, 8, dtype=torch.bool))
    with pytest.raises(ValueError, match="combine must be"):
        MaskedResNetPlanes(BasicBlock, [1, 1, 1, 1], width=8, combine="max")
    # the slices take any box: every z-slice has the same (H, W)
    slices = _encoder(NARROW_SLICES)
    with torch.no_grad():
        assert slices(
            torch.rand(2, 1, 12, 16, 8), random_blobs(2, 16, 0)[..., :12, :, :8]
        ).shape == (2, 64)


# ---------------------------------------------------------------------- isolation
@settings(max_examples=12, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    size=st.sampled_from([16, 20, 24]),
    train=st.booleans(),
    name=st.sampled_from(NARROW),
)
def test_planes_encoder__voxels_outside_the_mask_cannot_change_the_embedding(
    seed, size, train, name
):
    """Exact 3D context invariance, in eval mode and with training-mode batch statistics."""
    enc = _encoder(name, seed=3, train=train)
    g = torch.Generator().manual_seed(seed)
    masks = random_blobs(3, size, seed)
    x = torch.rand(3, 1, size, size, size, generator=g)
    context = torch.randn(3, 1, size, size, size, generator=g) * 50
    y = torch.where(masks, x, context)
    with torch.no_grad():
        assert torch.equal(enc(x, masks), enc(y, masks))


@pytest.mark.parametrize("name", NARROW)
def test_planes_encoder__without_image_masking_context_gets_in(name):
    """The control: the test above can fail (feature masking alone lets the stem see context)."""
    enc = _encoder(name, image_masking=False)
    masks = random_blobs(2, 20, 1)
    x = torch.rand(2, 1, 20, 20, 20)
    y = torch.where(masks, x, torch.full_like(x, 5.0))
    with torch.no_grad():
        assert not torch.allclose(enc(x, masks), enc(y, masks), atol=1e-4)


@pytest.mark.parametrize("name", NARROW)
def test_planes_encoder__a_neighbour_in_the_batch_changes_nothing(name):
    """Eval mode: object 0's embedding is the same whatever its batch neighbours are."""
    enc = _encoder(name)
    masks = random_blobs(3, 20, 7)
    x = torch.rand(3, 1, 20, 20, 20, generator=torch.Generator().manual_seed(7))
    with torch.inference_mode():
        alone = enc(x[:1], masks[:1])
        together = enc(x, masks)
        other_masks = masks.clone()
        other_masks[1:] = random_blobs(2, 20, 99)
        other = enc(x * torch.tensor([1.0, 9.0, -3.0]).view(3, 1, 1, 1, 1), other_masks)
    torch.testing.assert_close(together[:1], alone, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(other[:1], alone, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(together[1:], other[1:], atol=1e-3)  # the neighbours did change


# ---------------------------------------------------------------------- which planes
def _thin_and_hollow_shapes(size: int = 20) -> dict[str, torch.Tensor]:
    """One-voxel-thick discs normal to z, y and x (off-centre), a hollow shell, and a label
    of two separate pieces whose centre of mass lies between them."""
    c = (size - 1) / 2
    shapes = {}
    for axis, name in enumerate("zyx"):
        semi = [6.0, 6.0, 6.0]
        semi[axis] = 0.4
        centre = [c, c, c]
        centre[axis] = 4.0
        shapes[f"disc normal to {name}"] = ellipsoid(size, centre, semi)
    shapes["hollow shell"] = ellipsoid(size, (c, c, c), (7, 7, 7)) & ~ellipsoid(
        size, (c, c, c), (5.5, 5.5, 5.5)
    )
    shapes["two pieces"] = ellipsoid(size, (3, 3, 3), (2, 2, 2)) | ellipsoid(
        size, (16, 16, 16), (2, 2, 2)
    )
    return shapes


def test_plane_indices__thin_hollow_and_split_objects_get_non_empty_planes(narrow_planes):
    shapes = _thin_and_hollow_shapes()
    masks = torch.stack(list(shapes.values()))[:, None]
    idx = plane_indices(masks.float(), (20, 20, 20), len(masks))
    planes = planes_of(masks.float(), idx)  # (3B, 1, S, S)
    areas = planes.sum(dim=(1, 2, 3)).view(3, len(masks))
    assert (areas > 0).all(), dict(zip(shapes, areas.T.tolist(), strict=True))
    # a one-voxel-thick disc is seen flat in its own plane, edge-on in the two others
    for axis, name in enumerate("zyx"):
        k = list(shapes).index(f"disc normal to {name}")
        assert idx[k, axis] == 4
        assert areas[axis, k] == masks[k].sum()
    # the hollow shell: each plane cuts it through its centre (a ring), not its cap
    k = list(shapes).index("hollow shell")
    assert idx[k].tolist() == [9, 9, 9]
    # two pieces: the centre of mass (9.5) lies between them: the nearest non-empty plane
    k = list(shapes).index("two pieces")
    assert idx[k].tolist() == [5, 5, 5]
    z = _views(narrow_planes, torch.rand(len(masks), 1, 20, 20, 20) + 0.5, masks)
    assert torch.isfinite(z).all() and (z.abs().sum(dim=2) > 0).all()  # every view sees it


@settings(max_examples=40, deadline=None)
@given(
    voxels=st.lists(
        st.tuples(st.integers(0, 9), st.integers(0, 9), st.integers(0, 9)), min_size=1, max_size=30
    )
)
def test_plane_indices__the_non_empty_plane_nearest_the_centre_of_mass(voxels):
    mask = torch.zeros(1, 1, 10, 10, 10)
    for z, y, x in voxels:
        mask[0, 0, z, y, x] = 1
    idx = plane_indices(mask, (10, 10, 10), 1)[0]
    points = torch.nonzero(mask[0, 0]).double()
    for axis in range(3):
        com = points[:, axis].mean()
        occupied = sorted(set(points[:, axis].long().tolist()))
        best = min(occupied, key=lambda i: (abs(i - com), i))  # nearest, then the lower
        assert idx[axis] == best


def test_plane_indices__without_a_mask_the_crop_s_centre():
    assert plane_indices(None, (16, 16, 16), 2).tolist() == [[8, 8, 8], [8, 8, 8]]


def test_planes_encoder__masks_off_is_torchvision_s_resnet_on_the_centre_planes():
    enc = _encoder(NARROW_PLANES, image_masking=False, feature_masking=False)
    x = torch.rand(2, 1, 16, 16, 16)
    with torch.inference_mode():
        z = enc(x).view(2, 3, -1)
        planes = [x[:, :, 8], x[:, :, :, 8], x[:, :, :, :, 8]]
        expected = [MaskedResNet.forward(enc.backbone, p) for p in planes]
    for view in range(3):
        torch.testing.assert_close(z[:, view], expected[view], rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------- a real property
def _asymmetric_object(size: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
    """A textured object with no symmetry and a centre of mass off every half-voxel: its
    planes are unambiguous, so a transform of the crop maps them exactly."""
    mask = ellipsoid(size, (8.3, 9.6, 11.2), (5.1, 3.4, 6.7))
    mask |= ellipsoid(size, (11.0, 13.0, 6.0), (2.5, 2.0, 3.0))  # a bud on one side
    x = torch.rand(1, 1, size, size, size, generator=torch.Generator().manual_seed(5)) + 0.2
    return x, mask[None, None]


@pytest.mark.parametrize("transform", ["swap y and x", "rotate 90 degrees about z"])
def test_planes_encoder__a_rotation_in_yx_permutes_the_views(narrow_planes, transform):
    """Swapping y and x (a transpose, or a 90 degree rotation about z) swaps which views see
    what: the new y-view is the old x-view's plane and vice versa (flipped for the rotation),
    the z-view sees the old z-plane transformed."""
    x, mask = _asymmetric_object()
    if transform == "swap y and x":
        new_x, new_mask = x.transpose(3, 4), mask.transpose(3, 4)
    else:
        new_x, new_mask = torch.rot90(x, 1, dims=(3, 4)), torch.rot90(mask, 1, dims=(3, 4))
    before, after = _views(narrow_planes, x, mask), _views(narrow_planes, new_x, new_mask)
    iz, iy, ix = plane_indices(mask, (20, 20, 20), 1)[0].tolist()
    z_plane, m_z = x[:, :, iz], mask[:, :, iz]
    if transform == "swap y and x":
        z_plane, m_z = z_plane.transpose(2, 3), m_z.transpose(2, 3)
        expected_y, expected_x = before[:, 2], before[:, 1]  # the old x-view, the old y-view
    else:
        z_plane, m_z = torch.rot90(z_plane, 1, dims=(2, 3)), torch.rot90(m_z, 1, dims=(2, 3))
        expected_y = before[:, 2]  # the old x-plane, as it was
        y_plane = torch.flip(x[:, :, :, iy], dims=(3,))  # the old y-plane, mirrored
        expected_x = _view_2d(narrow_planes, y_plane, torch.flip(mask[:, :, :, iy], dims=(3,)))
        assert not torch.allclose(expected_x, before[:, 1], atol=1e-4)  # mirroring matters
    torch.testing.assert_close(after[:, 0], _view_2d(narrow_planes, z_plane, m_z))
    torch.testing.assert_close(after[:, 1], expected_y)
    torch.testing.assert_close(after[:, 2], expected_x)
    assert not torch.allclose(after, before, atol=1e-4)  # the views did move


# ---------------------------------------------------------------------- the slices
def test_slices_encoder__is_the_area_weighted_mean_of_its_z_slices():
    """Against a direct computation: the 2D network on each non-empty z-slice, one at a time,
    weighted by the slice's in-mask area; thin and split objects included."""
    enc = _encoder(NARROW_SLICES)
    shapes = _thin_and_hollow_shapes()
    masks = torch.stack(list(shapes.values()))[:, None]
    x = torch.rand(len(masks), 1, 20, 20, 20) + 0.5
    with torch.inference_mode():
        z = enc(x, masks)
    for k, name in enumerate(shapes):
        area = masks[k, 0].sum(dim=(1, 2)).float()
        occupied = torch.nonzero(area).flatten().tolist()
        views = torch.cat(
            [_view_2d(enc, x[k : k + 1, :, i], masks[k : k + 1, :, i]) for i in occupied]
        )
        expected = (views * area[occupied, None]).sum(0) / area.sum()
        torch.testing.assert_close(z[k], expected, rtol=1e-5, atol=1e-6, msg=name)
    assert torch.isfinite(z).all() and (z.abs().sum(dim=1) > 0).all()


def test_slices_encoder__reversing_z_changes_nothing():
    """The mean over slices has no order: the object upside down (z reversed) has the same
    embedding; the planes, which see z, do not."""
    x, mask = _asymmetric_object()
    flipped_x, flipped_mask = torch.flip(x, dims=(2,)), torch.flip(mask, dims=(2,))
    with torch.inference_mode():
        slices = _encoder(NARROW_SLICES)
        torch.testing.assert_close(slices(flipped_x, flipped_mask), slices(x, mask))
        planes = _encoder(NARROW_PLANES)
        assert not torch.allclose(planes(flipped_x, flipped_mask), planes(x, mask), atol=1e-4)


def test_slices_encoder__an_empty_mask_gives_zeros_not_nan():
    enc = _encoder(NARROW_SLICES)
    masks = random_blobs(2, 16, 5)
    masks[1] = False
    with torch.inference_mode():
        z = enc(torch.rand(2, 1, 16, 16, 16), masks)
    assert torch.isfinite(z).all() and z[0].abs().sum() > 0 and not z[1].any()


# ---------------------------------------------------------------------- weights
def _seeded_resnet_state(layers, width, seed) -> dict[str, torch.Tensor]:
    """A torchvision-format (3-channel) ResNet state dict from a seeded 2D MaskedResNet,
    standing in for torchvision's ImageNet file (no download); with an ``fc`` like theirs."""
    net = MaskedResNet(BasicBlock, layers, width=width, seed=seed)
    state = dict(net.state_dict())
    state["fc.weight"] = torch.randn(1000, 8 * width)
    state["fc.bias"] = torch.zeros(1000)
    return state


def test_planes_backbone__loads_a_2d_resnet_state_and_each_view_is_that_network():
    state = _seeded_resnet_state([1, 1, 1, 1], width=8, seed=42)
    planes = MaskedResNetPlanes(BasicBlock, [1, 1, 1, 1], in_channels=1, width=8, seed=0)
    planes.load_imagenet_state(dict(state))
    flat = MaskedResNet(BasicBlock, [1, 1, 1, 1], in_channels=1, width=8, seed=0)
    flat.load_imagenet_state(dict(state))
    torch.testing.assert_close(planes.conv1.weight, state["conv1.weight"].sum(1, keepdim=True))
    assert torch.equal(planes.layer4[0].conv2.weight, state["layer4.0.conv2.weight"])
    planes.eval(), flat.eval()
    mask = random_blobs(2, 16, 3).float()
    x = torch.rand(2, 1, 16, 16, 16) * mask
    idx = plane_indices(mask, (16, 16, 16), 2)
    with torch.inference_mode():
        z = planes(x, mask).view(2, 3, 64)
        expected = flat(planes_of(x, idx), planes_of(mask, idx)).view(3, 2, 64).transpose(0, 1)
    torch.testing.assert_close(z, expected)
    with pytest.raises(KeyError):  # not a ResNet's state: the registry turns it into a message
        planes.load_imagenet_state({"weight": torch.zeros(1)})


@pytest.fixture()
def torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    return tmp_path


def test_segment_encoder__planes_imagenet_reads_resnet18_s_cached_file(torch_home):
    with pytest.raises(FileNotFoundError) as info:
        sr.SegmentEncoder("resnet18_planes", weights="imagenet")
    message = str(info.value)
    assert "resnet18-f37072fd.pth" in message
    path = imagenet_cache_path("resnet18")
    path.parent.mkdir(parents=True)
    torch.save(_seeded_resnet_state([2, 2, 2, 2], width=64, seed=9), path)

    enc = sr.SegmentEncoder("resnet18_planes", in_channels=1, weights="imagenet").eval()
    flat = sr.SegmentEncoder("resnet18", in_channels=1, weights="imagenet").eval()
    assert enc.config()["weights"] == "imagenet" and enc.embedding_dim == 1536
    assert torch.equal(enc.input_std, flat.input_std) and (enc.input_std != 1).all()
    mask = random_blobs(1, 16, 4)
    x = torch.rand(1, 1, 16, 16, 16)
    idx = plane_indices(mask, (16, 16, 16), 1)
    with torch.inference_mode():
        z = enc(x, mask).view(3, 512)
        expected = flat(planes_of(x, idx), planes_of(mask, idx))  # the 2D encoder on each plane
    torch.testing.assert_close(z, expected, rtol=1e-4, atol=1e-5)

    # the slices read the same file: their network is the 2D encoder's, weight for weight
    slices = sr.SegmentEncoder("resnet18_slices", in_channels=1, weights="imagenet")
    ours, theirs = slices.state_dict(), flat.state_dict()
    assert list(ours) == list(theirs) and all(torch.equal(ours[k], theirs[k]) for k in ours)

    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, path)  # not a resnet18
    with pytest.raises(ValueError, match="does not hold resnet18 weights"):
        sr.SegmentEncoder("resnet18_planes", weights="imagenet")


# ---------------------------------------------------------------------- checkpoints
@pytest.mark.parametrize(
    ("name", "cls"),
    [("resnet18_planes", MaskedResNetPlanes), ("resnet18_slices", MaskedResNetSlices)],
)
def test_save_encoder__planes_encoder_round_trips(tmp_path, name, cls):
    enc = sr.SegmentEncoder(name, in_channels=2, seed=4).eval()
    with torch.no_grad():  # weights no seed gives: the checkpoint must carry them
        enc.backbone.layer2[0].conv1.weight.mul_(1.5)
    path = sr.save_encoder(enc, tmp_path / "planes.pt")
    loaded = sr.load_encoder(path)
    assert loaded.config() == {**enc.config(), "weights": str(path)}
    assert loaded.spatial_dims == 3 and isinstance(loaded.backbone, cls)
    assert loaded.fingerprint() == enc.fingerprint()
    masks = random_blobs(2, 16, 8)
    x = torch.rand(2, 2, 16, 16, 16)
    with torch.inference_mode():
        assert torch.equal(loaded(x, masks), enc(x, masks))
    with pytest.raises(ValueError, match=f"backbone='{name}'"):  # not a 2D encoder's
        sr.SegmentEncoder("resnet18", in_channels=2, weights=path)


@pytest.mark.parametrize("name", NARROW)
def test_planes_encoder__trains_gradients_reach_the_stem(name):
    _register_narrow()
    enc = sr.SegmentEncoder(name, in_channels=1, seed=1).train()
    masks = random_blobs(4, 16, 2)
    z = enc(torch.rand(4, 1, 16, 16, 16), masks)
    z.square().mean().backward()
    grad = enc.backbone.conv1.weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert np.isfinite(z.detach().numpy()).all()
