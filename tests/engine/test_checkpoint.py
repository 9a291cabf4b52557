"""Checkpoints: the file format (weights_only load, clear errors) and encoder round trips."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
import torchvision

import napari_segrep as sr
from napari_segrep.engine.checkpoint import (
    CHECKPOINT_FORMAT,
    encoder_state_from_checkpoint,
    load_checkpoint,
    save_checkpoint,
)

from ..conftest import NARROW_BACKBONE, blob_masks

pytestmark = pytest.mark.usefixtures("narrow_backbone")


def test_checkpoint__save_load_round_trip(tmp_path):
    enc = sr.SegmentEncoder(NARROW_BACKBONE, in_channels=2, feature_masking=False, seed=8).eval()
    with torch.no_grad():
        enc.backbone.layer1[0].bn1.running_mean.add_(0.25)  # state beyond the init
    path = sr.save_encoder(enc, tmp_path / "enc.pt")
    loaded = sr.load_encoder(path)
    assert not loaded.training and loaded.feature_masking is False
    x, m = torch.rand(2, 2, 32, 32), blob_masks(2, 32)
    assert torch.equal(enc(x, m), loaded(x, m))
    direct = sr.SegmentEncoder(
        NARROW_BACKBONE, in_channels=2, feature_masking=False, weights=path
    ).eval()
    assert torch.equal(enc(x, m), direct(x, m))
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


def test_checkpoint__state_dict_keys_are_torchvision_s_under_backbone(tmp_path):
    """Checkpoints written before keep loading: the encoder's keys are torchvision's resnet18
    keys (classifier dropped) under ``backbone.``, plus the input standardisation buffers."""
    enc = sr.SegmentEncoder("resnet18", in_channels=1)
    tv_keys = [k for k in torchvision.models.resnet18().state_dict() if not k.startswith("fc.")]
    expected = [f"backbone.{k}" for k in tv_keys] + ["input_mean", "input_std"]
    assert sorted(enc.state_dict()) == sorted(expected)
    _, state = encoder_state_from_checkpoint(sr.save_encoder(enc, tmp_path / "enc.pt"))
    assert "backbone.conv1.weight" in state and "backbone.layer1.0.bn1.running_mean" in state
    assert sorted(state) == sorted(expected)


def test_checkpoint__mismatched_encoder_is_refused(tmp_path):
    path = sr.save_encoder(sr.SegmentEncoder(NARROW_BACKBONE, in_channels=3), tmp_path / "rgb.pt")
    with pytest.raises(ValueError, match="in_channels=3"):
        sr.SegmentEncoder(NARROW_BACKBONE, in_channels=1, weights=path)


def test_save_checkpoint__adds_the_format_keys_and_loads_weights_only(tmp_path):
    path = save_checkpoint({"kind": "test", "t": torch.arange(3)}, tmp_path / "c.pt")
    payload = load_checkpoint(path)
    assert payload["format"] == CHECKPOINT_FORMAT and payload["format_version"] == 1
    assert payload["package_version"] == sr.__version__
    assert torch.equal(payload["t"], torch.arange(3))
    with pytest.raises(ValueError, match="has no encoder"):
        encoder_state_from_checkpoint(path)


def test_checkpoint__bad_files_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        sr.load_encoder(tmp_path / "missing.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a checkpoint")
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        sr.load_encoder(garbage)
    pickled = tmp_path / "pickled.pt"
    torch.save({"format": "napari-segrep", "obj": _Arbitrary()}, pickled)
    with pytest.raises(ValueError, match="pickled Python objects"):
        sr.load_encoder(pickled)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    with pytest.raises(ValueError, match="not a napari-segrep checkpoint"):
        sr.load_encoder(foreign)


class _Arbitrary:
    def __reduce__(self):
        return (np.array, ([1, 2, 3],))


def test_arbitrary_pickle_helper__is_really_an_arbitrary_object():
    assert pickle.loads(pickle.dumps(_Arbitrary())).tolist() == [1, 2, 3]
