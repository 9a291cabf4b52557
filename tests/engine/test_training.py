"""train_ssl: the loop, checkpoints, exact resume, stop, divergence, quality records."""

from __future__ import annotations

import threading
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import napari_segrep as sr
from napari_segrep._sample_data import make_cells
from napari_segrep.engine.checkpoint import load_checkpoint
from napari_segrep.engine.quality import RepresentationCollapseWarning
from napari_segrep.engine.training import train_ssl
from napari_segrep.errors import TrainingDiverged

from ..conftest import NARROW_BACKBONE, NARROW_BACKBONE_3D, TRAIN_SMALL

pytestmark = pytest.mark.usefixtures("narrow_backbone")

SMALL = TRAIN_SMALL  # 24 cells -> 3 steps per epoch

# SegRep's own recipe (the defaults before issue 3/6): what some failure modes were found with.
SEGREP_RECIPE = {"loss": "tico", "optimizer": "lars", "batchnorm_stats": "update"}


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
        image, labels, epochs=2, loss="tico", checkpoint_dir=tmp_path, on_step=seen.append, **SMALL
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
    assert ckpt["config"]["loss"] == "tico" and ckpt["config"]["optimizer"] == "adamw"
    assert ckpt["config"]["batchnorm_stats"] == "frozen"
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


@given(
    steps_per_epoch=st.integers(1, 10_000),
    min_steps=st.integers(1, 5_000),
    epochs=st.none() | st.integers(1, 500),
)
def test_train_config__default_epochs_give_at_least_min_steps_and_at_least_ten(
    steps_per_epoch, min_steps, epochs
):
    from napari_segrep.engine.train_config import DEFAULT_EPOCHS, TrainConfig

    config = TrainConfig(epochs=epochs, min_steps=min_steps)
    chosen = config.resolve_epochs(steps_per_epoch)
    if epochs is not None:
        assert chosen == epochs  # the user's number, whatever it gives
    else:
        assert chosen >= DEFAULT_EPOCHS and chosen * steps_per_epoch >= min_steps
        # no more than needed: one epoch fewer would miss one of the two floors
        assert chosen == DEFAULT_EPOCHS or (chosen - 1) * steps_per_epoch < min_steps


def test_train_ssl__by_default_few_segments_train_for_more_epochs_and_the_checkpoint_says_so(
    cells, tmp_path
):
    image, labels = cells  # 24 cells, batch 8: 3 steps per epoch
    result = train_ssl(image, labels, min_steps=36, checkpoint_dir=tmp_path, **SMALL)
    assert len(result.history) == 36 and result.history[-1]["epoch"] == 12
    assert result.history[-1]["total_steps"] == 36 and len(result.quality) == 13
    assert load_checkpoint(result.checkpoint_path)["config"]["epochs"] == 12
    # resuming it (its config holds 12) continues the same run: nothing left to do
    again = train_ssl(image, labels, min_steps=36, resume=result.checkpoint_path, **SMALL)
    assert [r["step"] for r in again.history] == list(range(1, 37)) and not again.stopped
    assert _losses(again) == _losses(result)


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
    # the quality series continues: the same records, the start's from the first part
    assert len(full.quality) == 3 and second.quality == full.quality
    assert first.quality == full.quality[: len(first.quality)]


def test_train_ssl__nan_loss_stops_with_a_clear_message_and_keeps_the_checkpoint(cells, tmp_path):
    image, labels = cells
    good = train_ssl(image, labels, epochs=1, checkpoint_dir=tmp_path, **SMALL)
    before = good.checkpoint_path.read_bytes()
    # A new run may not write into the folder of another (refused before any step), so the
    # diverging run has a folder of its own; it writes no checkpoint, and leaves no lock.
    with pytest.raises(TrainingDiverged, match="the loss became nan .* learning rate"):
        train_ssl(
            image,
            labels,
            epochs=1,
            checkpoint_dir=tmp_path / "diverged",
            lr=1e30,
            warmup_fraction=0.0,
            **SMALL,
        )
    assert good.checkpoint_path.read_bytes() == before
    assert not list((tmp_path / "diverged").iterdir())


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


# ---------------------------------------------------------------------- no silent garbage
def _finite_embeddings(image, labels, encoder):
    df = sr.embed_segments(image, labels, encoder, crop_size=32, device="cpu")
    return np.isfinite(df.filter(like="emb_").to_numpy()).all()


@pytest.mark.parametrize(
    ("epochs", "lr", "where", "saved"),
    [(1, 1e7, "epoch 1, step 3", None), (3, 3e5, "epoch 2, step 6", 1)],
)
def test_train_ssl__a_model_that_embeds_nan_is_neither_saved_nor_returned(
    cells, tmp_path, epochs, lr, where, saved
):
    """Every loss stays finite, but the weights blow up. lr=1e7 used to finish normally with a
    model that embeds every segment as NaN; lr=3e5 used to save BatchNorm running variances of
    Inf as "the last good checkpoint" after epoch 2. Both stop at the first bad epoch end, and
    only a usable checkpoint is on disk (epoch 1's for lr=3e5, none for lr=1e7)."""
    image, labels = cells
    steps = []
    with pytest.raises(TrainingDiverged, match=rf"{where}.*[Ll]ower the learning rate"):
        train_ssl(
            image,
            labels,
            epochs=epochs,
            lr=lr,
            checkpoint_dir=tmp_path,
            on_step=steps.append,
            **SEGREP_RECIPE,
            **SMALL,
        )
    assert np.isfinite([r["loss"] for r in steps]).all()
    last = tmp_path / "last.pt"
    if saved is None:
        assert not last.exists()
    else:
        assert load_checkpoint(last)["epoch"] == saved
        assert _finite_embeddings(image, labels, sr.load_encoder(last))
    with pytest.raises(TrainingDiverged, match=where):  # without a checkpoint folder too
        train_ssl(image, labels, epochs=epochs, lr=lr, **SEGREP_RECIPE, **SMALL)


def test_trainer__refuses_to_save_non_finite_state(cells, tmp_path):
    from napari_segrep.engine.dataset import SegmentDataset
    from napari_segrep.engine.train_config import TrainConfig
    from napari_segrep.engine.trainer import Trainer

    image, labels = cells
    config = TrainConfig(loss="tico", **{k: v for k, v in SMALL.items() if k != "device"})
    trainer = Trainer(SegmentDataset(image, labels, crop_size=32), config, device="cpu")
    name = next(k for k, v in trainer.loss.state_dict().items() if v.is_floating_point())
    with torch.no_grad():
        trainer.loss.state_dict()[name].view(-1)[0] = float("nan")
    with pytest.raises(TrainingDiverged, match=rf"NaN or Inf.*{name}.*step 0"):
        trainer.save(tmp_path / "last.pt")
    assert not (tmp_path / "last.pt").exists()


def test_train_ssl__resume_from_a_non_finite_checkpoint_is_refused(cells, tmp_path):
    image, labels = cells
    path = train_ssl(image, labels, epochs=1, checkpoint_dir=tmp_path, **SMALL).checkpoint_path
    payload = torch.load(path, weights_only=True)
    payload["head"]["net.0.weight"][0, 0] = float("nan")
    torch.save(payload, path)
    with pytest.raises(ValueError, match=r"NaN or Inf.*head.*net.0.weight"):
        train_ssl(image, labels, epochs=2, resume=path, **SMALL)


def test_train_ssl__too_few_segments_for_grad_accumulate_names_the_numbers(cells):
    image, labels = cells  # 24 segments: 3 micro-batches of 8
    with pytest.raises(ValueError, match=r"grad_accumulate=8.*24 segment.*3 micro-batch"):
        train_ssl(image, labels, epochs=1, grad_accumulate=8, **SMALL)


def test_train_ssl__absurd_crop_size_is_refused_before_any_work(cells):
    image, labels = cells
    with pytest.raises(ValueError, match="crop_size=100000"):
        train_ssl(image, labels, epochs=1, **{**SMALL, "crop_size": 100_000})
    with pytest.raises(ValueError, match=r"crop_size=400.*longer side"):  # 160 px images
        train_ssl(image, labels, epochs=1, **{**SMALL, "crop_size": 400})


def test_train_ssl__never_overwrites_another_runs_checkpoint(cells, tmp_path):
    image, labels = cells
    first = train_ssl(image, labels, epochs=1, checkpoint_dir=tmp_path / "run", **SMALL)
    before = first.checkpoint_path.read_bytes()
    steps = []
    with pytest.raises(ValueError, match=r"already holds a training run .*resume=.*--resume-chec"):
        train_ssl(
            image, labels, epochs=1, checkpoint_dir=tmp_path / "run", on_step=steps.append, **SMALL
        )
    assert steps == []  # refused before any step
    assert first.checkpoint_path.read_bytes() == before
    # resuming that very checkpoint into its folder is the same run: it continues
    second = train_ssl(
        image,
        labels,
        epochs=2,
        checkpoint_dir=tmp_path / "run",
        resume=first.checkpoint_path,
        **SMALL,
    )
    assert load_checkpoint(second.checkpoint_path)["epoch"] == 2
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["last.pt"]


def test_train_ssl__a_folder_in_use_by_another_training_is_refused(cells, tmp_path):
    """Two trainings into one folder at once: the second fails clearly, the first goes on and
    its lock is gone when it ends."""
    image, labels = cells
    started, release = threading.Event(), threading.Event()
    outcome = {}

    def first_training():
        def on_step(record):
            started.set()
            release.wait(120)

        outcome["result"] = train_ssl(
            image, labels, epochs=1, checkpoint_dir=tmp_path, on_step=on_step, **SMALL
        )

    thread = threading.Thread(target=first_training)
    thread.start()
    try:
        assert started.wait(120)
        with pytest.raises(ValueError, match=rf"{tmp_path} is in use by another training"):
            train_ssl(image, labels, epochs=1, checkpoint_dir=tmp_path, **SMALL)
    finally:
        release.set()
        thread.join(120)
    assert load_checkpoint(outcome["result"].checkpoint_path)["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_train_ssl__a_failed_checkpoint_write_keeps_the_previous_one(cells, tmp_path):
    from ..test_io import file_size_limit

    image, labels = cells
    first = train_ssl(image, labels, epochs=1, checkpoint_dir=tmp_path, **SMALL)
    before = first.checkpoint_path.read_bytes()
    with file_size_limit(4096), pytest.raises(OSError) as info:
        train_ssl(
            image, labels, epochs=2, checkpoint_dir=tmp_path, resume=first.checkpoint_path, **SMALL
        )
    assert str(info.value) == (
        f"could not write the checkpoint {first.checkpoint_path}: File too large (disk full?); "
        "the previous checkpoint is kept"
    )
    assert first.checkpoint_path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


# ---------------------------------------------------------------------- quality figures
QUALITY_KEYS = {
    "epoch",
    "step",
    "loss",
    "effective_rank",
    "view_agreement",
    "monitor",
    "n",
    "collapsed",
}


def test_train_ssl__quality_records_at_the_start_and_after_every_epoch(cells, tmp_path):
    image, labels = cells
    seen = []
    with warnings.catch_warnings():
        warnings.simplefilter("error", RepresentationCollapseWarning)  # a normal run: none
        result = train_ssl(
            image, labels, epochs=2, checkpoint_dir=tmp_path, on_quality=seen.append, **SMALL
        )
    assert result.quality == seen
    assert [(r["epoch"], r["step"]) for r in seen] == [(0, 0), (1, 3), (2, 6)]
    for record in seen:
        assert set(record) == QUALITY_KEYS
        # 24 segments: too few to hold any back; all of them are monitored
        assert record["monitor"] == "training" and record["n"] == 24
        assert 1.0 <= record["effective_rank"] <= 2 * 24
        assert 0.0 <= record["view_agreement"] <= 1.0
        assert record["collapsed"] is False
    assert seen[0]["loss"] is None
    assert seen[1]["loss"] == pytest.approx(np.mean(_losses(result)[:3]), rel=1e-12)
    assert load_checkpoint(result.checkpoint_path)["quality"] == seen


def test_train_ssl__the_loss_terms_are_in_the_step_records(cells):
    image, labels = cells
    for loss, terms in (("tico", ("invariance", "covariance")), ("ntxent", ())):
        history = train_ssl(image, labels, epochs=1, loss=loss, monitor_size=0, **SMALL).history
        for record in history:
            assert {k for k in record if k.startswith("loss_")} == {f"loss_{t}" for t in terms}
            if terms:
                total = sum(record[f"loss_{t}"] for t in terms)
                assert total == pytest.approx(record["loss"], rel=1e-5, abs=1e-6)


def test_train_ssl__monitoring_changes_no_training_result(cells):
    """The evaluations run in eval mode, without gradients, and leave the random state as it
    was: with the monitor set among the training segments, the run is the one without it."""
    image, labels = cells
    monitored = train_ssl(image, labels, epochs=2, **SMALL)
    plain = train_ssl(image, labels, epochs=2, monitor_size=0, **SMALL)
    assert len(monitored.quality) == 3 and plain.quality == []
    assert _losses(monitored) == _losses(plain)
    for (name, p), q in zip(
        monitored.encoder.state_dict().items(), plain.encoder.state_dict().values(), strict=True
    ):
        assert torch.equal(p, q), name


def test_trainer__held_back_segments_are_never_trained_on(cells):
    from napari_segrep.engine.dataset import SegmentDataset
    from napari_segrep.engine.train_config import TrainConfig
    from napari_segrep.engine.trainer import Trainer

    image, labels = cells
    options = {k: v for k, v in SMALL.items() if k != "device"}
    config = TrainConfig(monitor_size=6, monitor_hold_out=True, **options)
    dataset = SegmentDataset(image, labels, crop_size=32)
    trainer = Trainer(dataset, config, device="cpu")
    held = set(trainer.split.monitor.tolist())
    assert trainer.split.held_back and len(held) == 6
    assert trainer.steps_per_epoch == 2  # 18 training segments, batches of 8
    drawn = set()
    for epoch in range(4):
        for batch in trainer._loader(epoch, 0).batch_sampler:
            drawn.update(batch)
    assert not drawn & held
    assert drawn <= set(trainer.train_indices.tolist())
    assert len(drawn) > 12  # the sampler goes over the training segments, not a fixed few
    # deterministic: another trainer with the same seed holds back the same segments
    again = Trainer(dataset, config, device="cpu")
    assert set(again.split.monitor.tolist()) == held
    assert [list(b) for b in again._loader(3, 0).batch_sampler] == [
        list(b) for b in trainer._loader(3, 0).batch_sampler
    ]


def test_train_ssl__held_back_run_stops_and_resumes_exactly(cells, tmp_path):
    image, labels = cells
    options = {**SMALL, "monitor_size": 6, "monitor_hold_out": True}
    full = train_ssl(image, labels, epochs=2, **options)
    assert [r["monitor"] for r in full.quality] == ["held-back"] * 3
    assert {r["n"] for r in full.quality} == {6}
    steps = []
    first = train_ssl(
        image,
        labels,
        epochs=2,
        checkpoint_dir=tmp_path,
        on_step=steps.append,
        should_stop=lambda: len(steps) >= 3,  # in the middle of epoch 2
        **options,
    )
    assert first.stopped and [r["epoch"] for r in first.quality] == [0, 1]
    seen = []
    second = train_ssl(
        image,
        labels,
        epochs=2,
        checkpoint_dir=tmp_path,
        resume=first.checkpoint_path,
        on_quality=seen.append,
        **options,
    )
    assert _losses(second) == _losses(full)
    assert second.quality == full.quality
    assert seen == [full.quality[0], full.quality[2]]  # the run's start first, then epoch 2


def test_train_ssl__a_collapse_warns_once_and_is_recorded(cells):
    """A learning rate far too high (but finite losses and weights) squeezes the embeddings
    into a few directions: the effective rank falls far below its start."""
    image, labels = cells
    with pytest.warns(RepresentationCollapseWarning) as caught:
        result = train_ssl(
            image, labels, epochs=2, optimizer="lars", lr=100.0, warmup_fraction=0.0, **SMALL
        )
    start, *after = result.quality
    assert not start["collapsed"] and after[0]["collapsed"]
    assert after[0]["effective_rank"] < 0.3 * start["effective_rank"]
    collapse = [w for w in caught if issubclass(w.category, RepresentationCollapseWarning)]
    assert len(collapse) == 1  # once, however many epochs stay collapsed
    message = str(collapse[0].message)
    assert "collapsed" in message and "at epoch 1" in message
    assert "lower learning rate" in message and "another loss" in message


def test_train_ssl__resumes_a_checkpoint_written_before_quality_records(cells, tmp_path):
    """Checkpoints of earlier versions have no quality records, no monitor set and no TiCo
    ``initialized`` flag: they resume (TiCo's non-zero covariance continues), and the quality
    series starts where the run resumes."""
    image, labels = cells
    steps = []
    options = {"loss": "tico", **SMALL}
    path = train_ssl(
        image,
        labels,
        epochs=2,
        checkpoint_dir=tmp_path,
        on_step=steps.append,
        should_stop=lambda: len(steps) >= 3,  # at the end of epoch 1
        **options,
    ).checkpoint_path
    payload = torch.load(path, weights_only=True)
    for key in ("quality", "monitor"):
        del payload[key]
    del payload["loss_state"]["initialized"]
    torch.save(payload, path)
    resumed = train_ssl(image, labels, epochs=2, checkpoint_dir=tmp_path, resume=path, **options)
    continued = train_ssl(image, labels, epochs=2, **options)
    assert _losses(resumed) == _losses(continued)
    # the stop came after step 3, before epoch 1's end was processed: the series starts there
    assert [(r["epoch"], r["step"]) for r in resumed.quality] == [(0, 3), (1, 3), (2, 6)]
    assert resumed.quality[0]["effective_rank"] == resumed.quality[1]["effective_rank"]


def _batchnorm_statistics(encoder) -> dict:
    return {
        k: v.clone()
        for k, v in encoder.state_dict().items()
        if "running_" in k or "num_batches_tracked" in k
    }


def test_train_ssl__batchnorm_statistics_stay_those_of_the_start_unless_asked(cells):
    image, labels = cells
    start = sr.SegmentEncoder(NARROW_BACKBONE, seed=3)
    before = _batchnorm_statistics(start)
    frozen = train_ssl(image, labels, encoder=start, epochs=1, **SMALL)
    after = _batchnorm_statistics(frozen.encoder)
    assert len(before) > 0 and before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    # ... while every weight trained, BatchNorm's own weights and biases included
    start_state, trained = start.state_dict(), frozen.encoder.state_dict()
    bn_weights = [k for k in trained if k.endswith("bn1.weight")]
    assert bn_weights and all(not torch.equal(trained[k], start_state[k]) for k in bn_weights)
    assert not frozen.encoder.training and not any(m.training for m in frozen.encoder.modules())

    updated = train_ssl(image, labels, encoder=start, epochs=1, batchnorm_stats="update", **SMALL)
    assert any(
        not torch.equal(before[k], v) for k, v in _batchnorm_statistics(updated.encoder).items()
    )
    with pytest.raises(ValueError, match="batchnorm_stats"):
        train_ssl(image, labels, epochs=1, batchnorm_stats="sometimes", **SMALL)


@pytest.fixture(scope="module")
def easy_cells():
    """Two kinds of cells, bright discs and dim elongated ones: an easy problem."""
    image, labels, _ = make_cells(shape=(256, 256), n_cells=64, seed=5)
    return image, labels


@pytest.mark.parametrize("loss", ["ntxent", "tico", "vicreg"])
def test_train_ssl__every_loss_falls_from_the_first_epoch_with_the_defaults(easy_cells, loss):
    image, labels = easy_cells
    result = train_ssl(
        image, labels, loss=loss, epochs=4, monitor_size=0, **{**SMALL, "batch_size": 16}
    )
    per_epoch = [
        np.mean([r["loss"] for r in result.history if r["epoch"] == e]) for e in range(1, 5)
    ]
    assert per_epoch[1] < per_epoch[0] and per_epoch[-1] < per_epoch[0], per_epoch


# ----------------------------------------------------------------------------- volumes
SPACING = (2.0, 0.5, 0.5)
SMALL_3D = {**SMALL, "backbone": NARROW_BACKBONE_3D, "crop_size": 16}


@pytest.fixture(scope="module")
def volumes(narrow_backbone_3d):
    from .test_dataset import blob_volumes

    images, labels = blob_volumes(2, shape=(10, 40, 40), spacing=SPACING, n=6, seed=7)
    return images, labels


@pytest.mark.usefixtures("one_torch_thread")  # many small ops: far faster
def test_train_ssl__trains_a_3d_encoder_on_volumes_and_its_checkpoint_reloads(volumes, tmp_path):
    """axes="zyx" with spacing: 3D objects, a narrow 3D ResNet, 2 epochs: finite losses; the
    checkpoint records the axes and spacing, reloads as a 3D encoder that embeds the volumes as
    the trained one does, and resumes (the run is finished: nothing left to do)."""
    images, labels = volumes
    options = {"axes": "zyx", "spacing": SPACING, "epochs": 2, **SMALL_3D}
    result = train_ssl(images, labels, checkpoint_dir=tmp_path, **options)
    n_objects = sum(len(np.unique(lab)) - 1 for lab in labels)
    assert len(result.history) == 2 * (n_objects // 8) and np.isfinite(_losses(result)).all()
    assert result.encoder.spatial_dims == 3 and len(result.quality) == 3
    ckpt = load_checkpoint(result.checkpoint_path)
    assert ckpt["config"]["axes"] == "zyx" and ckpt["config"]["spacing"] == list(SPACING)
    assert ckpt["config"]["crop_size"] == 16 and ckpt["config"]["backbone"] == NARROW_BACKBONE_3D
    loaded = sr.load_encoder(result.checkpoint_path)
    assert loaded.spatial_dims == 3
    kwargs = {"axes": "zyx", "spacing": SPACING, "crop_size": 16, "device": "cpu"}
    a = sr.embed_segments(images[0], labels[0], result.encoder, **kwargs)
    b = sr.embed_segments(images[0], labels[0], loaded, **kwargs)
    assert "centroid_z" in a and len(a) == len(np.unique(labels[0])) - 1
    np.testing.assert_array_equal(a.filter(like="emb_"), b.filter(like="emb_"))
    again = train_ssl(images, labels, resume=result.checkpoint_path, **options)
    assert _losses(again) == _losses(result)
    with pytest.warns(UserWarning, match=r"spacing=\(1.0, 1.0, 1.0\), but it was trained with"):
        train_ssl(
            images, labels, resume=result.checkpoint_path, **{**options, "spacing": (1, 1, 1)}
        )


@pytest.mark.usefixtures("one_torch_thread")  # many small ops: far faster
def test_train_ssl__a_stopped_3d_run_resumes_exactly(volumes, tmp_path):
    """Stopped after its first step (mid-epoch) and resumed: the same losses and weights as the
    uninterrupted run."""
    images, labels = volumes
    options = {"axes": "zyx", "spacing": SPACING, "epochs": 1, **SMALL_3D, "batch_size": 4}
    full = train_ssl(images, labels, **options)
    steps = []
    first = train_ssl(
        images,
        labels,
        checkpoint_dir=tmp_path,
        on_step=steps.append,
        should_stop=lambda: len(steps) >= 1,
        **options,
    )
    assert first.stopped and len(first.history) == 1
    second = train_ssl(images, labels, resume=first.checkpoint_path, **options)
    assert _losses(second) == _losses(full)
    assert len(full.history) == 3
    for p, q in zip(full.encoder.parameters(), second.encoder.parameters(), strict=True):
        assert torch.equal(p, q)


def test_train_ssl__an_encoder_of_the_other_dimension_is_refused_before_any_work(
    volumes, cells, narrow_backbone
):
    """A 2D encoder (or backbone) for volumes, a 3D one for 2D images: one ValueError with the
    fix, before the data is even checked (the image holding NaN is never looked at)."""
    images, labels = volumes
    broken = images[0].copy()
    broken[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match=r"embeds 2D crops but the objects are 3D.*resnet18_3d"):
        train_ssl(broken, labels[0], encoder=sr.SegmentEncoder(NARROW_BACKBONE), axes="zyx")
    with pytest.raises(ValueError, match=r"backbone='resnet18' embeds 2D crops.*resnet18_3d"):
        train_ssl(broken, labels[0], backbone="resnet18", axes="zyx")
    image, lab = cells
    with pytest.raises(ValueError, match=r"embeds 3D volumes but the objects are 2D.*resnet18"):
        train_ssl(np.full(image.shape, np.nan, np.float32), lab, backbone=NARROW_BACKBONE_3D)
    with pytest.raises(ValueError, match=r"the labels are 3D .*axes='zyx' for a z-stack"):
        train_ssl(images, labels, **SMALL_3D)


@pytest.mark.usefixtures("one_torch_thread")  # many small ops: far faster
def test_train_ssl__volumes_default_to_the_3d_backbone_and_a_smaller_crop(volumes, tmp_path):
    from napari_segrep.engine.dataset import SegmentDataset
    from napari_segrep.engine.embed import VOLUME_BACKBONE
    from napari_segrep.engine.train_config import TrainConfig
    from napari_segrep.engine.trainer import Trainer
    from napari_segrep.engine.training import default_backbone

    images, labels = volumes
    dataset = SegmentDataset(images, labels, axes="zyx", spacing=SPACING, crop_size=16)
    assert default_backbone(dataset.layout) == VOLUME_BACKBONE == "resnet18_3d"
    config = TrainConfig(backbone=VOLUME_BACKBONE, crop_size=16, batch_size=8, epochs=1)
    trainer = Trainer(dataset, config, device="cpu")  # the default 3D network is built
    assert trainer.model.encoder.backbone_name == "resnet18_3d"
    assert trainer.model.encoder.spatial_dims == 3
    small = {k: v for k, v in SMALL_3D.items() if k != "crop_size"}
    result = train_ssl(images, labels, axes="zyx", epochs=1, checkpoint_dir=tmp_path, **small)
    assert load_checkpoint(result.checkpoint_path)["config"]["crop_size"] == 32  # as embedding


@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize("format_3d", ["pipeline", "channels_last_3d"])
def test_trainer__fast_layouts_of_volumes_train_the_same(volumes, monkeypatch, format_3d):
    """The layouts the trainer uses on CUDA, the pipeline's (4D channels_last, 5D
    ``MEMORY_FORMAT_3D``: contiguous today) and channels_last_3d should a measurement choose
    it, here on the CPU: every 5D weight in that layout, the same losses as without."""
    from napari_segrep.engine import pipeline
    from napari_segrep.engine.dataset import SegmentDataset
    from napari_segrep.engine.train_config import TrainConfig
    from napari_segrep.engine.trainer import Trainer

    if format_3d == "channels_last_3d":
        monkeypatch.setattr(pipeline, "MEMORY_FORMAT_3D", torch.channels_last_3d)
    images, labels = volumes
    dataset = SegmentDataset(images, labels, axes="zyx", spacing=SPACING, crop_size=16)
    small = {k: v for k, v in SMALL_3D.items() if k != "device"}
    config = TrainConfig(**small, epochs=1, monitor_size=0)
    plain, fast = Trainer(dataset, config, device="cpu"), Trainer(dataset, config, device="cpu")
    fast.use_fast_layouts()
    convs = [p for p in fast.model.encoder.parameters() if p.ndim == 5 and p.shape[1] > 1]
    assert convs and all(c.is_contiguous(memory_format=pipeline.MEMORY_FORMAT_3D) for c in convs)
    if format_3d == "channels_last_3d":
        assert not convs[0].is_contiguous()
    losses = [[r["loss"] for r in t.steps() if "loss" in r] for t in (plain, fast)]
    assert len(losses[0]) == 1
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-4)
