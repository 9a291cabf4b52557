"""`napari-segrep demo --headless`: the sample cells embedded, written, and a first measure."""

from __future__ import annotations

import itertools
import json
import re
import shutil

import numpy as np
import pandas as pd
import pytest
import tifffile

from napari_segrep._sample_data import make_cells
from napari_segrep.analysis.export import sidecar_path
from napari_segrep.analysis.reduce import nearest_neighbour_class_agreement
from napari_segrep.analysis.tables import embedding_matrix
from napari_segrep.cli import main
from napari_segrep.cli._common import CLIError


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


@pytest.fixture(scope="module")
def demo_folder(tmp_path_factory):
    """A folder written by a real headless demo (copy it before changing it)."""
    out = tmp_path_factory.mktemp("demo") / "demo"
    assert _run("demo", "--headless", "--out", out, "--device", "cpu", "--quiet") == 0
    return out


def _names():
    return sorted(["cells.tif", "cells_labels.tif", "demo.csv", sidecar_path("demo.csv").name])


def _contents(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _one_line(capsys):
    err = capsys.readouterr().err
    assert err.startswith("napari-segrep: error: ") and err.count("\n") == 1, err
    return err


def test_cli_demo__replaces_its_own_unchanged_files_and_an_edited_one_only_with_overwrite(
    demo_folder, tmp_path, capsys
):
    """Ownership is decided per file, from the sha256 the demo recorded: a rerun replaces what
    is as the demo wrote it, refuses a file the user edited (it used to replace it: the folder
    was 'the demo's' as a whole, from its demo.json), and --overwrite replaces that one too."""
    out = tmp_path / "demo"
    shutil.copytree(demo_folder, out)
    argv = ["demo", "--headless", "--out", out, "--device", "cpu", "--quiet"]
    inodes = {p.name: p.stat().st_ino for p in out.iterdir()}
    assert _run(*argv) == 0  # unchanged files: replaced
    assert sorted(p.name for p in out.iterdir()) == _names()
    assert all(p.stat().st_ino != inodes[p.name] for p in out.iterdir())
    capsys.readouterr()
    table = out / "demo.csv"
    edited = pd.read_csv(table).assign(my_class="round")  # the user annotates the demo's table
    edited.to_csv(table, index=False)
    before = _contents(out)
    assert _run(*argv) == 2
    err = _one_line(capsys)
    assert err == (
        f"napari-segrep: error: {table} was changed since napari-segrep demo wrote it: pass "
        "--overwrite to replace it (the changes are lost), or choose another --out\n"
    )
    assert _contents(out) == before  # nothing written
    assert _run(*argv, "--overwrite") == 0
    assert "my_class" not in pd.read_csv(table).columns
    assert _run(*argv) == 0  # and the record is whole again


def test_cli_demo__never_replaces_a_file_it_did_not_write(tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "cells.tif").write_bytes(b"my own image")
    assert _run("demo", "--headless", "--out", mine, "--device", "cpu", "--overwrite") == 2
    err = _one_line(capsys)
    assert err == (
        f"napari-segrep: error: {mine / 'cells.tif'} was not written by napari-segrep demo and "
        "is never replaced: move it away, or choose another --out\n"
    )
    assert _contents(mine) == {"cells.tif": b"my own image"}


_DATA = ("cells.tif", "cells_labels.tif", "demo.csv")


def _make_state(folder, data_states, sidecar_state):
    """Change a copy of a demo's folder: each data file absent, unchanged or edited; the
    sidecar intact, edited (still a demo's record), replaced by the user's notes, or absent."""
    for name, state in zip(_DATA, data_states, strict=True):
        if state == "absent":
            (folder / name).unlink()
        elif state == "edited":
            with open(folder / name, "ab") as fh:
                fh.write(b"\n")
    record = sidecar_path(folder / "demo.csv")
    if sidecar_state == "edited":
        data = json.loads(record.read_text())
        data["my_note"] = "seen on Monday"
        record.write_text(json.dumps(data))
    elif sidecar_state == "notes":
        record.write_text("my notes\n")
    elif sidecar_state == "absent":
        record.unlink()


def test_check_demo_folder__decides_per_file(demo_folder, tmp_path):
    """Every combination of file states, with and without --overwrite: refused when a file is
    there that the demo did not write (no record of it: the sidecar is gone or not the demo's),
    whatever --overwrite says; else refused without --overwrite when a file was changed since
    the demo wrote it; else allowed.  The check itself writes nothing."""
    from napari_segrep.cli.demo import _check_demo_folder

    data_choices = ("absent", "unchanged", "edited")
    sidecar_choices = ("intact", "edited", "notes", "absent")
    for k, (data_states, sidecar_state, overwrite) in enumerate(
        itertools.product(itertools.product(data_choices, repeat=3), sidecar_choices, (False, True))
    ):
        folder = tmp_path / f"case{k}"
        shutil.copytree(demo_folder, folder)
        _make_state(folder, data_states, sidecar_state)
        present = [n for n, s in zip(_DATA, data_states, strict=True) if s != "absent"]
        record_lost = sidecar_state in ("notes", "absent")
        foreign = present if record_lost else []
        foreign = foreign + (["record"] if sidecar_state == "notes" else [])
        changed = [n for n, s in zip(_DATA, data_states, strict=True) if s == "edited"]
        changed = changed + (["record"] if sidecar_state == "edited" else [])
        before = _contents(folder)
        case = (data_states, sidecar_state, overwrite)
        if foreign or (changed and not overwrite):
            match = "not written by napari-segrep demo" if foreign else "changed since napari"
            with pytest.raises(CLIError, match=match) as info:
                _check_demo_folder(folder, overwrite=overwrite)
            for name in foreign or changed:  # every file in question is named
                path = sidecar_path(folder / "demo.csv") if name == "record" else folder / name
                assert str(path) in str(info.value), case
        else:
            _check_demo_folder(folder, overwrite=overwrite)
        assert _contents(folder) == before, case
        shutil.rmtree(folder)


def test_check_demo_folder__a_link_or_an_earlier_demo_s_record(demo_folder, tmp_path):
    """A symbolic link of a demo's name is the user's (the demo writes none): never replaced.
    A record written before the checksums (package and sample, no demo_files) still says the
    files are the demo's, but not whether they changed: replaced with --overwrite only."""
    from napari_segrep.cli.demo import _check_demo_folder

    linked = tmp_path / "linked"
    shutil.copytree(demo_folder, linked)
    (tmp_path / "my_labels.tif").write_bytes((linked / "cells_labels.tif").read_bytes())
    (linked / "cells_labels.tif").unlink()
    (linked / "cells_labels.tif").symlink_to(tmp_path / "my_labels.tif")
    with pytest.raises(CLIError, match=r"cells_labels.tif was not written by napari-segrep"):
        _check_demo_folder(linked, overwrite=True)
    old = tmp_path / "old"
    shutil.copytree(demo_folder, old)
    record = sidecar_path(old / "demo.csv")
    data = json.loads(record.read_text())
    legacy = {"package": "napari-segrep", "inputs": data["inputs"], "command": "demo"}
    record.write_text(json.dumps(legacy))
    with pytest.raises(CLIError, match="were changed since napari-segrep demo") as info:
        _check_demo_folder(old, overwrite=False)
    assert all(str(old / name) in str(info.value) for name in _DATA)
    _check_demo_folder(old, overwrite=True)
    record.rename(old / "demo.json")  # the sidecar's name before issue 22: the same rule
    with pytest.raises(CLIError, match="were changed since napari-segrep demo"):
        _check_demo_folder(old, overwrite=False)
    _check_demo_folder(old, overwrite=True)
