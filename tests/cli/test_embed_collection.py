"""`napari-segrep embed --images/--labels/--data`: collections on real files, resumable (parts
written as images finish), sharded under torchrun (gloo, 2 CPU processes)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import tifffile

from napari_segrep.analysis.export import read_table, sidecar_path
from napari_segrep.analysis.parts import PartsFolder, parts_dir
from napari_segrep.cli import main

from ..conftest import write_pairs_folder

SMALL = ["--crop-size", "32", "--batch-size", "4", "--device", "cpu", "--weights", "none"]


@pytest.fixture()
def data(tmp_path):
    return write_pairs_folder(tmp_path / "data", 4)


def _run(*argv):
    return main([str(a) for a in argv])


def _cli(*argv):
    return [sys.executable, "-m", "napari_segrep.cli", *map(str, argv)]


def _one_line_error(capsys, *needles):
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("napari-segrep: error:")]
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def _listing(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir()} if folder.exists() else None


def test_embed_collection__data_glob_and_flat_layouts_give_one_table(data, tmp_path, capsys):
    out = tmp_path / "all.parquet"
    assert _run("embed", "--data", data, "-o", out, *SMALL) == 0
    err = capsys.readouterr().err
    assert "24 segments of 4 images embedded" in err and "images: 100%" in err
    df = read_table(out)
    assert list(df.columns[:2]) == ["image", "label"]
    assert list(dict.fromkeys(df["image"])) == ["im0", "im1", "im2", "im3"]
    assert not parts_dir(out).exists()  # merged, then removed
    side = json.loads(sidecar_path(out).read_text())
    assert side["n_images"] == 4 and side["n_segments"] == 24 and side["world_size"] == 1
    assert [r["name"] for r in side["images"]] == ["im0", "im1", "im2", "im3"]
    first = side["images"][0]
    assert first["image_size"] == (data / "images" / "im0.tif").stat().st_size
    assert "image_mtime_ns" in first and "image_sha256" not in first
    assert set(side["normalization"]) == {"im0", "im1", "im2", "im3"}
    assert side["normalization"]["im0"]["mode"] == "image"
    assert side["encoder"]["sha256"] == df.attrs["encoder"]["sha256"]

    flat = tmp_path / "flat"  # x.tif beside x_labels.tif, CSV output, --hash
    flat.mkdir()
    for f in [*(data / "images").iterdir(), *(data / "labels").iterdir()]:
        shutil.copy(f, flat / f.name)
    csv = tmp_path / "flat.csv"
    argv = ["--images", flat / "*.tif", "--labels", flat / "*_labels.tif", "-o", csv]
    assert _run("embed", *argv, *SMALL, "--hash", "--quiet") == 0
    flat_df = pd.read_csv(csv)
    assert flat_df["image"].tolist() == df["image"].tolist()
    np.testing.assert_allclose(flat_df.filter(like="emb_"), df.filter(like="emb_"), rtol=1e-6)
    side = json.loads(sidecar_path(csv).read_text())
    assert len(side["images"][0]["image_sha256"]) == 64


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["a.tif", "b.tif", "--data", "d"], "not both forms"),
        (["--images", "x/*.tif", "--labels", "y/*", "--data", "d"], "not both"),
        ([], "give IMAGE LABELS"),
        (["a.tif", "b.tif", "--devices", "2"], "are for collections"),
        (["--data", "DATA", "--measure"], "--measure works with one IMAGE LABELS"),
    ],
)
def test_embed_collection__forms_are_exclusive(data, tmp_path, capsys, argv, needle):
    argv = [str(data) if a == "DATA" else a for a in argv]
    assert _run("embed", *argv, "-o", tmp_path / "o.csv", "--quiet") == 2
    _one_line_error(capsys, needle)
    assert not (tmp_path / "o.csv").exists()


def _break_pixels(path):
    """Keep the TIFF header, cut the pixel data: readable header, unreadable image."""
    size = path.stat().st_size
    with open(path, "r+b") as fh:
        fh.truncate(size - 4000)


def test_embed_collection__bad_inputs_are_named_before_any_work(data, tmp_path, capsys):
    """An unmatched file; then a pair of different shapes, an unreadable file and float labels,
    all in one error; nothing written."""
    out = tmp_path / "o.parquet"
    tifffile.imwrite(data / "images" / "extra.tif", np.zeros((8, 8), np.uint8))
    assert _run("embed", "--data", data, "-o", out, *SMALL) == 2
    _one_line_error(capsys, "unmatched images: ['extra.tif']")
    (data / "images" / "extra.tif").unlink()

    tifffile.imwrite(data / "labels" / "im1_labels.tif", np.zeros((64, 96), np.int32))
    (data / "images" / "im2.tif").write_bytes(b"II*\x00 not a tiff")
    lab = tifffile.imread(data / "labels" / "im3_labels.tif")
    tifffile.imwrite(data / "labels" / "im3_labels.tif", lab.astype(np.float32))
    assert _run("embed", "--data", data, "-o", out, *SMALL) == 2
    line = _one_line_error(capsys, "3 problems in the inputs, nothing done")
    assert "im1.tif is (96, 96) but its labels im1_labels.tif are (64, 96)" in line
    assert f"cannot read {data / 'images' / 'im2.tif'}" in line
    assert "im3_labels.tif holds float32 values" in line
    assert not out.exists() and not parts_dir(out).exists()


def test_embed_collection__a_failing_image_keeps_the_finished_parts(data, tmp_path, capsys):
    """im2's pixels are damaged (its header is fine): im0 and im1 stay done; bad inputs and other
    settings are refused without touching them; fixed, the rerun continues; --overwrite starts
    over."""
    good = (data / "images" / "im2.tif").read_bytes()
    _break_pixels(data / "images" / "im2.tif")
    out = tmp_path / "o.parquet"
    argv = ["embed", "--data", data, "-o", out, *SMALL]
    assert _run(*argv) == 2
    line = _one_line_error(capsys, "image 'im2'", "run the same command again to continue")
    assert "the 2 of 4 images embedded so far are kept" in line
    parts = parts_dir(out)
    assert sorted(PartsFolder(parts).done()) == [0, 1]
    before = _listing(parts)

    (data / "images" / "stray.tif").write_bytes(b"junk")  # now also an unmatched file
    assert _run(*argv) == 2
    _one_line_error(capsys, "unmatched images: ['stray.tif']")
    (data / "images" / "stray.tif").unlink()
    assert _run(*argv[:-8], "--crop-size", "48", *SMALL[2:]) == 2  # other settings
    _one_line_error(capsys, "crop_size 32 then, 48 now", "--overwrite")
    assert _listing(parts) == before  # the finished parts survive every refusal

    (data / "images" / "im2.tif").write_bytes(good)  # fixed: the rerun continues
    written = []
    original = PartsFolder.write

    def spy(self, index, name, df):
        written.append(index)
        return original(self, index, name, df)

    PartsFolder.write = spy
    try:
        assert _run(*argv) == 0
        assert "resuming: 2 of 4 images already embedded" in capsys.readouterr().err
        assert written == [2, 3]  # im0 and im1 were not embedded again
        resumed = read_table(out)
        written.clear()
        assert _run(*argv, "--overwrite", "--quiet") == 0  # starts over
        assert written == [0, 1, 2, 3]
        assert "resuming" not in capsys.readouterr().err
    finally:
        PartsFolder.write = original
    pd.testing.assert_frame_equal(read_table(out), resumed, check_exact=True)
    assert json.loads(sidecar_path(out).read_text())["resumed_images"] == 0


def test_embed_collection__resume_after_kill_equals_an_uninterrupted_run(tmp_path, capsys):
    """SIGKILL once the first parts are written; the rerun keeps them (same files: inode and
    mtime) and embeds only the rest; the table equals a run that was never interrupted."""
    data = write_pairs_folder(tmp_path / "data", 8, shape=(128, 128), cells=12)
    out = tmp_path / "o.parquet"
    argv = ["embed", "--data", data, "-o", out, *SMALL, "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # slow enough to be killed half-way
    process = subprocess.Popen(_cli(*argv), env=env, stderr=subprocess.PIPE)
    folder = PartsFolder(parts_dir(out))
    deadline = time.monotonic() + 300
    while not folder.done() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    process.stderr.close()
    kept = {i: (p.stat().st_ino, p.stat().st_mtime_ns) for i, p in folder.done().items()}
    if not 0 < len(kept) < 8:
        pytest.skip(f"the kill came when {len(kept)} of 8 images were done")
    assert not out.exists()

    seen = {}
    original = PartsFolder.remove

    def look_then_remove(self):  # the kept parts, untouched, just before the merge removes them
        seen.update({i: (p.stat().st_ino, p.stat().st_mtime_ns) for i, p in self.done().items()})
        original(self)

    PartsFolder.remove = look_then_remove
    try:
        assert _run(*argv[:-1]) == 0
    finally:
        PartsFolder.remove = original
    assert f"resuming: {len(kept)} of 8 images already embedded" in capsys.readouterr().err
    assert {i: seen[i] for i in kept} == kept
    assert not parts_dir(out).exists()
    whole = tmp_path / "whole.parquet"
    assert _run("embed", "--data", data, "-o", whole, *SMALL, "--quiet") == 0
    pd.testing.assert_frame_equal(read_table(out), read_table(whole), check_exact=True)


def test_embed_collection__two_processes_equal_one(data, tmp_path):
    """--devices 2 (torchrun, gloo on CPU): each process embeds every other image; rank 0
    merges; the table equals a single process's, bit for bit."""
    single = tmp_path / "one.parquet"
    assert _run("embed", "--data", data, "-o", single, *SMALL, "--quiet") == 0
    out = tmp_path / "two.parquet"
    done = subprocess.run(
        _cli("embed", "--data", data, "-o", out, *SMALL, "--devices", 2),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr and "24 segments of 4 images" in done.stderr
    assert "rank 0 of 2: images" in done.stderr
    pd.testing.assert_frame_equal(read_table(out), read_table(single), check_exact=True)
    assert json.loads(sidecar_path(out).read_text())["world_size"] == 2
    assert not parts_dir(out).exists()


def test_embed_collection__two_processes_report_a_failing_image_in_one_line(data, tmp_path):
    """A rank's failure reaches the user as one line (no torchrun traceback); the other rank's
    finished parts are kept."""
    _break_pixels(data / "images" / "im1.tif")  # rank 1's first image
    out = tmp_path / "two.parquet"
    done = subprocess.run(
        _cli("embed", "--data", data, "-o", out, *SMALL, "--devices", 2, "--quiet"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    errors = [x for x in done.stderr.splitlines() if x.startswith("napari-segrep: error:")]
    assert len(errors) == 1 and "image 'im1'" in errors[0], done.stderr[-3000:]
    assert {0, 2} <= set(PartsFolder(parts_dir(out)).done())


def test_embed_collection__h5ad_output_for_scanpy(data, tmp_path):
    pytest.importorskip("anndata")
    out = tmp_path / "cells.h5ad"
    assert _run("embed", "--data", data, "-o", out, *SMALL) == 0
    back = read_table(out)
    assert list(back.columns[:2]) == ["image", "label"] and len(back) == 24
    assert back.attrs["encoder"]["sha256"]
    pd.testing.assert_frame_equal(back, read_table(out), check_exact=True)
