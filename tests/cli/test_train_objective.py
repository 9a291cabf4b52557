"""``napari-segrep train --objective``: BiaPy's pretext tasks from the command line and from
config files."""

from __future__ import annotations

import pandas as pd
import pytest
import tifffile

import napari_segrep as sr
from napari_segrep._sample_data import make_cells
from napari_segrep.engine.checkpoint import load_checkpoint

from ..conftest import NARROW_BACKBONE
from .test_train import RUN_FOLDER, SMALL, _one_line_error, _run


@pytest.fixture()
def data(tmp_path):
    """``data/images/img0.tif`` and ``data/labels/img0_labels.tif``: 24 cells."""
    (tmp_path / "data" / "images").mkdir(parents=True)
    (tmp_path / "data" / "labels").mkdir()
    image, labels, _ = make_cells(shape=(160, 160), n_cells=24, seed=2)
    tifffile.imwrite(tmp_path / "data" / "images" / "img0.tif", image)
    tifffile.imwrite(tmp_path / "data" / "labels" / "img0_labels.tif", labels)
    return tmp_path / "data"


def test_cli_train__objective_masking_from_a_config_file_writes_a_run_folder(
    data,
    tmp_path,
    narrow_backbone,
):
    config = tmp_path / "run.yaml"
    config.write_text("objective: masking\nepochs: 1\n")
    logs = tmp_path / "logs"
    argv = ["--config", config, "--data", data, "--log-dir", logs, "--backbone", NARROW_BACKBONE]
    assert _run("train", *argv, *SMALL) == 0
    assert sorted(p.name for p in logs.iterdir()) == RUN_FOLDER
    assert "objective: masking" in (logs / "config.yaml").read_text().splitlines()
    assert load_checkpoint(logs / "last.pt")["config"]["objective"] == "masking"
    assert len(pd.read_csv(logs / "history.csv")) == 3
    sr.load_encoder(logs / "last.pt")  # usable for embedding


def test_cli_train__the_loss_with_a_pretext_objective_is_one_line(
    data,
    tmp_path,
    capsys,
):
    argv = ["train", "--data", data, "--log-dir", tmp_path / "logs", "--objective", "crappify"]
    assert _run(*argv, "--loss", "vicreg", *SMALL) == 2
    _one_line_error(capsys, "--loss: loss='vicreg' is the contrastive objective's two-view loss")
    assert not (tmp_path / "logs").exists()
