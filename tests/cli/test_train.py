"""`napari-segrep train` on real files, and DDP under torchrun (gloo, 2 CPU processes)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import imageio.v3 as iio
import numpy as np
import pandas as pd
import pytest
import tifffile

import napari_segrep as sr
from napari_segrep._sample_data import make_cells
from napari_segrep.cli import get_arg_parser, main
from napari_segrep.engine.checkpoint import load_checkpoint
from napari_segrep.engine.training import train_ssl
from napari_segrep.io import RUN_LOCK_NAME

SMALL = ["--batch-size", "8", "--crop-size", "32", "--device", "cpu", "--quiet"]
#: What a finished run's folder holds (with TensorBoard installed, as the test extra has it).
RUN_FOLDER = ["charts", "config.yaml", "history.csv", "last.pt", "quality.csv", "tensorboard"]


@pytest.fixture()
def data_dir(tmp_path):
    (tmp_path / "data" / "images").mkdir(parents=True)
    (tmp_path / "data" / "labels").mkdir()
    pairs = []
    for i in range(2):
        image, labels, _ = make_cells(shape=(128, 128), n_cells=12, seed=10 + i)
        tifffile.imwrite(tmp_path / "data" / "images" / f"img{i}.tif", image)
        tifffile.imwrite(tmp_path / "data" / "labels" / f"img{i}_labels.tif", labels)
        pairs.append((image, labels))
    return tmp_path / "data", pairs


def _run(*argv):
    return main([str(a) for a in argv])


def test_cli_train__writes_checkpoint_and_history(data_dir, tmp_path, capsys):
    data, pairs = data_dir
    logs = tmp_path / "logs"
    not_quiet = [a for a in SMALL if a != "--quiet"]  # the progress bar and the epoch lines
    argv = ["--log-dir", logs, "--epochs", 2, "--loss", "tico", *not_quiet]
    assert _run("train", "--data", data, *argv) == 0
    history = pd.read_csv(logs / "history.csv")
    assert list(history["step"]) == list(range(1, len(history) + 1))
    assert history["epoch"].max() == 2 and np.isfinite(history["loss"]).all()
    # TiCo's two terms, which add up to the loss
    terms = history["loss_invariance"] + history["loss_covariance"]
    np.testing.assert_allclose(terms, history["loss"], rtol=1e-5, atol=1e-6)
    ckpt = load_checkpoint(logs / "last.pt")
    assert ckpt["epoch"] == 2 and ckpt["config"]["crop_size"] == 32
    sr.load_encoder(logs / "last.pt")  # usable for embedding
    quality = pd.read_csv(logs / "quality.csv", float_precision="round_trip")  # exact floats
    assert quality["epoch"].tolist() == [0, 1, 2]
    assert quality["step"].tolist() == [0, 3, 6]
    assert set(quality["monitor"]) == {"training"} and set(quality["n"]) == {24}
    assert not quality["collapsed"].any()
    assert quality["loss"].isna().tolist() == [True, False, False]  # the start has no loss
    np.testing.assert_allclose(quality["loss"][1], history["loss"][:3].mean(), rtol=1e-9)
    saved = pd.DataFrame(ckpt["quality"])
    pd.testing.assert_frame_equal(quality, saved, check_dtype=False, rtol=1e-12)
    lines = capsys.readouterr().err.splitlines()  # also at the progress bar's "\r"
    rank0, agree0 = quality["effective_rank"][0], quality["view_agreement"][0]
    assert (
        f"start (epoch 0): effective rank {rank0:.1f}, view agreement {agree0:.2f} (24 training "
        "segments, chance 0.04)"
    ) in lines
    epoch_lines = [line for line in lines if line.startswith("epoch ")]
    assert len(epoch_lines) == 2
    for line, (_, row) in zip(epoch_lines, quality.iloc[1:].iterrows(), strict=True):
        assert line == (
            f"epoch {row['epoch']}/2: loss {row['loss']:.4f}, effective rank "
            f"{row['effective_rank']:.1f} (start {rank0:.1f}), view agreement "
            f"{row['view_agreement']:.2f} (start {agree0:.2f})"
        )
    summary = lines[-1]
    assert summary.startswith("trained 6 steps on 2 image(s)")
    last = quality.iloc[-1]
    assert f"effective rank {rank0:.1f} -> {last['effective_rank']:.1f}" in summary
    assert f"view agreement {agree0:.2f} -> {last['view_agreement']:.2f}" in summary
    # same run through the API: same losses
    api = train_ssl(
        [p[0] for p in pairs],
        [p[1] for p in pairs],
        epochs=2,
        loss="tico",
        batch_size=8,
        crop_size=32,
        device="cpu",
    )
    np.testing.assert_allclose(history["loss"], [r["loss"] for r in api.history], rtol=1e-6)


def test_cli_train__globs_resume_and_no_mask(data_dir, tmp_path):
    data, _ = data_dir
    logs = tmp_path / "logs"
    common = [
        "--images",
        data / "images" / "*.tif",
        "--labels",
        data / "labels" / "*.tif",
        "--log_dir",
        logs,
        *SMALL,
    ]
    assert _run("train", *common, "--epochs", 1, "--no_mask") == 0
    assert load_checkpoint(logs / "last.pt")["encoder_config"]["image_masking"] is False
    assert (
        _run("train", *common, "--epochs", 2, "--no_mask", "--resume_checkpoint", logs / "last.pt")
        == 0
    )
    history = pd.read_csv(logs / "history.csv")
    assert history["epoch"].tolist()[0] == 1 and history["epoch"].max() == 2  # history continues


def test_cli_train__original_underscore_spellings_are_aliases():
    parser = get_arg_parser()
    dashed = parser.parse_args(
        [
            "train",
            "--data",
            "d",
            "--log-dir",
            "l",
            "--no-mask",
            "--crop-size",
            "48",
            "--batch-size",
            "4",
            "--num-workers",
            "2",
            "--grad-accumulate",
            "3",
            "--resume-checkpoint",
            "c.pt",
            "--no-sync-batchnorm",
            "--no-gather-distributed",
            "--accelerator",
            "cpu",
            "--devices",
            "1",
            "--strategy",
            "ddp",
        ]
    )
    underscored = parser.parse_args(
        [
            "train",
            "--data",
            "d",
            "--log_dir",
            "l",
            "--no_mask",
            "--crop_size",
            "48",
            "--batch_size",
            "4",
            "--num_workers",
            "2",
            "--grad_accumulate",
            "3",
            "--resume_checkpoint",
            "c.pt",
            "--no_sync_batchnorm",
            "--no_gather_distributed",
            "--accelerator",
            "cpu",
            "--devices",
            "1",
            "--strategy",
            "ddp",
        ]
    )
    assert vars(dashed) == vars(underscored)
    assert dashed.device == "cpu" and dashed.crop_size == 48 and dashed.no_mask


def test_cli_train__debug_writes_the_view_grid_and_exits(data_dir, tmp_path):
    data, _ = data_dir
    logs = tmp_path / "logs"
    assert _run("train", "--data", data, "--log-dir", logs, "--debug", *SMALL) == 0
    grid = iio.imread(logs / "debug_views.png")
    assert grid.ndim == 3 and grid.shape[2] == 3
    assert (grid[..., 0] > 200).sum() > (grid[..., 1] > 200).sum()  # red mask outlines
    assert not (logs / "last.pt").exists()


@pytest.mark.parametrize(
    ("case", "match"),
    [
        ("no_match", "no image file matched"),
        ("unmatched", "unmatched images: ['extra.tif']"),
        ("shape", "img0.tif is (128, 128) but its labels img0_labels.tif are (64, 128)"),
        ("no_segments", "found 0 segment"),
        ("log_dir_is_file", "log directory"),
        ("float_labels", "img1.tif / img1_labels.tif: labels must be an integer array"),
        ("bool_image", "img0.tif / img0_labels.tif: image must be numeric"),
        ("rgb_labels", "img0.tif / img0_labels.tif: labels look like an RGB image"),
    ],
)
def test_cli_train__errors_before_any_work(data_dir, tmp_path, capsys, case, match):
    data, _ = data_dir
    logs = tmp_path / "logs"
    args = ["--data", data]
    if case == "no_match":
        args = ["--images", tmp_path / "nowhere" / "*.tif", "--labels", data / "labels" / "*"]
    elif case == "unmatched":
        tifffile.imwrite(data / "images" / "extra.tif", np.zeros((8, 8), np.uint8))
    elif case == "shape":
        tifffile.imwrite(data / "labels" / "img0_labels.tif", np.zeros((64, 128), np.int32))
    elif case == "no_segments":
        for f in (data / "labels").iterdir():
            tifffile.imwrite(f, np.zeros((128, 128), np.int32))
    elif case == "log_dir_is_file":
        logs = tmp_path / "file"
        logs.write_text("x")
    elif case == "float_labels":
        lab = tifffile.imread(data / "labels" / "img1_labels.tif")
        tifffile.imwrite(data / "labels" / "img1_labels.tif", lab.astype(np.float32))
    elif case == "bool_image":
        image = tifffile.imread(data / "images" / "img0.tif")
        tifffile.imwrite(data / "images" / "img0.tif", image > image.mean())
    elif case == "rgb_labels":  # a coloured rendering of the labels, saved instead of them
        lab = tifffile.imread(data / "labels" / "img0_labels.tif")
        rgb = np.stack([lab * 40 % 256, lab * 90 % 256, lab * 150 % 256], -1).astype(np.uint8)
        tifffile.imwrite(data / "labels" / "img0_labels.tif", rgb)
    assert _run("train", *args, "--log-dir", logs, "--epochs", 1, *SMALL) == 2
    err = capsys.readouterr().err
    assert match in err
    assert err.startswith("napari-segrep: error:") and err.count("\n") == 1  # one line
    assert not (tmp_path / "logs" / "last.pt").exists()


def test_cli_train__torchrun_two_processes_equals_one_process_with_the_global_batch(
    data_dir, tmp_path
):
    """DDP on CPU (gloo): 2 processes x batch 8, with synchronised masked BatchNorm and the loss
    on gathered embeddings, match 1 process x batch 16 step for step (4 steps: too few for the
    loss to fall reliably; tests/engine/test_training.py shows it falls); rank 0 alone writes
    one checkpoint, and it loads."""
    data, pairs = data_dir
    logs = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "napari_segrep.cli",
        "train",
        "--data",
        str(data),
        "--log-dir",
        str(logs),
        "--epochs",
        "4",
        "--loss",
        "ntxent",
        "--optimizer",  # SegRep's recipe for many GPUs: LARS, BatchNorm statistics updated
        "lars",
        "--batchnorm-stats",
        "update",
        "--batch-size",
        "8",
        "--crop-size",
        "32",
        "--device",
        "cpu",
        "--quiet",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in logs.iterdir()) == RUN_FOLDER
    ddp = pd.read_csv(logs / "history.csv")
    single = train_ssl(
        [p[0] for p in pairs],
        [p[1] for p in pairs],
        epochs=4,
        loss="ntxent",
        optimizer="lars",
        batchnorm_stats="update",
        batch_size=16,
        crop_size=32,
        device="cpu",
    )
    np.testing.assert_allclose(ddp["loss"], [r["loss"] for r in single.history], rtol=2e-3)
    # quality: rank 0 measures, every rank records the same; as one process does
    quality = pd.read_csv(logs / "quality.csv", float_precision="round_trip")  # exact floats
    assert quality["epoch"].tolist() == [0, 1, 2, 3, 4]
    single_rank = [r["effective_rank"] for r in single.quality]
    assert quality["effective_rank"][0] == pytest.approx(single_rank[0], rel=1e-6)
    assert quality["view_agreement"][0] == single.quality[0]["view_agreement"]
    np.testing.assert_allclose(quality["effective_rank"], single_rank, rtol=2e-2)
    ckpt = load_checkpoint(logs / "last.pt")
    assert ckpt["world_size"] == 2 and ckpt["epoch"] == 4
    sr.load_encoder(logs / "last.pt")


def _one_line_error(capsys, *needles):
    err = capsys.readouterr().err
    assert err.startswith("napari-segrep: error:") and err.count("\n") == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, err
    return err


def test_cli_train__flat_layout_pairs_each_image_with_its_labels(data_dir, tmp_path, capsys):
    """x.tif beside x_labels.tif and ``--images 'd/*.tif'``: the label files match both patterns
    and are never trained on as images (before: 4 pairs, masks among the images)."""
    data, _ = data_dir
    flat = tmp_path / "flat"
    flat.mkdir()
    for f in [*(data / "images").iterdir(), *(data / "labels").iterdir()]:
        shutil.copy(f, flat / f.name)
    argv = ["--images", flat / "*.tif", "--labels", flat / "*_labels.tif"]
    assert _run("train", *argv, "--log-dir", tmp_path / "logs", "--debug", *SMALL) == 0
    err = capsys.readouterr().err
    assert err.startswith("24 segments (0 skipped"), err  # 2 images x 12 cells


def test_cli_train__data_takes_a_flat_folder_and_skips_unmatched_files_when_asked(
    data_dir, tmp_path, capsys
):
    """``--data flat/`` pairs x.tif with x_labels.tif (as embed and the widgets do); an orphan
    is refused naming --skip-unmatched, which leaves it out with one warning."""
    data, _ = data_dir
    flat = tmp_path / "flat"
    flat.mkdir()
    for f in [*(data / "images").iterdir(), *(data / "labels").iterdir()]:
        shutil.copy(f, flat / f.name)
    shutil.copy(flat / "img0.tif", flat / "orphan.tif")
    argv = ["train", "--data", flat, "--log-dir", tmp_path / "logs", "--debug", *SMALL]
    assert _run(*argv) == 2
    err = capsys.readouterr().err
    assert "unmatched images: ['orphan.tif']" in err and "--skip-unmatched" in err
    assert _run(*argv, "--skip-unmatched") == 0
    err = capsys.readouterr().err
    assert err.startswith(
        "napari-segrep: warning: skipped 1 unmatched file (no image or label file of the same "
        "name): orphan.tif\n24 segments (0 skipped"
    ), err


def test_cli_train__never_replaces_another_runs_files(data_dir, tmp_path, capsys):
    """A second run into a log dir that holds a run (or a file named like our outputs) is
    refused before any work, naming how to continue it and how to start a new one."""
    data, _ = data_dir
    runs = {
        "ckpt": {"last.pt": b"the first run's checkpoint", "history.csv": b"step,loss\n"},
        "history": {"history.csv": b"my own history\n"},
        "quality": {"quality.csv": b"my own figures\n"},
        "debug": {"debug_views.png": b"my own picture"},
    }
    for name, files in runs.items():
        (tmp_path / name).mkdir()
        for file, content in files.items():
            (tmp_path / name / file).write_bytes(content)
    ckpt = tmp_path / "ckpt" / "last.pt"
    assert _run("train", "--data", data, "--log-dir", tmp_path / "ckpt", *SMALL) == 2
    _one_line_error(
        capsys, f"{tmp_path / 'ckpt'} already holds a training run", f"--resume-checkpoint {ckpt}"
    )
    assert _run("train", "--data", data, "--log-dir", tmp_path / "history", *SMALL) == 2
    _one_line_error(capsys, f"{tmp_path / 'history' / 'history.csv'} exists", "--log-dir")
    assert _run("train", "--data", data, "--log-dir", tmp_path / "quality", *SMALL) == 2
    _one_line_error(capsys, f"{tmp_path / 'quality' / 'quality.csv'} exists", "--log-dir")
    assert _run("train", "--data", data, "--log-dir", tmp_path / "debug", "--debug", *SMALL) == 2
    _one_line_error(capsys, f"{tmp_path / 'debug' / 'debug_views.png'} exists", "--log-dir")
    for name, files in runs.items():
        assert {p.name: p.read_bytes() for p in (tmp_path / name).iterdir()} == files


def test_cli_train__a_log_dir_in_use_is_refused(data_dir, tmp_path, capsys):
    """Another training (a live process) holds the folder's lock: refused, its lock kept."""
    data, _ = data_dir
    logs = tmp_path / "logs"
    logs.mkdir()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        (logs / RUN_LOCK_NAME).write_text(f"{other.pid} {socket.gethostname()}\n")
        assert _run("train", "--data", data, "--log-dir", logs, "--epochs", 1, *SMALL) == 2
        _one_line_error(capsys, f"{logs} is in use by another training (process {other.pid}")
        assert [p.name for p in logs.iterdir()] == [RUN_LOCK_NAME]
    finally:
        other.kill()
        other.wait()


@pytest.fixture(scope="module")
def one_epoch_run(tmp_path_factory):
    """Data and a log dir holding a 1-epoch run (last.pt, history.csv, quality.csv); copy it
    before use."""
    root = tmp_path_factory.mktemp("one_epoch")
    (root / "data" / "images").mkdir(parents=True)
    (root / "data" / "labels").mkdir()
    for i in range(2):
        image, labels, _ = make_cells(shape=(128, 128), n_cells=12, seed=10 + i)
        tifffile.imwrite(root / "data" / "images" / f"img{i}.tif", image)
        tifffile.imwrite(root / "data" / "labels" / f"img{i}_labels.tif", labels)
    argv = ["train", "--data", root / "data", "--log-dir", root / "logs", "--epochs", 1, *SMALL]
    assert _run(*argv) == 0
    return root / "data", root / "logs"


def _copy_run(run, tmp_path):
    logs = tmp_path / "logs"
    shutil.copytree(run, logs)
    return logs, (logs / "last.pt").read_bytes()


def test_cli_train__a_failed_checkpoint_write_keeps_the_previous_one(
    one_epoch_run, tmp_path, capsys
):
    """The disk fills up while the run goes on: one line naming the checkpoint, not torch's
    RuntimeError, and the previous last.pt is intact."""
    from ..test_io import file_size_limit

    data, run = one_epoch_run
    logs, before = _copy_run(run, tmp_path)
    ckpt = logs / "last.pt"
    argv = ["train", "--data", data, "--log-dir", logs, "--resume-checkpoint", ckpt]
    with file_size_limit(1 << 20):  # the checkpoint is ~90 MB
        assert _run(*argv, "--epochs", 2, *SMALL) == 2
    _one_line_error(
        capsys,
        f"could not write the checkpoint {ckpt}: File too large (disk full?); the previous "
        "checkpoint is kept",
    )
    assert ckpt.read_bytes() == before
    assert sorted(p.name for p in logs.iterdir()) == RUN_FOLDER


def test_cli_train__resuming_a_damaged_checkpoint_names_it_in_one_line(
    one_epoch_run, tmp_path, capsys
):
    """A training checkpoint with a bad random state, config=None or epoch="one" (plain values,
    as torch.save writes them): one line naming the checkpoint and the problem, exit 2, nothing
    written (these were a TypeError traceback, "incomplete (missing [])" and int()'s message)."""
    import torch

    data, run = one_epoch_run
    damages = {
        "rng is not torch's random state": lambda p: p["rng"].update(torch=torch.zeros(3)),
        "config is not a dict: None": lambda p: p.update(config=None),
        "epoch='one' is not a count": lambda p: p.update(epoch="one"),
    }
    for problem, change in damages.items():
        payload = torch.load(run / "last.pt", weights_only=True)
        change(payload)
        ckpt = tmp_path / "damaged.pt"
        torch.save(payload, ckpt)
        logs = tmp_path / "logs"
        argv = ["train", "--data", data, "--log-dir", logs, "--resume-checkpoint", ckpt]
        assert _run(*argv, "--epochs", 2, *SMALL) == 2, problem
        _one_line_error(capsys, f"training checkpoint {ckpt} cannot be resumed: {problem}")
        assert list(logs.iterdir()) == [], problem  # nothing written


def _read_until(proc, needle: bytes, timeout: float = 300) -> bytes:
    seen = b""
    deadline = time.monotonic() + timeout
    while needle not in seen:
        assert time.monotonic() < deadline, seen[-2000:]
        chunk = os.read(proc.stderr.fileno(), 4096)
        assert chunk, f"the command ended early: {seen[-3000:]!r}"
        seen += chunk
    return seen


def test_cli_train__a_second_ctrl_c_names_the_checkpoint_that_exists(one_epoch_run, tmp_path):
    """Resuming a run, then Ctrl-C twice before the next checkpoint: the earlier last.pt is
    still there, and the message says so (it used to say "nothing was written")."""
    data, run = one_epoch_run
    logs, before = _copy_run(run, tmp_path)
    ckpt = logs / "last.pt"
    cmd = [sys.executable, "-m", "napari_segrep.cli", "train", "--data", data, "--log-dir", logs]
    cmd += ["--resume-checkpoint", ckpt, "--epochs", 500, *SMALL[:-1]]  # with the progress bar
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([str(a) for a in cmd], stderr=subprocess.PIPE, env=env)
    try:
        err = _read_until(proc, b"training:")  # the first step is done
        proc.send_signal(signal.SIGINT)
        err += _read_until(proc, b"Ctrl-C again")
        proc.send_signal(signal.SIGINT)
        err += proc.communicate(timeout=300)[1]
    finally:
        proc.kill()
    assert proc.returncode == 130, err.decode()[-3000:]
    last = err.decode().strip().splitlines()[-1]
    assert last == (
        f"napari-segrep: interrupted; the last checkpoint is {ckpt}: continue with "
        f"--resume-checkpoint {ckpt}"
    )
    sr.load_encoder(ckpt)
    assert sorted(p.name for p in logs.iterdir()) == RUN_FOLDER


def test_cli_train__the_epoch_line_names_a_collapse():
    from napari_segrep.cli._train_output import quality_line, quality_summary

    start = {"epoch": 0, "step": 0, "loss": None, "effective_rank": 15.25, "view_agreement": 0.05}
    start.update(monitor="held-back", n=32, collapsed=False)
    collapsed = {**start, "epoch": 3, "step": 30, "loss": 1.5, "effective_rank": 1.8}
    collapsed.update(view_agreement=0.03125, collapsed=True)
    assert quality_line(start, start, epochs=5) == (
        "start (epoch 0): effective rank 15.2, view agreement 0.05 (32 held-back segments, "
        "chance 0.03)"
    )
    assert quality_line(collapsed, start, epochs=5) == (
        "epoch 3/5: loss 1.5000, effective rank 1.8 (start 15.2), view agreement 0.03 "
        "(start 0.05) - COLLAPSED: lower the learning rate or try another loss"
    )
    assert quality_summary([start, collapsed]) == (
        "; effective rank 15.2 -> 1.8 (collapsed), view agreement 0.05 -> 0.03 (32 held-back "
        "segments)"
    )
    assert quality_summary([]) == ""


# ----------------------------------------------------------------------------- volumes
@pytest.fixture()
def volume_dir(tmp_path, narrow_backbone_3d):
    """data/images/vol<i>.tif and data/labels/vol<i>_labels.tif: 2 noisy (10, 40, 40) z-stacks
    with 6 balls each at spacing (2, 0.5, 0.5)."""
    from ..engine.test_dataset import blob_volumes

    (tmp_path / "vols" / "images").mkdir(parents=True)
    (tmp_path / "vols" / "labels").mkdir()
    images, labels = blob_volumes(2, shape=(10, 40, 40), spacing=(2.0, 0.5, 0.5), seed=11)
    for i, (image, lab) in enumerate(zip(images, labels, strict=True)):
        tifffile.imwrite(tmp_path / "vols" / "images" / f"vol{i}.tif", image)
        tifffile.imwrite(tmp_path / "vols" / "labels" / f"vol{i}_labels.tif", lab)
    return tmp_path / "vols", (images, labels)


SMALL_3D = ["--crop-size", "16", "--batch-size", "8", "--device", "cpu", "--quiet"]


@pytest.mark.usefixtures("one_torch_thread")
def test_cli_train__volumes_train_3d_objects_with_their_spacing(volume_dir, tmp_path):
    """``--axes zyx --spacing 2 0.5 0.5`` on real z-stack files: 3D objects, a 3D encoder, the
    axes and spacing recorded; the same run as the API's."""
    from ..conftest import NARROW_BACKBONE_3D

    data, (images, labels) = volume_dir
    logs = tmp_path / "logs"
    layout = ["--axes", "zyx", "--spacing", 2, 0.5, 0.5, "--backbone", NARROW_BACKBONE_3D]
    assert _run("train", "--data", data, *layout, "--log-dir", logs, "--epochs", 2, *SMALL_3D) == 0
    ckpt = load_checkpoint(logs / "last.pt")
    assert ckpt["config"]["axes"] == "zyx" and ckpt["config"]["spacing"] == [2.0, 0.5, 0.5]
    assert ckpt["config"]["crop_size"] == 16 and ckpt["epoch"] == 2
    assert sr.load_encoder(logs / "last.pt").spatial_dims == 3
    history = pd.read_csv(logs / "history.csv")
    assert np.isfinite(history["loss"]).all() and history["epoch"].max() == 2
    api = train_ssl(
        images,
        labels,
        axes="zyx",
        spacing=(2, 0.5, 0.5),
        backbone=NARROW_BACKBONE_3D,
        epochs=2,
        batch_size=8,
        crop_size=16,
        device="cpu",
    )
    np.testing.assert_allclose(history["loss"], [r["loss"] for r in api.history], rtol=1e-6)


def test_cli_train__3d_labels_without_axes_are_refused_with_the_fix(volume_dir, tmp_path, capsys):
    data, _ = volume_dir
    assert _run("train", "--data", data, "--log-dir", tmp_path / "logs", *SMALL_3D) == 2
    _one_line_error(
        capsys,
        "vol0_labels.tif: the labels are 3D (10, 40, 40)",
        "--axes zyx for a z-stack",
        "--axes tyx for a time-lapse",
    )
    assert not (tmp_path / "logs").exists()  # before any work


@pytest.mark.parametrize(
    ("extra", "needles"),
    [
        (["--spacing", 0, 1, 1], ["--spacing 0 1 1", "must be positive"]),
        (["--spacing", 1, 1], ["--spacing 1 1: 2 values", "--spacing DZ DY DX"]),
        (["--backbone", "resnet18"], ["--backbone resnet18", "resnet18_3d"]),
        (["--backbone", "resnet99"], ["unknown backbone 'resnet99'"]),
    ],
)
def test_cli_train__bad_volume_options_are_one_line(volume_dir, tmp_path, capsys, extra, needles):
    data, _ = volume_dir
    logs = tmp_path / "logs"
    assert _run("train", "--data", data, "--axes", "zyx", *extra, "--log-dir", logs) == 2
    _one_line_error(capsys, *needles)
    assert not logs.exists()


def test_cli_train__debug_views_of_volumes_and_of_time_lapse_frames(volume_dir, tmp_path, capsys):
    """``--debug`` shows 3D objects (their widest plane) for --axes zyx; --axes tyx makes every
    plane an image of its own: as many segments as the planes hold."""
    data, (_, labels) = volume_dir
    argv = ["train", "--data", data, "--debug", *SMALL_3D]
    assert _run(*argv, "--axes", "zyx", "--log-dir", tmp_path / "zyx") == 0
    objects = sum(len(np.unique(lab)) - 1 for lab in labels)
    err = capsys.readouterr().err
    assert err.startswith(f"{objects} segments"), err
    grid = iio.imread(tmp_path / "zyx" / "debug_views.png")
    assert grid.ndim == 3 and (grid[..., 0] > 200).sum() > (grid[..., 1] > 200).sum()
    assert _run(*argv, "--axes", "tyx", "--min-size", 1, "--log-dir", tmp_path / "tyx") == 0
    sections = sum(len(np.unique(plane)) - 1 for lab in labels for plane in lab)
    assert capsys.readouterr().err.startswith(f"{sections} segments")


@pytest.mark.usefixtures("one_torch_thread")
def test_cli_train__axes_and_spacing_from_each_files_metadata(volume_dir, tmp_path, capsys):
    """OME-TIFF z-stacks of two voxel sizes, without --axes: each file's metadata says its axes
    and spacing (one line each), and each volume is trained at its own spacing."""
    from ..conftest import NARROW_BACKBONE_3D

    data, (images, labels) = volume_dir
    spacings = [(2.0, 0.5, 0.5), (1.0, 0.5, 0.5)]
    for i, (image, spacing) in enumerate(zip(images, spacings, strict=True)):
        metadata = {"axes": "ZYX"}
        sizes = ("PhysicalSizeZ", "PhysicalSizeY", "PhysicalSizeX")
        metadata.update(zip(sizes, spacing, strict=True))
        tifffile.imwrite(data / "images" / f"vol{i}.tif", image, ome=True, metadata=metadata)
    logs = tmp_path / "logs"
    argv = ["--backbone", NARROW_BACKBONE_3D, "--log-dir", logs, "--epochs", 1, *SMALL_3D]
    assert _run("train", "--data", data, *argv) == 0
    err = capsys.readouterr().err
    assert "axes zyx and spacing (2, 0.5, 0.5) µm from the OME-TIFF metadata of vol0.tif" in err
    assert "axes zyx and spacing (1, 0.5, 0.5) µm from the OME-TIFF metadata of vol1.tif" in err
    config = load_checkpoint(logs / "last.pt")["config"]
    assert config["axes"] == "zyx" and config["spacing"] == [list(s) for s in spacings]


# ------------------------------------------------------------------ config files


def _yaml(path, text):
    path.write_text(text)
    return path


def test_cli_train__the_resolved_config_reproduces_the_run_bit_for_bit(data_dir, tmp_path):
    """A run writes LOG_DIR/config.yaml (every option, data paths absolute, the versions);
    ``--config RUN/config.yaml --log-dir NEW`` trains the same weights, bit for bit (CPU)."""
    import torch
    import yaml

    data, _ = data_dir
    run, new = tmp_path / "run", tmp_path / "new"
    assert _run("train", "--data", data, "--log-dir", run, "--epochs", 1, *SMALL) == 0
    text = (run / "config.yaml").read_text()
    config = yaml.safe_load(text)
    assert config["data"] == str(data.resolve()) and config["log_dir"] == str(run.resolve())
    assert config["crop_size"] == 32 and config["batch_size"] == 8 and config["epochs"] == 1
    assert config["backbone"] == "resnet18" and config["weights"] in ("none", "imagenet")
    parser_keys = {
        a.dest for a in get_arg_parser()._subparsers._group_actions[0].choices["train"]._actions
    }
    assert set(config) <= parser_keys and "config" not in config
    assert "torch " in text.splitlines()[3] and "napari-segrep " in text.splitlines()[3]
    assert _run("train", "--config", run / "config.yaml", "--log-dir", new, "--quiet") == 0
    first, second = load_checkpoint(run / "last.pt"), load_checkpoint(new / "last.pt")
    for part in ("encoder", "head"):
        assert first[part].keys() == second[part].keys()
        for key, value in first[part].items():
            assert torch.equal(value, second[part][key]), (part, key)
    assert yaml.safe_load((new / "config.yaml").read_text()) == {**config, "log_dir": str(new)}


def test_cli_train__command_line_options_override_the_config_file(data_dir, tmp_path, capsys):
    data, _ = data_dir
    config = _yaml(
        tmp_path / "run.yaml",
        f"data: {data}\nbatch_size: 8\ncrop_size: 48\nlr: 3e-4\nno_mask: true\nloss: tico\n",
    )
    argv = ["train", "--config", config, "--crop-size=32", "--batch-si", "4", "--print-config"]
    assert _run(*argv) == 0
    import yaml

    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["crop_size"] == 32 and printed["batch_size"] == 4  # the command line wins
    assert printed["lr"] == 3e-4 and printed["no_mask"] is True and printed["loss"] == "tico"
    assert printed["data"] == str(data.resolve())
    assert not (tmp_path / "logs").exists()  # printed, nothing written


@pytest.mark.parametrize(
    ("text", "needles"),
    [
        ("bach_size: 8\n", ["unknown key 'bach_size'", "did you mean 'batch_size'"]),
        ("crop_size: '32'\n", ["crop_size: '32' is not an integer"]),
        ("crop_size: 32.0\n", ["crop_size: 32.0 is not an integer"]),
        ("no_mask: 1\n", ["no_mask: 1 is not true or false"]),
        ("loss: simclr\n", ["loss: 'simclr' is not one of ntxent, tico, vicreg"]),
        ("spacing: 2\n", ["spacing: 2 is not a list"]),
        ("batch_size: 1\n", ["batch_size: batch_size must be at least 2"]),
        ("crop_size: 100000\n", ["crop_size: crop_size=100000 is too large"]),
        ("epochs: 0\n", ["epochs: epochs must be a positive integer"]),
        ("lr: -1\n", ["lr: lr must be > 0"]),
        ("warmup_fraction: 1\n", ["warmup_fraction must be in [0, 1)"]),
        ("monitor_hold_out: maybe\n", ["monitor_hold_out: 'maybe' is not true or false"]),
        ("projection_dim: 0\n", ["projection_dim must be a positive integer"]),
        ("seed: -1\n", ["seed: -1 is out of range"]),
        ("normalize: bright\n", ["normalize: 'bright' is not understood"]),
        ("config: other.yaml\n", ["unknown key 'config'"]),
        ("- crop_size\n", ["must hold 'key: value' lines"]),
        ("crop_size: [\n", ["is not valid YAML"]),
    ],
)
def test_cli_train__a_bad_config_file_is_one_line_naming_the_file_and_key(
    data_dir, tmp_path, capsys, text, needles
):
    data, _ = data_dir
    config = _yaml(tmp_path / "run.yaml", text)
    # --print-config: should a check fail to refuse, nothing trains
    assert _run("train", "--config", config, "--data", data, "--print-config") == 2
    _one_line_error(capsys, str(config), *needles)


def test_cli_train__a_bad_value_on_the_command_line_names_the_option(data_dir, tmp_path, capsys):
    data, _ = data_dir
    config = _yaml(tmp_path / "run.yaml", "batch_size: 8\n")
    argv = ["train", "--config", config, "--data", data, "--log-dir", tmp_path / "logs"]
    assert _run(*argv, "--batch-size", "1", "--device", "cpu") == 2
    _one_line_error(capsys, "--batch-size: batch_size must be at least 2")


def test_cli_train__every_recipe_setting_has_an_option_that_reaches_the_run(data_dir, tmp_path):
    """The recipe's rarer settings (weight decay, warm-up, the head...) are options too, and
    the run trains with them (its checkpoint's config, the head's widths)."""
    data, _ = data_dir
    logs = tmp_path / "logs"
    argv = ["--log-dir", logs, "--epochs", 1, "--min-steps", 1, "--weight-decay", 0]
    argv += ["--warmup-fraction", 0, "--head-lr-scale", 2, "--projection-hidden", 32]
    argv += ["--projection-dim", 16, "--monitor-size", 4, "--no-monitor-hold-out"]
    assert _run("train", "--data", data, *argv, *SMALL) == 0
    ckpt = load_checkpoint(logs / "last.pt")
    config = ckpt["config"]
    assert config["weight_decay"] == 0 and config["warmup_fraction"] == 0
    assert config["head_lr_scale"] == 2 and config["min_steps"] == 1
    assert config["monitor_size"] == 4 and config["monitor_hold_out"] is False
    assert ckpt["head"]["net.0.weight"].shape[0] == 32
    assert [v.shape[0] for k, v in ckpt["head"].items() if k.endswith("weight")][-1] == 16
    assert ckpt["monitor"]["held_back"] is False and len(ckpt["monitor"]["indices"]) == 4
    import yaml

    written = yaml.safe_load((logs / "config.yaml").read_text())
    assert written["projection_dim"] == 16 and written["monitor_hold_out"] is False


def test_cli_train__a_missing_config_file_is_one_line(tmp_path, capsys):
    assert _run("train", "--config", tmp_path / "nowhere.yaml", "--data", tmp_path) == 2
    _one_line_error(capsys, f"cannot read the config file {tmp_path / 'nowhere.yaml'}")


def test_cli_train__a_config_yaml_in_the_log_dir_is_never_replaced(data_dir, tmp_path, capsys):
    data, _ = data_dir
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "config.yaml").write_text("my own notes\n")
    assert _run("train", "--data", data, "--log-dir", logs, *SMALL) == 2
    _one_line_error(capsys, f"{logs / 'config.yaml'} exists", "--log-dir")
    assert (logs / "config.yaml").read_text() == "my own notes\n"


def test_cli_train__every_config_key_is_a_long_option_name_with_underscores():
    """The file's keys are the options' dests, and each is a long option's name."""
    from napari_segrep.cli._config_file import file_options

    train = get_arg_parser()._subparsers._group_actions[0].choices["train"]
    for key, action in file_options(train).items():
        assert "--" + key.replace("_", "-") in action.option_strings or (
            "--" + key in action.option_strings
        ), (key, action.option_strings)


# ---------------------------------------------------------------------- the run folder
def test_cli_train__without_tensorboard_says_so_once_and_writes_the_rest(data_dir, tmp_path):
    """The tensorboard package missing (an import that fails, as when it is not installed):
    one line saying TensorBoard logging is off and how to turn it on; the run folder has
    everything else (config.yaml written when training started, the two charts)."""
    data, _ = data_dir
    logs = tmp_path / "logs"
    code = (
        "import sys; sys.modules['tensorboard'] = None; "
        "from napari_segrep.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    argv = ["train", "--data", data, "--log-dir", logs, "--epochs", "1", *SMALL]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-c", code, *map(str, argv)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    line = (
        "napari-segrep: warning: TensorBoard logging is off: the tensorboard package is not "
        'installed (pip install "napari-segrep[tensorboard]" turns it on)'
    )
    assert done.stderr.splitlines().count(line) == 1, done.stderr
    assert "tensorboard" not in done.stderr.replace(line, "").lower()
    assert sorted(str(p.relative_to(logs)) for p in logs.rglob("*")) == [
        "charts",
        "charts/loss.png",
        "charts/quality.png",
        "config.yaml",
        "history.csv",
        "last.pt",
        "quality.csv",
    ]
