"""`napari-segrep demo --headless`: the sample cells embedded, written, and a first measure."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import tifffile

from napari_segrep._sample_data import make_cells
from napari_segrep.analysis.reduce import nearest_neighbour_class_agreement
from napari_segrep.analysis.tables import embedding_matrix
from napari_segrep.cli import main


def _run(*argv):
    return main([str(a) for a in argv])


def test_cli_demo__runs_headless_and_writes_outputs(tmp_path, capsys):
    assert _run("demo", "--headless", "--out", tmp_path, "--device", "cpu") == 0
    df = pd.read_csv(tmp_path / "demo.csv")
    labels = tifffile.imread(tmp_path / "cells_labels.tif")
    assert list(df["label"]) == sorted(np.unique(labels[labels > 0]))
    out = capsys.readouterr().out
    assert "class agreement" in out
    # what it prints is the analysis of what it wrote
    _, sample_labels, classes = make_cells()
    np.testing.assert_array_equal(labels, sample_labels)
    truth = np.array([classes[int(k)] for k in df["label"]])
    expected = nearest_neighbour_class_agreement(embedding_matrix(df).astype(np.float32), truth)
    printed = re.search(r"class agreement of the untrained embeddings: (\d+)%", out)
    assert printed is not None, out
    assert abs(int(printed.group(1)) - 100 * expected) <= 1
    assert f"{len(df)} cells of 3 classes" in out and "(chance ~33%)" in out


def test_cli_demo__replaces_its_own_output_but_never_a_users_file(tmp_path, capsys):
    out = tmp_path / "demo"
    argv = ["demo", "--headless", "--out", out, "--device", "cpu"]
    assert _run(*argv) == 0
    assert _run(*argv) == 0  # a previous demo's files (its demo.csv.json says so) are replaced
    names = ["cells.tif", "cells_labels.tif", "demo.csv", "demo.csv.json"]
    assert sorted(p.name for p in out.iterdir()) == names
    capsys.readouterr()
    (out / "demo.csv.json").write_text("my notes\n")  # now the folder is not a demo's any more
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    for extra in ([], ["--overwrite"]):  # a file of the user's at the sidecar's place: never
        assert _run(*argv, *extra) == 2
        err = capsys.readouterr().err
        assert err.startswith(
            f"napari-segrep: error: {out / 'demo.csv.json'} exists and was not written by"
        )
        assert err.count("\n") == 1
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    (out / "demo.csv.json").unlink()  # without a demo's record, its files are the user's
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert _run(*argv) == 2
    err = capsys.readouterr().err
    assert (
        err.startswith(f"napari-segrep: error: {out / 'cells.tif'} exists") and "--overwrite" in err
    )
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "cells.tif").write_bytes(b"my own image")
    assert _run("demo", "--headless", "--out", mine, "--device", "cpu") == 2
    assert f"{mine / 'cells.tif'} exists" in capsys.readouterr().err
    assert [p.name for p in mine.iterdir()] == ["cells.tif"]
    assert (mine / "cells.tif").read_bytes() == b"my own image"
    assert _run(*argv, "--overwrite") == 0
    assert sorted(p.name for p in out.iterdir()) == names
