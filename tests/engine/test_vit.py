"""The masked Vision Transformers: dual masking for tokens, pooling, timm parity, pretrained
states (Meta's DINOv2 layout), channels, training groups.  Shrunken real timm ViTs (depth 2,
32-48 wide, 2 heads) keep them fast."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import napari_segrep as sr
from napari_segrep.engine.backbones import BACKBONES, build_backbone, register_backbone
from napari_segrep.engine.backbones.vit import VITS, MaskedViT, patch_fractions, vit_builder
from napari_segrep.engine.objectives._pretext import decoder_stages
from napari_segrep.engine.optim import encoder_param_groups

from ..conftest import disc_labels, emb

#: Shrunken real timm ViTs: the registered models' code path, depth 2, 32 wide, 2 heads.
SMALL = {"depth": 2, "embed_dim": 32, "num_heads": 2}
TINY_TEST = "vit_tiny_patch16_test"
DINO_TEST = "vit_dinov2_reg4_test"


@functools.cache
def _register_test_vits() -> None:
    for name, base in ((TINY_TEST, "vit_tiny_patch16_224"), (DINO_TEST, DINO_BASE)):
        if name not in BACKBONES:
            register_backbone(name, vit_builder(base, **SMALL))


DINO_BASE = "vit_small_patch14_reg4_dinov2"


@functools.cache
def _vit(base: str, pooling: str, channels: int = 1) -> MaskedViT:
    return MaskedViT(base, in_channels=channels, seed=0, pooling=pooling, **SMALL).eval()


@functools.cache
def _encoder(name: str, pooling: str) -> sr.SegmentEncoder:
    """A dual-masked 1-channel encoder on a shrunken ViT with ``pooling``."""
    _register_test_vits()
    enc = sr.SegmentEncoder(name, in_channels=1, seed=0).eval()
    enc.backbone.pooling = pooling
    return enc


def _disc(size: int, cy: float, cx: float, r: float) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    return ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r)[None, None]


# ---------------------------------------------------------------------- the guarantee
@settings(max_examples=25, deadline=None)
@given(
    size=st.integers(20, 50),
    centre=st.tuples(st.floats(0, 1), st.floats(0, 1)),
    radius=st.floats(0, 12),
    backbone=st.sampled_from([TINY_TEST, DINO_TEST]),
    pooling=st.sampled_from(["mean", "cls"]),
    seed=st.integers(0, 2**16),
)
def test_masked_vit__no_pixel_outside_the_segment_changes_the_embedding(
    size, centre, radius, backbone, pooling, seed
):
    """Context invariance, bit for bit: crops of any size (multiples of the patch or not), a
    segment anywhere (1 pixel inside one patch, touching the border, in the padded patches),
    neighbours and background redrawn."""
    encoder = _encoder(backbone, pooling)
    g = torch.Generator().manual_seed(seed)
    mask = _disc(size, centre[0] * (size - 1), centre[1] * (size - 1), radius)
    neighbour = _disc(size, (1 - centre[0]) * (size - 1), centre[1] * (size - 1), 8) & ~mask
    image = torch.rand(1, 1, size, size, generator=g)
    other = torch.where(mask, image, torch.rand(1, 1, size, size, generator=g) * 5)
    other[neighbour] = 7.0  # a bright neighbour in the crop
    with torch.inference_mode():
        a, b = encoder(image, mask), encoder(other, mask)
    assert torch.isfinite(a).all() and torch.equal(a, b)


def test_masked_vit__out_of_segment_tokens_are_never_attended_at_any_block():
    """Redrawing what out-of-segment tokens offer as keys and values (the input of every
    block's attention) changes nothing inside; without the attention mask it would."""
    mask = _disc(48, 20, 22, 9).float()
    x = torch.rand(2, 1, 48, 48) * mask
    inside = patch_fractions(mask, 16).flatten(1) > 0
    rows = torch.cat([torch.ones(1, 1, dtype=torch.bool), inside], dim=1)[..., None]

    def redraw(module, args, out):
        return torch.where(rows, out, torch.randn_like(out) * 100)

    for pooling, attended in (("mean", False), ("cls", False), ("plain", True)):
        net = _vit("vit_tiny_patch16_224", pooling)
        with torch.inference_mode():
            before = net(x, mask.expand(2, -1, -1, -1))
            hooks = [b.norm1.register_forward_hook(redraw) for b in net.model.blocks]
            after = net(x, mask.expand(2, -1, -1, -1))
            for hook in hooks:
                hook.remove()
        assert torch.equal(before, after) != attended, pooling


@pytest.mark.parametrize(
    ("size", "segment"),
    [
        (32, (slice(5, 6), slice(5, 6))),  # one pixel, inside one patch
        (30, (slice(29, 30), slice(29, 30))),  # one pixel in the padded corner patch
        (40, (slice(0, 40), slice(0, 3))),  # along the crop's border
        (32, (slice(0, 32), slice(0, 32))),  # the whole crop
    ],
)
def test_masked_vit__no_attention_row_is_empty(size, segment):
    mask = torch.zeros(1, 1, size, size)
    mask[(0, 0, *segment)] = 1
    x = torch.rand(1, 1, size, size) * mask
    for pooling in ("mean", "cls"):
        with torch.inference_mode():
            z = _vit(DINO_BASE, pooling)(x, mask)
            features, grid = _vit(DINO_BASE, pooling).feature_map(x, mask)
        assert torch.isfinite(z).all() and z.abs().sum() > 0
        assert torch.isfinite(features).all() and grid.sum() >= 1


def test_masked_vit__batch_independence_and_feature_map_agree_with_forward():
    """Each crop's embedding is its own (alone or in a batch); the embedding is the
    fraction-weighted mean of :meth:`feature_map`, whose grid is the padded patch grid."""
    net = _vit("vit_tiny_patch16_224", "mean")
    masks = torch.cat([_disc(44, 20, 20, r) for r in (3, 9, 15)]).float()
    x = torch.rand(3, 1, 44, 44) * masks
    with torch.inference_mode():
        together = net(x, masks)
        alone = torch.cat([net(x[i : i + 1], masks[i : i + 1]) for i in range(3)])
        features, grid = net.feature_map(x, masks)
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-6)
    assert features.shape == (3, 32, 3, 3) and grid.shape == (3, 1, 3, 3)  # ceil(44 / 16)
    assert (features[grid.expand_as(features) == 0] == 0).all()
    weights = patch_fractions(masks, 16)
    pooled = (features * weights).sum((2, 3)) / weights.sum((2, 3))
    torch.testing.assert_close(pooled, together, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("channels", [1, 2, 5])
def test_masked_vit__any_channels_deterministic_without_touching_the_global_rng(channels):
    state = torch.random.get_rng_state()
    a = MaskedViT("vit_tiny_patch16_224", in_channels=channels, seed=3, **SMALL)
    b = MaskedViT("vit_tiny_patch16_224", in_channels=channels, seed=3, **SMALL)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert a.model.patch_embed.proj.weight.shape == (32, channels, 16, 16)
    same = zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    assert all(torch.equal(p, q) for p, q in same)
    other = MaskedViT("vit_tiny_patch16_224", in_channels=channels, seed=4, **SMALL)
    assert not torch.equal(a.model.pos_embed, other.model.pos_embed)
    mask = _disc(36, 18, 18, 10).float()
    assert a.eval()(torch.rand(1, channels, 36, 36) * mask, mask).shape == (1, 32)


@pytest.mark.parametrize("base", ["vit_tiny_patch16_224", DINO_BASE])
def test_masked_vit__without_a_mask_is_timm_s_forward(base):
    """``mask=None``: timm's own forward pass; "cls" is ``model(x)``, "mean" timm's average
    pooling of the patch tokens."""
    x = torch.randn(2, 1, 56, 40)
    cls, mean = _vit(base, "cls"), _vit(base, "mean")
    with torch.inference_mode():
        assert torch.equal(cls(x), cls.model(x))
        tokens = mean.model.forward_features(x)
        assert torch.equal(mean(x), mean.model.pool(tokens, pool_type="avg"))


def test_masked_vit__bad_options_name_the_problem():
    with pytest.raises(ValueError, match="pooling must be one of"):
        MaskedViT("vit_tiny_patch16_224", pooling="max", **SMALL)
    with pytest.raises(ValueError, match="in_channels must be a positive integer"):
        MaskedViT("vit_tiny_patch16_224", in_channels=0, **SMALL)
    with pytest.raises(ValueError, match="cannot be overridden"):
        MaskedViT("vit_tiny_patch16_224", pretrained=True, **SMALL)
    with pytest.raises(ValueError, match="timm cannot build 'vit_nonexistent'"):
        MaskedViT("vit_nonexistent")


# ---------------------------------------------------------------------- pretrained states
def _meta_dinov2_state(seed: int = 5) -> tuple[dict, torch.nn.Module]:
    """A shrunken timm DINOv2-reg4 model and its state in Meta's original key layout (the
    layout of ``dinov2_vits14_reg4_pretrain.pth``: CLS position inside ``pos_embed``,
    ``register_tokens``, ``mask_token``)."""
    import timm

    torch.manual_seed(seed)
    reference = timm.create_model(
        DINO_BASE, pretrained=False, num_classes=0, dynamic_img_size=True,
        dynamic_img_pad=True, **SMALL,
    ).eval()  # fmt: skip
    state = {k: v.clone() for k, v in reference.state_dict().items()}
    cls_pos = torch.randn(1, 1, 32) * 0.02
    state["pos_embed"] = torch.cat([cls_pos, state["pos_embed"]], dim=1)
    state["cls_token"] = state["cls_token"] - cls_pos
    state["register_tokens"] = state.pop("reg_token")
    state["mask_token"] = torch.zeros(1, 32)
    return state, reference


@pytest.mark.parametrize("channels", [1, 3, 6])  # 6: RGB tiled twice, halved
def test_masked_vit__loads_meta_s_dinov2_layout_and_adapts_the_channels(channels):
    state, reference = _meta_dinov2_state()
    net = MaskedViT(DINO_BASE, in_channels=channels, seed=0, pooling="cls", **SMALL).eval()
    net.load_pretrained_state(state, "dinov2")
    assert net.pretrained
    grey = torch.rand(2, 1, 42, 42)
    with torch.inference_mode():
        expected = reference(grey.expand(-1, 3, -1, -1))
        ours = net(grey.expand(-1, channels, -1, -1))
    # a grey image seen through any channel count gives the RGB model's response
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-5)
    # the registry's hook reads the format from the keys
    again = MaskedViT(DINO_BASE, in_channels=channels, seed=1, pooling="cls", **SMALL).eval()
    again.load_imagenet_state(state)
    assert torch.equal(again(grey.expand(-1, channels, -1, -1)), ours)


def test_masked_vit__a_state_that_does_not_fit_is_a_clear_value_error():
    state, _ = _meta_dinov2_state()
    net = MaskedViT(DINO_BASE, in_channels=1, **SMALL)
    with pytest.raises(ValueError, match="in Meta's DINOv2 layout, but fmt='timm'"):
        net.load_pretrained_state(state, "timm")
    deeper = MaskedViT(DINO_BASE, depth=3, embed_dim=32, num_heads=2)
    with pytest.raises(ValueError, match=r"does not fit .*depth=3 \(missing \['blocks.2"):
        deeper.load_pretrained_state(state, "dinov2")
    tiny = MaskedViT("vit_tiny_patch16_224", in_channels=1, depth=2, embed_dim=48, num_heads=2)
    timm_state = _vit("vit_tiny_patch16_224", "mean").model.state_dict()
    with pytest.raises(ValueError, match=r"embedding_dim=48.*other shapes"):
        tiny.load_pretrained_state({k: v for k, v in timm_state.items()}, "timm")
    with pytest.raises(ValueError, match="takes 2 channels"):
        _vit("vit_tiny_patch16_224", "mean", 5).load_pretrained_state(
            _vit("vit_tiny_patch16_224", "mean", 2).model.state_dict(), "timm"
        )
    with pytest.raises(ValueError, match="fmt must be"):
        net.load_pretrained_state(state, "dino")


# ---------------------------------------------------------------------- the engine
def test_segment_encoder__vit_tiny_embeds_segments_and_round_trips_a_checkpoint(scene, tmp_path):
    """The registered, full-size vit_tiny through embed_segments; a saved encoder loads back
    and embeds the same."""
    image, labels = scene
    enc = sr.SegmentEncoder("vit_tiny_patch16_224", in_channels=1, seed=0)
    assert isinstance(enc.backbone, MaskedViT) and enc.embedding_dim == 192
    df = sr.embed_segments(image, labels, enc, crop_size=48, device="cpu")
    assert len(df) == 6 and emb(df).shape == (6, 192) and np.isfinite(emb(df)).all()
    loaded = sr.load_encoder(sr.save_encoder(enc, tmp_path / "vit.pt"))
    again = sr.embed_segments(image, labels, loaded, crop_size=48, device="cpu")
    np.testing.assert_array_equal(emb(df), emb(again))


def test_registry__lists_the_catalogue_s_vits():
    """(Their facts agree with the built models: tests/test_catalogue.py; importing the registry
    does not import timm: tests/test_package.py.)"""
    assert set(VITS) == {"vit_tiny_patch16_224", "vit_small_patch16_224",
                         "vit_small_patch14_reg4_dinov2"} and set(VITS) <= set(BACKBONES)  # fmt: skip


def test_encoder_param_groups__layer_wise_decay_and_no_decay_on_tokens_and_norms():
    _register_test_vits()
    enc = sr.SegmentEncoder(TINY_TEST, in_channels=1)
    groups = encoder_param_groups(enc, 1e-3, 0.05)
    params = [p for g in groups for p in g["params"]]
    assert len(params) == len({id(p) for p in params}) == len(list(enc.parameters()))
    names = {id(p): n for n, p in enc.backbone.model.named_parameters()}
    lr_of = {names[id(p)]: (g["lr"], g["weight_decay"]) for g in groups for p in g["params"]}
    assert lr_of["norm.weight"] == (1e-3, 0.0)  # the top: full rate
    assert lr_of["blocks.1.attn.qkv.weight"] == (pytest.approx(1e-3 * 0.9), 0.05)
    assert lr_of["blocks.0.attn.qkv.bias"] == (pytest.approx(1e-3 * 0.9**2), 0.0)
    for name in ("patch_embed.proj.weight", "pos_embed", "cls_token"):
        assert lr_of[name][0] == pytest.approx(1e-3 * 0.9**3)
    assert lr_of["patch_embed.proj.weight"][1] == 0.05
    assert lr_of["pos_embed"][1] == lr_of["cls_token"][1] == 0.0
    assert all(g.get("lars_exclude", False) == (g["weight_decay"] == 0.0) for g in groups)
    enc.weights_source = "dinov2"  # pretrained weights: the stronger decay
    top = {g["lr"] for g in encoder_param_groups(enc, 1e-3, 0.05)}
    assert min(top) == pytest.approx(1e-3 * 0.75**3)


@pytest.mark.parametrize("objective", ["contrastive", "masking"])
def test_train_ssl__a_vit_trains_with_its_param_groups(objective):
    """One short epoch of each objective kind: contrastive, and a pretext task whose decoder
    reads the ViT's stride-16 token grid."""
    _register_test_vits()
    image, labels = np.random.default_rng(0).random((96, 96)), disc_labels(
        (96, 96), [(20, 20, 9), (20, 60, 9), (60, 20, 12), (70, 70, 14), (45, 45, 6), (85, 10, 5)]
    )  # fmt: skip
    encoder = sr.SegmentEncoder(TINY_TEST, in_channels=1)
    assert decoder_stages(encoder) == 4  # 16 = 2**4
    result = sr.train_ssl(
        image, labels, encoder=encoder, objective=objective, epochs=1, batch_size=4,
        crop_size=40, device="cpu", projection_hidden=32, projection_dim=16,
    )  # fmt: skip
    assert result.history and np.isfinite([r["loss"] for r in result.history]).all()
    before, after = encoder.state_dict(), result.encoder.state_dict()
    assert not torch.equal(
        before["backbone.model.norm.weight"], after["backbone.model.norm.weight"]
    )
    assert build_backbone(TINY_TEST, in_channels=1).embedding_dim == 32
