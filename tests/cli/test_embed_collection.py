"""`napari-segrep embed --images/--labels/--data`: collections on real files, resumable (parts
written as images finish), sharded under torchrun (gloo, 2 CPU processes)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

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


FAULTS = Path(__file__).parent / "faults"  # sitecustomize.py: a real signal at a known point


def _fault_env(**fault):
    """The environment of a CLI process that sends itself (or its process group) a real signal
    where ``fault`` says (see tests/cli/faults/sitecustomize.py)."""
    path = [str(FAULTS), *filter(None, [os.environ.get("PYTHONPATH")])]
    return {
        **os.environ,
        "SEGREP_TEST_FAULT": json.dumps(fault),
        "PYTHONPATH": os.pathsep.join(path),
    }


def _run_with_fault(argv, **fault):
    """``napari-segrep *argv`` in its own process group (as a terminal runs it), stopped by a
    real signal where ``fault`` says."""
    return subprocess.run(
        _cli(*argv),
        env=_fault_env(**fault),
        capture_output=True,
        text=True,
        timeout=600,
        start_new_session=True,
    )


class _Writes:
    """The indices of the parts written while it is active (a spy on ``PartsFolder.write``)."""

    def __init__(self, monkeypatch):
        self.indices = []
        original = PartsFolder.write

        def spy(folder, index, name, df):
            self.indices.append(index)
            return original(folder, index, name, df)

        monkeypatch.setattr(PartsFolder, "write", spy)


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


def test_embed_collection__resume_after_kill_equals_an_uninterrupted_run(data, tmp_path, capsys):
    """SIGKILL once 2 parts are written; the rerun keeps them (same files: inode and mtime)
    and embeds only the rest; the table equals a run that was never interrupted."""
    out = tmp_path / "o.parquet"
    argv = ["embed", "--data", data, "-o", out, *SMALL, "--quiet"]
    killed = _run_with_fault(argv, signal="SIGKILL", after_parts=2)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    folder = PartsFolder(parts_dir(out))
    kept = {i: (p.stat().st_ino, p.stat().st_mtime_ns) for i, p in folder.done().items()}
    assert sorted(kept) == [0, 1] and not out.exists()

    seen = {}
    original = PartsFolder.finish

    def look_then_finish(self):  # the kept parts, untouched, just before the merge removes them
        seen.update({i: (p.stat().st_ino, p.stat().st_mtime_ns) for i, p in self.done().items()})
        return original(self)

    PartsFolder.finish = look_then_finish
    try:
        assert _run(*argv[:-1]) == 0
    finally:
        PartsFolder.finish = original
    assert "resuming: 2 of 4 images already embedded" in capsys.readouterr().err
    assert {i: seen[i] for i in kept} == kept
    assert not parts_dir(out).exists()
    whole = tmp_path / "whole.parquet"
    assert _run("embed", "--data", data, "-o", whole, *SMALL, "--quiet") == 0
    pd.testing.assert_frame_equal(read_table(out), read_table(whole), check_exact=True)


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


# --- resuming with --overwrite, and a kill during the final write (issue 22, item 1) ---------


def test_embed_collection__overwrite_keeps_the_finished_parts_of_this_same_run(
    data, tmp_path, capsys, monkeypatch
):
    """``--overwrite`` replaces OUT, never the finished parts of this same run: Ctrl-C (a
    real SIGINT) after 2 of 4 images, then the same command resumes at 2 of 4."""
    out = tmp_path / "o.parquet"
    out.write_bytes(b"an older table the user allows replacing")
    argv = ["embed", "--data", data, "-o", out, *SMALL, "--overwrite"]
    stopped = _run_with_fault([*argv, "--quiet"], signal="SIGINT", after_parts=2)
    assert stopped.returncode == 130, stopped.stderr[-3000:]
    assert "2 of 4 images are embedded" in stopped.stderr
    assert "run the same command again to continue" in stopped.stderr
    assert "Traceback" not in stopped.stderr
    kept = {i: p.read_bytes() for i, p in PartsFolder(parts_dir(out)).done().items()}
    assert sorted(kept) == [0, 1]

    writes = _Writes(monkeypatch)
    assert _run(*argv) == 0
    assert "resuming: 2 of 4 images already embedded" in capsys.readouterr().err
    assert writes.indices == [2, 3]  # im0 and im1 were not embedded again
    assert read_table(out)["image"].unique().tolist() == ["im0", "im1", "im2", "im3"]
    assert json.loads(sidecar_path(out).read_text())["resumed_images"] == 2


@pytest.mark.parametrize(
    "kill",
    [
        {"before_replacing": "SIDECAR"},  # OUT moved into place, its sidecar not
        {"before_removing": "manifest.json"},  # both in place, the parts folder half removed
    ],
    ids=["between_the_two_renames", "while_removing_the_parts"],
)
def test_embed_collection__a_kill_during_the_final_write_is_finished_by_the_rerun(
    data, tmp_path, capsys, monkeypatch, kill
):
    """SIGKILL while OUT and its sidecar are written (a hidden temporary left beside OUT) or
    while the parts are removed: the same command, without --overwrite, finishes the job from
    the kept parts (no image embedded again), writes the pair and leaves no temporary.  Only
    the file the run wrote counts as its own: another one at OUT is refused."""
    from napari_segrep.io import leftover_temporaries

    out = tmp_path / "o.parquet"
    side = sidecar_path(out)
    kill = {k: side.name if v == "SIDECAR" else v for k, v in kill.items()}
    argv = ["embed", "--data", data, "-o", out, *SMALL, "--quiet"]
    killed = _run_with_fault(argv, signal="SIGKILL", **kill)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert out.exists() and parts_dir(out).exists()
    if "before_replacing" in kill:
        assert not side.exists()
        assert leftover_temporaries(side)  # .o.parquet.json.<8 hex>.tmp

    written = out.read_bytes()  # another file at OUT is never taken for the run's own
    out.write_bytes(b"the user's own file")
    assert _run(*argv) == 2
    _one_line_error(capsys, f"{out} exists", "--overwrite")
    assert out.read_bytes() == b"the user's own file"
    out.write_bytes(written)

    writes = _Writes(monkeypatch)
    assert _run(*argv) == 0, capsys.readouterr().err
    assert writes.indices == []
    df = read_table(out)
    assert df["image"].unique().tolist() == ["im0", "im1", "im2", "im3"] and len(df) == 24
    record = json.loads(side.read_text())
    assert (
        record["n_segments"] == 24 and record["encoder"]["sha256"] == df.attrs["encoder"]["sha256"]
    )
    assert not parts_dir(out).exists()
    assert leftover_temporaries(out) == leftover_temporaries(side) == []
    assert _run(*argv) == 2  # done: the next run is refused as before (OUT exists)
    _one_line_error(capsys, "exists", "--overwrite")


# --- parts that do not check out (item 2) -----------------------------------------------------


def test_embed_collection__parts_that_do_not_check_out_are_embedded_again(
    data, tmp_path, capsys, monkeypatch
):
    """Parts edited to hold NaN, copied under another image's name, or from another encoder,
    and a stray file named like a part, are found at the start (one warning naming each), not
    counted, and embedded again: the table equals an uninterrupted run's."""
    good = (data / "images" / "im3.tif").read_bytes()
    _break_pixels(data / "images" / "im3.tif")
    out = tmp_path / "o.parquet"
    argv = ["embed", "--data", data, "-o", out, *SMALL]
    assert _run(*argv) == 2  # im0..im2 done, im3 fails
    capsys.readouterr()
    folder = PartsFolder(parts_dir(out))
    parts = folder.done()
    assert sorted(parts) == [0, 1, 2]
    nan = pd.read_parquet(parts[0])
    nan.loc[0, "emb_0"] = np.nan
    nan.to_parquet(parts[0], index=False)  # an edited part
    shutil.copy(parts[2], parts[1])  # im2's rows under im1's name
    other = folder.read(2, "im2", encoder_sha256=read_encoder(folder, 2))
    other.attrs["encoder"] = {**other.attrs["encoder"], "sha256": "f" * 64}
    folder.write(2, "im2", other)  # written by another encoder
    shutil.copy(parts[0], folder.path / "000003-im3.parquet")  # a part-like file, no record
    (data / "images" / "im3.tif").write_bytes(good)

    writes = _Writes(monkeypatch)
    assert _run(*argv) == 0
    err = capsys.readouterr().err
    warnings = [x for x in err.splitlines() if x.startswith("napari-segrep: warning:")]
    assert len(warnings) == 1 and "4 parts" in warnings[0] and "embedded again" in warnings[0]
    line = warnings[0]
    assert "000000-im0.parquet: changed since it was written" in line  # NaN edited in
    assert "000001-im1.parquet: changed since it was written" in line  # im2's part copied
    assert "000002-im2.parquet: embedded by another encoder" in line
    assert "000003-im3.parquet: it has no record" in line
    assert "resuming" not in err
    assert writes.indices == [0, 1, 2, 3]
    whole = tmp_path / "whole.parquet"
    assert _run("embed", "--data", data, "-o", whole, *SMALL, "--quiet") == 0
    pd.testing.assert_frame_equal(read_table(out), read_table(whole), check_exact=True)


def read_encoder(folder, index):
    """The encoder fingerprint a part's record holds."""
    record = next(folder.path.glob(f"{index:06d}-*.json"))
    return json.loads(record.read_text())["encoder_sha256"]


def test_embed_collection__a_damaged_manifest_is_named_with_the_fix(data, tmp_path, capsys):
    """A manifest with wrong JSON types: one line naming it and the fix, parts untouched;
    --overwrite starts over."""
    _break_pixels(data / "images" / "im1.tif")
    out = tmp_path / "o.parquet"
    argv = ["embed", "--data", data, "-o", out, *SMALL, "--quiet"]
    assert _run(*argv) == 2
    capsys.readouterr()
    manifest = parts_dir(out) / "manifest.json"
    record = json.loads(manifest.read_text())
    record["settings"], record["inputs"][0] = "crop 32", 5
    manifest.write_text(json.dumps(record))
    before = _listing(parts_dir(out))
    assert _run(*argv) == 2
    _one_line_error(capsys, str(manifest), "'settings' is not an object", "--overwrite")
    assert _listing(parts_dir(out)) == before
    # im1 is still broken: --overwrite starts over, up to im1
    assert _run(*argv, "--overwrite") == 2
    _one_line_error(capsys, "image 'im1'", "the 1 of 4 images embedded so far are kept")


# --- options, names and the parts folder (item 11) -------------------------------------------


@pytest.mark.parametrize(
    ("option", "needle"),
    [
        (["--workers", "-1"], "--workers -1: give 0"),
        (["--batch-size", "0"], "--batch-size 0: give 1 or more"),
        (["--crop-size", "0"], "crop_size must be a positive integer"),
    ],
)
def test_embed_collection__bad_options_are_refused_before_anything_is_written(
    data, tmp_path, capsys, option, needle
):
    out = tmp_path / "o.parquet"
    assert _run("embed", "--data", data, "-o", out, *SMALL, *option) == 2
    _one_line_error(capsys, needle)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # not even OUT.parts


def test_embed_collection__a_file_name_that_is_not_utf8_is_named_before_any_work(
    data, tmp_path, capsys
):
    images = os.fsencode(data / "images")
    try:
        os.rename(data / "images" / "im2.tif", os.path.join(images, b"caf\xe9.tif"))
    except (OSError, UnicodeError):
        pytest.skip("this file system takes UTF-8 names only")
    os.rename(data / "labels" / "im2_labels.tif", data / "labels" / "caf\udce9_labels.tif")
    out = tmp_path / "o.parquet"
    assert _run("embed", "--data", data, "-o", out, *SMALL) == 2
    _one_line_error(capsys, "not valid UTF-8", "caf\\xe9.tif", "rename")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_embed_collection__a_users_file_in_the_parts_folder_is_kept_and_the_run_succeeds(
    tmp_path, capsys
):
    data = write_pairs_folder(tmp_path / "data", 2)
    _break_pixels(data / "images" / "im1.tif")
    out = tmp_path / "o.parquet"
    argv = ["embed", "--data", data, "-o", out, *SMALL, "--quiet"]
    assert _run(*argv) == 2
    notes = parts_dir(out) / "notes.txt"
    notes.write_text("mine")
    write_pairs_folder(tmp_path / "fixed", 2)
    shutil.copy(tmp_path / "fixed" / "images" / "im1.tif", data / "images" / "im1.tif")
    capsys.readouterr()
    assert _run(*argv) == 0
    err = capsys.readouterr().err
    warnings = [x for x in err.splitlines() if x.startswith("napari-segrep: warning:")]
    assert len(warnings) == 1, err
    assert f"{parts_dir(out)} was kept" in warnings[0] and "notes.txt" in warnings[0]
    assert "error" not in err
    assert [p.name for p in parts_dir(out).iterdir()] == ["notes.txt"]
    assert notes.read_text() == "mine"
    assert len(read_table(out)) == 12


# --- one pairing rule, --skip-unmatched (items 12, 13) ---------------------------------------


def test_embed_collection__data_takes_a_flat_folder_and_skips_unmatched_files_when_asked(
    data, tmp_path, capsys
):
    """``--data flat/`` (x.tif beside x_labels.tif) pairs as the globs and the widget do; an
    orphan label file is refused naming --skip-unmatched, which leaves it out with one warning
    and records it in the sidecar."""
    flat = tmp_path / "flat"
    flat.mkdir()
    for f in [*(data / "images").iterdir(), *(data / "labels").iterdir()]:
        shutil.copy(f, flat / f.name)
    shutil.copy(flat / "im0_labels.tif", flat / "orphan_labels.tif")
    out = tmp_path / "o.parquet"
    argv = ["embed", "--data", flat, "-o", out, *SMALL, "--quiet"]
    assert _run(*argv) == 2
    _one_line_error(capsys, "unmatched labels: ['orphan_labels.tif']", "--skip-unmatched")
    assert not parts_dir(out).exists()

    assert _run(*argv, "--skip-unmatched") == 0
    err = capsys.readouterr().err
    warnings = [x for x in err.splitlines() if x.startswith("napari-segrep: warning:")]
    assert len(warnings) == 1 and "skipped 1 unmatched file" in warnings[0]
    assert "orphan_labels.tif" in warnings[0]
    record = json.loads(sidecar_path(out).read_text())
    assert record["skipped_unmatched"] == [str(flat / "orphan_labels.tif")]
    assert read_table(out)["image"].unique().tolist() == ["im0", "im1", "im2", "im3"]


# --- --devices 2 stopped by Ctrl-C or a killed process (item 10) ------------------------------


@pytest.mark.parametrize(
    ("fault", "status", "says"),
    [
        (
            {"signal": "SIGINT", "to": "group", "rank": "0", "after_parts": 1},
            130,
            "napari-segrep: interrupted; ",
        ),
        (
            {"signal": "SIGKILL", "to": "self", "rank": "1", "after_parts": 1},
            2,
            "napari-segrep: error: the process of rank 1 was killed by SIGKILL; ",
        ),
    ],
    ids=["ctrl_c", "a_process_killed"],
)
def test_embed_collection__two_processes_stopped_say_one_line_and_the_rerun_continues(
    data, tmp_path, capsys, monkeypatch, fault, status, says
):
    """``--devices 2``: Ctrl-C (a real SIGINT to the whole process group, as a terminal sends
    it) or a process killed by a real SIGKILL: one line saying what happened and that the same
    command continues; none of torchrun's warnings or tracebacks.  The rerun embeds only the
    images that are not done."""
    out = tmp_path / "o.parquet"
    argv = ["embed", "--data", data, "-o", out, *SMALL, "--quiet"]
    stopped = _run_with_fault([*argv, "--devices", 2], **fault)
    assert stopped.returncode == status, stopped.stderr[-3000:]
    lines = stopped.stderr.splitlines()
    assert lines[0].startswith("napari-segrep: starting 2 processes"), stopped.stderr[-3000:]
    assert len(lines) == 2 and lines[1].startswith(says), stopped.stderr[-3000:]
    assert lines[1].endswith("run the same command again to continue")
    done = sorted(PartsFolder(parts_dir(out)).done())
    assert f"{len(done)} of 4 images are embedded in {parts_dir(out)}" in lines[1]
    assert 1 <= len(done) < 4

    writes = _Writes(monkeypatch)
    assert _run(*argv) == 0
    assert writes.indices == [i for i in range(4) if i not in done]
    assert read_table(out)["image"].unique().tolist() == ["im0", "im1", "im2", "im3"]


def test_embed_collection__two_processes_equal_one_even_stopped_after_a_rank_has_ended(
    data, tmp_path
):
    """--devices 2 (torchrun, gloo on CPU): each process embeds every other image; rank 0
    merges; the table equals a single process's, bit for bit.  A SIGTERM that reaches rank 0
    after its work has ended (torchrun stopping the ranks while one runs its exit handlers)
    changes nothing and prints no traceback (it used to raise in an exit handler: "Exception
    ignored in atexit callback ... _Stopped")."""
    single = tmp_path / "one.parquet"
    assert _run("embed", "--data", data, "-o", single, *SMALL, "--quiet") == 0
    out = tmp_path / "two.parquet"
    argv = ["embed", "--data", data, "-o", out, *SMALL, "--devices", 2]
    done = _run_with_fault(argv, signal="SIGTERM", to="self", at_exit=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr and "Exception ignored" not in done.stderr, done.stderr
    assert "24 segments of 4 images" in done.stderr and "rank 0 of 2: images" in done.stderr
    pd.testing.assert_frame_equal(read_table(out), read_table(single), check_exact=True)
    assert json.loads(sidecar_path(out).read_text())["world_size"] == 2
    assert not parts_dir(out).exists()


# --- volumes (issue 23) -----------------------------------------------------------------------


def _balls(shape, centres, radius):
    grid = np.indices(shape)
    labels = np.zeros(shape, np.int32)
    for k, centre in enumerate(centres):
        labels[sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True)) <= radius**2] = k + 1
    return labels


def write_volumes_folder(root, n, *, shape=(10, 24, 24), imwrite=None):
    """``root/images/vol<i>.tif`` (uint16) and ``root/labels/vol<i>_labels.tif``: ``n`` small
    volumes of 3 balls each (different places per volume), plain TIFFs unless ``imwrite``
    (``imwrite(path, array)``) writes them with metadata."""
    imwrite = imwrite or tifffile.imwrite
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    rng = np.random.default_rng(7)
    z, y, x = shape
    for i in range(n):
        centres = [(z // 2, 6 + i, 6), (z // 2 - 1, 16, 10 + i), (z // 2 + 1, 8 + i, 17)]
        labels = _balls(shape, centres, 3 + (i % 2))
        image = (rng.random(shape) * 500 + 1500 * (labels > 0) * (1 + labels % 2)).astype(np.uint16)
        imwrite(root / "images" / f"vol{i}.tif", image)
        imwrite(root / "labels" / f"vol{i}_labels.tif", labels)
    return root


def test_embed_collection__volumes_whose_axes_nobody_said_are_refused_before_any_work(
    tmp_path, capsys
):
    """3D label files without --axes and without TIFF metadata: one line naming each and both
    fixes (never "pass channel_axis", never one row per plane); nothing written."""
    data = write_volumes_folder(tmp_path / "vols", 2)
    out = tmp_path / "o.parquet"
    assert _run("embed", "--data", data, "-o", out, *SMALL) == 2
    line = _one_line_error(
        capsys, "2 label images are 3D", "vol0_labels.tif (10, 24, 24)", "vol1_labels.tif"
    )
    assert "--axes zyx for z-stacks" in line and "--axes tyx for time-lapses" in line
    assert "channel" not in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vols"]  # not even OUT.parts


def test_embed_collection__a_volume_that_does_not_fit_its_labels_is_named_with_the_others(
    tmp_path, capsys
):
    """With --axes zyx: a 2D image beside its 3D labels, other planes, and an unreadable
    file, all in one message before any work."""
    data = write_volumes_folder(tmp_path / "vols", 3)
    image = tifffile.imread(data / "images" / "vol0.tif")
    tifffile.imwrite(data / "images" / "vol0.tif", image[3])
    labels = tifffile.imread(data / "labels" / "vol1_labels.tif")
    tifffile.imwrite(data / "labels" / "vol1_labels.tif", labels[:8])
    (data / "images" / "vol2.tif").write_bytes(b"II*\x00 not a tiff")
    out = tmp_path / "o.parquet"
    assert _run("embed", "--data", data, "-o", out, *SMALL, "--axes", "zyx") == 2
    line = _one_line_error(capsys, "3 problems in the inputs, nothing done")
    assert "vol0.tif (24, 24) and labels vol0_labels.tif (10, 24, 24)" in line
    assert "the image is 2D" in line
    assert "vol1.tif is (10, 24, 24) but its labels vol1_labels.tif are (8, 24, 24)" in line
    assert f"cannot read {data / 'images' / 'vol2.tif'}" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vols"]


def test_embed_collection__volumes_give_one_row_per_3d_object_as_one_pair_does(tmp_path, capsys):
    """``embed --data DIR --axes zyx --spacing``: one row per 3D object of every volume, each
    volume's rows what ``embed IMAGE LABELS`` gives for it alone, the layout in the sidecar
    per image; then ImageJ TIFFs that say their axes and z step need neither option."""
    data = write_volumes_folder(tmp_path / "vols", 2)
    out = tmp_path / "o.parquet"
    argv = ["--axes", "zyx", "--spacing", "2", "1", "1"]
    assert _run("embed", "--data", data, "-o", out, *SMALL, *argv, "-q") == 0
    df = read_table(out)
    assert df.groupby("image").size().to_dict() == {"vol0": 3, "vol1": 3}
    assert list(df.columns[:5]) == ["image", "label", "centroid_z", "centroid_y", "centroid_x"]
    one = tmp_path / "one.csv"
    pair = [data / "images" / "vol1.tif", data / "labels" / "vol1_labels.tif"]
    assert _run("embed", *pair, "-o", one, *SMALL, *argv, "-q") == 0
    rows = df[df["image"] == "vol1"].drop(columns="image").reset_index(drop=True)
    alone = read_table(one)
    np.testing.assert_allclose(rows.to_numpy(float), alone.to_numpy(float), rtol=1e-5, atol=1e-6)
    side = json.loads(sidecar_path(out).read_text())
    expected = {"axes": "zyx", "spacing": [2.0, 1.0, 1.0], "spacing_source": "given"}
    assert [item["layout"] for item in side["images"]] == [expected, expected]

    def imagej(path, array):  # ImageJ keeps no int32: the labels as uint16
        array = array.astype(np.uint16) if array.dtype == np.int32 else array
        meta = {"axes": "ZYX", "spacing": 2.0, "unit": "um"}
        tifffile.imwrite(path, array, imagej=True, resolution=(1.0, 1.0), metadata=meta)

    tagged = write_volumes_folder(tmp_path / "tagged", 2, imwrite=imagej)
    capsys.readouterr()
    out2 = tmp_path / "t.parquet"
    assert _run("embed", "--data", tagged, "-o", out2, *SMALL, "-q") == 0
    layouts = [item["layout"] for item in json.loads(sidecar_path(out2).read_text())["images"]]
    assert [(lay["axes"], lay["spacing"]) for lay in layouts] == [("zyx", [2.0, 1.0, 1.0])] * 2
    assert all("ImageJ" in lay["spacing_source"] for lay in layouts), layouts
    again = read_table(out2)
    np.testing.assert_allclose(
        again.drop(columns="image").to_numpy(float),
        df.drop(columns="image").to_numpy(float),
        rtol=1e-5,
        atol=1e-6,
    )
