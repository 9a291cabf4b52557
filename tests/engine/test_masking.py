"""Mask pyramid, masked BatchNorm and masked pooling against direct computations."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from napari_segrep.engine.masking import (
    MaskedBatchNorm2d,
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
