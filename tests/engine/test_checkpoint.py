"""Checkpoints: the file format (weights_only load, clear errors) and encoder round trips."""

from __future__ import annotations

import pickle
from functools import partial

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

from ..conftest import NARROW_BACKBONE, TRAIN_SMALL, blob_masks

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


# ---------------------------------------------------------------------- no silent garbage
def test_load_checkpoint__non_finite_weights_are_refused_naming_the_tensor(tmp_path):
    enc = sr.SegmentEncoder(NARROW_BACKBONE)
    with torch.no_grad():
        enc.backbone.layer1[0].bn1.running_var[0] = float("inf")
    path = sr.save_encoder(enc, tmp_path / "diverged.pt")
    direct = partial(sr.SegmentEncoder, NARROW_BACKBONE)
    for load in (load_checkpoint, sr.load_encoder, lambda p: direct(weights=p)):
        with pytest.raises(ValueError, match="NaN or Inf") as info:
            load(path)
        message = str(info.value)
        assert str(path) in message and "layer1.0.bn1.running_var" in message
        assert "diverged" in message


_CONFIG_PROBLEMS = {
    "no backbone": (lambda c, s: c.pop("backbone"), "'backbone' is missing"),
    "unknown backbone": (lambda c, s: c.update(backbone="resnet_nope"), "unknown backbone"),
    "in_channels huge": (lambda c, s: c.update(in_channels=10**7), r"in_channels=10000000"),
    "in_channels text": (lambda c, s: c.update(in_channels="1"), "in_channels"),
    "in_channels vs weights": (lambda c, s: c.update(in_channels=3), "weights are for 1"),
    "masking not bool": (lambda c, s: c.update(image_masking="yes"), "image_masking"),
    "embedding_dim": (lambda c, s: c.update(embedding_dim=512), "embedding_dim=512.* 64"),
    "empty config": (lambda c, s: c.clear(), "'backbone' is missing"),
    "missing weight": (lambda c, s: s.pop("backbone.conv1.weight"), "missing.*conv1.weight"),
    "unexpected weight": (lambda c, s: s.update({"backbone.fc.w": torch.zeros(2)}), "unexpected"),
    "wrong shape": (
        lambda c, s: s.update({"backbone.layer1.0.conv1.weight": torch.zeros(8, 8, 1, 1)}),
        r"layer1.0.conv1.weight.*\(8, 8, 1, 1\).*\(8, 8, 3, 3\)",
    ),
}


@pytest.mark.parametrize("problem", list(_CONFIG_PROBLEMS))
def test_load_encoder__a_bad_config_or_weights_give_one_clear_error(tmp_path, problem):
    """Checked before the encoder is built (in_channels=10**7 would allocate ~125 GB)."""
    change, match = _CONFIG_PROBLEMS[problem]
    enc = sr.SegmentEncoder(NARROW_BACKBONE)
    config, state = enc.config(), dict(enc.state_dict())
    change(config, state)
    payload = {"kind": "encoder", "encoder_config": config, "encoder": state}
    path = save_checkpoint(payload, tmp_path / "odd.pt")
    direct = partial(sr.SegmentEncoder, NARROW_BACKBONE)
    for load in (sr.load_encoder, lambda p: direct(weights=p)):
        with pytest.raises(ValueError, match=match) as info:
            load(path)
        assert str(path) in str(info.value)


def test_load_checkpoint__garbage_is_not_called_pickled_objects(tmp_path):
    """Random bytes, a truncated torch file and a plain pickle are 'not a napari-segrep
    checkpoint'; torch's advice to pass weights_only=False is never shown."""
    good = sr.save_encoder(sr.SegmentEncoder(NARROW_BACKBONE), tmp_path / "good.pt")
    files = {
        "random.pt": np.random.default_rng(0).bytes(4096),
        "truncated.pt": good.read_bytes()[:5000],
        "plain_pickle.pt": pickle.dumps({"a": 1}, protocol=4),
        "empty.pt": b"",
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ValueError) as info:
            sr.load_encoder(tmp_path / name)
        message = str(info.value)
        assert "not a napari-segrep checkpoint" in message and "corrupt" in message, name
        assert "weights_only" not in message and "pickled" not in message, name


def test_load_checkpoint__arbitrary_objects_are_named_without_torch_s_advice(tmp_path):
    pickled = tmp_path / "objects.pt"
    torch.save({"format": "napari-segrep", "obj": _Arbitrary()}, pickled)
    with pytest.raises(ValueError, match="pickled Python objects") as info:
        load_checkpoint(pickled)
    assert "numpy" in str(info.value)  # the class it would have to run
    assert "weights_only" not in str(info.value)


# ---------------------------------------------------------------------- training checkpoints
@pytest.fixture(scope="module")
def training_run(tmp_path_factory):
    """A real training checkpoint (1 epoch of the narrow ResNet on 24 cells) and its data."""
    from napari_segrep._sample_data import make_cells
    from napari_segrep.engine.training import train_ssl

    image, labels, _ = make_cells(shape=(160, 160), n_cells=24, seed=2)
    folder = tmp_path_factory.mktemp("run")
    result = train_ssl(image, labels, epochs=1, checkpoint_dir=folder, **TRAIN_SMALL)
    return result.checkpoint_path, image, labels


def _damaged_copy(path, tmp_path, change, name="damaged.pt"):
    """A copy of the training checkpoint at ``path``, changed by ``change(payload)``, saved with
    ``torch.save`` of plain values (what a weights_only load accepts)."""
    payload = torch.load(path, weights_only=True)
    change(payload)
    out = tmp_path / name
    torch.save(payload, out)
    return out


_RESUME_PROBLEMS = {
    "rng None": (lambda p: p.update(rng=None), r"rng is not torch's random state.*: None"),
    "rng missing key": (lambda p: p.update(rng={}), "rng is not torch's random state"),
    "rng text": (lambda p: p.update(rng={"torch": "x"}), r"rng is not torch.*: 'x'"),
    "rng wrong tensor": (
        lambda p: p.update(rng={"torch": torch.zeros(3)}),
        r"rng is not torch.*torch.float32 tensor of shape \(3,\)",
    ),
    "config None": (lambda p: p.update(config=None), "config is not a dict: None"),
    "epoch text": (lambda p: p.update(epoch="one"), r"epoch='one' is not a count"),
    "epoch negative": (lambda p: p.update(epoch=-1), r"epoch=-1 is not a count"),
    "epoch huge": (lambda p: p.update(epoch=10**30), r"epoch=1000.* is not a count"),
    "epoch_step float": (lambda p: p.update(epoch_step=1.5), r"epoch_step=1.5 is not a count"),
    "global_step None": (lambda p: p.update(global_step=None), "global_step=None is not"),
    "optimizer empty": (lambda p: p.update(optimizer={}), "optimizer is not an optimiser"),
    "scheduler text": (lambda p: p.update(scheduler="x"), "scheduler is not a learning-rate"),
    "scaler None": (lambda p: p.update(scaler=None), "scaler is not a dict"),
    "head None": (lambda p: p.update(head=None), "head is not a dict"),
    "history text": (lambda p: p.update(history="abc"), "history is not a list of records"),
    "history record": (lambda p: p.update(history=[1]), r"history\[0\] is not a record"),
    "quality record": (
        lambda p: p["quality"][0].update(effective_rank="x"),
        r"quality\[0\]\['effective_rank'\] is 'x'",
    ),
    "monitor text": (lambda p: p.update(monitor="x"), "monitor is not a monitor set"),
    "key missing": (lambda p: p.pop("global_step"), "'global_step' missing"),
}


@pytest.mark.parametrize("problem", list(_RESUME_PROBLEMS))
def test_load_training_checkpoint__a_damaged_checkpoint_names_the_file_and_the_problem(
    training_run, tmp_path, problem
):
    """Every damage is one ValueError naming the file, the value and what to do (they used to be
    TypeError/KeyError/int() messages naming no file, or "incomplete (missing [])")."""
    from napari_segrep.engine.checkpoint import load_training_checkpoint

    change, match = _RESUME_PROBLEMS[problem]
    path = _damaged_copy(training_run[0], tmp_path, change)
    with pytest.raises(ValueError, match=match) as info:
        load_training_checkpoint(path)
    message = str(info.value)
    assert message.startswith(f"training checkpoint {path} cannot be resumed: ")
    assert "intact checkpoint" in message and "\n" not in message


def test_load_training_checkpoint__accepts_what_the_trainer_wrote(training_run):
    from napari_segrep.engine.checkpoint import (
        load_training_checkpoint,
        training_checkpoint_problems,
    )

    payload = load_training_checkpoint(training_run[0])
    assert training_checkpoint_problems(payload) == []
    assert payload["epoch"] == 1 and payload["rng"]["torch"].dtype == torch.uint8


def test_train_ssl__resume_with_a_state_that_does_not_fit_names_the_checkpoint(
    training_run, tmp_path
):
    """An optimiser, schedule or scaler state of the right type that torch cannot load (another
    number of parameter groups, a schedule without its lambdas) is one ValueError naming the
    checkpoint, not torch's KeyError or unnamed ValueError."""
    from napari_segrep.engine.training import train_ssl

    path, image, labels = training_run
    changes = {
        "optimizer state": lambda p: p["optimizer"]["param_groups"].pop(),
        "scheduler state": lambda p: p.update(scheduler={"last_epoch": 3}),
    }
    for what, change in changes.items():
        damaged = _damaged_copy(path, tmp_path, change, name=f"{what.split()[0]}.pt")
        with pytest.raises(ValueError, match=f"its {what} does not fit this run") as info:
            train_ssl(image, labels, epochs=2, resume=damaged, **TRAIN_SMALL)
        assert str(info.value).startswith(f"checkpoint {damaged}: "), what
