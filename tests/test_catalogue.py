"""The backbone catalogue: one torch-free source of what each backbone is, which the engine's
registry, weights.py and the CLI are generated from; and the download of a weight set whose
publisher gives no SHA-256 (checked by loading it into its backbone)."""

from __future__ import annotations

import io
from functools import partial

import pytest

from napari_segrep import catalogue
from napari_segrep.catalogue import (
    CATALOGUE,
    WeightSet,
    backbone_choices,
    get_entry,
    weight_set,
    weight_set_names,
    weights_backbones,
)

from .weights_server import Route, leftovers


def test_catalogue__the_registry_and_the_cli_choices_are_generated_from_it():
    from napari_segrep.cli._common import BACKBONES as CLI_CHOICES
    from napari_segrep.cli.weights import WEIGHTS_CHOICES
    from napari_segrep.engine.backbones import BACKBONES

    assert CLI_CHOICES == backbone_choices()
    assert (
        WEIGHTS_CHOICES
        == ("auto", "none", "imagenet", "dinov2")
        == ("auto", "none", *weight_set_names())
    )
    for entry in CATALOGUE:
        spec = BACKBONES[entry.name]
        assert spec.spatial_dims == entry.spatial_dims and spec.feature_map == entry.feature_map
        assert spec.weights == entry.weights and spec.default_crop == entry.default_crop
    assert backbone_choices(3) == [
        "resnet18_3d",
        "resnet34_3d",
        "resnet18_planes",
        "resnet18_slices",
    ]
    assert {"vit_tiny_patch16_224", "vit_small_patch16_224"} <= set(backbone_choices(2))


def test_catalogue__facts_agree_with_the_built_backbones():
    import torch

    from napari_segrep.engine.backbones import build_backbone

    for entry in CATALOGUE:
        with torch.device("meta"):  # full size, without the memory or the time
            built = build_backbone(entry.name, in_channels=2)
        assert built.embedding_dim == entry.embedding_dim, entry.name
        assert getattr(built, "patch_size", 1) == entry.patch_size, entry.name
        assert entry.default_crop % entry.patch_size == 0, entry.name
        assert hasattr(built, "feature_map") or not entry.feature_map, entry.name


def test_catalogue__weight_sets_name_their_file_licence_and_who_has_them():
    dinov2 = weight_set("vit_small_patch14_reg4_dinov2", "dinov2")
    assert dinov2.licence == "Apache-2.0" and dinov2.url.endswith(dinov2.filename)
    assert dinov2.sha256 is None and dinov2.size is None and 80e6 < dinov2.approx_size < 100e6
    assert weights_backbones("dinov2") == ["vit_small_patch14_reg4_dinov2"]
    assert weights_backbones("imagenet")[:3] == ["resnet18", "resnet34", "resnet50"]
    # the 3D ResNets and the plane modes read their 2D ResNet's file
    assert weight_set("resnet18_3d", "imagenet") == weight_set("resnet18", "imagenet")
    with pytest.raises(ValueError, match=r"has no 'dinov2' weights .*--backbone vit_small_patch14"):
        weight_set("resnet18", "dinov2")
    with pytest.raises(ValueError, match="unknown backbone 'vit_huge'; choose one of resnet18"):
        get_entry("vit_huge")


def test_segment_encoder__a_weight_set_the_backbone_has_not_is_refused_by_name():
    import napari_segrep as sr

    with pytest.raises(ValueError, match="has no 'dinov2' weights"):
        sr.SegmentEncoder("resnet18", weights="dinov2")


# ------------------------------------------------------------ a weight set without a SHA-256
UNCHECKED = "resnet_unchecksummed_test"


@pytest.fixture()
def unchecksummed(monkeypatch):
    """A narrow test ResNet registered with one weight set whose publisher gives neither size
    nor SHA-256 (as Meta does for DINOv2's file): a download is checked by loading it."""
    from torchvision.models.resnet import BasicBlock

    from napari_segrep.engine.backbones import BACKBONES, register_backbone
    from napari_segrep.engine.backbones.resnet import MaskedResNet

    ws = WeightSet("dinov2", "unchecksummed-test.pth", "http://unused/", None, None,
                   "Apache-2.0", "a test publisher", approx_size=340_000)  # fmt: skip
    register_backbone(UNCHECKED, partial(MaskedResNet, BasicBlock, [1, 1, 1, 1], width=8),
                      weights=(ws,))  # fmt: skip
    yield ws
    BACKBONES.pop(UNCHECKED, None)


def _state_bytes(**kw) -> bytes:
    import torch
    from torchvision.models.resnet import BasicBlock

    from napari_segrep.engine.backbones.resnet import MaskedResNet

    state = MaskedResNet(BasicBlock, [1, 1, 1, 1], width=8, **kw).state_dict()
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def test_download_weights__without_a_published_sha256_the_file_must_load_into_its_backbone(
    unchecksummed, weights_cache, weights_server
):
    from napari_segrep.weights import download_weights, weights_info

    right, other = _state_bytes(), _state_bytes(in_channels=2)  # another model's shapes
    weights_server.routes["/other.pth"] = Route(other)
    with pytest.raises(
        ValueError,
        match=r"is not a test publisher's DINOv2 weights for resnet_unchecksummed_test \(",
    ):
        download_weights(UNCHECKED, weights="dinov2", url=weights_server.url("/other.pth"))
    assert not (weights_cache / unchecksummed.filename).exists() and leftovers(weights_cache) == []
    weights_server.routes["/right.pth"] = Route(right)
    path = download_weights(UNCHECKED, weights="dinov2", url=weights_server.url("/right.pth"))
    assert path.read_bytes() == right and weights_info(UNCHECKED, weights="dinov2").usable
    too_big = right + bytes(240_000)  # more than half as much again as it is about: refused
    weights_server.routes["/big.pth"] = Route(too_big)
    with pytest.raises(ValueError):
        download_weights(
            UNCHECKED, weights="dinov2", url=weights_server.url("/big.pth"), force=True
        )
    assert path.read_bytes() == right and leftovers(weights_cache) == []
    import napari_segrep as sr

    encoder = sr.SegmentEncoder(UNCHECKED, in_channels=1, weights="dinov2")
    assert encoder.weights_source == "dinov2"


def test_catalogue__module_docstring_example_holds():
    import doctest

    assert doctest.testmod(catalogue).failed == 0


def test_readme__the_backbone_table_is_the_one_the_catalogue_generates():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "docs" / "backbone_table.py"
    spec = importlib.util.spec_from_file_location("backbone_table", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--check"]) == 0, (
        "README.md's backbone table: python docs/backbone_table.py"
    )
    assert module.table().count("\n| `") == len(CATALOGUE)
