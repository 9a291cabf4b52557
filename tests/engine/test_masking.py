"""Mask pyramid, masked BatchNorm and masked pooling against direct computations, in 2D and 3D."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from napari_segrep.engine.masking import (
    MaskedBatchNorm,
    MaskedBatchNorm2d,
    MaskedBatchNorm3d,
    binarize_mask,
    downsample_mask,
    mask_pyramid,
    masked_mean_pool,
)


@settings(max_examples=60, deadline=None)
@given(
    size=st.integers(8, 80),
    y=st.integers(0, 79),
    x=st.integers(0, 79),
    h=st.integers(1, 3),
    w=st.integers(1, 3),
)
def test_mask_pyramid__small_segment_keeps_an_active_cell_at_every_level(size, y, x, h, w):
    mask = torch.zeros(1, 1, size, size)
    y, x = y % size, x % size
    mask[..., y : y + h, x : x + w] = 1
    for level, m in enumerate(mask_pyramid(mask, levels=5)):
        assert m.sum() >= 1, f"segment lost at stride {2**level}"


def test_downsample_mask__matches_resnet_grids():
    for size in (1, 7, 32, 33, 64, 97):
        x = torch.zeros(1, 3, size, size)
        net_stem = nn.Conv2d(3, 1, 7, 2, 3)
        pooled = nn.MaxPool2d(3, 2, 1)(net_stem(x))
        m1 = downsample_mask(torch.ones(1, 1, size, size))
        assert m1.shape[-2:] == net_stem(x).shape[-2:]
        assert downsample_mask(m1).shape[-2:] == pooled.shape[-2:]
        assert downsample_mask(m1).shape[-2:] == nn.Conv2d(1, 1, 1, 2)(m1).shape[-2:]


def test_downsample_mask__cell_active_iff_its_window_touches_the_segment():
    mask = torch.zeros(1, 1, 9, 9)
    mask[0, 0, 4, 6] = 1
    small = downsample_mask(mask)[0, 0]
    # cell (i, j) covers rows 2i-1..2i+1 and columns 2j-1..2j+1
    expected = torch.zeros(5, 5)
    for i in range(5):
        for j in range(5):
            if 2 * i - 1 <= 4 <= 2 * i + 1 and 2 * j - 1 <= 6 <= 2 * j + 1:
                expected[i, j] = 1
    assert torch.equal(small, expected)


def test_binarize_mask__bool_and_float():
    m = torch.tensor([[[[0.0, 0.4, 0.6, 1.0]]]])
    assert binarize_mask(m).tolist() == [[[[0.0, 0.0, 1.0, 1.0]]]]
    assert binarize_mask(m > 0.5).tolist() == [[[[0.0, 0.0, 1.0, 1.0]]]]


def _random_batch(seed=0, c=4):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, c, 9, 11, generator=g) * 3 + 1
    mask = (torch.rand(3, 1, 9, 11, generator=g) > 0.6).float()
    return x, mask


def test_masked_batchnorm__training_stats_are_in_mask_stats():
    x, mask = _random_batch()
    bn = MaskedBatchNorm2d(4, momentum=0.5)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.0, 2.0, 0.5, -1.0]))
        bn.bias.copy_(torch.tensor([0.1, -0.2, 0.3, 0.0]))
    bn.train()
    y = bn(x, mask)

    # direct computation: gather the in-mask values of each channel
    sel = mask.expand_as(x).bool()
    values = torch.stack([x[:, c][sel[:, c]] for c in range(4)])  # (C, n)
    mean = values.mean(1)
    var = values.var(1, unbiased=False)
    expected = (x - mean[None, :, None, None]) / torch.sqrt(var[None, :, None, None] + bn.eps)
    expected = expected * bn.weight[None, :, None, None] + bn.bias[None, :, None, None]
    expected = expected * mask
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(bn.running_mean, 0.5 * mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(
        bn.running_var, 0.5 + 0.5 * values.var(1, unbiased=True), rtol=1e-5, atol=1e-6
    )
    assert int(bn.num_batches_tracked) == 1


def test_masked_batchnorm__out_of_mask_values_do_not_change_anything():
    x, mask = _random_batch(1)
    noisy = x + (1 - mask) * torch.randn_like(x) * 100
    a, b = MaskedBatchNorm2d(4).train(), MaskedBatchNorm2d(4).train()
    torch.testing.assert_close(a(x, mask), b(noisy, mask), rtol=0, atol=1e-5)
    torch.testing.assert_close(a.running_mean, b.running_mean)
    torch.testing.assert_close(a.running_var, b.running_var)


def test_masked_batchnorm__plain_batchnorm_would_be_skewed_by_background():
    """The reason masked BN exists: zeros outside the mask drag plain BN statistics."""
    x, mask = _random_batch(2)
    plain = nn.BatchNorm2d(4).train()(x * mask)
    masked = MaskedBatchNorm2d(4).train()(x * mask, mask)
    assert not torch.allclose(plain * mask, masked, atol=1e-2)


def test_masked_batchnorm__without_mask_is_batchnorm_exactly():
    x, _ = _random_batch(3)
    ref, ours = nn.BatchNorm2d(4), MaskedBatchNorm2d(4)
    ours.load_state_dict(ref.state_dict())
    for mode in (True, False):
        ref.train(mode)
        ours.train(mode)
        assert torch.equal(ref(x), ours(x))
    assert torch.equal(ref.running_mean, ours.running_mean)


def test_masked_batchnorm__eval_uses_running_stats_and_zeroes_outside():
    x, mask = _random_batch(4)
    bn = MaskedBatchNorm2d(4)
    with torch.no_grad():
        bn.running_mean.copy_(torch.tensor([1.0, 0.0, -1.0, 2.0]))
        bn.running_var.copy_(torch.tensor([4.0, 1.0, 0.25, 9.0]))
        bn.bias.fill_(0.7)
    bn.eval()
    y = bn(x, mask)
    expected = nn.functional.batch_norm(
        x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps
    )
    torch.testing.assert_close(y, expected * mask)
    assert (y[(mask == 0).expand_as(y)] == 0).all()  # not even the bias leaks outside
    assert int(bn.num_batches_tracked) == 0


def test_masked_mean_pool__is_in_mask_mean_and_safe_on_empty_masks():
    x, mask = _random_batch(5)
    mask[2] = 0
    pooled = masked_mean_pool(x, mask=mask)
    for b in range(2):
        sel = mask[b, 0].bool()
        torch.testing.assert_close(pooled[b], x[b][:, sel].mean(1))
    assert torch.equal(pooled[2], torch.zeros(4))


def test_masked_batchnorm__hand_written_backward_passes_gradcheck():
    from napari_segrep.engine.masking import _MaskedBatchNormFn

    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 7, 9, dtype=torch.float64, generator=g, requires_grad=True)
    m = (torch.rand(3, 1, 7, 9, generator=g) > 0.5).double()
    w = torch.randn(4, dtype=torch.float64, generator=g, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda x, w, b: _MaskedBatchNormFn.apply(x, m, w, b, m.sum(), 1e-5)[0], (x, w, b)
    )


def test_masked_batchnorm__gradients_match_autograd_of_the_direct_formula():
    x, mask = _random_batch(6)
    x.requires_grad_(True)
    bn = MaskedBatchNorm2d(4).train()
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.5, -0.5, 2.0, 0.3]))
    upstream = torch.randn_like(x)
    (bn(x, mask) * upstream).sum().backward()
    ours = (x.grad.clone(), bn.weight.grad.clone(), bn.bias.grad.clone())

    x2 = x.detach().clone().requires_grad_(True)
    w2 = bn.weight.detach().clone().requires_grad_(True)
    b2 = bn.bias.detach().clone().requires_grad_(True)
    n = mask.sum()
    mean = (x2 * mask).sum((0, 2, 3)) / n
    var = (((x2 - mean[None, :, None, None]) * mask) ** 2).sum((0, 2, 3)) / n
    y = (x2 - mean[None, :, None, None]) / torch.sqrt(var[None, :, None, None] + bn.eps)
    y = (y * w2[None, :, None, None] + b2[None, :, None, None]) * mask
    (y * upstream).sum().backward()
    for a, b in zip(ours, (x2.grad, w2.grad, b2.grad), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------- 3D: (B, C, D, H, W)
@settings(max_examples=60, deadline=None)
@given(
    shape=st.tuples(st.integers(1, 40), st.integers(1, 40), st.integers(1, 40)),
    at=st.tuples(st.integers(0, 39), st.integers(0, 39), st.integers(0, 39)),
)
def test_mask_pyramid__one_voxel_object_keeps_an_active_cell_at_every_level_3d(shape, at):
    mask = torch.zeros(1, 1, *shape)
    z, y, x = (a % s for a, s in zip(at, shape, strict=True))
    mask[0, 0, z, y, x] = 1
    pyramid = mask_pyramid(mask, levels=5)
    assert len(pyramid) == 6
    for level, m in enumerate(pyramid):
        assert m.ndim == 5 and m.sum() >= 1, f"object lost at stride {2**level}"


def test_downsample_mask__matches_3d_resnet_grids():
    for shape in ((1, 7, 9), (5, 32, 33), (16, 16, 16), (24, 7, 1)):
        x = torch.zeros(1, 1, *shape)
        stem = nn.Conv3d(1, 1, 7, 2, 3)(x)
        pooled = nn.MaxPool3d(3, 2, 1)(stem)
        m1 = downsample_mask(torch.ones(1, 1, *shape))
        assert m1.shape[2:] == stem.shape[2:]
        assert downsample_mask(m1).shape[2:] == pooled.shape[2:]
        assert downsample_mask(m1).shape[2:] == nn.Conv3d(1, 1, 1, 2)(m1).shape[2:]


def test_downsample_mask__3d_cell_active_iff_its_window_touches_the_object():
    mask = torch.zeros(1, 1, 7, 9, 9)
    mask[0, 0, 3, 4, 6] = 1
    small = downsample_mask(mask)[0, 0]
    expected = torch.zeros(4, 5, 5)
    for k in range(4):
        for i in range(5):
            for j in range(5):
                near = [2 * c - 1 <= p <= 2 * c + 1 for c, p in ((k, 3), (i, 4), (j, 6))]
                expected[k, i, j] = float(all(near))
    assert torch.equal(small, expected)


def test_downsample_mask__other_ranks_are_refused():
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\) or \(B, 1, D, H, W\)"):
        downsample_mask(torch.ones(1, 8, 8))


def _random_batch_3d(seed=0, c=4):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, c, 5, 7, 6, generator=g) * 3 + 1
    mask = (torch.rand(2, 1, 5, 7, 6, generator=g) > 0.6).float()
    return x, mask


def test_masked_batchnorm3d__training_stats_are_in_mask_stats():
    x, mask = _random_batch_3d()
    bn = MaskedBatchNorm3d(4, momentum=0.5)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.0, 2.0, 0.5, -1.0]))
        bn.bias.copy_(torch.tensor([0.1, -0.2, 0.3, 0.0]))
    y = bn.train()(x, mask)
    sel = mask.expand_as(x).bool()
    values = torch.stack([x[:, c][sel[:, c]] for c in range(4)])  # (C, n)
    mean, var = values.mean(1), values.var(1, unbiased=False)
    per_c = (1, 4, 1, 1, 1)
    expected = (x - mean.view(per_c)) / torch.sqrt(var.view(per_c) + bn.eps)
    expected = (expected * bn.weight.view(per_c) + bn.bias.view(per_c)) * mask
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(bn.running_mean, 0.5 * mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(
        bn.running_var, 0.5 + 0.5 * values.var(1, unbiased=True), rtol=1e-5, atol=1e-6
    )
    # eval: the running statistics, zero outside the mask (not even the bias)
    y = bn.eval()(x, mask)
    torch.testing.assert_close(
        y,
        nn.functional.batch_norm(
            x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps
        )
        * mask,
    )
    assert (y[(mask == 0).expand_as(y)] == 0).all()


def test_masked_batchnorm3d__out_of_mask_values_do_not_change_anything():
    x, mask = _random_batch_3d(1)
    noisy = x + (1 - mask) * torch.randn_like(x) * 100
    a, b = MaskedBatchNorm3d(4).train(), MaskedBatchNorm3d(4).train()
    torch.testing.assert_close(a(x, mask), b(noisy, mask), rtol=0, atol=1e-5)
    torch.testing.assert_close(a.running_var, b.running_var)


def test_masked_batchnorm3d__without_mask_is_batchnorm3d_exactly_with_its_keys():
    x, _ = _random_batch_3d(3)
    ref, ours = nn.BatchNorm3d(4), MaskedBatchNorm3d(4)
    assert list(ours.state_dict()) == list(ref.state_dict())
    ours.load_state_dict(ref.state_dict())
    for mode in (True, False):
        assert torch.equal(ref.train(mode)(x), ours.train(mode)(x))
    assert torch.equal(ref.running_var, ours.running_var)
    with pytest.raises(ValueError, match="expected 5D input"):
        ours(x[:, :, 0])  # a 4D activation is not a volume
    assert isinstance(ours, MaskedBatchNorm) and isinstance(MaskedBatchNorm2d(4), MaskedBatchNorm)


def test_masked_batchnorm__mask_of_another_grid_is_refused():
    x, mask = _random_batch_3d(4)
    with pytest.raises(ValueError, match="does not match the feature map"):
        MaskedBatchNorm3d(4).train()(x, mask[:, :, :-1])
    with pytest.raises(ValueError, match="does not match the feature map"):
        MaskedBatchNorm2d(4).train()(x[:, :, 0], mask)


def test_masked_mean_pool__3d_is_in_mask_mean_and_safe_on_empty_masks():
    x, mask = _random_batch_3d(5)
    mask[1] = 0
    pooled = masked_mean_pool(x, mask=mask)
    torch.testing.assert_close(pooled[0], x[0][:, mask[0, 0].bool()].mean(1))
    assert torch.equal(pooled[1], torch.zeros(4))


def test_masked_batchnorm3d__hand_written_backward_passes_gradcheck():
    from napari_segrep.engine.masking import _MaskedBatchNormFn

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 3, 4, 5, dtype=torch.float64, generator=g, requires_grad=True)
    m = (torch.rand(2, 1, 3, 4, 5, generator=g) > 0.5).double()
    w = torch.randn(3, dtype=torch.float64, generator=g, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda x, w, b: _MaskedBatchNormFn.apply(x, m, w, b, m.sum(), 1e-5)[0], (x, w, b)
    )


def test_masked_batchnorm__synced_statistics_reduce_every_spatial_axis():
    """The DDP path's sums (one process here: the all-reduce is the identity) give the in-mask
    mean and variance of the whole batch, in 3D as in 2D."""
    from napari_segrep.engine.masking import _synced_stats

    for x, mask in (_random_batch_3d(7), _random_batch(7)):
        mean, var, count = _synced_stats(x, mask)
        values = x.transpose(0, 1)[:, mask.transpose(0, 1)[0].bool()]  # (C, n)
        assert count == values.shape[1]
        torch.testing.assert_close(mean, values.mean(1), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(var, values.var(1, unbiased=False), rtol=1e-4, atol=1e-4)
