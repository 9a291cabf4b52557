"""Masked Vision Transformers: timm's ``VisionTransformer`` seen through the segment's mask.

Built with ``timm.create_model(name, pretrained=False, num_classes=0, in_chans=C,
dynamic_img_size=True, dynamic_img_pad=True)``: the crop sets the token grid (a crop that is not
a multiple of the patch is padded at the bottom and right by timm, and so is the mask here).
timm is imported only when a ViT is built; nothing is ever downloaded (weights come from local
files through :meth:`MaskedViT.load_pretrained_state`).

Dual masking for transformers (``forward(x, mask)`` with a mask)::

    fraction = avg_pool(pad(mask), patch)          (B, h, w): each patch's share of the segment
    inside   = fraction > 0                        in-segment patch tokens
    tokens   = patch_embed(x) + pos_embed, prefix tokens (CLS, registers) in front
    tokens   = where(inside, tokens, 0)            zero outside before the first block
    block:   attention whose keys are the prefix tokens and the in-segment patches only (an
             additive -inf mask: out-of-segment tokens are never attended to, at any block,
             and no row is empty: the prefix tokens are always there), then zero outside
    pool:    the final (normed) CLS token, which attended to in-segment tokens only
             (``pooling="cls"``, the default), or the weighted mean of the final in-segment
             patch tokens, weights = fraction (``pooling="mean"``)

The encoder has already zeroed every pixel outside the segment (image masking), so a patch that
lies entirely outside embeds to a constant, and is zeroed at once anyway; a patch the segment
touches sees only its in-segment pixels.  Out-of-segment tokens are zero before every block, never
keys of an in-segment query, and weigh 0 in the pooling: no pixel outside the segment can change
the embedding (tested as a property, bit for bit).  The attention mask does more than the zeroing
alone would: without it every in-segment token would spread attention over the (constant)
outside tokens, so the embedding would depend on how much of the crop the segment fills.

Without a mask (``mask=None``: feature masking off) the forward pass is timm's own
(``forward_features``) and the pooling runs over every patch token (``"mean"``: timm's
``global_pool="avg"``; ``"cls"``: timm's ``"token"``, i.e. ``model(x)``).

``pooling="plain"`` is for benchmarks only: timm's unmasked forward pass, then the
fraction-weighted mean of its patch tokens (how micro-sam pools SAM's features).  Context reaches
every token through attention: it breaks the guarantee, and is never registered.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...catalogue import CATALOGUE
from .resnet import conv_weight_from_rgb

__all__ = [
    "DEFAULT_POOLING",
    "POOLINGS",
    "VITS",
    "MaskedViT",
    "patch_fractions",
    "vit_builder",
]


#: The catalogue's ViTs (:mod:`napari_segrep.catalogue` holds their facts: patch, embedding
#: size, crop 112 (a 7x7 grid of /16 patches or 8x8 of /14, measured in
#: ``benchmarks/vit_masking_overhead.py``), weight sets).
VITS: tuple[str, ...] = tuple(e.name for e in CATALOGUE if e.builder.startswith("vit:"))

#: The poolings of :class:`MaskedViT` (``"plain"``: benchmarks only, see the module docstring).
POOLINGS = ("mean", "cls", "plain")
#: The pooling of the registered ViTs, chosen by ``benchmarks/vit_context.py`` (see
#: :class:`MaskedViT`).
DEFAULT_POOLING = "cls"

#: Layer-wise learning-rate decay per block from the top (see :meth:`MaskedViT.param_groups`):
#: pretrained weights, and a random initialisation.
LAYER_DECAY_PRETRAINED = 0.75
LAYER_DECAY_RANDOM = 0.9


def patch_fractions(mask: Tensor, patch_size: int) -> Tensor:
    """Each patch's share of the segment, on the token grid timm's ``dynamic_img_pad`` gives.

    Parameters
    ----------
    mask : (B, 1, H, W) 0/1 float Tensor
    patch_size : int

    Returns
    -------
    (B, 1, ceil(H / p), ceil(W / p)) Tensor
        The mean of the mask over each patch, the crop padded with zeros at the bottom and
        right to a multiple of the patch (as timm pads the image).
    """
    if mask.ndim != 4 or mask.shape[1] != 1:
        raise ValueError(f"a mask must be (B, 1, H, W), got shape {tuple(mask.shape)}")
    pad_h = (-mask.shape[2]) % patch_size
    pad_w = (-mask.shape[3]) % patch_size
    if pad_h or pad_w:
        mask = F.pad(mask, (0, pad_w, 0, pad_h))
    return F.avg_pool2d(mask, kernel_size=patch_size, stride=patch_size)


class MaskedViT(nn.Module):
    """timm's ``VisionTransformer`` with a masked forward pass (see the module docstring).

    Parameters
    ----------
    name : str
        A timm ViT (one of :data:`VITS` for the registered ones).
    in_channels : int
        Input channels; timm builds the patch embedding for them.
    seed : int
        Random initialisation: the weights are those of ``timm.create_model(name, ...)`` under
        ``torch.manual_seed(seed)``; the global random generator is left untouched.
    pooling : {"cls", "mean", "plain"}
        How the tokens become the embedding (module docstring).  ``"cls"`` (default,
        :data:`DEFAULT_POOLING`), chosen by ``benchmarks/vit_context.py`` (a background
        confound shuffled at test, a logistic probe, vit_tiny at crop 64): the masked CLS token
        and the fraction-weighted mean of the in-segment tokens tie untrained (test accuracy
        0.770 vs 0.748, mean of 3 data sets; CLS ahead on 2), and after a short SSL run (150
        steps) the CLS token keeps its accuracy (0.759) where the mean loses (0.662): SSL trains
        the CLS token as the image's summary, which is what the contrastive loss reads.  Both
        hold the guarantee; the unmasked "plain" pooling scores at chance (0.444: it learnt the
        background).
    **overrides
        Passed to ``timm.create_model`` (``depth``, ``embed_dim``, ``num_heads``...: shrunken
        real models for tests).

    Attributes
    ----------
    model : timm.models.VisionTransformer
        The network; its state-dict keys are timm's under ``model.``.
    embedding_dim : int
    patch_size : int
    feature_stride : int
        The stride of :meth:`feature_map`'s grid (the patch size): the pretext objectives'
        decoder sizes itself by it.
    num_prefix_tokens : int
    """

    def __init__(
        self,
        name: str,
        *,
        in_channels: int = 3,
        seed: int = 0,
        pooling: str = DEFAULT_POOLING,
        **overrides: Any,
    ) -> None:
        super().__init__()
        if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
            raise ValueError(f"in_channels must be a positive integer, got {in_channels!r}")
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        import timm  # lazily: only when a ViT is built

        options = {"pretrained": False, "num_classes": 0, "in_chans": in_channels}
        options.update(dynamic_img_size=True, dynamic_img_pad=True)
        fixed = set(options) & set(overrides)
        if fixed:
            raise ValueError(f"{sorted(fixed)} are set by MaskedViT and cannot be overridden")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            try:
                model = timm.create_model(name, **options, **overrides)
            except RuntimeError as exc:  # timm: "Unknown model (...)"
                raise ValueError(f"timm cannot build {name!r}: {exc}") from None
        if not hasattr(model, "blocks") or not hasattr(model, "_pos_embed"):
            raise ValueError(f"{name!r} is not a timm VisionTransformer")
        if getattr(model, "attn_pool", None) is not None:
            raise ValueError(f"{name!r} pools by attention (global_pool='map'): not supported")
        self.model = model
        self.name = name
        self.in_channels = in_channels
        self.pooling = pooling
        self.embedding_dim: int = int(model.num_features)
        self.patch_size: int = int(model.patch_embed.patch_size[0])
        self.feature_stride: int = self.patch_size
        self.num_prefix_tokens: int = int(model.num_prefix_tokens)
        #: Whether pretrained weights were loaded (:meth:`param_groups`' default decay).
        self.pretrained = False

    # ------------------------------------------------------------------ forward
    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """Pooled embedding of a batch of crops.

        Parameters
        ----------
        x : (B, in_channels, H, W) float Tensor
            Any ``H, W`` (padded to a multiple of the patch).
        mask : (B, 1, H, W) 0/1 Tensor of ``x``'s dtype, optional
            ``None``: no feature masking (timm's forward pass, pooled over every patch token).

        Returns
        -------
        (B, embedding_dim) Tensor
        """
        if mask is None:
            tokens = self.model.forward_features(x)
            if self.pooling == "cls":
                return tokens[:, 0]
            return tokens[:, self.num_prefix_tokens :].mean(dim=1)
        fractions = patch_fractions(mask, self.patch_size).flatten(1)  # (B, N)
        if self.pooling == "plain":
            tokens = self.model.forward_features(x)
        else:
            tokens = self._masked_tokens(x, fractions > 0)
        if self.pooling == "cls":
            return tokens[:, 0]
        weights = fractions.unsqueeze(-1)
        total = (tokens[:, self.num_prefix_tokens :] * weights).sum(dim=1)
        return total / weights.sum(dim=1).clamp_min(1e-12)

    def feature_map(self, x: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """The final (normed) patch tokens as a feature map, and the segment on its grid.

        Returns
        -------
        features : (B, embedding_dim, h, w) Tensor
            ``h, w = ceil(H / patch), ceil(W / patch)``; zero outside the segment with a mask.
        grid : (B, 1, h, w) 0/1 Tensor, or None without a mask
            The in-segment patches (those the segment touches).
        """
        if mask is None:
            tokens = self.model.forward_features(x)
            grid = None
            h, w = (-(-s // self.patch_size) for s in x.shape[2:])
        else:
            fractions = patch_fractions(mask, self.patch_size)
            h, w = fractions.shape[2:]
            grid = (fractions > 0).to(x.dtype)
            tokens = self._masked_tokens(x, grid.flatten(1) > 0)
        patches = tokens[:, self.num_prefix_tokens :]
        features = patches.transpose(1, 2).reshape(x.shape[0], self.embedding_dim, h, w)
        if grid is not None:
            features = features * grid
        return features, grid

    def _masked_tokens(self, x: Tensor, inside: Tensor) -> Tensor:
        """Every token after the final norm, out-of-segment patch tokens never attended to and
        zeroed before and after every block.

        Parameters
        ----------
        x : (B, C, H, W) Tensor
        inside : (B, N) bool Tensor
            The in-segment patch tokens (N patches of the padded grid, row-major).

        Returns
        -------
        (B, num_prefix_tokens + N, embedding_dim) Tensor
        """
        m = self.model
        tokens = m.patch_embed(x)  # (B, h, w, D): dynamic_img_size keeps the grid
        if tokens.shape[1] * tokens.shape[2] != inside.shape[1]:
            raise ValueError(
                f"the mask's patch grid ({inside.shape[1]} patches) does not match the "
                f"image's {tuple(tokens.shape[1:3])}: pass a mask of the image's size"
            )
        tokens = m.norm_pre(m.patch_drop(m._pos_embed(tokens)))
        prefix = inside.new_ones((inside.shape[0], self.num_prefix_tokens))
        keep = torch.cat([prefix, inside], dim=1)  # (B, T): the attendable tokens
        # An additive mask (0 or -inf) of the tokens' dtype, broadcast over heads and queries:
        # timm's fused (SDPA) and explicit attention paths both add it to the scores.
        bias = torch.zeros(keep.shape, dtype=tokens.dtype, device=tokens.device)
        bias = bias.masked_fill(~keep, float("-inf"))[:, None, None, :]
        keep = keep.unsqueeze(-1)
        zero = tokens.new_zeros(())
        tokens = torch.where(keep, tokens, zero)
        for block in m.blocks:
            tokens = torch.where(keep, block(tokens, attn_mask=bias), zero)
        return m.norm(tokens)

    # ------------------------------------------------------------------ weights
    def load_pretrained_state(self, state: dict[str, Tensor], fmt: str = "timm") -> None:
        """Load pretrained weights, adapting the patch embedding to ``in_channels``.

        Parameters
        ----------
        state : dict of str to Tensor
            ``fmt="dinov2"``: Meta's original DINOv2 state dict (``cls_token``, ``pos_embed``
            with the CLS position, ``register_tokens``, ``mask_token``, ``blocks.N.ls1.gamma``
            ...: ``dinov2_vits14_reg4_pretrain.pth``); ``fmt="timm"``: a timm state dict of
            the same architecture (a classifier ``head.*`` is dropped).  Both go through timm's
            ``checkpoint_filter_fn`` (key conversion, position-embedding resampling).
        fmt : {"timm", "dinov2"}

        Notes
        -----
        The RGB patch embedding becomes ``in_channels`` wide as ResNet's first convolution
        does (:func:`~napari_segrep.engine.backbones.resnet.conv_weight_from_rgb`: summed for
        1 channel, tiled and scaled by 3/N for N).  A state already ``in_channels`` wide loads
        as it is.

        Raises
        ------
        ValueError
            The state does not fit this ViT (other keys, widths, depth or channels), naming
            what differs.
        """
        if fmt not in ("timm", "dinov2"):
            raise ValueError(f"fmt must be 'timm' or 'dinov2', got {fmt!r}")
        if not isinstance(state, dict) or not state:
            raise ValueError(f"a state dict of tensors is needed, got {type(state).__name__}")
        is_dinov2 = "mask_token" in state or "register_tokens" in state
        if is_dinov2 != (fmt == "dinov2"):
            found = "Meta's DINOv2 layout" if is_dinov2 else "not Meta's DINOv2 layout"
            raise ValueError(f"the state is in {found}, but fmt={fmt!r}: pass the other fmt")
        from timm.models.vision_transformer import checkpoint_filter_fn

        state = {k: v for k, v in state.items() if not k.startswith("head.")}
        ours = self.model.state_dict()
        try:
            converted = checkpoint_filter_fn(dict(state), self.model)
        except (KeyError, RuntimeError, ValueError, IndexError) as exc:
            raise ValueError(f"the state does not convert to {self.name} ({exc})") from None
        patch_key = "patch_embed.proj.weight"
        if patch_key not in converted:
            raise ValueError(f"the state has no {patch_key!r}: not a ViT state dict")
        weight = converted[patch_key]
        if weight.ndim == 4 and weight.shape[1] not in (3, self.in_channels):
            raise ValueError(
                f"its patch embedding takes {weight.shape[1]} channels: only RGB or "
                f"{self.in_channels}-channel weights adapt to this ViT"
            )
        if weight.ndim == 4 and weight.shape[1] != self.in_channels:
            converted[patch_key] = conv_weight_from_rgb(weight, self.in_channels)
        missing = sorted(set(ours) - set(converted))
        unexpected = sorted(set(converted) - set(ours))
        shapes = [
            f"{k} {tuple(converted[k].shape)} (this {self.name}: {tuple(ours[k].shape)})"
            for k in ours
            if k in converted and converted[k].shape != ours[k].shape
        ]
        if missing or unexpected or shapes:
            parts = [
                f"{what} {keys[:3]}"
                for what, keys in (("missing", missing), ("unexpected", unexpected))
                if keys
            ]
            parts += [f"other shapes: {', '.join(shapes[:3])}"] if shapes else []
            raise ValueError(
                f"the state does not fit {self.name} with embedding_dim={self.embedding_dim}, "
                f"depth={len(self.model.blocks)} ({'; '.join(parts)}): it was written for "
                "another architecture"
            )
        self.model.load_state_dict(converted)
        self.pretrained = True

    def load_imagenet_state(self, state: dict[str, Tensor]) -> None:
        """The registry's weights hook (:func:`~napari_segrep.engine.backbones.
        load_imagenet_weights`): :meth:`load_pretrained_state`, the format read from the keys
        (Meta's DINOv2 layout has ``mask_token`` / ``register_tokens``)."""
        fmt = "dinov2" if "mask_token" in state or "register_tokens" in state else "timm"
        self.load_pretrained_state(state, fmt)

    # ------------------------------------------------------------------ training
    def param_groups(
        self,
        lr: float,
        weight_decay: float,
        *,
        layer_decay: float | None = None,
        pretrained: bool = False,
    ) -> list[dict[str, Any]]:
        """Optimiser parameter groups for fine-tuning: layer-wise lr decay, no weight decay on
        norms, biases, LayerScale, position embedding, CLS and register tokens.

        Layer ``i`` of ``L + 2`` (0: patch and position embeddings, CLS and registers; 1..L:
        the blocks; L + 1: the final norm) learns at ``lr * layer_decay ** (L + 1 - i)``.
        Pretrained ViTs forget what their lower blocks learnt under one uniform rate that is
        large enough for the top (BEiT, MAE and DINOv2 fine-tune with a decay of 0.65-0.75);
        a random initialisation has nothing to forget, so its decay is mild (0.9: the patch
        embedding still learns at a quarter of the top's rate in a 12-block ViT) and only
        steadies the first steps.

        Parameters
        ----------
        lr : float
            The top layer's learning rate (the trainer's ``lr``).
        weight_decay : float
            Of the matrices (and patch-embedding kernels); 0 for the rest.
        layer_decay : float, optional
            In ``(0, 1]``; default :data:`LAYER_DECAY_PRETRAINED` (0.75) for pretrained
            weights (``pretrained``, or after :meth:`load_pretrained_state`),
            :data:`LAYER_DECAY_RANDOM` (0.9) otherwise.
        pretrained : bool
            The weights are pretrained although not loaded here (e.g. from a checkpoint).

        Returns
        -------
        list of dict
            ``{"params", "lr", "weight_decay"}`` (plus ``"lars_exclude": True`` for the groups
            without weight decay, which :class:`~napari_segrep.engine.optim.LARS` reads), one
            per layer and decay kind, empty groups left out; every trainable parameter once.
        """
        if layer_decay is None:
            pretrained = pretrained or self.pretrained
            layer_decay = LAYER_DECAY_PRETRAINED if pretrained else LAYER_DECAY_RANDOM
        if not 0.0 < layer_decay <= 1.0:
            raise ValueError(f"layer_decay must be in (0, 1], got {layer_decay!r}")
        if not weight_decay >= 0.0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")
        depth = len(self.model.blocks)
        no_decay_names = {"cls_token", "reg_token", "pos_embed", "dist_token"}
        groups: dict[tuple[int, bool], list[nn.Parameter]] = {}
        for name, p in self.model.named_parameters():
            if not p.requires_grad:
                continue
            if name.startswith("blocks."):
                layer = int(name.split(".")[1]) + 1
            elif name.startswith(("patch_embed.", "norm_pre.")) or name in no_decay_names:
                layer = 0
            else:  # final norm, fc_norm
                layer = depth + 1
            decay = p.ndim >= 2 and name not in no_decay_names
            groups.setdefault((layer, decay), []).append(p)
        out = []
        for (layer, decay), params in sorted(groups.items()):
            group: dict[str, Any] = {
                "params": params,
                "lr": float(lr) * layer_decay ** (depth + 1 - layer),
                "weight_decay": float(weight_decay) if decay else 0.0,
            }
            if not decay:
                group["lars_exclude"] = True
            out.append(group)
        return out


def vit_builder(name: str, **overrides: Any):
    """``build(*, in_channels, seed)`` for the timm ViT ``name`` (``overrides``: ``pooling``,
    and ``timm.create_model`` keywords such as ``depth``, ``embed_dim``, ``num_heads``)."""
    return partial(MaskedViT, name, **overrides)
