"""Mask arithmetic for the dual-masking encoder, in 2 or 3 spatial dimensions.

Four pieces, each a small pure unit, each taking 2D ``(B, C, H, W)`` and 3D ``(B, C, D, H, W)``
tensors alike:

- :func:`binarize_mask` turns a bool/float mask into the 0/1 float tensor the network multiplies by;
- :func:`downsample_mask` brings a mask from one feature grid to the next (stride 2 along every
  spatial axis), and :func:`mask_pyramid` gives the masks of every grid;
- :class:`MaskedBatchNorm2d` (4D activations) and :class:`MaskedBatchNorm3d` (5D) normalise with
  statistics from in-mask positions only and zero every position outside the mask; they share
  one implementation (:class:`MaskedBatchNorm`: statistics over the batch and every spatial axis,
  the hand-written backward, the statistics summed over processes under DDP);
- :func:`masked_mean_pool` averages a feature map over in-mask positions only.

How masks are brought to a feature grid
---------------------------------------
Every stride-2 operation of a ResNet (the 7x7 stem convolution, the 3x3 max-pool, the 3x3 and
1x1 stride-2 convolutions of the first block of stages 2-4; 7x7x7, 3x3x3 and 1x1x1 in 3D) maps an
input of height ``H`` to ``floor((H - 1) / 2) + 1`` cells, cell ``i`` being centred on input row
``2 i``.  We downsample a mask with a 3x3 (3x3x3 in 3D), stride-2, padding-1 **max-pool**: the
same grid, cell ``i`` active when any mask pixel lies in rows ``2i-1 .. 2i+1`` (and likewise
along every other axis).  Because the 3-wide windows overlap and cover every input pixel, a
non-empty mask stays non-empty at every level: a 1-pixel (1-voxel) segment keeps at least one
active cell at stride 32.  Nearest or average downsampling would drop thin or small segments.

The active cells at a coarse level can extend slightly past the segment's outline.  That does not
let context in: every activation is zeroed outside the mask of its own level, so by induction the
values in those boundary cells are computed only from in-mask values (and zeros).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .distributed import all_reduce_sum, world_size

__all__ = [
    "MaskedBatchNorm",
    "MaskedBatchNorm2d",
    "MaskedBatchNorm3d",
    "binarize_mask",
    "downsample_mask",
    "mask_pyramid",
    "masked_mean_pool",
]


def binarize_mask(masks: Tensor, *, dtype: torch.dtype = torch.float32) -> Tensor:
    """Return a ``{0, 1}`` mask of ``dtype``.

    Parameters
    ----------
    masks : (B, 1, H, W) or (B, 1, D, H, W) Tensor
        bool, or numeric where values ``> 0.5`` are inside the segment.
    dtype : torch.dtype
        dtype of the result (that of the activations it multiplies).
    """
    if masks.dtype != torch.bool:
        masks = masks > 0.5
    return masks.to(dtype)


def downsample_mask(mask: Tensor) -> Tensor:
    """Bring a ``(B, 1, H, W)`` or ``(B, 1, D, H, W)`` 0/1 mask to the next stride-2 feature grid.

    3x3 (3x3x3) max-pool, stride 2, padding 1 along every spatial axis: the output grid is the
    one of every stride-2 layer of a ResNet, and a non-empty mask stays non-empty (see the module
    docstring).
    """
    if mask.ndim == 4:
        return F.max_pool2d(mask, kernel_size=3, stride=2, padding=1)
    if mask.ndim == 5:
        return F.max_pool3d(mask, kernel_size=3, stride=2, padding=1)
    raise ValueError(
        f"a mask must be (B, 1, H, W) or (B, 1, D, H, W), got shape {tuple(mask.shape)}"
    )


def mask_pyramid(mask: Tensor, *, levels: int) -> list[Tensor]:
    """Masks for strides ``1, 2, 4, ..., 2**levels``: ``result[k]`` has stride ``2**k``.

    ``mask`` is ``(B, 1, H, W)`` or ``(B, 1, D, H, W)``; every level has its number of dims.
    """
    pyramid = [mask]
    for _ in range(levels):
        pyramid.append(downsample_mask(pyramid[-1]))
    return pyramid


def masked_mean_pool(x: Tensor, *, mask: Tensor) -> Tensor:
    """Mean of ``x`` (B, C, *S) over the positions where ``mask`` (B, 1, *S) is 1, ``S`` being
    ``(H, W)`` or ``(D, H, W)``: a (B, C) Tensor.

    An empty mask gives a zero vector rather than NaN.
    """
    spatial = _spatial_dims(x)
    total = (x * mask).sum(dim=spatial)
    count = mask.sum(dim=spatial).clamp_min(1.0)
    return total / count


def _spatial_dims(x: Tensor) -> tuple[int, ...]:
    """The spatial axes of a (B, C, *S) tensor: ``(2, 3)`` in 2D, ``(2, 3, 4)`` in 3D."""
    return tuple(range(2, x.ndim))


def _stat_dims(x: Tensor) -> tuple[int, ...]:
    """The axes BatchNorm statistics reduce: the batch and every spatial axis."""
    return (0, *range(2, x.ndim))


def _per_channel(v: Tensor, x: Tensor) -> Tensor:
    """A (C,) vector as a view that broadcasts over (B, C, *S) ``x``."""
    return v.view((1, -1) + (1,) * (x.ndim - 2))


class MaskedBatchNorm:
    """BatchNorm whose statistics come from in-mask positions only, and whose output is zero
    outside the mask: the implementation :class:`MaskedBatchNorm2d` and
    :class:`MaskedBatchNorm3d` share (a mixin placed before ``nn.BatchNormNd``, which checks the
    input's number of dims and holds the parameters).

    ``forward(x, mask=None)``: without a mask it *is* ``nn.BatchNormNd`` (same call, same
    numbers), so a backbone built with this layer and run without masks reproduces the plain
    backbone exactly.  With a ``(B, 1, *S)`` 0/1 mask on ``x``'s grid ``S``:

    - training mode: per-channel mean and (biased) variance over the in-mask positions of the
      whole batch (every spatial axis); running statistics are updated with the unbiased
      variance, like BatchNorm;
    - eval mode: the running statistics, as BatchNorm;
    - the output is multiplied by the mask, so nothing outside the segment, not even the
      BatchNorm bias, reaches the next layer.

    State-dict keys are those of ``nn.BatchNormNd``: torchvision weights load unchanged.
    """

    #: Set by the trainer under torchrun: batch statistics are summed over all processes
    #: (the masked counterpart of ``nn.SyncBatchNorm``).
    sync: bool = False

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:  # noqa: D102
        synced = self.sync and self.training and world_size() > 1
        if mask is None and not synced:
            return super().forward(x)
        if mask is not None and (mask.ndim != x.ndim or mask.shape[2:] != x.shape[2:]):
            raise ValueError(
                f"mask grid {tuple(mask.shape[2:])} does not match the feature map "
                f"{tuple(x.shape[2:])}"
            )
        use_batch_stats = self.training or not self.track_running_stats
        if not use_batch_stats:
            y = F.batch_norm(
                x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps
            )
            return y.mul_(mask.to(y.dtype))  # in place: y is fresh, and no backward needs it

        # Statistics in float32 whatever the autocast dtype: sums over many positions.
        xf = x.float()
        mf = torch.ones_like(xf[:, :1]) if mask is None else mask.float()
        if not synced and mask is not None and self.affine:
            count = mf.sum()
            y, mean, var = _masked_bn_train(xf, mf, self.weight, self.bias, count, self.eps)
            if self.track_running_stats:
                self._update_running_stats(mean, var, count)
            return y.to(x.dtype)
        dims = _stat_dims(xf)
        if synced:
            mean, var, count = _synced_stats(xf, mf)
        else:
            count = mf.sum()  # positions per channel (the mask is shared across channels)
            n = count.clamp_min(1.0)
            mean = (xf * mf).sum(dim=dims) / n
            centred = (xf - _per_channel(mean, xf)) * mf
            var = (centred * centred).sum(dim=dims) / n
        if self.training and self.track_running_stats:
            self._update_running_stats(mean.detach(), var.detach(), count.detach())
        inv_std = torch.rsqrt(var + self.eps)
        scale = inv_std if self.weight is None else self.weight * inv_std
        shift = -mean * scale if self.bias is None else self.bias - mean * scale
        y = xf * _per_channel(scale, xf) + _per_channel(shift, xf)
        if mask is not None:
            y = y.mul_(mf)  # in place: no backward needs y itself
        return y.to(x.dtype)

    @torch.no_grad()
    def _update_running_stats(self, mean: Tensor, var: Tensor, count: Tensor) -> None:
        self.num_batches_tracked.add_(1)
        if self.momentum is None:  # cumulative moving average, as BatchNorm
            factor = 1.0 / float(self.num_batches_tracked)
        else:
            factor = self.momentum
        unbiased = var * (count / (count - 1.0).clamp_min(1.0))
        self.running_mean.lerp_(mean.to(self.running_mean.dtype), factor)
        self.running_var.lerp_(unbiased.to(self.running_var.dtype), factor)


class MaskedBatchNorm2d(MaskedBatchNorm, nn.BatchNorm2d):
    """:class:`MaskedBatchNorm` for ``(B, C, H, W)`` activations and ``(B, 1, H, W)`` masks;
    without a mask it is :class:`torch.nn.BatchNorm2d`, whose state-dict keys it has."""


class MaskedBatchNorm3d(MaskedBatchNorm, nn.BatchNorm3d):
    """:class:`MaskedBatchNorm` for ``(B, C, D, H, W)`` activations and ``(B, 1, D, H, W)``
    masks; without a mask it is :class:`torch.nn.BatchNorm3d`, whose state-dict keys it has."""


def _synced_stats(xf: Tensor, mf: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """In-mask mean and biased variance over the batches of all processes (differentiable)."""
    dims = _stat_dims(xf)
    sums = torch.cat([(xf * mf).sum(dim=dims), (xf * xf * mf).sum(dim=dims), mf.sum().reshape(1)])
    sums = all_reduce_sum(sums)
    c = xf.shape[1]
    count = sums[-1]
    n = count.clamp_min(1.0)
    mean = sums[:c] / n
    var = (sums[c : 2 * c] / n - mean * mean).clamp_min(0.0)
    return mean, var, count


def _masked_bn_train(
    x: Tensor, m: Tensor, weight: Tensor, bias: Tensor, count: Tensor, eps: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Training-mode masked BatchNorm, ``(y, mean, biased var)``, with a hand-written backward
    (fewer passes over the activations than autograd through the elementwise ops)."""
    y, mean, var = _MaskedBatchNormFn.apply(x, m, weight, bias, count, eps)
    return y, mean.detach(), var.detach()


class _MaskedBatchNormFn(torch.autograd.Function):
    """y = ((x - mean) / sqrt(var + eps) * w + b) * m, with mean/var over in-mask positions
    (sums over the batch and every spatial axis: ``x`` is (B, C, *S), ``m`` (B, 1, *S)).

    Backward (n in-mask positions per channel, g the output gradient, gm = g * m)::

        db = sum(gm),  dw = sum(gm * xhat)
        dx = m * w / sqrt(var + eps) * (gm - db / n - xhat * dw / n)
    """

    @staticmethod
    def forward(ctx, x, m, weight, bias, count, eps):  # noqa: D102
        dims = _stat_dims(x)
        n = count.clamp_min(1.0)
        mean = (x * m).sum(dim=dims) / n
        xhat = x - _per_channel(mean, x)
        var = (xhat * xhat * m).sum(dim=dims) / n
        inv_std = torch.rsqrt(var + eps)
        xhat.mul_(_per_channel(inv_std, x))
        y = torch.addcmul(_per_channel(bias, x), xhat, _per_channel(weight, x)).mul_(m)
        ctx.save_for_backward(xhat, m, weight, inv_std, n)
        ctx.mark_non_differentiable(mean, var)
        return y, mean, var

    @staticmethod
    def backward(ctx, grad, _grad_mean, _grad_var):  # noqa: D102
        xhat, m, weight, inv_std, n = ctx.saved_tensors
        dims = _stat_dims(xhat)
        gm = grad * m
        db = gm.sum(dim=dims)
        dw = (gm * xhat).sum(dim=dims)
        dx = None
        if ctx.needs_input_grad[0]:
            dx = gm - _per_channel(db / n, xhat) - xhat * _per_channel(dw / n, xhat)
            dx.mul_(_per_channel(weight * inv_std, xhat)).mul_(m)
        return dx, None, dw, db, None, None
