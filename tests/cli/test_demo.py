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
