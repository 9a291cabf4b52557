"""`napari-segrep classify` on real files: an embedding table and annotations in, predictions
(+ provenance, + the classifier) out; errors that write nothing and say what to do."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

import napari_segrep as sr
from napari_segrep._sample_data import make_cells
from napari_segrep.analysis.classify import FEATURES, METHODS, load_classifier
from napari_segrep.analysis.export import provenance, sidecar_path, write_table
from napari_segrep.cli import classify, main
from napari_segrep.io import file_sha256

CLASSES = ["elongated", "round", "spotty"]


def _run(*argv):
    return main([str(a) for a in argv])


def _write_embedding(df, path, encoder):
    """The table as `napari-segrep embed` writes it: CSV + a provenance sidecar with the
    encoder's record (its sha256)."""
    record = provenance(
        command="embed",
        encoder_config=encoder.record(),
        n_segments=len(df),
        normalization=df.attrs.get("normalization"),
        crop_size=32,
        batch_size=128,
        channel_axis=None,
        device="cpu",
        inputs={},
    )
    write_table(df, path, provenance=record)
    return path


@pytest.fixture(scope="module")
def cells(tmp_path_factory, narrow_backbone):
    """A real embedding table: 60 generated cells of three classes embedded by the narrow test
    ResNet; returns the folder, the table's path, the table and each row's true class."""
    tmp = tmp_path_factory.mktemp("cells")
    image, labels, truth = make_cells((256, 256), 60, seed=0)
    encoder = sr.SegmentEncoder(narrow_backbone, in_channels=1, seed=0).eval()
    df = sr.embed_segments(image, labels, encoder, crop_size=32, device="cpu")
    _write_embedding(df, tmp / "cells.csv", encoder)
    return tmp, tmp / "cells.csv", df, df["label"].map(truth).to_numpy()


def _annotate(df, truth, n=6, seed=0):
    """``n`` random annotated rows per class: their positions and the annotation frame."""
    rng = np.random.default_rng(seed)
    picked = np.sort(
        np.concatenate([rng.choice(np.flatnonzero(truth == c), n, False) for c in CLASSES])
    )
    return picked, pd.DataFrame({"label": df["label"].to_numpy()[picked], "class": truth[picked]})


def _blobs_table(images=("a.tif", "b.tif"), n_per=15, d=8, seed=0):
    """Several images' synthetic embedding table (labels repeat across images) with two
    well-separated classes; returns the table and each row's class."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 6, (2, d))
    parts, truth = [], []
    for image in images:
        y = np.repeat([0, 1], n_per)
        emb = centres[y] + rng.normal(0, 1, (len(y), d))
        part = pd.DataFrame({"image": image, "label": np.arange(1, len(y) + 1)})
        parts.append(pd.concat([part, pd.DataFrame(emb).add_prefix("emb_")], axis=1))
        truth.append(np.array(["dim", "bright"])[y])
    return pd.concat(parts, ignore_index=True), np.concatenate(truth)


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("napari-segrep: error: "), err
    assert "Traceback" not in err
    return lines[0]


def test_cli_classify__trains_predicts_and_records_provenance(cells, tmp_path, capsys):
    _, table, df, truth = cells
    picked, ann = _annotate(df, truth)
    ann.to_csv(tmp_path / "ann.csv", index=False)
    out = tmp_path / "pred.csv"
    assert _run("classify", table, "--annotations", tmp_path / "ann.csv", "-o", out) == 0

    pred = pd.read_csv(out)
    assert list(pred.columns) == [
        "label",
        "class",
        "probability",
        "margin",
        *(f"prob_{c}" for c in CLASSES),
    ]
    assert list(pred["label"]) == list(df["label"])
    held_out = np.setdiff1d(np.arange(len(df)), picked)
    accuracy = (pred["class"].to_numpy()[held_out] == truth[held_out]).mean()
    assert accuracy > 0.7  # chance: 1/3
    proba = pred[[f"prob_{c}" for c in CLASSES]].to_numpy()
    np.testing.assert_allclose(proba.sum(axis=1), 1, atol=1e-6)
    np.testing.assert_allclose(pred["probability"], proba.max(axis=1), atol=1e-9)

    side = json.loads(sidecar_path(out).read_text())
    assert side["package"] == "napari-segrep" and side["command"] == "classify"
    assert side["inputs"]["table"]["sha256"] == file_sha256(table)
    assert side["inputs"]["annotations"]["sha256"] == file_sha256(tmp_path / "ann.csv")
    assert side["inputs"]["model"] is None
    assert side["classifier"]["method"] == "logistic"
    assert side["classifier"]["classes"] == CLASSES
    assert side["classifier"]["n_annotations"] == dict.fromkeys(CLASSES, 6)
    assert 0.5 < side["classifier"]["cv_score"] <= 1
    assert side["encoder"]["sha256"] == df.attrs["encoder"]["sha256"]
    assert side["classifier"]["encoder"]["sha256"] == df.attrs["encoder"]["sha256"]
    err = capsys.readouterr().err
    assert "cross-validated accuracy" in err and "elongated 6, round 6, spotty 6" in err
    assert f"{len(df)} segments classified" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ann.csv", "pred.csv", "pred.csv.json"]


@pytest.mark.parametrize("method", METHODS)
def test_cli_classify__saved_model_predicts_the_same(cells, tmp_path, method, capsys):
    _, table, df, truth = cells
    _, ann = _annotate(df, truth)
    ann.to_csv(tmp_path / "ann.csv", index=False)
    model = tmp_path / "cells.segclf"
    args = ["--annotations", tmp_path / "ann.csv", "--method", method, "--seed", 3]
    assert _run("classify", table, *args, "-o", tmp_path / "a.csv", "--save-model", model) == 0
    assert load_classifier(model).method == method
    capsys.readouterr()
    assert _run("classify", table, "--model", model, "-o", tmp_path / "b.csv", "-q") == 0
    assert capsys.readouterr().err == ""
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "a.csv"), pd.read_csv(tmp_path / "b.csv"))
    side = json.loads((tmp_path / "b.csv.json").read_text())
    assert side["inputs"]["model"]["sha256"] == file_sha256(model)
    assert side["classifier"]["method"] == method and side["classifier"]["seed"] == 3


def test_cli_classify__several_images(tmp_path, capsys):
    table, truth = _blobs_table()
    table.to_csv(tmp_path / "t.csv", index=False)
    picked = np.r_[0:4, 15:19, 30:33, 45:48]  # both classes, both images
    ann = table.iloc[picked][["image", "label"]].assign(**{"class": truth[picked]})
    ann.to_csv(tmp_path / "ann.csv", index=False)
    out = tmp_path / "p.csv"
    assert (
        _run("classify", tmp_path / "t.csv", "--annotations", tmp_path / "ann.csv", "-o", out) == 0
    )
    pred = pd.read_csv(out)
    assert list(pred.columns[:3]) == ["image", "label", "class"]
    pd.testing.assert_frame_equal(pred[["image", "label"]], table[["image", "label"]])
    assert (pred["class"].to_numpy() == truth).mean() > 0.95
    assert "bright 7, dim 7" in capsys.readouterr().err

    # without the image column, a label does not say which segment
    ann.drop(columns="image").to_csv(tmp_path / "bad.csv", index=False)
    bad = ["--annotations", tmp_path / "bad.csv", "-o", tmp_path / "q.csv"]
    assert _run("classify", tmp_path / "t.csv", *bad) == 2
    assert "no image column" in _one_error_line(capsys)
    assert not (tmp_path / "q.csv").exists()


def test_cli_classify__features_embedding_and_geometry(cells, tmp_path, capsys):
    from napari_segrep.analysis.measure import add_measurements

    tmp, table, df, truth = cells
    _, ann = _annotate(df, truth)
    ann.to_csv(tmp_path / "ann.csv", index=False)
    train = ["--annotations", tmp_path / "ann.csv", "--features", "embedding+geometry"]
    assert _run("classify", table, *train, "-o", tmp_path / "p.csv") == 2  # not measured
    assert "measure" in _one_error_line(capsys)
    assert not (tmp_path / "p.csv").exists()

    image, labels, _ = make_cells((256, 256), 60, seed=0)
    measured = add_measurements(df, image, labels)
    measured.to_csv(tmp_path / "m.csv", index=False)
    model = tmp_path / "m.segclf"
    out = tmp_path / "p.csv"
    assert _run("classify", tmp_path / "m.csv", *train, "-o", out, "--save-model", model) == 0
    assert "area" in load_classifier(model).feature_columns
    side = json.loads(sidecar_path(out).read_text())
    assert side["classifier"]["features"] == "embedding+geometry"
    assert len(pd.read_csv(out)) == len(df)


def test_cli_classify__features_measurements_and_auto(cells, tmp_path, capsys):
    from napari_segrep.analysis.measure import add_measurements

    tmp, table, df, truth = cells
    _, ann = _annotate(df, truth)
    ann.to_csv(tmp_path / "ann.csv", index=False)
    image, labels, _ = make_cells((256, 256), 60, seed=0)
    add_measurements(df, image, labels).to_csv(tmp_path / "m.csv", index=False)
    train = ["--annotations", tmp_path / "ann.csv", "--features"]
    assert _run("classify", table, *train, "measurements", "-o", tmp_path / "p.csv") == 2
    assert "needs measurement columns" in _one_error_line(capsys)  # not measured
    for features in ("measurements", "auto"):
        out, model = tmp_path / f"{features}.csv", tmp_path / f"{features}.segclf"
        argv = ["classify", tmp_path / "m.csv", *train, features, "-o", out]
        assert _run(*argv, "--save-model", model) == 0
        side = json.loads(sidecar_path(out).read_text())["classifier"]
        assert side["features"] == load_classifier(model).info["features"] != "auto"
        assert (side["features_cv"] is None) == (features != "auto")
        err = capsys.readouterr().err
        assert ("features auto chose " + side["features"] in err) == (features == "auto")
        again = tmp_path / f"{features}-again.csv"
        assert _run("classify", tmp_path / "m.csv", "--model", model, "-o", again) == 0
        pd.testing.assert_frame_equal(pd.read_csv(again), pd.read_csv(out))
        assert (pd.read_csv(out)["class"].to_numpy() == truth).mean() > 0.8
    # --method auto: the forest or the logistic regression, the forest's own setting allowed
    out, model = tmp_path / "both.csv", tmp_path / "both.segclf"
    argv = ["classify", tmp_path / "m.csv", *train, "auto", "--method", "auto", "-o", out]
    assert _run(*argv, "--n-trees", "20", "--save-model", model) == 0
    side = json.loads(sidecar_path(out).read_text())["classifier"]
    assert side["method"] == load_classifier(model).method in ("logistic", "random_forest")
    assert set(side["method_cv"]) == {"logistic", "random_forest"}
    assert f"method auto chose {side['method']}" in capsys.readouterr().err
    assert (
        _run(
            "classify",
            tmp_path / "m.csv",
            *train,
            "auto",
            "--method",
            "auto",
            "--k",
            "3",
            "-o",
            out,
        )
        == 2
    )
    assert "--k applies to --method knn" in _one_error_line(capsys)


def test_cli_classify__table_with_class_annotation_is_its_own_annotations(cells, tmp_path):
    _, _, df, truth = cells
    picked, _ = _annotate(df, truth)
    table = df.assign(
        class_annotation=pd.Series(truth, dtype=object).where(np.isin(np.arange(len(df)), picked))
    )
    table["class"] = "stale prediction"  # the annotations win over a predicted class column
    table.to_csv(tmp_path / "t.csv", index=False)
    out = tmp_path / "p.csv"
    assert _run("classify", tmp_path / "t.csv", "--annotations", tmp_path / "t.csv", "-o", out) == 0
    pred = pd.read_csv(out)
    held_out = np.setdiff1d(np.arange(len(df)), picked)
    assert (pred["class"].to_numpy()[held_out] == truth[held_out]).mean() > 0.7
    side = json.loads((tmp_path / "p.csv.json").read_text())
    assert side["classifier"]["n_annotations"] == dict.fromkeys(CLASSES, 6)


def test_cli_classify__class_names_stay_as_written_and_blanks_are_ignored(tmp_path):
    table, truth = _blobs_table(images=("a",))
    table.drop(columns="image").to_csv(tmp_path / "t.csv", index=False)
    names = np.where(truth == "dim", "1", "01")  # would both be 1 if read as numbers
    (tmp_path / "ann.csv").write_text(
        "label,class\n" + "".join(f"{i + 1},{names[i]}\n" for i in range(0, 30, 3)) + "2,\n5,  \n"
    )
    out = tmp_path / "p.csv"
    assert (
        _run("classify", tmp_path / "t.csv", "--annotations", tmp_path / "ann.csv", "-o", out) == 0
    )
    pred = pd.read_csv(out, dtype={"class": str})
    assert sorted(pred["class"].unique()) == ["01", "1"]
    assert (pred["class"].to_numpy() == names).all()


def test_cli_classify__refuses_an_output_that_is_an_input(cells, tmp_path, capsys):
    _, table, df, truth = cells
    _, ann = _annotate(df, truth)
    ann.to_csv(tmp_path / "ann.csv", index=False)
    before = {p: p.read_bytes() for p in (table, sidecar_path(table), tmp_path / "ann.csv")}
    train = ["--annotations", tmp_path / "ann.csv"]
    (tmp_path / "link.csv.json").symlink_to(sidecar_path(table))
    for argv, what in [
        (["-o", table], "is the input table"),
        (["-o", tmp_path / "link.csv"], "is the input table sidecar"),  # -> cells.csv.json
        (["-o", tmp_path / "ann.csv"], "is the input annotations"),
        (["-o", tmp_path / "p.csv", "--save-model", table], "is the input table"),
        (["-o", tmp_path / "p.csv", "--save-model", tmp_path / "p.csv.json"], "choose another"),
        (["-o", tmp_path / "p.json"], "ends in .json, which napari-segrep keeps for"),
    ]:
        assert _run("classify", table, *train, *argv, "--overwrite") == 2
        assert what in _one_error_line(capsys)
    assert {p: p.read_bytes() for p in before} == before
    (tmp_path / "link.csv.json").unlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ann.csv"]


def test_cli_classify__existing_outputs_need_overwrite_and_foreign_files_stay(
    cells, tmp_path, capsys
):
    _, table, df, truth = cells
    _, ann = _annotate(df, truth)
    ann.to_csv(tmp_path / "ann.csv", index=False)
    out, model = tmp_path / "p.csv", tmp_path / "m.segclf"
    train = ["classify", table, "--annotations", tmp_path / "ann.csv", "-o", out]
    out.write_bytes(b"my own precious results\n")
    assert _run(*train) == 2
    assert "--overwrite" in _one_error_line(capsys)
    assert out.read_bytes() == b"my own precious results\n"
    assert not sidecar_path(out).exists()

    # a file at --save-model that is not a classifier is never replaced, even with --overwrite
    model.write_bytes(b"not a classifier")
    assert _run(*train, "--save-model", model, "--overwrite") == 2
    assert "not a napari-segrep classifier" in _one_error_line(capsys)
    assert model.read_bytes() == b"not a classifier"
    assert out.read_bytes() == b"my own precious results\n"  # nothing written: all or none

    # nor is a PRED.csv.json that napari-segrep did not write
    model.unlink()
    sidecar_path(out).write_text('{"mine": true}')
    assert _run(*train, "--overwrite") == 2
    assert "not written by napari-segrep" in _one_error_line(capsys)
    assert sidecar_path(out).read_text() == '{"mine": true}'
    sidecar_path(out).unlink()

    # --overwrite replaces our own outputs: the table, its sidecar and a classifier
    assert _run(*train, "--save-model", model, "--overwrite", "-q") == 0
    assert list(pd.read_csv(out).columns[:2]) == ["label", "class"]
    assert _run(*train, "--save-model", model, "--method", "knn") == 2  # exists: no --overwrite
    assert f"{out} exists: pass --overwrite" in _one_error_line(capsys)
    assert load_classifier(model).method == "logistic"
    assert _run(*train, "--save-model", model, "--method", "knn", "--overwrite", "-q") == 0
    assert load_classifier(model).method == "knn"

    # an output folder that does not exist: refused before any work
    assert _run(*train[:-1], tmp_path / "nowhere" / "p.csv", "--overwrite") == 2
    assert "does not exist" in _one_error_line(capsys)


def test_cli_classify__another_encoders_table_needs_force(cells, tmp_path, narrow_backbone, capsys):
    tmp, table, df, truth = cells
    _, ann = _annotate(df, truth)
    ann.to_csv(tmp_path / "ann.csv", index=False)
    model = tmp_path / "m.segclf"
    train = ["--annotations", tmp_path / "ann.csv", "--save-model", model, "-q"]
    assert _run("classify", table, *train, "-o", tmp_path / "a.csv") == 0
    other = sr.SegmentEncoder(narrow_backbone, in_channels=1, seed=1).eval()
    image, labels, _ = make_cells((256, 256), 60, seed=0)
    theirs = sr.embed_segments(image, labels, other, crop_size=32, device="cpu")
    _write_embedding(theirs, tmp_path / "other.csv", other)

    out = tmp_path / "b.csv"
    assert _run("classify", tmp_path / "other.csv", "--model", model, "-o", out) == 2
    line = _one_error_line(capsys)
    assert "another encoder" in line and "--force" in line
    assert not out.exists()
    assert _run("classify", tmp_path / "other.csv", "--model", model, "-o", out, "--force") == 0
    assert len(pd.read_csv(out)) == len(theirs)
    side = json.loads(sidecar_path(out).read_text())
    assert side["forced"] and side["encoder_mismatch_forced"]
    assert side["encoder"]["sha256"] == other.record()["sha256"]


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ("label,class\n1,a\n2,a\n999,b\n3,b\n", "not in the table (label 999)"),
        ("label,class\n1,a\n2,a\n3,a\n", "at least 2 classes (only 'a')"),
        ("label,class\n1,a\n2,a\n3,b\n", "at least 2 annotated segments; 'b' (1)"),
        ("label,kind\n1,a\n2,b\n", "no class (or class_annotation) column"),
        ("label,class\n1,a\nfirst,b\n", "label must be a whole number"),
        ("label,class\n1,\n2,\n", "no annotated row"),
        ("label,class\n1,a\n1,b\n2,b\n3,a\n", "annotated with two classes"),
        ("", "not a readable CSV"),
    ],
)
def test_cli_classify__bad_annotations_are_one_line(tmp_path, capsys, rows, message):
    table, _ = _blobs_table(images=("a",))
    table.drop(columns="image").to_csv(tmp_path / "t.csv", index=False)
    (tmp_path / "ann.csv").write_text(rows)
    argv = ["classify", tmp_path / "t.csv", "--annotations", tmp_path / "ann.csv"]
    assert _run(*argv, "-o", tmp_path / "p.csv") == 2
    assert message in _one_error_line(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ann.csv", "t.csv"]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--model", "m.segclf", "--method", "knn"], "--method: training options apply"),
        (["--model", "m.segclf", "--save-model", "x.segclf"], "already saved"),
        (["--annotations", "a.csv", "--k", "3"], "--k applies to --method knn, not logistic"),
        (["--model", "missing.segclf"], "no such classifier file"),
        (["--annotations", "missing.csv"], "no such annotations file"),
    ],
)
def test_cli_classify__option_errors(tmp_path, capsys, monkeypatch, options, message):
    monkeypatch.chdir(tmp_path)
    table, _ = _blobs_table(images=("a",))
    table.drop(columns="image").to_csv("t.csv", index=False)
    assert _run("classify", "t.csv", *options, "-o", "p.csv") == 2
    assert message in _one_error_line(capsys)
    assert not (tmp_path / "p.csv").exists()


def test_cli_classify__model_or_annotations_at_least_one(capsys):
    assert _run("classify", "t.csv", "-o", "p.csv") == 2
    assert "give --annotations ANN.csv (train), --model M.segclf" in _one_error_line(capsys)


def test_cli_classify__model_and_annotations_improve_the_model(cells, tmp_path, monkeypatch):
    """--model with --annotations: trained on what the model learnt plus the new clicks; the
    same model as training on all the clicks at once."""
    _, table_path, df, truth = cells
    monkeypatch.chdir(tmp_path)
    _, ann = _annotate(df, truth, n=6)
    ann.iloc[::2].to_csv("first.csv", index=False)
    ann.iloc[1::2].to_csv("more.csv", index=False)
    ann.to_csv("all.csv", index=False)

    def classify(options: str) -> int:
        return _run("classify", table_path, *options.split())

    assert classify("--annotations first.csv -o p1.csv --save-model m.segclf") == 0
    assert classify("--model m.segclf --annotations more.csv -o p2.csv --save-model m2.segclf") == 0
    assert classify("--annotations all.csv -o p3.csv") == 0
    improved, whole = pd.read_csv("p2.csv"), pd.read_csv("p3.csv")
    prob = [c for c in whole.columns if c.startswith("prob_")]
    np.testing.assert_allclose(improved[prob], whole[prob], rtol=1e-4, atol=1e-5)
    assert sum(sr.load_classifier("m2.segclf").info["n_annotations"].values()) == len(ann)
    # its method is the model's: training options are refused with --model
    assert classify("--model m.segclf --annotations more.csv -o p4.csv --method knn") == 2


def test_cli_classify__a_process_prints_one_line_and_exit_2(tmp_path):
    """The real program, in its own process: a user error is one line, no traceback."""
    table, _ = _blobs_table(images=("a",))
    table.drop(columns="image").to_csv(tmp_path / "t.csv", index=False)
    (tmp_path / "ann.csv").write_text("label,class\n1,a\n2,a\n999,b\n3,b\n")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "napari_segrep.cli",
            "classify",
            "t.csv",
            "--annotations",
            "ann.csv",
            "-o",
            "p.csv",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "label 999" in done.stderr
    assert "Traceback" not in done.stderr


def test_cli_classify__help_loads_nothing_heavy():
    code = (
        "import json, sys\n"
        "import napari_segrep.cli as cli\n"
        "try:\n"
        "    cli.main(['classify', '--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "--annotations" in done.stdout and "--save-model" in done.stdout
    loaded = set(json.loads(done.stdout.strip().splitlines()[-1]))
    assert not loaded & {"torch", "pandas", "sklearn", "numpy", "napari"}
    assert classify._METHODS == (*METHODS, "auto")  # the parser's copy of the choices
    assert classify._FEATURES == FEATURES


def test_cli_classify__image_names_stay_as_written_in_the_predictions(tmp_path, capsys):
    """Issue 22, item 5: images ``000`` and ``001`` stay so in PRED.csv (not 0 and 1)."""
    table, truth = _blobs_table(images=("000", "001"))
    write_table(table, tmp_path / "t.csv")
    picked = np.r_[0:3, 15:18, 30:33, 45:48]
    ann = table.iloc[picked][["image", "label"]].assign(**{"class": truth[picked]})
    ann.to_csv(tmp_path / "ann.csv", index=False)
    out = tmp_path / "p.csv"
    assert (
        _run("classify", tmp_path / "t.csv", "--annotations", tmp_path / "ann.csv", "-o", out) == 0
    )
    column = pd.read_csv(out, usecols=["image"], dtype=str)["image"]
    assert column.tolist() == table["image"].tolist()
    assert sorted(set(column)) == ["000", "001"]


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        pytest.param("[" * 200_000 + "]" * 200_000, "nested deeper than 32", id="200000 deep"),
        ('{"package": "napari-segrep", "encoder": 5}', "'encoder' must be an object"),
    ],
)
def test_cli_classify__a_damaged_table_sidecar_is_one_line(tmp_path, capsys, content, problem):
    """Issue 22, item 8: no RecursionError or AttributeError, one line naming the file and the
    fix, nothing written."""
    table, truth = _blobs_table(images=("a",))
    table.drop(columns="image").to_csv(tmp_path / "t.csv", index=False)
    sidecar_path(tmp_path / "t.csv").write_text(content)
    pd.DataFrame({"label": [1, 2, 16, 17], "class": ["dim", "dim", "bright", "bright"]}).to_csv(
        tmp_path / "ann.csv", index=False
    )
    out = tmp_path / "p.csv"
    assert (
        _run("classify", tmp_path / "t.csv", "--annotations", tmp_path / "ann.csv", "-o", out) == 2
    )
    line = _one_error_line(capsys)
    assert f"{tmp_path / 't.csv.json'}" in line and problem in line
    assert "delete it to read t.csv without its provenance, or restore it" in line
    assert not out.exists() and not sidecar_path(out).exists()


def test_cli_classify__warns_once_about_class_names_a_spreadsheet_could_run(tmp_path, capsys):
    """CSV injection (OWASP): the names are written as they are, with one warning line."""
    table, truth = _blobs_table(images=("a",))
    table.drop(columns="image").to_csv(tmp_path / "t.csv", index=False)
    names = np.where(truth == "dim", "=1+1", "@SUM(A1)")
    picked = np.r_[0:3, 15:18]
    ann = pd.DataFrame({"label": table["label"].to_numpy()[picked], "class": names[picked]})
    ann.to_csv(tmp_path / "ann.csv", index=False)
    out = tmp_path / "p.csv"
    argv = ["classify", tmp_path / "t.csv", "--annotations", tmp_path / "ann.csv", "-o", out]
    assert _run(*argv, "-q") == 0
    err = capsys.readouterr().err
    assert err.startswith("napari-segrep: warning: p.csv: 30 text cell(s) start with =, +, -, @")
    assert err.count("\n") == 1 and "a spreadsheet may run them as formulas" in err
    pred = pd.read_csv(out, dtype={"class": str})
    assert (pred["class"].to_numpy() == names).mean() > 0.95  # written as they are


# ---------------------------------------------------------------------- issue 22: trust
def _two_class_files(tmp_path, names=("dim", "bright"), *, per_class=5):
    """t.csv (30 rows, two well-separated classes) and ann.csv annotating ``per_class`` rows
    of each class with ``names`` as written; returns each row's class index."""
    table, truth = _blobs_table(images=("a",))
    table.drop(columns="image").to_csv(tmp_path / "t.csv", index=False)
    index = (truth == "bright").astype(int)
    rows = np.r_[0:per_class, 15 : 15 + per_class]
    lines = "".join(f"{r + 1},{names[index[r]]}\n" for r in rows)
    (tmp_path / "ann.csv").write_text("label,class\n" + lines + "7,\n8,   \n")
    return index


@pytest.mark.parametrize(
    "names", [("NA", "None"), ("null", "nan"), ("N/A", "#N/A"), ("NULL", "<NA>"), ("000", "0")]
)
def test_cli_classify__class_names_pandas_reads_as_missing_are_classes(tmp_path, capsys, names):
    """A class named NA, None, null... is a class, exactly as written (pandas' default reads
    them as missing values and the annotations were silently dropped); only an empty cell
    (or one of spaces) is "not annotated"."""
    index = _two_class_files(tmp_path, names)
    out = tmp_path / "p.csv"
    assert (
        _run("classify", tmp_path / "t.csv", "--annotations", tmp_path / "ann.csv", "-o", out) == 0
    )
    pred = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert list(pred.columns[-2:]) == [f"prob_{n}" for n in sorted(names)]
    assert (pred["class"].to_numpy() == np.asarray(names)[index]).all()
    side = json.loads(sidecar_path(out).read_text())
    assert side["classifier"]["n_annotations"] == dict.fromkeys(sorted(names), 5)
    assert f"{names[0]} 5" in capsys.readouterr().err


def test_cli_classify__image_names_are_text_as_written(tmp_path):
    """Images named NA or 000 (a Parquet table keeps them as text) are matched by their names,
    not read as a missing value or the number 0."""
    table, truth = _blobs_table(images=("NA", "000"))
    table.to_parquet(tmp_path / "t.parquet")
    picked = np.r_[0:4, 15:19, 30:34, 45:49]
    ann = table.iloc[picked][["image", "label"]].assign(**{"class": truth[picked]})
    ann.to_csv(tmp_path / "ann.csv", index=False)
    assert "NA," in (tmp_path / "ann.csv").read_text()  # as a user's CSV has it
    out = tmp_path / "p.csv"
    argv = ["classify", tmp_path / "t.parquet", "--annotations", tmp_path / "ann.csv", "-o", out]
    assert _run(*argv) == 0
    pred = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert list(pred["image"]) == list(table["image"])
    assert (pred["class"].to_numpy() == truth).mean() > 0.95


@pytest.mark.parametrize(
    ("label", "message"),
    [
        ("100000000000000000000000", "line 4: label '100000000000000000000000' is out of range"),
        ("1e23", "line 4: label '1e23' is out of range"),
        ("-9223372036854775809", "is out of range"),
        ("2.5", "line 4: label '2.5' is not a whole number"),
        ("inf", "line 4: label 'inf' is not a whole number"),
        ("NA", "line 4: label 'NA' is not a whole number"),
        ("9007199254740993", "not in the table (label 9007199254740993)"),  # exact: no rounding
        ("9007199254740993.0", "not in the table (label 9007199254740993)"),
    ],
)
def test_cli_classify__a_label_out_of_range_is_named_with_its_line(
    tmp_path, capsys, label, message
):
    table, _ = _blobs_table(images=("a",))
    table.drop(columns="image").to_csv(tmp_path / "t.csv", index=False)
    (tmp_path / "ann.csv").write_text(f"label,class\n1,a\n2,a\n{label},b\n3,b\n4,b\n")
    argv = ["classify", tmp_path / "t.csv", "--annotations", tmp_path / "ann.csv"]
    assert _run(*argv, "-o", tmp_path / "p.csv") == 2
    line = _one_error_line(capsys)
    assert message in line and str(tmp_path / "ann.csv") in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ann.csv", "t.csv"]


def test_cli_classify__ten_thousand_classes_are_refused_before_any_fitting(tmp_path, capsys):
    """10,000 classes x 2 annotations (the old code fitted for > 5 min at 5 GB): refused at
    once, saying how many classes, the limit and what it would cost."""
    rng = np.random.default_rng(0)
    n = 20_000
    table = pd.DataFrame({"label": np.arange(1, n + 1)})
    table = pd.concat([table, pd.DataFrame(rng.normal(size=(n, 4))).add_prefix("emb_")], axis=1)
    table.to_csv(tmp_path / "t.csv", index=False)
    ann = pd.DataFrame({"label": table["label"], "class": [f"c{i // 2}" for i in range(n)]})
    ann.to_csv(tmp_path / "ann.csv", index=False)
    argv = ["classify", tmp_path / "t.csv", "--annotations", tmp_path / "ann.csv"]
    assert _run(*argv, "-o", tmp_path / "p.csv") == 2
    line = _one_error_line(capsys)
    assert "10,000 classes" in line and "at most 1,000" in line and "GiB" in line, line
    assert str(tmp_path / "ann.csv") in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ann.csv", "t.csv"]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--seed", "99999999999999999999"], "--seed 99999999999999999999 is out of range"),
        (["--seed", "-1"], "--seed -1 is out of range: give an integer from 0 to 4294967295"),
        (["--method", "random_forest", "--n-trees", "0"], "--n-trees 0: it must be"),
        (["--method", "knn", "--k", "0"], "--k 0: it must be a whole number, at least 1"),
        (["--C", "0"], "--C 0.0: it must be a positive number"),
        (["--C", "nan"], "--C nan: it must be a positive number"),
        (["--features", "embedding+geometry", "--no-size"], "--no-size applies to"),
        (["--features", "measurements", "--no-size"], "--no-size applies to"),
    ],
)
def test_cli_classify__training_options_out_of_range_are_one_line(
    tmp_path, capsys, options, message
):
    _two_class_files(tmp_path)
    argv = ["classify", tmp_path / "t.csv", "--annotations", tmp_path / "ann.csv", *options]
    assert _run(*argv, "-o", tmp_path / "p.csv") == 2
    assert message in _one_error_line(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ann.csv", "t.csv"]


def _damage(path, change) -> None:
    """Rewrite the classifier file at ``path`` with ``change(record, arrays)`` applied."""
    with np.load(path, allow_pickle=False) as archive:
        arrays = {k: archive[k] for k in archive.files if k != "meta"}
        record = json.loads(archive["meta"].tobytes().decode())
    change(record, arrays)
    arrays["meta"] = np.frombuffer(json.dumps(record).encode(), np.uint8)
    with open(path, "wb") as fh:
        np.savez_compressed(fh, **arrays)


def _cycle(record, arrays):
    inner = int(np.flatnonzero(arrays["array_tree_left"] != -1)[0])
    arrays["array_tree_left"][inner] = inner


DAMAGE = {
    "all-zero scale": ("logistic", lambda r, a: a["array_scale"].fill(0), "scale is not positive"),
    "a node that is its own child": ("random_forest", _cycle, "a cycle"),
    "cv_score as text": ("logistic", lambda r, a: r.update(cv_score="0.9"), "cv_score '0.9'"),
    "duplicate classes": (
        "knn",
        lambda r, a: r.update(classes=["x", "x"], info={}),
        "classes repeats 'x'",
    ),
    "complex scale": (
        "logistic",
        lambda r, a: a.update(array_scale=a["array_scale"] + 0j),
        "complex",
    ),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_cli_classify__a_damaged_model_is_one_line_and_writes_nothing(tmp_path, capsys, damage):
    """The old code wrote NaN probabilities (zero scale), hung (a cycle), failed after writing
    PRED.csv (cv_score text), merged two classes into one column, wrote "(0.91+0j)"."""
    method, change, message = DAMAGE[damage]
    _two_class_files(tmp_path)
    model = tmp_path / "m.segclf"
    train = ["--annotations", tmp_path / "ann.csv", "--method", method, "-q"]
    assert (
        _run(
            "classify", tmp_path / "t.csv", *train, "-o", tmp_path / "a.csv", "--save-model", model
        )
        == 0
    )
    _damage(model, change)
    before = sorted(p.name for p in tmp_path.iterdir())
    out = tmp_path / "p.csv"
    assert _run("classify", tmp_path / "t.csv", "--model", model, "-o", out) == 2
    line = _one_error_line(capsys)
    assert line.startswith(f"napari-segrep: error: {model}: ") and message in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no p.csv, no sidecar


def test_cli_classify__a_damaged_model_in_a_real_process(tmp_path, monkeypatch):
    """The real program: a classifier whose scale is all zeros (NaN probabilities, exit 0 in
    the old code) is one line on stderr, exit 2, nothing written."""
    monkeypatch.chdir(tmp_path)
    _two_class_files(tmp_path)
    train = "--annotations ann.csv -o a.csv --save-model m.segclf -q"
    assert _run("classify", "t.csv", *train.split()) == 0
    _damage(tmp_path / "m.segclf", lambda r, a: a["array_scale"].fill(0))
    predict = "classify t.csv --model m.segclf -o p.csv"
    done = subprocess.run(
        [sys.executable, "-m", "napari_segrep.cli", *predict.split()],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and "m.segclf: scale is not positive" in done.stderr
    assert not (tmp_path / "p.csv").exists() and not sidecar_path(tmp_path / "p.csv").exists()
