"""The training loop's seam: the Trainer runs any Objective and calls any Callback, in order,
without knowing what they are."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from napari_segrep._sample_data import make_cells
from napari_segrep.engine.callbacks import Callback
from napari_segrep.engine.checkpoint import load_checkpoint
from napari_segrep.engine.dataset import SegmentDataset
from napari_segrep.engine.objectives import (
    OBJECTIVES,
    ContrastiveObjective,
    Objective,
    StepLoss,
    make_objective,
)
from napari_segrep.engine.train_config import TrainConfig
from napari_segrep.engine.trainer import Trainer
from napari_segrep.engine.training import train_ssl
from napari_segrep.errors import TrainingDiverged

from ..conftest import TRAIN_SMALL

pytestmark = pytest.mark.usefixtures("narrow_backbone")

CONFIG = {k: v for k, v in TRAIN_SMALL.items() if k != "device"}  # 24 cells: 3 steps an epoch


@pytest.fixture(scope="module")
def dataset():
    image, labels, _ = make_cells(shape=(160, 160), n_cells=24, seed=2)
    return SegmentDataset(image, labels, crop_size=32)


class Recorder(Callback):
    """Writes down every hook as it is called."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def on_train_start(self, trainer, record):
        self.calls.append("start")

    def on_loss(self, trainer, loss):
        self.calls.append("loss")

    def on_step_end(self, trainer, record):
        self.calls.append(f"step {record['step']}")

    def before_epoch_end(self, trainer):
        self.calls.append(f"before end {trainer.epoch}")

    def on_epoch_end(self, trainer, record):
        assert "quality" in record  # the quality callback ran before those given
        self.calls.append(f"end {record['epoch_end']}")

    def on_stop(self, trainer, record):
        self.calls.append("stop")

    def before_save(self, trainer):
        self.calls.append("save")


class Centre(Objective):
    """A toy objective unlike the contrastive one: one view, a linear head, the loss pulls the
    head's outputs to one, and a running count as its own checkpointed state."""

    name = "centre"
    state_keys = ("centre",)

    def __init__(self, config, *, distributed=False):
        self.seen = torch.zeros((), dtype=torch.long)

    def build_model(self, encoder):
        class Model(nn.Module):
            def __init__(self):
                super().__init__()
                self.encoder = encoder
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(0)
                    self.head = nn.Linear(encoder.embedding_dim, 3)

            def forward(self, x, m):
                return self.head(self.encoder(x, m))

        return Model()

    def to(self, device):
        return self

    def train(self):
        pass

    def compute(self, model, batch, *, to_device, autocast):
        a, ma = (to_device(t) for t in batch[:2])
        with autocast():
            loss = (model(a, ma).float() - 1).pow(2).mean()
        self.seen += len(a)
        return StepLoss(
            loss=loss, n_crops=len(a), probe=(a[:2], ma[:2]), terms={"zero": loss.detach()}
        )

    def state(self):
        return {"centre": {"seen": self.seen.clone()}}

    def load_state(self, ckpt, *, source):
        self.seen = ckpt["centre"]["seen"].clone()


def test_trainer__calls_every_callback_hook_in_order(dataset):
    recorder = Recorder()
    trainer = Trainer(dataset, TrainConfig(epochs=2, **CONFIG), device="cpu", callbacks=[recorder])
    records = list(trainer.steps())
    steps = [c for s in (1, 2, 3) for c in ("loss", f"step {s}")]
    later = [c for s in (4, 5, 6) for c in ("loss", f"step {s}")]
    assert recorder.calls == [
        "start",
        *steps,
        "before end 0",
        "end 1",
        *later,
        "before end 1",
        "end 2",
    ]
    assert [sorted(r) for r in records if "step" not in r] == [
        ["quality"],
        ["epoch_end", "quality"],
        ["epoch_end", "quality"],
    ]
    assert not trainer.stop_requested(lambda: False)
    assert trainer.stop_requested(lambda: True, records[-1])
    assert recorder.calls[-1] == "stop"


def test_trainer__runs_an_objective_it_does_not_know_and_checkpoints_its_state(dataset, tmp_path):
    config = TrainConfig(epochs=1, monitor_size=0, lr=1e-3, **CONFIG)
    trainer = Trainer(dataset, config, device="cpu", objective=Centre(config))
    records = [r for r in trainer.steps() if "step" in r]
    assert len(records) == 3
    assert all("loss_zero" in r and r["loss"] == pytest.approx(r["loss_zero"]) for r in records)
    assert records[-1]["loss"] < records[0]["loss"]  # it optimises what the objective says
    assert int(trainer.objective.seen) == 24
    trainer.save(tmp_path / "last.pt")
    ckpt = load_checkpoint(tmp_path / "last.pt")
    assert int(ckpt["centre"]["seen"]) == 24 and "loss_state" not in ckpt
    assert set(ckpt["head"]) == {"weight", "bias"}
    again = Trainer(dataset, config, device="cpu", objective=Centre(config))
    again.load(tmp_path / "last.pt")
    assert int(again.objective.seen) == 24
    assert torch.equal(again.model.head.weight, trainer.model.head.weight)
    contrastive = Trainer(dataset, config, device="cpu")  # another objective: refused at once
    with pytest.raises(ValueError, match=r"last.pt cannot be resumed: 'loss_state' missing"):
        contrastive.load(tmp_path / "last.pt")


def test_trainer__a_non_finite_loss_of_any_objective_stops_before_the_step(dataset):
    class Broken(Centre):
        def compute(self, model, batch, **kwargs):
            out = super().compute(model, batch, **kwargs)
            return StepLoss(loss=out.loss * float("nan"), n_crops=out.n_crops, probe=out.probe)

    config = TrainConfig(epochs=1, monitor_size=0, **CONFIG)
    trainer = Trainer(dataset, config, device="cpu", objective=Broken(config))
    before = [p.detach().clone() for p in trainer.model.parameters()]
    with pytest.raises(TrainingDiverged, match=r"the loss became nan at epoch 1, step 1"):
        list(trainer.steps())
    after = list(trainer.model.parameters())
    assert all(torch.equal(p, q) for p, q in zip(before, after, strict=True))


def test_make_objective__every_loss_trains_the_contrastive_objective():
    for loss in ("ntxent", "tico", "vicreg"):
        objective = make_objective(TrainConfig(loss=loss, projection_dim=8))
        assert isinstance(objective, ContrastiveObjective)
    assert OBJECTIVES["contrastive"] is ContrastiveObjective
    # BiaPy's two pretext tasks, and refining from annotations
    assert sorted(OBJECTIVES) == ["contrastive", "crappify", "masking", "supervised"]


def test_train_ssl__a_stop_writes_the_checkpoint_through_its_callback(dataset, tmp_path):
    image, labels, _ = make_cells(shape=(160, 160), n_cells=24, seed=2)
    steps = []

    def stop():
        return len(steps) == 2

    result = train_ssl(
        image,
        labels,
        epochs=2,
        checkpoint_dir=tmp_path,
        on_step=steps.append,
        should_stop=stop,
        **TRAIN_SMALL,
    )
    assert result.stopped
    ckpt = load_checkpoint(result.checkpoint_path)
    assert (ckpt["epoch"], ckpt["epoch_step"], ckpt["global_step"]) == (0, 2, 2)
    assert ckpt["quality"] == result.quality and len(ckpt["quality"]) == 1  # the start's
