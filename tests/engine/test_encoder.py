"""SegmentEncoder: identity with masks off, isolation with masks on, arguments.

ImageNet weights and the backbone registry: test_backbones.py; checkpoints: test_checkpoint.py.
"""

from __future__ import annotations

import pytest
import torch
import torchvision
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import napari_segrep as sr
from napari_segrep.engine.masking import MaskedBatchNorm2d

from ..conftest import NARROW_BACKBONE, blob_masks, register_narrow_backbone

# Tests where the model's size is irrelevant use the narrow test ResNet (same code path).
pytestmark = pytest.mark.usefixtures("narrow_backbone")


def _plain_backbone(name: str, seed: int, conv1: nn.Module | None = None) -> nn.Module:
    """torchvision's own model, built under the same seed, fc removed."""
    torch.manual_seed(seed)
    net = getattr(torchvision.models, name)(weights=None)
    net.fc = nn.Identity()
    if conv1 is not None:
        net.conv1 = conv1
    return net


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
@pytest.mark.parametrize("train", [False, True])
def test_segment_encoder__masks_off_is_the_torchvision_backbone_exactly(name, train):
    enc = sr.SegmentEncoder(name, in_channels=3, image_masking=False, feature_masking=False, seed=3)
    plain = _plain_backbone(name, seed=3)
    enc.train(train)
    plain.train(train)
    x = torch.randn(4, 3, 64, 64)
    assert torch.equal(enc(x), plain(x))
    # ...including the BatchNorm running statistics it leaves behind
    for a, b in zip(enc.backbone.modules(), plain.modules(), strict=True):
        if isinstance(b, nn.BatchNorm2d):
            assert torch.equal(a.running_mean, b.running_mean)


def test_segment_encoder__one_channel_masks_off_is_the_backbone_with_that_conv1():
    enc = sr.SegmentEncoder(in_channels=1, image_masking=False, feature_masking=False).eval()
    plain = _plain_backbone("resnet18", seed=0, conv1=enc.backbone.conv1).eval()
    x = torch.randn(2, 1, 48, 48)
    assert torch.equal(enc(x), plain(x))


@pytest.mark.parametrize("train", [False, True])
def test_segment_encoder__all_ones_mask_matches_the_plain_backbone(train):
    """With an all-ones mask, masking multiplies by 1 and masked BN sees every position, so the
    only difference is pooling: sum/count instead of adaptive average pooling, a float32
    rounding difference (~1e-7 relative), not a modelling one."""
    enc = sr.SegmentEncoder(in_channels=3, seed=5).train(train)
    plain = _plain_backbone("resnet18", seed=5).train(train)
    x = torch.randn(4, 3, 64, 64)
    ones = torch.ones(4, 1, 64, 64, dtype=torch.bool)
    torch.testing.assert_close(enc(x, ones), plain(x), rtol=1e-4, atol=1e-5)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), size=st.sampled_from([32, 45, 64]))
def test_segment_encoder__pixels_outside_the_mask_cannot_change_the_embedding(seed, size):
    enc = _shared_encoder()
    g = torch.Generator().manual_seed(seed)
    masks = blob_masks(3, size, seed)
    x = torch.rand(3, 1, size, size, generator=g)
    context = torch.randn(3, 1, size, size, generator=g) * 50
    y = torch.where(masks, x, context)
    with torch.inference_mode():
        assert torch.equal(enc(x, masks), enc(y, masks))


_ENCODER = None


def _shared_encoder():
    global _ENCODER
    if _ENCODER is None:
        _ENCODER = sr.SegmentEncoder(register_narrow_backbone(), in_channels=1, seed=11).eval()
    return _ENCODER


def test_segment_encoder__feature_masking_alone_lets_context_in_and_image_masking_stops_it():
    """Dual masking: without image masking, context reaches the first convolution."""
    masks = blob_masks(2, 64, 1)
    x = torch.rand(2, 1, 64, 64)
    y = torch.where(masks, x, torch.full_like(x, 5.0))
    only_features = sr.SegmentEncoder(NARROW_BACKBONE, image_masking=False).eval()
    assert not torch.allclose(only_features(x, masks), only_features(y, masks), atol=1e-4)
    both = sr.SegmentEncoder(NARROW_BACKBONE).eval()
    assert torch.equal(both(x, masks), both(y, masks))


@pytest.mark.parametrize("name", ["resnet18", "resnet50", NARROW_BACKBONE])
def test_segment_encoder__every_normalised_activation_is_zero_outside_its_grid_mask(name):
    enc = sr.SegmentEncoder(name, seed=2).eval()
    masks = blob_masks(2, 64, 3)
    seen = []

    def hook(module, args, output):
        mask = args[1]
        assert mask is not None
        seen.append(bool((output * (1 - mask)).abs().max() == 0))

    handles = [
        m.register_forward_hook(hook) for m in enc.modules() if isinstance(m, MaskedBatchNorm2d)
    ]
    with torch.no_grad():
        enc(torch.rand(2, 1, 64, 64) + 1, masks)
    for h in handles:
        h.remove()
    n_bn = sum(isinstance(m, MaskedBatchNorm2d) for m in enc.modules())
    assert len(seen) == n_bn and all(seen)


def test_segment_encoder__training_statistics_ignore_background_size():
    """Train mode: the same segments in 128 px or 192 px crops (offset by the deepest stride)
    give the same embeddings: background positions do not enter BN statistics.  Plain BN
    (feature masking off) sees more than twice as many zeros and differs.

    The segments stay > 32 px from the small crop's border: the grid masks grow by up to one cell
    per level (see masking.py), and that growth must not be cut by the small crop's edge."""
    g = torch.Generator().manual_seed(7)
    yy, xx = torch.meshgrid(torch.arange(128), torch.arange(128), indexing="ij")
    masks = torch.zeros(4, 1, 128, 128, dtype=torch.bool)
    for i in range(4):
        cy, cx = torch.randint(56, 72, (2,), generator=g)
        masks[i, 0] = (yy - cy) ** 2 + ((xx - cx) / (1 + i / 3)) ** 2 <= 10**2
    x = torch.rand(4, 1, 128, 128, generator=g)
    big_x = torch.zeros(4, 1, 192, 192)
    big_m = torch.zeros(4, 1, 192, 192, dtype=torch.bool)
    big_x[..., 32:160, 32:160] = x
    big_m[..., 32:160, 32:160] = masks
    masked = sr.SegmentEncoder(NARROW_BACKBONE, seed=4).train()
    torch.testing.assert_close(masked(x, masks), masked(big_x, big_m), rtol=1e-4, atol=1e-5)
    plain_bn = sr.SegmentEncoder(NARROW_BACKBONE, seed=4, feature_masking=False).train()
    assert not torch.allclose(plain_bn(x, masks), plain_bn(big_x, big_m), rtol=1e-2, atol=1e-3)


def test_segment_encoder__one_pixel_segment_gets_a_finite_nonzero_embedding():
    enc = _shared_encoder()
    masks = torch.zeros(1, 1, 64, 64, dtype=torch.bool)
    masks[0, 0, 63, 0] = True  # corner pixel: smaller than the stride-32 cell
    with torch.no_grad():
        z = enc(torch.rand(1, 1, 64, 64) + 0.5, masks)
    assert torch.isfinite(z).all() and z.abs().sum() > 0


def test_segment_encoder__same_seed_same_model_other_seed_other_model():
    x = torch.rand(2, 1, 32, 32)
    m = blob_masks(2, 32)
    a = sr.SegmentEncoder(NARROW_BACKBONE, seed=1).eval()(x, m)
    b = sr.SegmentEncoder(NARROW_BACKBONE, seed=1).eval()(x, m)
    c = sr.SegmentEncoder(NARROW_BACKBONE, seed=2).eval()(x, m)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


@pytest.mark.parametrize("backbone", ["resnet18", NARROW_BACKBONE])
def test_segment_encoder__seed_does_not_touch_the_global_rng(backbone):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    sr.SegmentEncoder(backbone, in_channels=2, seed=9)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("channels", [2, 5])
def test_segment_encoder__multichannel_input(channels):
    enc = sr.SegmentEncoder(in_channels=channels).eval()
    z = enc(torch.rand(2, channels, 32, 32), blob_masks(2, 32))
    assert z.shape == (2, enc.embedding_dim) == (2, 512)


def test_segment_encoder__resnet50_dim_and_bad_arguments():
    assert sr.SegmentEncoder("resnet50").embedding_dim == 2048
    with pytest.raises(ValueError, match="unknown backbone"):
        sr.SegmentEncoder("vgg16")
    with pytest.raises(ValueError, match="in_channels"):
        sr.SegmentEncoder(in_channels=0)
    enc = sr.SegmentEncoder(in_channels=1)
    with pytest.raises(ValueError, match=r"images must be \(B, 1, H, W\)"):
        enc(torch.rand(2, 3, 32, 32), blob_masks(2, 32))
    with pytest.raises(ValueError, match="masks are required"):
        enc(torch.rand(2, 1, 32, 32))
    with pytest.raises(ValueError, match="masks must be"):
        enc(torch.rand(2, 1, 32, 32), torch.ones(2, 1, 16, 16))
    with pytest.raises(TypeError, match="weights must be"):
        sr.SegmentEncoder(weights=3)


def test_fingerprint__same_state_same_hash_any_change_another_and_the_cache_follows():
    a = sr.SegmentEncoder(backbone=NARROW_BACKBONE, seed=0)
    b = sr.SegmentEncoder(backbone=NARROW_BACKBONE, seed=0)
    first = a.fingerprint()
    assert first == b.fingerprint() == a.fingerprint()
    assert sr.SegmentEncoder(backbone=NARROW_BACKBONE, seed=1).fingerprint() != first
    with torch.no_grad():  # an in-place update (what an optimiser step does)
        next(a.parameters()).view(-1)[0] += 1e-6
    assert a.fingerprint() != first
    b.load_state_dict(a.state_dict())  # copied into b's tensors in place
    assert b.fingerprint() == a.fingerprint()
    a.eval()
    with torch.inference_mode():  # embedding changes nothing
        a(torch.rand(2, 1, 32, 32), torch.ones(2, 1, 32, 32))
    assert a.fingerprint() == b.fingerprint()
    assert a.record()["sha256"] == a.fingerprint()
    assert a.record()["backbone"] == NARROW_BACKBONE
