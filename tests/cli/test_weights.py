"""`napari-segrep weights download|list` against a real local HTTP server, and the `--weights`
option of `embed` and `train` (auto, imagenet, none; exclusive with a checkpoint)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import tifffile

from napari_segrep._sample_data import make_cells
from napari_segrep.cli import main
from napari_segrep.weights import weights_info

from ..weights_server import RESNET18_FILE, Route, free_port, leftovers, sha256, state_dict_bytes


@pytest.fixture(scope="module")
def stand_in() -> bytes:
    return state_dict_bytes()


def _run(*argv) -> int:
    return main([str(a) for a in argv])


def _serve(server, body: bytes, **route) -> str:
    server.routes[f"/{RESNET18_FILE}"] = Route(body, **route)
    return server.url(f"/{RESNET18_FILE}")


def _one_line_error(capsys, *needles) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("napari-segrep: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], err
    return lines[0]


# ---------------------------------------------------------------------- weights download / list
def test_cli_weights__download_shows_progress_and_prints_the_path(
    weights_cache, weights_server, stand_in, capsys
):
    url = _serve(weights_server, stand_in, chunk=30_000)
    assert _run("weights", "download", "imagenet", "--url", url, "--sha256", sha256(stand_in)) == 0
    out, err = capsys.readouterr()
    path = weights_info().path
    assert out.splitlines()[-1] == str(path) and path.read_bytes() == stand_in
    assert f"from {url}" in err and "about 45 MB" in err
    progress = [part for part in err.split("\r") if part.startswith(RESNET18_FILE)]
    assert progress and "(100%)" in progress[-1] and "MB/s" in progress[-1]
    assert len(progress) <= 3  # a few updates a second, not one per chunk (~7 here)
    assert leftovers(weights_cache) == []
    # again: already there, nothing downloaded
    assert _run("weights", "download", "imagenet", "--url", url) == 0
    out, err = capsys.readouterr()
    assert out.strip() == str(path) and "already in the cache" in err
    assert weights_server.requests == [f"/{RESNET18_FILE}"]


def test_cli_weights__list_says_what_is_there_without_loading_torch(weights_cache, stand_in):
    weights_cache.mkdir(parents=True)
    (weights_cache / RESNET18_FILE).write_bytes(stand_in)
    code = (
        "import sys, json\nfrom napari_segrep.cli import main\n"
        "status = main(['weights', 'list'])\n"
        "print(json.dumps([status, 'torch' in sys.modules]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=os.environ, check=True
    )
    *rows, last = done.stdout.splitlines()
    assert json.loads(last) == [0, False]
    assert len(rows) == 3
    assert rows[0].split()[:2] == ["resnet18", "present"]
    assert rows[0].endswith(str(weights_cache / RESNET18_FILE))
    assert rows[1].split()[:3] == ["resnet34", "missing", "~83"]
    assert rows[2].endswith(str(weights_cache / "resnet50-0676ba61.pth"))
    assert "napari-segrep weights download imagenet --backbone NAME" in done.stderr


@pytest.mark.parametrize("case", ["refused", "404", "checksum", "not_weights", "bad_sha"])
def test_cli_weights__download_errors_are_one_line_and_write_nothing(
    weights_cache, weights_server, stand_in, capsys, case
):
    argv = ["weights", "download", "imagenet", "--quiet"]
    if case == "refused":
        port = free_port()
        argv += ["--url", f"http://127.0.0.1:{port}/{RESNET18_FILE}"]
        needles = [f"127.0.0.1:{port}", "efused", f"copy {RESNET18_FILE}"]
    elif case == "404":
        argv += ["--url", weights_server.url("/gone.pth")]
        needles = ["HTTP 404", "nothing was written"]
    elif case == "checksum":
        argv += ["--url", _serve(weights_server, stand_in)]
        needles = ["checksum mismatch", "f37072fd", "nothing was written"]
    elif case == "not_weights":
        page = b"<html>proxy login</html>"
        argv += ["--url", _serve(weights_server, page), "--sha256", sha256(page)]
        needles = ["not a torch weights file", "nothing was written"]
    else:
        argv += ["--sha256", "12"]
        needles = ["at least the first 8"]
    assert _run(*argv) == 2
    _one_line_error(capsys, *needles)
    assert not weights_cache.exists() or os.listdir(weights_cache) == []


def test_cli_weights__ctrl_c_exits_cleanly_and_leaves_no_partial_file(
    weights_cache, weights_server, stand_in
):
    url = _serve(weights_server, stand_in * 4, chunk=4096, delay_s=0.02)  # ~5 s in all
    cmd = [sys.executable, "-m", "napari_segrep.cli", "weights", "download", "imagenet"]
    cmd += ["--url", url, "--sha256", sha256(stand_in * 4)]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, env=os.environ)
    try:
        deadline = time.monotonic() + 60
        while not leftovers(weights_cache):  # the download is under way
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        err = proc.communicate(timeout=60)[1].decode()
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "napari-segrep: interrupted; nothing was written" in err and "Traceback" not in err
    assert os.listdir(weights_cache) == []


# ---------------------------------------------------------------------- --weights
@pytest.fixture()
def images(tmp_path):
    (tmp_path / "data" / "images").mkdir(parents=True)
    (tmp_path / "data" / "labels").mkdir()
    for i in range(2):
        image, labels, _ = make_cells(shape=(96, 96), n_cells=8, seed=20 + i)
        tifffile.imwrite(tmp_path / "data" / "images" / f"img{i}.tif", image)
        tifffile.imwrite(tmp_path / "data" / "labels" / f"img{i}_labels.tif", labels)
    return tmp_path / "data"


@pytest.fixture()
def resnet18_in_the_cache(weights_cache):
    """torchvision-format resnet18 weights in the cache (random values stand in for the real
    download, as in tests/engine/test_backbones.py)."""
    import torch
    import torchvision

    torch.manual_seed(0)
    weights_cache.mkdir(parents=True)
    path = weights_cache / RESNET18_FILE
    torch.save(torchvision.models.resnet18().state_dict(), path)
    return path


def _embed_argv(data, out, *extra):
    image, labels = data / "images" / "img0.tif", data / "labels" / "img0_labels.tif"
    return ["embed", image, labels, "-o", out, "--crop-size", 32, "--device", "cpu", *extra]


def test_cli_embed__weights_auto_without_the_cache_says_how_to_get_them(
    weights_cache, images, tmp_path, capsys
):
    assert _run(*_embed_argv(images, tmp_path / "o.csv")) == 0
    err = capsys.readouterr().err
    line = next(line for line in err.splitlines() if "weights:" in line)
    assert "untrained resnet18 (random init, seed 0)" in line
    assert "`napari-segrep weights download imagenet` gets them" in line
    side = json.loads((tmp_path / "o.json").read_text())
    assert side["encoder"]["weights"] is None


def test_cli_embed__weights_auto_uses_imagenet_when_it_is_there(
    resnet18_in_the_cache, images, tmp_path, capsys
):
    assert _run(*_embed_argv(images, tmp_path / "a.csv")) == 0
    err = capsys.readouterr().err
    assert f"napari-segrep: weights: ImageNet (resnet18, {resnet18_in_the_cache})" in err
    assert json.loads((tmp_path / "a.json").read_text())["encoder"]["weights"] == "imagenet"
    assert _run(*_embed_argv(images, tmp_path / "n.csv", "--weights", "none")) == 0
    assert "weights: untrained resnet18" in capsys.readouterr().err
    assert json.loads((tmp_path / "n.json").read_text())["encoder"]["weights"] is None


@pytest.mark.parametrize("command", ["embed", "train"])
def test_cli__weights_imagenet_errors_before_any_work(
    weights_cache, images, tmp_path, capsys, command
):
    import napari_segrep as sr

    ckpt = sr.save_encoder(sr.SegmentEncoder(in_channels=1), tmp_path / "enc.pt")
    if command == "embed":
        missing = _embed_argv(images, tmp_path / "o.csv", "--weights", "imagenet", "--quiet")
        both = [*missing, "--checkpoint", ckpt]
        flag = "--checkpoint"
    else:
        base = ["train", "--data", images, "--epochs", 1, "--device", "cpu", "--quiet"]
        missing = [*base, "--log-dir", tmp_path / "l1", "--weights", "imagenet"]
        both = [*base, "--log-dir", tmp_path / "l2", "--weights", "none", "--init-checkpoint"]
        both.append(ckpt)
        flag = "--init-checkpoint"
    assert _run(*missing) == 2
    _one_line_error(
        capsys,
        "ImageNet weights for resnet18 are not in the torch cache",
        "napari-segrep weights download imagenet",
        "--weights none",
    )
    assert _run(*both) == 2
    _one_line_error(capsys, f"and {flag} both choose the starting weights")
    assert not (tmp_path / "o.csv").exists()
    assert not any((tmp_path / d / "last.pt").exists() for d in ("l1", "l2"))


def test_cli_train__weights_auto_starts_from_imagenet_when_it_is_there(
    resnet18_in_the_cache, images, tmp_path, capsys
):
    from napari_segrep.engine.checkpoint import load_checkpoint

    argv = ["train", "--data", images, "--log-dir", tmp_path / "logs", "--epochs", 1]
    argv += ["--batch-size", 8, "--crop-size", 32, "--device", "cpu"]
    assert _run(*argv) == 0
    err = capsys.readouterr().err
    assert f"napari-segrep: weights: ImageNet (resnet18, {resnet18_in_the_cache})" in err
    ckpt = load_checkpoint(tmp_path / "logs" / "last.pt")
    assert ckpt["encoder_config"]["weights"] == "imagenet"
    # a resumed run keeps its own weights; --weights must not contradict it
    resume = ["--resume-checkpoint", tmp_path / "logs" / "last.pt", "--quiet"]
    assert _run(*argv, *resume, "--weights", "imagenet") == 2
    _one_line_error(capsys, "--weights imagenet and --resume-checkpoint")
