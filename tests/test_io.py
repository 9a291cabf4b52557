"""napari_segrep.io: pairing image and label files, atomic writes of one or several files, output
checks, run folders (no overwriting another run, a lock against concurrent runs)."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from napari_segrep.io import (
    RUN_LOCK_NAME,
    atomic_write,
    atomic_write_files,
    check_free_space,
    check_output_paths,
    claim_run_dir,
    free_run_dir,
    pair_files,
)


def test_pair_files__matches_by_stem_and_lists_unmatched(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    for name in ("a.tif", "b.png", "c.tif"):
        (tmp_path / "images" / name).write_bytes(b"x")
    for name in ("a_labels.tif", "b.png", "z_mask.tif"):
        (tmp_path / "labels" / name).write_bytes(b"x")
    with pytest.raises(ValueError) as info:
        pair_files(data_dir=tmp_path)
    assert "c.tif" in str(info.value) and "z_mask.tif" in str(info.value)
    (tmp_path / "images" / "c.tif").unlink()
    (tmp_path / "labels" / "z_mask.tif").unlink()
    pairs = pair_files(data_dir=tmp_path)
    assert [(i.name, lab.name) for i, lab in pairs] == [
        ("a.tif", "a_labels.tif"),
        ("b.png", "b.png"),
    ]
    with pytest.raises(ValueError, match="no image file matched"):
        pair_files(str(tmp_path / "nothing" / "*.tif"), str(tmp_path / "labels" / "*"))
    with pytest.raises(ValueError, match="images/ and labels/"):
        pair_files(data_dir=tmp_path / "images")


# ---------------------------------------------------------------------------- pairing


def test_pair_files__flat_layout_never_pairs_a_label_file_with_itself(tmp_path):
    """x.tif beside x_labels.tif, ``--images 'd/*.tif' --labels 'd/*_labels.tif'``: the label
    files match both patterns, and a file matched by the labels pattern is never an image."""
    for stem in ("a", "b"):
        (tmp_path / f"{stem}.tif").write_bytes(b"x")
        (tmp_path / f"{stem}_labels.tif").write_bytes(b"x")
    pairs = pair_files(str(tmp_path / "*.tif"), str(tmp_path / "*_labels.tif"))
    assert [(i.name, lab.name) for i, lab in pairs] == [
        ("a.tif", "a_labels.tif"),
        ("b.tif", "b_labels.tif"),
    ]


def test_pair_files__refuses_an_image_that_is_a_label_file(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    (tmp_path / "images" / "a.tif").write_bytes(b"x")
    (tmp_path / "images" / "a_labels.tif").write_bytes(b"x")  # a mask among the images
    (tmp_path / "labels" / "a_labels.tif").write_bytes(b"x")
    with pytest.raises(ValueError, match=r"a_labels\.tif .*label file"):
        pair_files(data_dir=tmp_path)
    (tmp_path / "images" / "a_labels.tif").unlink()
    (tmp_path / "labels" / "a_mask.tif").write_bytes(b"x")  # two label files for one image
    with pytest.raises(ValueError, match=r"a_labels\.tif.*a_mask\.tif"):
        pair_files(data_dir=tmp_path)


def test_pair_files__unmatched_files_are_refused_naming_the_fix_or_skipped_with_one_warning(
    tmp_path,
):
    """A flat folder with an orphan label file (no image) and an orphan image: refused, naming
    both and --skip-unmatched; with skip_unmatched they are left out with one warning and
    listed in ``skipped``."""
    for name in ("a.tif", "a_labels.tif", "b.tif", "b_mask.tif", "lone.tif", "z_labels.tif"):
        (tmp_path / name).write_bytes(b"x")
    with pytest.raises(ValueError) as info:
        pair_files(data_dir=tmp_path)
    message = str(info.value)
    assert "unmatched images: ['lone.tif']; unmatched labels: ['z_labels.tif']" in message
    assert message.endswith("or pass --skip-unmatched to leave them out")
    with pytest.warns(UserWarning) as caught:
        pairs = pair_files(data_dir=tmp_path, skip_unmatched=True)
    assert len(caught) == 1
    assert str(caught[0].message) == (
        "skipped 2 unmatched files (no image or label file of the same name): lone.tif, "
        "z_labels.tif"
    )
    assert [(i.name, lab.name) for i, lab in pairs] == [
        ("a.tif", "a_labels.tif"),
        ("b.tif", "b_mask.tif"),
    ]
    assert [p.name for p in pairs.skipped] == ["lone.tif", "z_labels.tif"]
    (tmp_path / "lone.tif").unlink()
    (tmp_path / "z_labels.tif").unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing skipped: no warning
        assert len(pair_files(data_dir=tmp_path, skip_unmatched=True)) == 2


def test_pair_files__a_folder_of_neither_layout_says_what_it_takes(tmp_path):
    with pytest.raises(ValueError, match="is not a folder: give a folder holding images/"):
        pair_files(data_dir=tmp_path / "missing")
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.tif").write_bytes(b"x")
    with pytest.raises(ValueError, match=r"it has images/ but not labels/"):
        pair_files(data_dir=tmp_path)
    (tmp_path / "a.tif").write_bytes(b"x")
    with pytest.raises(ValueError, match=r"no label file in .*x\.tif beside x_labels\.tif"):
        pair_files(data_dir=tmp_path)


_STEMS = st.sampled_from(["a", "b", "c1", "d e", "x.y"])
_PAIRING = st.dictionaries(
    _STEMS,
    st.tuples(st.booleans(), st.sampled_from([None, "_labels", "_label", "_mask", "_masks"])),
    min_size=1,
)


@settings(max_examples=40, deadline=None)
@given(files=_PAIRING)
def test_pair_files__one_rule_for_both_folder_layouts_and_the_globs(files):
    """Any set of images and label files: ``data_dir`` with images/ + labels/, ``data_dir``
    flat (x.tif beside x_labels.tif) and the two globs pair the same stems and skip the same
    files, or all refuse the same orphans."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for layout in ("folders", "flat"):
            (root / layout / "images").mkdir(parents=True)
            (root / layout / "labels").mkdir()
        (root / "flat" / "images").rmdir()
        (root / "flat" / "labels").rmdir()
        for stem, (has_image, suffix) in files.items():
            if has_image:
                (root / "folders" / "images" / f"{stem}.tif").write_bytes(b"x")
                (root / "flat" / f"{stem}.tif").write_bytes(b"x")
            if suffix is not None:
                (root / "folders" / "labels" / f"{stem}{suffix}.tif").write_bytes(b"x")
                (root / "flat" / f"{stem}{suffix}.tif").write_bytes(b"x")
        images = str(root / "folders" / "images" / "*")
        ways = [
            lambda **kw: pair_files(data_dir=root / "folders", **kw),
            lambda **kw: pair_files(data_dir=root / "flat", **kw),
            lambda **kw: pair_files(images, str(root / "folders" / "labels" / "*"), **kw),
        ]
        paired = {s for s, (has_image, suffix) in files.items() if has_image and suffix}
        lone = sum(has_image != (suffix is not None) for has_image, suffix in files.values())
        for way in ways:
            if not paired:
                with pytest.raises(ValueError):
                    way(skip_unmatched=True)
                continue
            if lone:
                with pytest.raises(ValueError, match="unmatched images: .*--skip-unmatched"):
                    way()
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                pairs = way(skip_unmatched=True)
            assert sorted(i.stem for i, _ in pairs) == sorted(paired)
            assert all(lab.stem.startswith(i.stem) for i, lab in pairs)
            assert len(pairs.skipped) == lone and len(caught) == (1 if lone else 0)


# ---------------------------------------------------------------------------- atomic writes


@contextlib.contextmanager
def file_size_limit(n_bytes: int):
    """Writes past ``n_bytes`` fail with EFBIG ("File too large") in this process, the way a
    full disk fails them: a real write failure without a small file system."""
    resource = pytest.importorskip("resource")
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (n_bytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)


@contextlib.contextmanager
def umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def _writer(data: bytes):
    return lambda fh: fh.write(data)


def _old_pair(tmp_path):
    (tmp_path / "t.csv").write_bytes(b"old csv")
    (tmp_path / "t.json").write_bytes(b"old json")
    return {tmp_path / "t.csv": b"old csv", tmp_path / "t.json": b"old json"}


def _assert_untouched(tmp_path, old: dict):
    for path, content in old.items():
        assert path.read_bytes() == content
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in old)


def test_atomic_write_files__replaces_every_file(tmp_path):
    _old_pair(tmp_path)
    written = atomic_write_files(
        {tmp_path / "t.csv": _writer(b"new csv"), tmp_path / "t.json": _writer(b"new json")}
    )
    assert written == [tmp_path / "t.csv", tmp_path / "t.json"]
    assert (tmp_path / "t.csv").read_bytes() == b"new csv"
    assert (tmp_path / "t.json").read_bytes() == b"new json"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.csv", "t.json"]


def test_atomic_write_files__a_directory_in_the_way_replaces_nothing(tmp_path):
    (tmp_path / "t.csv").write_bytes(b"old csv")
    (tmp_path / "t.json").mkdir()
    with pytest.raises(ValueError, match=r"t\.json is a directory"):
        atomic_write_files(
            {tmp_path / "t.csv": _writer(b"new csv"), tmp_path / "t.json": _writer(b"{}")}
        )
    assert (tmp_path / "t.csv").read_bytes() == b"old csv"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.csv", "t.json"]
    assert not list((tmp_path / "t.json").iterdir())


def test_atomic_write_files__a_failing_writer_replaces_nothing(tmp_path):
    old = _old_pair(tmp_path)

    def failing(fh):
        fh.write(b"half a file")
        raise RuntimeError("the writer failed")

    with pytest.raises(RuntimeError, match="the writer failed"):
        atomic_write_files({tmp_path / "t.csv": _writer(b"new csv"), tmp_path / "t.json": failing})
    _assert_untouched(tmp_path, old)


def test_atomic_write_files__a_full_disk_replaces_nothing_and_says_so(tmp_path):
    old = _old_pair(tmp_path)
    with file_size_limit(4096), pytest.raises(OSError) as info:
        atomic_write_files(
            {tmp_path / "t.csv": _writer(b"small"), tmp_path / "t.json": _writer(b"x" * 10_000)}
        )
    message = str(info.value)
    assert message.startswith(f"could not write {tmp_path / 't.json'}: File too large")
    assert "(disk full?)" in message and "\n" not in message
    assert info.value.errno == errno.EFBIG
    _assert_untouched(tmp_path, old)


def test_atomic_write__a_writers_wrapped_os_error_is_reported_as_one(tmp_path):
    """torch.save reports a failed write as a RuntimeError raised while handling the OSError:
    it is reported as the OSError it is, and the previous file is kept."""
    (tmp_path / "last.pt").write_bytes(b"previous checkpoint")

    def torch_like(fh):
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc] unexpected pos") from None

    with pytest.raises(OSError, match=r"No space left on device \(disk full\?\); the previous"):
        atomic_write(tmp_path / "last.pt", torch_like)
    assert (tmp_path / "last.pt").read_bytes() == b"previous checkpoint"
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o002, 0o077])
def test_atomic_write__new_files_get_the_users_normal_permissions(tmp_path, mask):
    with umask(mask):
        atomic_write(tmp_path / "new.csv", _writer(b"x"))
        atomic_write_files({tmp_path / "a.csv": _writer(b"a"), tmp_path / "a.json": _writer(b"")})
    for name in ("new.csv", "a.csv", "a.json"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o666 & ~mask, name


def test_atomic_write__a_replaced_file_keeps_its_permissions(tmp_path):
    (tmp_path / "private.csv").write_bytes(b"old")
    (tmp_path / "private.csv").chmod(0o600)
    with umask(0o022):
        atomic_write(tmp_path / "private.csv", _writer(b"new"))
    assert stat.S_IMODE((tmp_path / "private.csv").stat().st_mode) == 0o600


# ---------------------------------------------------------------------------- output checks


def test_check_output_paths__refuses_inputs_through_links(tmp_path):
    image = tmp_path / "in.tif"
    image.write_bytes(b"image")
    (tmp_path / "link.csv").symlink_to(image)
    os.link(image, tmp_path / "hard.csv")
    inputs = {"image": image, "labels": None}
    for out in (image, tmp_path / "link.csv", tmp_path / "hard.csv", tmp_path / "." / "in.tif"):
        with pytest.raises(ValueError, match=r"is the input image .*in\.tif"):
            check_output_paths([out], inputs=inputs, overwrite=True)
    assert image.read_bytes() == b"image"
    check_output_paths([tmp_path / "out.csv"], inputs=inputs)  # a new file is fine


def test_check_output_paths__existing_files_directories_and_missing_folders(tmp_path):
    (tmp_path / "out.csv").write_text("mine")
    with pytest.raises(ValueError, match=r"out\.csv exists: pass --overwrite"):
        check_output_paths([tmp_path / "out.csv"], overwrite_hint="pass --overwrite")
    check_output_paths([tmp_path / "out.csv"], overwrite=True)
    with pytest.raises(ValueError, match="is a directory"):
        check_output_paths([tmp_path], overwrite=True)
    with pytest.raises(ValueError, match="does not exist: create it first"):
        check_output_paths([tmp_path / "no" / "out.csv"])


def test_check_free_space__names_the_folder_and_the_sizes(tmp_path):
    check_free_space(tmp_path, 1024, what="a checkpoint")
    with pytest.raises(OSError, match=r"not enough free space in .* for a checkpoint: .* MB free"):
        check_free_space(tmp_path, 1 << 62, what="a checkpoint")


# ---------------------------------------------------------------------------- run folders


def test_claim_run_dir__refuses_another_runs_checkpoint_and_continues_its_own(tmp_path):
    run = tmp_path / "run"
    with claim_run_dir(run, checkpoint_name="last.pt"):
        assert (run / RUN_LOCK_NAME).read_text().split()[0] == str(os.getpid())
        (run / "last.pt").write_bytes(b"checkpoint of run 1")
    assert [p.name for p in run.iterdir()] == ["last.pt"]  # the lock is gone
    with pytest.raises(ValueError, match=r"already holds a training run .*resume=.*--resume"):
        with claim_run_dir(run, checkpoint_name="last.pt"):
            pass
    with pytest.raises(ValueError, match="already holds"):  # resuming another file: still not it
        (tmp_path / "other.pt").write_bytes(b"x")
        with claim_run_dir(run, checkpoint_name="last.pt", resume=tmp_path / "other.pt"):
            pass
    with claim_run_dir(run, checkpoint_name="last.pt", resume=tmp_path / "run" / "last.pt"):
        pass  # the same run continues
    assert [p.name for p in run.iterdir()] == ["last.pt"]
    assert (run / "last.pt").read_bytes() == b"checkpoint of run 1"


def test_claim_run_dir__a_folder_in_use_is_refused_and_a_stale_lock_taken_over(tmp_path):
    run = tmp_path / "run"
    with claim_run_dir(run):
        with pytest.raises(ValueError, match=r"in use by another training \(process \d+"):
            with claim_run_dir(run):
                pass
        assert (run / RUN_LOCK_NAME).exists()  # the refused claim left the holder's lock alone
    assert not (run / RUN_LOCK_NAME).exists()
    with pytest.raises(RuntimeError, match="boom"):  # removed on error too
        with claim_run_dir(run):
            raise RuntimeError("boom")
    assert not (run / RUN_LOCK_NAME).exists()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (run / RUN_LOCK_NAME).write_text(f"{dead.pid} {socket.gethostname()}\n")
    with claim_run_dir(run):  # a crashed training's lock
        assert (run / RUN_LOCK_NAME).read_text().split()[0] == str(os.getpid())
    assert not (run / RUN_LOCK_NAME).exists()


def test_free_run_dir__the_folder_or_a_fresh_sibling(tmp_path):
    run = tmp_path / "run"
    assert free_run_dir(run) == run  # does not exist yet
    run.mkdir()
    assert free_run_dir(run) == run  # empty
    (run / "last.pt").write_bytes(b"x")
    assert free_run_dir(run) == tmp_path / "run-2"
    assert free_run_dir(run, resume=run / "last.pt") == run  # continuing it
    (tmp_path / "run-2").mkdir()
    assert free_run_dir(run) == tmp_path / "run-3"
