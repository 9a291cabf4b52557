"""Backbones: the registry by name, the masked torchvision ResNets, ImageNet weights."""

from __future__ import annotations

from functools import partial

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

import napari_segrep as sr
from napari_segrep.engine.backbones import (
    BACKBONES,
    backbone_names,
    build_backbone,
    imagenet_cache_path,
    register_backbone,
    unregister_backbone,
)
from napari_segrep.engine.backbones.resnet import MaskedResNet
from napari_segrep.engine.encoder import imagenet_cache_path as encoder_imagenet_cache_path

from ..conftest import NARROW_BACKBONE, blob_masks

TORCHVISION_RESNETS = ["resnet18", "resnet34", "resnet50"]


# ---------------------------------------------------------------------- the registry
def test_backbone_names__lists_torchvision_s_resnets():
    assert set(TORCHVISION_RESNETS) <= set(backbone_names())
    assert backbone_names() == sorted(BACKBONES)


def test_backbone_names__lists_the_native_3d_resnets_with_their_spatial_dims():
    assert {"resnet18_3d", "resnet34_3d"} <= set(backbone_names())
    dims = {name: BACKBONES[name].spatial_dims for name in backbone_names()}
    assert dims["resnet18_3d"] == dims["resnet34_3d"] == 3
    assert all(dims[name] == 2 for name in TORCHVISION_RESNETS)
    net = build_backbone("resnet18_3d", in_channels=2, seed=0)
    assert net.conv1.weight.shape == (64, 2, 7, 7, 7) and net.embedding_dim == 512


def test_build_backbone__unknown_name_lists_the_choices():
    with pytest.raises(ValueError, match="unknown backbone 'vgg16'") as info:
        build_backbone("vgg16", seed=0)
    assert all(name in str(info.value) for name in TORCHVISION_RESNETS)
    with pytest.raises(ValueError, match=r"unknown backbone 'vgg16'; choose one of \['resnet"):
        sr.SegmentEncoder("vgg16")


@pytest.fixture()
def tiny_backbone():
    """A backbone registered for one test only: one Bottleneck per stage, 4 channels wide."""
    name = "resnet_tiny_bottleneck_test"
    register_backbone(name, partial(MaskedResNet, Bottleneck, [1, 1, 1, 1], width=4))
    yield name
    unregister_backbone(name)
    assert name not in BACKBONES


def test_register_backbone__segment_encoder_builds_it(tiny_backbone, tmp_path):
    enc = sr.SegmentEncoder(tiny_backbone, in_channels=2, seed=3).eval()
    assert isinstance(enc.backbone, MaskedResNet)
    assert enc.backbone.conv1.in_channels == 2 and len(enc.backbone.layer4) == 1
    assert enc.embedding_dim == 8 * 4 * Bottleneck.expansion == 128
    assert enc.config()["backbone"] == tiny_backbone
    x, m = torch.rand(3, 2, 48, 48), blob_masks(3, 48)
    z = enc(x, m)
    assert z.shape == (3, 128) and torch.isfinite(z).all()
    # the name is all a checkpoint needs to rebuild it
    loaded = sr.load_encoder(sr.save_encoder(enc, tmp_path / "tiny.pt"))
    assert isinstance(loaded.backbone, MaskedResNet) and torch.equal(loaded(x, m), z)


def test_register_backbone__a_taken_name_is_refused_unless_overwritten(tiny_backbone):
    build = BACKBONES[tiny_backbone].build
    with pytest.raises(ValueError, match="already registered"):
        register_backbone(tiny_backbone, build)
    with pytest.raises(ValueError, match="already registered"):
        register_backbone("resnet18", build)
    register_backbone(tiny_backbone, build, overwrite=True)
    with pytest.raises(TypeError, match="callable"):
        register_backbone("not_a_builder", "resnet18")
    with pytest.raises(ValueError, match="unknown backbone"):
        unregister_backbone("never_registered")


def test_narrow_test_backbone__is_registered_through_the_registry(narrow_backbone):
    assert narrow_backbone == NARROW_BACKBONE in backbone_names()
    net = build_backbone(narrow_backbone, in_channels=1, seed=0)
    assert isinstance(net, MaskedResNet) and net.embedding_dim == 64
    assert [stage[0].conv1.out_channels for stage in (net.layer1, net.layer4)] == [8, 64]


# ---------------------------------------------------------------------- the masked ResNets
@pytest.mark.parametrize("name", TORCHVISION_RESNETS)
def test_masked_resnet__random_init_is_torchvision_s_under_the_seed(name):
    net = build_backbone(name, seed=7)
    torch.manual_seed(7)
    reference = getattr(torchvision.models, name)()
    reference.fc = nn.Identity()
    ours, theirs = net.state_dict(), reference.state_dict()
    assert list(ours) == list(theirs)
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert net.embedding_dim == (2048 if name == "resnet50" else 512)


@pytest.mark.parametrize("width", [64, 8])
@pytest.mark.parametrize("train", [False, True])
def test_masked_resnet__without_a_mask_is_torchvision_s_forward(width, train):
    """Any width: without a mask, our forward is torchvision's own, on the same modules."""
    net = MaskedResNet(BasicBlock, [1, 1, 1, 1], width=width, seed=1).train(train)
    x = torch.randn(2, 3, 64, 64)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    ours = net(x)
    net.load_state_dict(state)  # same running statistics before each pass
    assert torch.equal(ours, torchvision.models.ResNet._forward_impl(net, x))


def test_masked_resnet__bad_width():
    with pytest.raises(ValueError, match="width"):
        MaskedResNet(BasicBlock, [1, 1, 1, 1], width=0)


# ---------------------------------------------------------------------- ImageNet weights
@pytest.fixture()
def torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    return tmp_path


def test_segment_encoder__imagenet_missing_names_the_file(torch_home):
    with pytest.raises(FileNotFoundError) as info:
        sr.SegmentEncoder(weights="imagenet")
    expected = imagenet_cache_path("resnet18")
    assert str(torch_home) in str(expected)
    assert "resnet18-f37072fd.pth" in str(info.value) and str(expected) in str(info.value)
    assert encoder_imagenet_cache_path("resnet18") == expected  # the old import path works


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_segment_encoder__imagenet_loads_from_the_local_cache_only(torch_home, channels):
    # A torchvision-format file in the cache (random weights stand in for the real download).
    torch.manual_seed(0)
    reference = torchvision.models.resnet18()
    path = imagenet_cache_path("resnet18")
    path.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), path)

    enc = sr.SegmentEncoder(in_channels=channels, weights="imagenet")
    rgb = reference.conv1.weight
    conv = enc.backbone.conv1.weight
    if channels == 1:
        torch.testing.assert_close(conv, rgb.sum(1, keepdim=True))
    elif channels == 3:
        assert torch.equal(conv, rgb)
    else:
        torch.testing.assert_close(conv[:, :3], rgb * 0.75)
        torch.testing.assert_close(conv[:, 3], rgb[:, 0] * 0.75)
    assert torch.equal(enc.backbone.layer3[0].conv1.weight, reference.layer3[0].conv1.weight)
    assert enc.config()["weights"] == "imagenet"
    assert enc.input_std.shape == (channels,) and (enc.input_std != 1).all()


def test_segment_encoder__imagenet_file_of_another_architecture_is_refused(torch_home):
    path = imagenet_cache_path("resnet18")
    path.parent.mkdir(parents=True)
    torch.save(torchvision.models.resnet34().state_dict(), path)
    with pytest.raises(ValueError, match="does not hold resnet18 weights"):
        sr.SegmentEncoder(weights="imagenet")


def test_segment_encoder__backbone_without_imagenet_weights_says_so(narrow_backbone, torch_home):
    with pytest.raises(ValueError, match="no ImageNet weights"):
        sr.SegmentEncoder(narrow_backbone, weights="imagenet")
