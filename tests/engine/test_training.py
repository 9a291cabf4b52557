"""train_ssl: the loop, checkpoints, exact resume, stop, divergence."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import napari_segrep as sr
from napari_segrep._sample_data import make_cells
from napari_segrep.engine.checkpoint import load_checkpoint
from napari_segrep.engine.training import TrainingDiverged, train_ssl

from ..conftest import NARROW_BACKBONE

pytestmark = pytest.mark.usefixtures("narrow_backbone")

# Small and fast: 24 cells, 32 px crops, batch 8 -> 3 steps per epoch, the narrow test ResNet.
SMALL = {
    "backbone": NARROW_BACKBONE,
    "batch_size": 8,
    "crop_size": 32,
    "device": "cpu",
    "projection_hidden": 64,
    "projection_dim": 32,
}


@pytest.fixture(scope="module")
def cells():
    image, labels, _ = make_cells(shape=(160, 160), n_cells=24, seed=2)
    return image, labels


def _losses(result):
    return [r["loss"] for r in result.history]


def test_train_ssl__runs_reports_and_checkpoints(cells, tmp_path):
    image, labels = cells
    seen = []
    result = train_ssl(
        image, labels, epochs=2, checkpoint_dir=tmp_path, on_step=seen.append, **SMALL
    )
    n_segments = int(labels.max())
    steps_per_epoch = n_segments // 8
    assert len(result.history) == len(seen) == 2 * steps_per_epoch
    assert [r["step"] for r in seen] == list(range(1, 2 * steps_per_epoch + 1))
    for key in ("epoch", "step", "loss", "lr", "crops_per_s"):
        assert key in seen[0]
    assert all(np.isfinite(_losses(result)))
    assert not result.stopped and not result.encoder.training
    ckpt = load_checkpoint(result.checkpoint_path)
    assert ckpt["epoch"] == 2 and ckpt["kind"] == "training"
    assert ckpt["package_version"] == sr.__version__
    assert "C" in " ".join(ckpt["loss_state"])  # TiCo's running covariance is checkpointed
    assert ckpt["config"]["loss"] == "tico" and ckpt["config"]["optimizer"] == "lars"
    # the checkpoint's encoder is the trained one, ready for embed_segments
    loaded = sr.load_encoder(result.checkpoint_path)
    a = sr.embed_segments(image, labels, result.encoder, crop_size=32, device="cpu")
    b = sr.embed_segments(image, labels, loaded, crop_size=32, device="cpu")
    np.testing.assert_array_equal(a.filter(like="emb_"), b.filter(like="emb_"))
    untrained = sr.embed_segments(
        image, labels, sr.SegmentEncoder(NARROW_BACKBONE), crop_size=32, device="cpu"
    )
    assert not np.allclose(a.filter(like="emb_"), untrained.filter(like="emb_"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


@pytest.mark.parametrize("stop_after", [1, 3])  # mid-epoch, and at the end of epoch 1
def test_train_ssl__stop_and_resume_equals_an_uninterrupted_run(cells, tmp_path, stop_after):
    image, labels = cells
    full = train_ssl(image, labels, epochs=2, **SMALL)

    steps = []
    first = train_ssl(
        image,
        labels,
        epochs=2,
        checkpoint_dir=tmp_path / "run",
        on_step=steps.append,
        should_stop=lambda: len(steps) >= stop_after,
        **SMALL,
    )
    assert first.stopped and len(first.history) == stop_after
    assert first.checkpoint_path.exists()
    second = train_ssl(
        image,
        labels,
        epochs=2,
        checkpoint_dir=tmp_path / "run",
        resume=first.checkpoint_path,
        **SMALL,
    )
    assert _losses(second) == _losses(full)
    for (name, p), q in zip(
        full.encoder.state_dict().items(), second.encoder.state_dict().values(), strict=True
    ):
        assert torch.equal(p, q), name


def test_train_ssl__nan_loss_stops_with_a_clear_message_and_keeps_the_checkpoint(cells, tmp_path):
    image, labels = cells
    good = train_ssl(image, labels, epochs=1, checkpoint_dir=tmp_path, **SMALL)
    before = good.checkpoint_path.read_bytes()
    with pytest.raises(TrainingDiverged, match="the loss became nan .* learning rate"):
        train_ssl(
            image, labels, epochs=1, checkpoint_dir=tmp_path, lr=1e30, warmup_fraction=0.0, **SMALL
        )
    assert good.checkpoint_path.read_bytes() == before


def test_train_ssl__options_losses_optimisers_and_no_mask(cells):
    image, labels = cells
    for loss, optimizer in (("ntxent", "adamw"), ("vicreg", "lars")):
        result = train_ssl(
            image,
            labels,
            epochs=1,
            loss=loss,
            optimizer=optimizer,
            image_masking=False,
            feature_masking=False,
            grad_accumulate=2,
            **SMALL,
        )
        assert len(result.history) == 1  # 3 micro-batches per epoch, 2 per step
        assert np.isfinite(_losses(result)).all()
        assert result.encoder.image_masking is False and result.encoder.feature_masking is False


def test_train_ssl__does_not_modify_the_given_encoder(cells):
    image, labels = cells
    enc = sr.SegmentEncoder(NARROW_BACKBONE, seed=1)
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    result = train_ssl(image, labels, encoder=enc, epochs=1, **SMALL)
    assert result.encoder is not enc
    assert all(torch.equal(before[k], v) for k, v in enc.state_dict().items())


def test_train_ssl__bad_input(cells, tmp_path):
    image, labels = cells
    with pytest.raises(ValueError, match="at least 2"):
        train_ssl(image, np.zeros_like(labels), epochs=1, **SMALL)
    with pytest.warns(UserWarning, match="skipped"):
        with pytest.raises(ValueError, match="segment"):
            train_ssl(image, labels, epochs=1, min_size=10_000, **SMALL)
    with pytest.raises(ValueError, match="optimizer"):
        train_ssl(image, labels, optimizer="sgd", **SMALL)
    with pytest.raises(ValueError, match="unknown loss|choose"):
        train_ssl(image, labels, loss="byol", **SMALL)
    with pytest.raises(TypeError, match="train_ssl"):
        train_ssl(image, labels, bogus_option=1, **SMALL)
    encoder_ckpt = sr.save_encoder(sr.SegmentEncoder(NARROW_BACKBONE), tmp_path / "enc.pt")
    with pytest.raises(ValueError, match="not a training checkpoint"):
        train_ssl(image, labels, resume=encoder_ckpt, **SMALL)
