"""The native 3D dual-masked encoder (resnet18_3d): context invariance and neighbour isolation
(property tests, as in 2D), the plain network without masks, I3D inflation of 2D ImageNet
weights, checkpoints, the registry.

Tests where the model's size is irrelevant use the narrow 3D test ResNet (same code path) on
16-24 voxel crops."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
import torchvision
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torchvision.models.resnet import BasicBlock

import napari_segrep as sr
from napari_segrep.engine.backbones import (
    BACKBONES,
    build_backbone,
    get_backbone,
    imagenet_cache_path,
)
from napari_segrep.engine.backbones.resnet import MaskedResNet
from napari_segrep.engine.backbones.resnet3d import MaskedResNet3d, inflate_kernel
from napari_segrep.engine.checkpoint import load_checkpoint
from napari_segrep.engine.masking import MaskedBatchNorm3d

from ..conftest import blob_masks_3d, register_narrow_backbone_3d

pytestmark = pytest.mark.usefixtures("narrow_backbone_3d")

_ENCODERS: dict = {}


def _encoder(**kwargs) -> sr.SegmentEncoder:
    """A dual-masked narrow 3D encoder in eval mode, built once per configuration."""
    key = tuple(sorted(kwargs.items()))
    if key not in _ENCODERS:
        name = register_narrow_backbone_3d()
        _ENCODERS[key] = sr.SegmentEncoder(name, in_channels=1, seed=11, **kwargs).eval()
    return _ENCODERS[key]


def _ball(shape, centre, radii) -> torch.Tensor:
    """(D, H, W) bool ellipsoid."""
    zz, yy, xx = torch.meshgrid(*(torch.arange(s) for s in shape), indexing="ij")
    (cz, cy, cx), (rz, ry, rx) = centre, radii
    return ((zz - cz) / rz) ** 2 + ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1


# ---------------------------------------------------------------------- the registry
def test_resnet18_3d__registered_as_a_3d_backbone_reading_resnet18_s_imagenet_file():
    for name, depth in (("resnet18_3d", "resnet18"), ("resnet34_3d", "resnet34")):
        spec = get_backbone(name)
        assert spec.spatial_dims == 3 and spec.imagenet_url == BACKBONES[depth].imagenet_url
        assert imagenet_cache_path(name) == imagenet_cache_path(depth)
    enc = sr.SegmentEncoder("resnet18_3d", in_channels=1)
    assert enc.spatial_dims == 3 and enc.embedding_dim == 512
    # torchvision's module names, hence its state-dict keys (fc dropped), every conv 3D
    theirs = [k for k in torchvision.models.resnet18().state_dict() if not k.startswith("fc.")]
    ours = enc.backbone.state_dict()
    assert list(ours) == theirs
    assert all(v.ndim == 5 for k, v in ours.items() if "conv" in k or "downsample.0" in k)
    assert sum(isinstance(m, MaskedBatchNorm3d) for m in enc.modules()) == 20
    assert not any(isinstance(m, nn.Conv2d | nn.BatchNorm2d) for m in enc.modules())


def test_segment_encoder_3d__takes_volumes_and_refuses_planes():
    enc = _encoder()
    with pytest.raises(ValueError, match=r"images must be \(B, 1, D, H, W\)"):
        enc(torch.rand(2, 1, 16, 16), torch.ones(2, 1, 16, 16, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"masks must be \(B, 1, D, H, W\)"):
        enc(torch.rand(2, 1, 16, 16, 16), torch.ones(2, 1, 16, 16, dtype=torch.bool))


def test_masked_resnet3d__bad_width_or_layers():
    with pytest.raises(ValueError, match="width"):
        MaskedResNet3d([1, 1, 1, 1], width=0)
    with pytest.raises(ValueError, match="layers"):
        MaskedResNet3d([1, 1, 1])


def test_masked_resnet3d__seeded_init_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a = MaskedResNet3d([1, 1, 1, 1], width=4, seed=5)
    assert torch.equal(torch.rand(3), expected)
    b = MaskedResNet3d([1, 1, 1, 1], width=4, seed=5)
    c = MaskedResNet3d([1, 1, 1, 1], width=4, seed=6)
    assert torch.equal(a.layer2[0].conv1.weight, b.layer2[0].conv1.weight)
    assert not torch.equal(a.layer2[0].conv1.weight, c.layer2[0].conv1.weight)
    # torchvision's scheme: Kaiming-normal (fan_out) convolutions, BatchNorm 1 and 0
    w = a.layer3[0].conv2.weight
    fan_out = w.shape[0] * w[0, 0].numel()
    assert abs(float(w.std()) - (2 / fan_out) ** 0.5) < 0.1 * (2 / fan_out) ** 0.5
    assert torch.equal(a.layer1[0].bn2.weight, torch.ones(4)) and not a.bn1.bias.any()


# ---------------------------------------------------------------------- the guarantees
@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 10_000), size=st.sampled_from([16, 19, 24]))
def test_segment_encoder_3d__voxels_outside_the_mask_cannot_change_the_embedding(seed, size):
    """Any change to any voxel outside the object leaves its embedding bitwise equal: in eval
    mode, and in training mode (statistics of the batch) with the same running statistics left
    behind."""
    enc = _encoder()
    g = torch.Generator().manual_seed(seed)
    masks = blob_masks_3d(2, size, seed)
    x = torch.rand(2, 1, size, size, size, generator=g)
    context = torch.randn(2, 1, size, size, size, generator=g) * 50
    y = torch.where(masks, x, context)
    with torch.inference_mode():
        assert torch.equal(enc(x, masks), enc(y, masks))
    a, b = copy.deepcopy(enc).train(), copy.deepcopy(enc).train()
    with torch.no_grad():
        assert torch.equal(a(x, masks), b(y, masks))
    assert torch.equal(a.backbone.layer4[0].bn2.running_var, b.backbone.layer4[0].bn2.running_var)


def test_segment_encoder_3d__batch_statistics_ignore_the_background_size():
    """Train mode: the same objects in 64- or 96-voxel crops (more than 3 times the background
    voxels, filled with context) give the same embeddings and running statistics: background
    voxels do not enter BatchNorm statistics.  Plain BatchNorm (feature masking off) sees the
    extra background and differs.

    The objects lie within the first 32 voxels of every axis: the grid masks grow by up to 31
    voxels at stride 32 (see masking.py), and that growth must not be cut by the small crop's
    edge."""
    name = register_narrow_backbone_3d()
    masks = torch.stack(
        [
            _ball((64,) * 3, (16, 20, 12), (4.5, 3.5, 5.5)),
            _ball((64,) * 3, (27, 5, 29), (3.5, 5.5, 3)),
        ]
    )[:, None]
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 1, 64, 64, 64, generator=g)
    big_x = torch.randn(2, 1, 96, 96, 96, generator=g) * 50
    big_m = torch.zeros(2, 1, 96, 96, 96, dtype=torch.bool)
    big_x[..., :64, :64, :64] = x
    big_m[..., :64, :64, :64] = masks
    small, big = (sr.SegmentEncoder(name, seed=4).train() for _ in range(2))
    torch.testing.assert_close(small(x, masks), big(big_x, big_m), rtol=1e-4, atol=1e-5)
    for a, b in zip(small.modules(), big.modules(), strict=True):
        if isinstance(a, MaskedBatchNorm3d):
            torch.testing.assert_close(a.running_var, b.running_var, rtol=1e-4, atol=1e-6)
    # plain BatchNorm: 16-voxel crops or the same in 32-voxel ones differ
    plain_bn = sr.SegmentEncoder(name, seed=4, feature_masking=False).train()
    masks = blob_masks_3d(2, 16, 1)
    x = torch.rand(2, 1, 16, 16, 16, generator=g)
    padded_x, padded_m = F.pad(x, (0, 16) * 3), F.pad(masks, (0, 16) * 3)
    assert not torch.allclose(
        plain_bn(x, masks), plain_bn(padded_x, padded_m), rtol=1e-2, atol=1e-3
    )


@settings(max_examples=10, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    offset=st.tuples(st.integers(-9, 9), st.integers(-9, 9), st.integers(-9, 9)),
    brightness=st.floats(0.0, 100.0),
)
def test_segment_encoder_3d__a_neighbour_in_the_crop_or_the_batch_changes_nothing(
    seed, offset, brightness
):
    """Neighbour isolation (eval): a second object inside the first one's crop (touching or
    overlapping its bounding box, any brightness), or another crop in the same batch, leaves
    the first object's embedding equal (bitwise for the same batch size)."""
    enc = _encoder()
    size = 20
    g = torch.Generator().manual_seed(seed)
    first = _ball((size,) * 3, (10, 10, 10), (4.5, 5.5, 3.5))
    neighbour = _ball((size,) * 3, tuple(10 + o for o in offset), (4, 4, 4)) & ~first
    image = torch.rand(1, 1, size, size, size, generator=g)
    crowded = torch.where(neighbour, torch.full_like(image, brightness), image * 0)
    crowded = torch.where(first, image, crowded)
    mask = first[None, None]
    others = blob_masks_3d(2, size, seed)
    noise = torch.rand(2, 1, size, size, size, generator=g)
    with torch.inference_mode():
        alone = enc(image * mask, mask)
        in_crowd = enc(crowded, mask)
        batch_a = enc(torch.cat([image * mask, noise[:1]]), torch.cat([mask, others[:1]]))
        batch_b = enc(torch.cat([crowded, noise[1:] * 7]), torch.cat([mask, others[1:]]))
    assert torch.equal(alone, in_crowd)
    assert torch.equal(batch_a[:1], batch_b[:1])  # whatever else the batch holds
    # another batch size may take another convolution algorithm: float rounding only
    torch.testing.assert_close(alone, batch_a[:1], rtol=1e-5, atol=1e-6)


def test_segment_encoder_3d__feature_masking_alone_lets_context_in_and_image_masking_stops_it():
    """Dual masking in 3D: without image masking, context reaches the first convolution."""
    masks = blob_masks_3d(2, 16, 1)
    x = torch.rand(2, 1, 16, 16, 16)
    y = torch.where(masks, x, torch.full_like(x, 5.0))
    only_features = _encoder(image_masking=False)
    assert not torch.allclose(only_features(x, masks), only_features(y, masks), atol=1e-4)
    assert torch.equal(_encoder()(x, masks), _encoder()(y, masks))


def test_segment_encoder_3d__every_normalised_activation_is_zero_outside_its_grid_mask():
    enc = _encoder()
    seen = []

    def hook(module, args, output):
        mask = args[1]
        assert mask is not None and mask.shape[2:] == output.shape[2:]
        seen.append(bool((output * (1 - mask)).abs().max() == 0))

    bns = [m for m in enc.modules() if isinstance(m, MaskedBatchNorm3d)]
    handles = [m.register_forward_hook(hook) for m in bns]
    with torch.no_grad():
        enc(torch.rand(2, 1, 24, 24, 24) + 1, blob_masks_3d(2, 24, 3))
    for h in handles:
        h.remove()
    assert len(seen) == len(bns) == 12 and all(seen)  # stem, 2 per block, 3 shortcuts


@pytest.mark.parametrize("corner", [(0, 0, 0), (15, 0, 15), (7, 8, 9)])
def test_segment_encoder_3d__one_voxel_object_gets_a_finite_nonzero_embedding(corner):
    masks = torch.zeros(1, 1, 16, 16, 16, dtype=torch.bool)
    masks[(0, 0, *corner)] = True
    with torch.no_grad():
        z = _encoder()(torch.rand(1, 1, 16, 16, 16) + 0.5, masks)
    assert torch.isfinite(z).all() and z.abs().sum() > 0


# ---------------------------------------------------------------------- without masks
def _plain_forward(net: MaskedResNet3d, x: torch.Tensor, *, training: bool) -> torch.Tensor:
    """The plain 3D ResNet composed by hand from ``net``'s parameters: conv3d, batch_norm,
    relu, max_pool3d, residual additions, global average pooling."""

    def bn(m, t):
        return F.batch_norm(
            t, m.running_mean, m.running_var, m.weight, m.bias, training, m.momentum, m.eps
        )

    def conv(m, t):
        return F.conv3d(t, m.weight, None, m.stride, m.padding)

    x = F.max_pool3d(F.relu(bn(net.bn1, conv(net.conv1, x))), 3, 2, 1)
    for stage in (net.layer1, net.layer2, net.layer3, net.layer4):
        for block in stage:
            out = F.relu(bn(block.bn1, conv(block.conv1, x)))
            out = bn(block.bn2, conv(block.conv2, out))
            if block.downsample is not None:
                x = bn(block.downsample[1], conv(block.downsample[0], x))
            x = F.relu(out + x)
    return x.mean(dim=(2, 3, 4))


@pytest.mark.parametrize("train", [False, True])
def test_masked_resnet3d__without_a_mask_is_the_plain_3d_network(train):
    net = MaskedResNet3d([2, 1, 1, 1], in_channels=2, width=4, seed=1).train(train)
    with torch.no_grad():  # non-trivial running statistics
        for m in net.modules():
            if isinstance(m, MaskedBatchNorm3d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 2, 19, 16, 21)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    ours = net(x)
    after = {k: v.clone() for k, v in net.state_dict().items()}
    net.load_state_dict(state)  # same running statistics before each pass
    expected = _plain_forward(net, x, training=train)
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-6)
    for key, value in net.state_dict().items():  # the same running statistics left behind
        if key.endswith(("running_mean", "running_var")):
            torch.testing.assert_close(after[key], value)
    # the encoder with both maskings off is this network
    enc = sr.SegmentEncoder(
        register_narrow_backbone_3d(), in_channels=1, image_masking=False, feature_masking=False
    ).eval()
    x = torch.rand(2, 1, 16, 16, 16)
    torch.testing.assert_close(enc(x), _plain_forward(enc.backbone, x, training=False))


def test_segment_encoder_3d__all_ones_mask_matches_the_plain_network():
    enc = _encoder()
    x = torch.rand(2, 1, 16, 16, 16)
    ones = torch.ones(2, 1, 16, 16, 16, dtype=torch.bool)
    plain = _plain_forward(enc.backbone, x, training=False)
    torch.testing.assert_close(enc(x, ones), plain, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------- inflation (I3D)
def _imagenet_like_state(width: int = 8, seed: int = 3) -> dict[str, torch.Tensor]:
    """A 2D ResNet state in torchvision's format (RGB conv1, fc included), from a seeded 2D
    MaskedResNet: stands in for the ImageNet file without a download."""
    net2d = MaskedResNet(BasicBlock, [1, 1, 1, 1], width=width, seed=seed)
    with torch.no_grad():
        for m in net2d.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
                m.bias.uniform_(-1, 1)
    state = dict(net2d.state_dict())
    state["fc.weight"], state["fc.bias"] = torch.zeros(10, 8 * width), torch.zeros(10)
    return state


def test_inflate_kernel__a_z_constant_volume_gives_the_2d_convolution_in_interior_planes():
    w2d = torch.randn(5, 2, 3, 3)
    w3d = inflate_kernel(w2d)
    assert w3d.shape == (5, 2, 3, 3, 3)
    torch.testing.assert_close(w3d.sum(2), w2d)
    image = torch.randn(1, 2, 11, 13)
    volume = image[:, :, None].expand(1, 2, 9, 11, 13)
    out = F.conv3d(volume, w3d, padding=1)
    torch.testing.assert_close(
        out[:, :, 1:-1],
        F.conv2d(image, w2d, padding=1)[:, :, None].expand(1, 5, 7, 11, 13),
        rtol=1e-5,
        atol=1e-5,
    )
    with pytest.raises(ValueError, match="2D convolution kernel"):
        inflate_kernel(w3d)


@pytest.mark.parametrize("channels", [1, 2])
def test_masked_resnet3d__load_imagenet_state_inflates_the_2d_network(channels):
    state = _imagenet_like_state()
    net = MaskedResNet3d([1, 1, 1, 1], in_channels=channels, width=8, seed=0)
    net.load_imagenet_state(state)
    # the 2D network with its first convolution adapted to the channels, as the 2D backbone
    net2d = MaskedResNet(BasicBlock, [1, 1, 1, 1], in_channels=channels, width=8)
    net2d.load_imagenet_state(state)
    # BatchNorm copied; every kernel inflated
    assert torch.equal(net.layer3[0].bn2.running_var, state["layer3.0.bn2.running_var"])
    assert torch.equal(net.layer2[0].downsample[1].bias, state["layer2.0.downsample.1.bias"])
    torch.testing.assert_close(net.layer4[0].conv1.weight.sum(2), state["layer4.0.conv1.weight"])
    torch.testing.assert_close(net.conv1.weight.sum(2), net2d.conv1.weight)
    # the stem (conv, BN, ReLU) on a z-constant volume is the 2D stem in interior planes:
    # output plane i sees input planes 2i-3 .. 2i+3
    image = torch.rand(1, channels, 32, 32)
    volume = image[:, :, None].expand(1, channels, 24, 32, 32).contiguous()
    net.eval()
    net2d.eval()
    with torch.no_grad():
        stem3d = net.relu(net.bn1(net.conv1(volume)))
        stem2d = net2d.relu(net2d.bn1(net2d.conv1(image)))
    interior = stem3d[:, :, 2:-2]  # output planes 2..9 of 12
    assert interior.shape[2] == 8
    torch.testing.assert_close(
        interior, stem2d[:, :, None].expand_as(interior), rtol=1e-4, atol=1e-5
    )
    assert not torch.allclose(stem3d[:, :, 0], stem2d, atol=1e-3)  # the padding is seen there


def test_masked_resnet3d__load_imagenet_state_of_another_architecture_is_refused():
    net = MaskedResNet3d([1, 1, 1, 1], in_channels=1, width=8)
    with pytest.raises(ValueError, match=r"has shape .* where this network's is"):
        net.load_imagenet_state(_imagenet_like_state(width=16))
    deeper = MaskedResNet3d([2, 1, 1, 1], in_channels=1, width=8)
    with pytest.raises(ValueError, match=r"missing \['layer1.1"):
        deeper.load_imagenet_state(_imagenet_like_state())


@pytest.fixture()
def torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    return tmp_path


def test_segment_encoder_3d__imagenet_missing_names_resnet18_s_file_and_command(torch_home):
    with pytest.raises(FileNotFoundError) as info:
        sr.SegmentEncoder("resnet18_3d", weights="imagenet")
    message = str(info.value)
    path = imagenet_cache_path("resnet18")
    assert str(path) in message and "resnet18-f37072fd.pth" in message
    # the command the CLI accepts (resnet18's file), not a --backbone it would refuse
    assert "`napari-segrep weights download imagenet`" in message
    assert "torchvision's resnet18 IMAGENET1K_V1 weights, which resnet18_3d is built from" in (
        message
    )


def test_segment_encoder_3d__imagenet_loads_resnet18_s_file_inflated(torch_home):
    torch.manual_seed(0)
    reference = torchvision.models.resnet18()
    path = imagenet_cache_path("resnet18")
    path.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), path)
    enc = sr.SegmentEncoder("resnet18_3d", in_channels=1, weights="imagenet")
    conv = enc.backbone.conv1.weight
    assert conv.shape == (64, 1, 7, 7, 7)
    torch.testing.assert_close(conv, inflate_kernel(reference.conv1.weight.sum(1, keepdim=True)))
    torch.testing.assert_close(
        enc.backbone.layer3[0].conv1.weight, inflate_kernel(reference.layer3[0].conv1.weight)
    )
    assert enc.config()["weights"] == "imagenet" and (enc.input_std != 1).all()
    # resnet34's file where resnet18's should be: refused, naming the file the user must fix
    torch.save(torchvision.models.resnet34().state_dict(), path)
    with pytest.raises(ValueError, match="does not hold resnet18 weights"):
        sr.SegmentEncoder("resnet18_3d", weights="imagenet")


# ---------------------------------------------------------------------- checkpoints
def test_save_encoder__3d_encoder_round_trips_without_pickles(tmp_path):
    name = register_narrow_backbone_3d()
    enc = sr.SegmentEncoder(name, in_channels=2, seed=7).train()
    x, m = torch.rand(3, 2, 16, 16, 16), blob_masks_3d(3, 16, 2)
    enc(x, m)  # running statistics move away from their initial values
    enc.eval()
    path = sr.save_encoder(enc, tmp_path / "enc3d.pt")
    payload = torch.load(path, weights_only=True)  # plain values only: no pickled objects
    assert payload["encoder_config"]["backbone"] == name
    assert payload["encoder"]["backbone.conv1.weight"].shape == (8, 2, 7, 7, 7)
    loaded = sr.load_encoder(path)
    assert loaded.spatial_dims == 3 and loaded.fingerprint() == enc.fingerprint()
    assert torch.equal(loaded(x, m), enc(x, m))
    again = sr.SegmentEncoder(name, in_channels=2, weights=path).eval()
    assert torch.equal(again(x, m), enc(x, m))
    assert load_checkpoint(path)["kind"] == "encoder"
    # a 2D encoder's file is refused by a 3D encoder, with the fix
    flat = sr.save_encoder(sr.SegmentEncoder("resnet18", in_channels=2), tmp_path / "2d.pt")
    with pytest.raises(ValueError, match=r"backbone='resnet18'.*load_encoder"):
        sr.SegmentEncoder(name, in_channels=2, weights=flat)


def test_build_backbone__resnet18_3d_at_full_width_embeds_a_crop():
    net = build_backbone("resnet18_3d", in_channels=1, seed=0).eval()
    mask = blob_masks_3d(1, 32, 5).float()
    with torch.no_grad():
        z = net(torch.rand(1, 1, 32, 32, 32) * mask, mask)
    assert z.shape == (1, 512) and torch.isfinite(z).all() and (z >= 0).all()


# ---------------------------------------------------------------------- the batch pipeline
def test_batch_encoder__a_3d_encoder_runs_in_its_memory_format_with_the_same_embeddings():
    from napari_segrep.engine.pipeline import MEMORY_FORMAT_3D, BatchEncoder

    enc = sr.SegmentEncoder(register_narrow_backbone_3d(), in_channels=1, seed=2).train()
    x, m = torch.rand(3, 1, 16, 16, 16), blob_masks_3d(3, 16, 4)
    with torch.no_grad():
        expected = enc.eval()(x, m)
    enc.train()
    with BatchEncoder(enc, torch.device("cpu")) as encode:
        z = encode(x, m)
        weight = enc.backbone.layer2[0].conv1.weight
        assert weight.is_contiguous(memory_format=MEMORY_FORMAT_3D)
    assert enc.training  # its mode given back
    torch.testing.assert_close(torch.from_numpy(z), expected, rtol=1e-5, atol=1e-6)


def test_batch_encoder__4d_and_5d_weights_each_get_their_fast_layout():
    """A 3D backbone may hold 2D convolutions (planes of a volume) beside 3D ones: each weight
    gets the layout of its rank, none is refused."""
    from napari_segrep.engine.pipeline import MEMORY_FORMAT, MEMORY_FORMAT_3D, BatchEncoder

    class Mixed(nn.Module):
        def __init__(self):
            super().__init__()
            self.flat = nn.Conv2d(1, 4, 3)
            self.deep = nn.Conv3d(1, 4, 3)

        def forward(self, images, masks):
            planes = self.flat(images[:, :, images.shape[2] // 2]).mean(dim=(2, 3))
            return planes + self.deep(images * masks).mean(dim=(2, 3, 4))

    net = Mixed()
    x, m = torch.rand(2, 1, 8, 8, 8), torch.ones(2, 1, 8, 8, 8)
    with torch.no_grad():
        expected = net(x, m)
    with BatchEncoder(net, torch.device("cpu")) as encode:
        z = encode(x, m)
    assert net.flat.weight.is_contiguous(memory_format=MEMORY_FORMAT)
    assert net.deep.weight.is_contiguous(memory_format=MEMORY_FORMAT_3D)
    torch.testing.assert_close(torch.from_numpy(z), expected, rtol=1e-5, atol=1e-6)
