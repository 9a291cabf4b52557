"""``napari-segrep train --annotations ANN.csv``: refining the encoder from annotated segments on
real files (TIFF pairs, a CSV), its run folder, and the annotation files refused before any
work."""

from __future__ import annotations

import re

import pandas as pd
import pytest
import tifffile
import torch
import yaml

import napari_segrep as sr
from napari_segrep._sample_data import make_cells
from napari_segrep.engine.checkpoint import load_checkpoint

from ..conftest import NARROW_BACKBONE
from .test_train import RUN_FOLDER, SMALL, _one_line_error, _run

TINY = [*SMALL, "--backbone", NARROW_BACKBONE, "--projection-hidden", 64, "--projection-dim", 32]


@pytest.fixture()
def annotated(tmp_path, narrow_backbone):
    """``data/images/img{0,1}.tif`` with their labels (12 cells each), and ``ann.csv``: the
    round cells as class ``NA`` (a class name, not a missing value) and the elongated ones as
    ``long``, the image named by its file name in some rows and by its stem in others, one row
    left without a class (not an annotation)."""
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    (data / "labels").mkdir()
    rows = []
    for i in range(2):
        image, labels, classes = make_cells(shape=(128, 128), n_cells=12, seed=10 + i)
        tifffile.imwrite(data / "images" / f"img{i}.tif", image)
        tifffile.imwrite(data / "labels" / f"img{i}_labels.tif", labels)
        for label, name in classes.items():
            cls = {"round": "NA", "elongated": "long"}.get(name, "")
            image_name = f"img{i}.tif" if label % 2 else f"img{i}"
            rows.append({"image": image_name, "label": label, "class": cls})
    ann = tmp_path / "ann.csv"
    pd.DataFrame(rows).to_csv(ann, index=False)
    return data, ann


def test_cli_train_annotations__writes_a_run_folder_prints_before_after_and_reproduces(
    annotated, tmp_path, capsys
):
    data, ann = annotated
    run, again = tmp_path / "run", tmp_path / "again"
    argv = ["train", "--data", data, "--annotations", ann, "--log-dir", run, "--epochs", 1]
    assert _run(*argv, *TINY) == 0
    err = capsys.readouterr().err
    assert sorted(p.name for p in run.iterdir()) == sorted([*RUN_FOLDER, "encoder.pt"])
    assert "refining from 16 annotated segments (NA 8, long 8)" in err
    figures = re.search(r"accuracy on (\d+) held-out annotations (\d\.\d{3}) -> (\d\.\d{3})", err)
    assert figures is not None, err
    assert int(figures[1]) == 6  # a third of each class's 8
    assert "learned from; classes NA, long)" in err  # the other 10
    assert f"encoder written to {run / 'encoder.pt'}" in err
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt["config"]["objective"] == "supervised" and ckpt["config"]["classes"] == [
        "NA",
        "long",
    ]
    text = (run / "config.yaml").read_text()
    config = yaml.safe_load(text)
    assert config["objective"] == "supervised" and config["annotations"] == str(ann.resolve())
    assert '# classes (from the annotations): ["NA", "long"]' in text.splitlines()
    # the kept encoder: the refined one (last.pt's), or the starting one when it did not help
    kept = sr.load_encoder(run / "encoder.pt").state_dict()
    refined = ckpt["encoder"]
    same = all(torch.equal(kept[k], refined[k]) for k in refined)
    accepted = float(figures[3]) >= float(figures[2])
    assert same == accepted
    assert ("kept the old encoder" in err) == (not accepted)
    # config.yaml reruns it: the same weights, bit for bit (CPU)
    assert _run("train", "--config", run / "config.yaml", "--log-dir", again, "--quiet") == 0
    second = load_checkpoint(again / "last.pt")
    for key, value in refined.items():
        assert torch.equal(value, second["encoder"][key]), key
    assert yaml.safe_load((again / "config.yaml").read_text()) == {**config, "log_dir": str(again)}


def _write(path, text):
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "needles"),
    [
        ("image,label\nimg0,1\n", ["has no class column", "add the column"]),
        ("label,class\n1,a\n", ["has no image column (there are several images)"]),
        ("image,label,class\nimg0,1,\n", ["no annotated row", "fill in the classes"]),
        (
            "image,label,class\nimg7,1,a\n",
            ["line 2: image 'img7' is none of the images given", "img0, img1"],
        ),
        ("image,label,class\nimg0,x,a\n", ["line 2: label 'x' is not a whole number"]),
        (
            "image,label,class\n" + "".join(f"img0,{i},a\n" for i in (1, 2, 3, 999)),
            ["1 annotated segment(s) are not in the labels (img0.tif label 999)", "remove"],
        ),
        (
            "image,label,class\nimg0,1,a\nimg0.tif,1,b\n",
            ["annotated with two classes (img0.tif label 1)", "keep one class"],
        ),
        (
            "image,label,class\n" + "".join(f"img0,{i},NA\n" for i in (1, 2, 3)),
            ["every annotation is of class 'NA'", "annotate segments of another class"],
        ),
        (
            "image,label,class\n" + "".join(f"img0,{i},{'ab'[i % 2]}\n" for i in range(1, 6)),
            ["at least 3 annotated segments of every class", "'a' (2) has fewer: annotate more"],
        ),
    ],
)
def test_cli_train_annotations__a_bad_file_is_one_line_before_any_work(
    annotated, tmp_path, capsys, text, needles
):
    data, _ = annotated
    bad = _write(tmp_path / "bad.csv", text)
    logs = tmp_path / "logs"
    argv = ["train", "--data", data, "--annotations", bad, "--log-dir", logs]
    assert _run(*argv, *TINY) == 2
    _one_line_error(capsys, str(bad), *needles)
    assert not logs.exists()


@pytest.mark.parametrize(
    ("extra", "needles"),
    [
        (["--objective", "supervised"], ["supervised refines the encoder from annotations"]),
        (["--keep-if-worse"], ["--keep-if-worse is for refining from annotations"]),
        (["--annotations", "A", "--objective", "masking"], ["leave --objective out"]),
        (["--annotations", "A", "--devices", "2"], ["refines in one process"]),
    ],
)
def test_cli_train_annotations__options_that_do_not_go_together_are_one_line(
    tmp_path, capsys, extra, needles
):
    logs = tmp_path / "logs"
    argv = ["train", "--data", tmp_path, "--log-dir", logs, *extra]
    assert _run(*argv, *SMALL) == 2
    _one_line_error(capsys, *needles)
    assert not logs.exists()


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".parquet"])
def test_cli_train_annotations__print_config_shows_the_annotations(
    annotated, tmp_path, capsys, suffix
):
    """The file is read and checked first (a .tsv or .parquet as a .csv; a Parquet null class
    is not an annotation, as an empty cell is), then the config printed."""
    data, csv = annotated
    ann = tmp_path / f"ann{suffix}"
    table = pd.read_csv(csv, dtype=str, keep_default_na=False)
    if suffix == ".tsv":
        table.to_csv(ann, sep="\t", index=False)
    elif suffix == ".parquet":
        table.replace({"class": {"": None}}).to_parquet(ann)
    else:
        ann = csv
    assert _run("train", "--data", data, "--annotations", ann, "--print-config") == 0
    config = yaml.safe_load(capsys.readouterr().out)
    assert config["annotations"] == str(ann.resolve()) and config["objective"] == "supervised"
    assert config["keep_if_worse"] is False and config["epochs"] is None


def test_cli_train_annotations__time_lapse_annotations_name_their_frame(tmp_path, capsys):
    """A time-lapse's annotations need a frame; a frame outside the stack is named."""
    import numpy as np

    frames = [make_cells(shape=(96, 96), n_cells=6, seed=s)[:2] for s in range(3)]
    tifffile.imwrite(
        tmp_path / "movie.tif", np.stack([f[0] for f in frames]), photometric="minisblack"
    )
    tifffile.imwrite(
        tmp_path / "movie_labels.tif", np.stack([f[1] for f in frames]), photometric="minisblack"
    )
    rows = "".join(f"{f},{lab},{'ab'[lab % 2]}\n" for f in (0, 1) for lab in (1, 2, 3, 4))
    argv = ["train", "--data", tmp_path, "--axes", "tyx", "--print-config", "--annotations"]
    assert _run(*argv, _write(tmp_path / "ok.csv", "frame,label,class\n" + rows)) == 0
    capsys.readouterr()
    assert _run(*argv, _write(tmp_path / "no.csv", "label,class\n1,a\n")) == 2
    _one_line_error(capsys, "has no frame column (there are time-lapses)")
    bad = _write(tmp_path / "far.csv", "frame,label,class\n" + rows + "5,1,a\n")
    assert _run(*argv, bad) == 2
    _one_line_error(capsys, "not in the labels (movie.tif frame 5 label 1)")
