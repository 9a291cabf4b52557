"""The run folder's charts, TensorBoard logs and config.yaml (train_ssl's run-folder callbacks):
real runs of the narrow test ResNet, 2 epochs of 3 steps."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from PIL import Image

from napari_segrep._sample_data import make_cells
from napari_segrep.engine.training import train_ssl

from ..conftest import TRAIN_SMALL

pytest.importorskip("tensorboard")  # the test extra installs it

pytestmark = pytest.mark.usefixtures("narrow_backbone")

SMALL = {**TRAIN_SMALL, "loss": "tico", "epochs": 2}  # 24 cells -> 3 steps per epoch
FOLDER = {"charts": True, "tensorboard": True}


def _config_text(config) -> str:
    return f"epochs: {config.epochs}\n"


@pytest.fixture(scope="module")
def cells():
    image, labels, _ = make_cells(shape=(160, 160), n_cells=24, seed=2)
    return image, labels


@pytest.fixture(scope="module")
def full_run(cells, tmp_path_factory):
    """An uninterrupted 2-epoch run with every run-folder callback, and the loss chart's bytes
    as they were at the end of epoch 1."""
    run = tmp_path_factory.mktemp("full") / "run"
    at_epoch_end = {}

    def on_quality(record):
        if record["epoch"] > 0:
            at_epoch_end[record["epoch"]] = (run / "charts" / "loss.png").read_bytes()

    image, labels = cells
    result = train_ssl(
        image,
        labels,
        checkpoint_dir=run,
        run_config=_config_text,
        on_quality=on_quality,
        **FOLDER,
        **SMALL,
    )
    return run, result, at_epoch_end


def _files(folder) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def _scalars(folder) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder)).Reload()
    return {
        tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]
    }


def test_train_ssl__the_run_folder_holds_config_charts_and_tensorboard(full_run):
    run, result, at_epoch_end = full_run
    files = _files(run)
    events = [f for f in files if f.startswith("tensorboard/events.out.tfevents.")]
    assert len(events) == 1
    projector = [f"tensorboard/{step:05d}/monitor/{name}" for step in (0, 6) for name in
                 ("metadata.tsv", "sprite.png", "tensors.tsv")]  # fmt: skip
    assert files == sorted(
        [
            "charts/loss.png",
            "charts/quality.png",
            "config.yaml",
            "last.pt",
            *events,
            *projector,
            "tensorboard/projector_config.pbtxt",
        ]
    )  # no temporary, no lock left
    assert (run / "config.yaml").read_text() == "epochs: 2\n"
    for name in ("loss.png", "quality.png"):
        with Image.open(run / "charts" / name) as chart:
            chart.load()
            assert chart.format == "PNG" and chart.size == (1000, 700)
            # drawn, not blank: many colours (lines, text, grid)
            assert len(chart.getcolors(1 << 16) or range(1 << 16)) > 20
    # redrawn at every epoch end
    assert at_epoch_end[1] != at_epoch_end[2] == (run / "charts" / "loss.png").read_bytes()

    scalars = _scalars(run / "tensorboard")
    steps = list(range(1, 7))
    for tag in ("loss", "loss_invariance", "loss_covariance", "lr", "crops_per_s"):
        assert [s for s, _ in scalars[tag]] == steps, tag
    assert [v for _, v in scalars["loss"]] == pytest.approx([r["loss"] for r in result.history])
    assert [v for _, v in scalars["lr"]] == pytest.approx([r["lr"] for r in result.history])
    for tag in ("effective_rank", "view_agreement"):
        assert scalars[tag] == [(r["step"], pytest.approx(r[tag])) for r in result.quality], (
            tag
        )  # the start at step 0, then every epoch end

    config = (run / "tensorboard" / "projector_config.pbtxt").read_text()
    assert config.count("embeddings {") == 2 and "monitor:00000" in config
    n = result.quality[0]["n"]
    for step in (0, 6):
        folder = run / "tensorboard" / f"{step:05d}" / "monitor"
        tensors = np.loadtxt(folder / "tensors.tsv", delimiter="\t")
        assert tensors.shape == (n, 64) and np.isfinite(tensors).all()
        assert (folder / "metadata.tsv").read_text().splitlines()[0] == "index\timage\tlabel"
        with Image.open(folder / "sprite.png") as sprite:
            side = 32 * math.ceil(math.sqrt(n))  # 32 px crops, a square grid
            assert sprite.size == (side, side)
    before = np.loadtxt(run / "tensorboard" / "00000" / "monitor" / "tensors.tsv")
    after = np.loadtxt(run / "tensorboard" / "00006" / "monitor" / "tensors.tsv")
    assert not np.allclose(before, after)  # the space changed


def test_train_ssl__the_run_folder_callbacks_change_no_training_result(cells, full_run):
    """Charts and TensorBoard (its embeddings of the monitor set included) leave the training
    bit for bit as it is without them."""
    _, result, _ = full_run
    image, labels = cells
    plain = train_ssl(image, labels, **SMALL)
    assert [r["loss"] for r in plain.history] == [r["loss"] for r in result.history]
    assert plain.quality == result.quality
    for (name, p), q in zip(
        plain.encoder.state_dict().items(), result.encoder.state_dict().values(), strict=True
    ):
        assert torch.equal(p, q), name


def test_train_ssl__a_resumed_run_folder_shows_the_whole_run(cells, full_run, tmp_path):
    """Stopped mid-epoch 2 and resumed into its folder: the charts are the uninterrupted run's,
    byte for byte; TensorBoard holds each step once; config.yaml is the one it started with."""
    run, result, _ = full_run
    image, labels = cells
    steps = []
    first = train_ssl(
        image,
        labels,
        checkpoint_dir=tmp_path,
        run_config=_config_text,
        on_step=steps.append,
        should_stop=lambda: len(steps) >= 4,
        **FOLDER,
        **SMALL,
    )
    assert first.stopped and len(first.history) == 4
    train_ssl(
        image,
        labels,
        checkpoint_dir=tmp_path,
        resume=first.checkpoint_path,
        run_config="not written: the folder keeps its config\n",
        **FOLDER,
        **SMALL,
    )
    for name in ("loss.png", "quality.png"):
        assert (tmp_path / "charts" / name).read_bytes() == (run / "charts" / name).read_bytes()
    assert (tmp_path / "config.yaml").read_text() == "epochs: 2\n"
    scalars = _scalars(tmp_path / "tensorboard")
    assert [s for s, _ in scalars["loss"]] == list(range(1, 7))
    assert [v for _, v in scalars["loss"]] == pytest.approx([r["loss"] for r in result.history])
    assert [s for s, _ in scalars["effective_rank"]] == [0, 3, 6]
    config = (tmp_path / "tensorboard" / "projector_config.pbtxt").read_text()
    # the start, where it stopped, the end: the resumed writer kept the first part's entries
    assert [f"monitor:{s:05d}" in config for s in (0, 4, 6)] == [True] * 3


def test_loss_chart__non_finite_values_are_left_out():
    from napari_segrep.engine._charts_draw import nice_ticks
    from napari_segrep.engine.callbacks.charts import loss_chart, quality_chart
    from napari_segrep.engine.train_config import TrainConfig

    history = [
        {"step": s, "loss": v, "lr": 1e-4, "loss_invariance": v}
        for s, v in enumerate([2.0, math.nan, 1.5, math.inf, 1.0], start=1)
    ]
    config = TrainConfig(epochs=5, crop_size=32, backbone="resnet18")
    chart = loss_chart(history, 1, config)
    assert chart.size == (1000, 700)
    quality = [{"epoch": 0, "step": 0, "effective_rank": math.nan, "view_agreement": 0.5,
                "n": 10, "monitor": "training"}]  # fmt: skip
    quality_chart(quality, config).save(io.BytesIO(), format="PNG")
    quality_chart([], config)  # monitoring off: empty panels
    assert nice_ticks(0.0, 1.0) == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert nice_ticks(0, 6, 8, min_step=1.0) == [0, 1, 2, 3, 4, 5, 6]
    assert nice_ticks(math.nan, 1.0) == []


def test_train_ssl__a_failed_run_leaves_its_scalars_and_its_loss_chart(cells, tmp_path):
    """A run that diverges (finite losses, weights blown up by lr=1e7: refused at the end of
    epoch 1) closes its TensorBoard writer and redraws its loss chart up to its last step, so
    the user sees where it went wrong."""
    from napari_segrep.errors import TrainingDiverged

    image, labels = cells
    steps, charts = [], []

    def on_step(record):
        steps.append(record)
        charts.append((tmp_path / "charts" / "loss.png").read_bytes())

    with pytest.raises(TrainingDiverged):
        train_ssl(
            image,
            labels,
            checkpoint_dir=tmp_path,
            on_step=on_step,
            lr=1e7,
            **FOLDER,
            **{**SMALL, "optimizer": "lars", "batchnorm_stats": "update", "epochs": 1},
        )
    assert len(steps) == 3
    loss = _scalars(tmp_path / "tensorboard")["loss"]
    assert [s for s, _ in loss] == [r["step"] for r in steps]  # flushed although it failed
    assert (tmp_path / "charts" / "loss.png").read_bytes() != charts[0]  # redrawn after
