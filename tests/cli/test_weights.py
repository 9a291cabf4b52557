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
from napari_segrep.analysis.export import sidecar_path
from napari_segrep.cli import main
from napari_segrep.weights import format_size, weights_info

from ..weights_server import (
    RESNET18_FILE,
    Route,
    free_port,
    leftovers,
    publish,
    sha256,
    state_dict_bytes,
)


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
    weights_cache, weights_server, stand_in, capsys, monkeypatch
):
    publish(monkeypatch, stand_in)
    url = _serve(weights_server, stand_in, chunk=30_000)
    assert _run("weights", "download", "imagenet", "--url", url) == 0
    out, err = capsys.readouterr()
    path = weights_info().path
    assert out.splitlines()[-1] == str(path) and path.read_bytes() == stand_in
    assert f"from {url}" in err and f"about {format_size(len(stand_in))}" in err
    progress = [part for part in err.split("\r") if part.startswith(RESNET18_FILE)]
    assert progress and "(100%)" in progress[-1] and "MB/s" in progress[-1]
    assert len(progress) <= 3  # a few updates a second, not one per chunk (~7 here)
    assert leftovers(weights_cache) == []
    # again: already there, nothing downloaded
    assert _run("weights", "download", "imagenet", "--url", url) == 0
    out, err = capsys.readouterr()
    assert out.strip() == str(path) and "already in the cache, whole" in err
    assert weights_server.requests == [f"/{RESNET18_FILE}"]
    # --force: downloaded again, even though the file there is whole
    assert _run("weights", "download", "imagenet", "--url", url, "--force", "--quiet") == 0
    assert "checked and saved" in capsys.readouterr().err
    assert weights_server.requests == [f"/{RESNET18_FILE}"] * 2 and path.read_bytes() == stand_in


def test_cli_weights__list_says_what_is_there_without_loading_torch(weights_cache, stand_in):
    """resnet18 whole, resnet34 damaged (an error page saved under its name), resnet50
    missing; in a fresh interpreter, where torch must not load."""
    weights_cache.mkdir(parents=True)
    (weights_cache / RESNET18_FILE).write_bytes(stand_in)
    (weights_cache / "resnet34-b627a593.pth").write_bytes(b"<html>Sign in</html>")
    code = (
        "import sys, json\nfrom napari_segrep import weights\n"
        "from napari_segrep.cli import main\n"
        # the stand-in is torchvision's resnet18 file here (as publish() does in-process)
        f"weights.PUBLISHED[{RESNET18_FILE!r}] = weights.PublishedFile({RESNET18_FILE!r}, "
        f"{len(stand_in)}, {sha256(stand_in)!r})\n"
        "status = main(['weights', 'list'])\n"
        "print(json.dumps([status, 'torch' in sys.modules]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=os.environ, check=True
    )
    *rows, last = done.stdout.splitlines()
    assert json.loads(last) == [0, False]
    assert len(rows) == 4  # every file of the catalogue: 3 ImageNet ResNets, DINOv2's ViT
    size = format_size(len(stand_in)).split()
    assert rows[0].split()[:6] == ["resnet18", "imagenet", "present", *size, "BSD-3-Clause"]
    assert rows[0].endswith(str(weights_cache / RESNET18_FILE))
    assert rows[1].split()[:5] == ["resnet34", "imagenet", "damaged", "20", "B"]
    assert rows[2].split()[:4] == ["resnet50", "imagenet", "missing", "~98"]
    assert rows[2].endswith(str(weights_cache / "resnet50-0676ba61.pth"))
    dinov2 = ["vit_small_patch14_reg4_dinov2", "dinov2", "missing", "~84", "MB", "Apache-2.0"]
    assert rows[3].split()[:6] == dinov2
    errors = done.stderr.splitlines()
    damaged = [line for line in errors if "damaged" in line]
    assert len(damaged) == 1 and "resnet34-b627a593.pth is damaged (it has 20 bytes" in damaged[0]
    assert "it looks like a web page" in damaged[0]
    assert "`napari-segrep weights download imagenet --backbone resnet34 --force`" in damaged[0]
    assert "napari-segrep weights download imagenet --backbone resnet50;" in done.stderr
    assert done.stderr.rstrip().endswith("napari-segrep weights download dinov2")


@pytest.mark.parametrize(
    "case",
    [
        "refused",
        "404",
        "checksum",
        "not_weights",
        "bad_sha",
        "other_sha",
        "redirect_loop",
        "too_large",
        "endless",
        "stalled",
        "bad_timeout",
    ],
)
def test_cli_weights__download_errors_are_one_line_and_write_nothing(
    weights_cache, weights_server, stand_in, capsys, monkeypatch, case
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
        publish(monkeypatch, page)
        argv += ["--url", _serve(weights_server, page)]
        needles = ["not a torch weights file", "nothing was written"]
    elif case == "bad_sha":
        argv += ["--sha256", "12"]
        needles = ["at least the first 8"]
    elif case == "other_sha":
        argv += ["--url", _serve(weights_server, stand_in), "--sha256", sha256(stand_in)]
        needles = ["disagrees with torchvision's resnet18-f37072fd.pth", "f37072fd"]
    elif case == "redirect_loop":
        loop = weights_server.url("/loop.pth")
        weights_server.routes["/loop.pth"] = Route(b"", status=302, headers={"Location": loop})
        argv += ["--url", loop]
        needles = ["redirects in a loop", "nothing was written"]
    elif case == "too_large":
        argv += ["--url", _serve(weights_server, stand_in, content_length=10**15)]
        needles = ["announces 1,000,000,000,000,000 bytes", "has 46,830,571", "refused"]
    elif case == "endless":
        publish(monkeypatch, stand_in)
        argv += ["--url", _serve(weights_server, stand_in, content_length=False, endless=True)]
        needles = ["sent more than", "refused, nothing was written"]
    elif case == "stalled":
        publish(monkeypatch, b"x" * 30)
        url = _serve(weights_server, b"x" * 30, chunk=1, delay_s=0.3, content_length=False)
        argv += ["--url", url, "--timeout", "1"]
        needles = ["it stalled (less than 64 KiB in 1 s; --timeout sets the limit)"]
    else:
        argv += ["--timeout", "0"]
        needles = []
    if case == "bad_timeout":  # argparse's own error: one usage line and one error line
        with pytest.raises(SystemExit) as exit_info:
            _run(*argv)
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert "argument --timeout: '0' is not a positive number of seconds" in err
        assert "Traceback" not in err
        return
    assert _run(*argv) == 2
    _one_line_error(capsys, *needles)
    assert not weights_cache.exists() or os.listdir(weights_cache) == []


def test_cli_weights__ctrl_c_exits_cleanly_and_leaves_no_partial_file(
    weights_cache, weights_server, stand_in
):
    url = _serve(weights_server, stand_in * 4, chunk=4096, delay_s=0.02)  # ~5 s in all
    cmd = [sys.executable, "-m", "napari_segrep.cli", "weights", "download", "imagenet"]
    cmd += ["--url", url]  # (interrupted long before its checksum is checked)
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


@pytest.fixture(scope="module")
def resnet18_bytes() -> bytes:
    """torchvision-format resnet18 weights (random values stand in for ImageNet's)."""
    import io

    import torch
    import torchvision

    torch.manual_seed(0)
    buffer = io.BytesIO()
    torch.save(torchvision.models.resnet18().state_dict(), buffer)
    return buffer.getvalue()


@pytest.fixture()
def resnet18_in_the_cache(weights_cache, resnet18_bytes, monkeypatch):
    """torchvision's resnet18 file in the cache: the stand-in, published for the test."""
    publish(monkeypatch, resnet18_bytes)
    weights_cache.mkdir(parents=True)
    path = weights_cache / RESNET18_FILE
    path.write_bytes(resnet18_bytes)
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
    side = json.loads(sidecar_path(tmp_path / "o.csv").read_text())
    assert side["encoder"]["weights"] is None


def test_cli_embed__weights_auto_uses_imagenet_when_it_is_there(
    resnet18_in_the_cache, images, tmp_path, capsys
):
    assert _run(*_embed_argv(images, tmp_path / "a.csv")) == 0
    err = capsys.readouterr().err
    assert f"napari-segrep: weights: ImageNet (resnet18, {resnet18_in_the_cache})" in err
    assert (
        json.loads(sidecar_path(tmp_path / "a.csv").read_text())["encoder"]["weights"] == "imagenet"
    )
    assert _run(*_embed_argv(images, tmp_path / "n.csv", "--weights", "none")) == 0
    assert "weights: untrained resnet18" in capsys.readouterr().err
    assert json.loads(sidecar_path(tmp_path / "n.csv").read_text())["encoder"]["weights"] is None


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


# ---------------------------------------------------------------------- a damaged file in the cache
def _damage(path, good: bytes, damage: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if damage == "empty":
        path.write_bytes(b"")
    elif damage == "truncated":
        path.write_bytes(good[: len(good) // 2])
    elif damage == "html_page":
        path.write_bytes(b"<!DOCTYPE html><html><body>Sign in to the proxy</body></html>")
    elif damage == "tiny_dict":
        path.write_bytes(state_dict_bytes(100))
    else:  # the right size, one byte changed
        middle = len(good) // 2
        path.write_bytes(good[:middle] + bytes([good[middle] ^ 0xFF]) + good[middle + 1 :])


@pytest.mark.parametrize("damage", ["empty", "truncated", "html_page", "tiny_dict", "one_byte"])
@pytest.mark.parametrize("choice", ["auto", "imagenet"])
def test_cli_embed__a_damaged_weights_file_is_one_line_with_the_fix(
    weights_cache, images, tmp_path, capsys, monkeypatch, stand_in, damage, choice
):
    publish(monkeypatch, stand_in)
    path = weights_cache / RESNET18_FILE
    _damage(path, stand_in, damage)
    out = tmp_path / "o.csv"
    assert _run(*_embed_argv(images, out, "--weights", choice, "--quiet")) == 2
    line = _one_line_error(
        capsys,
        f"the ImageNet weights file {path} is damaged (",
        "download it again with `napari-segrep weights download imagenet --force`",
    )
    assert "weights_only" not in line
    assert not out.exists() and not sidecar_path(out).exists()


def test_cli_embed__a_damaged_weights_file_gives_no_traceback(weights_cache, images, tmp_path):
    """The command as a user runs it (no stand-in: torchvision's real size and digits): one
    line, exit status 2, where a 31-line traceback was."""
    (weights_cache).mkdir(parents=True)
    (weights_cache / RESNET18_FILE).write_bytes(b"<html><body>Sign in</body></html>")
    argv = [str(a) for a in _embed_argv(images, tmp_path / "o.csv", "--quiet")]
    done = subprocess.run(
        [sys.executable, "-m", "napari_segrep.cli", *argv],
        capture_output=True,
        text=True,
        env=os.environ,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [
        f"napari-segrep: error: the ImageNet weights file {weights_cache / RESNET18_FILE} is "
        "damaged (it has 33 bytes, torchvision's file has 46,830,571; it looks like a web page): "
        "download it again with `napari-segrep weights download imagenet --force`, or copy "
        "torchvision's resnet18-f37072fd.pth there again from a machine with internet"
    ]
    assert not (tmp_path / "o.csv").exists()


def test_cli_weights__download_replaces_a_damaged_file_without_force(
    weights_cache, weights_server, stand_in, capsys, monkeypatch
):
    publish(monkeypatch, stand_in)
    path = weights_cache / RESNET18_FILE
    _damage(path, stand_in, "truncated")
    url = _serve(weights_server, stand_in)
    assert _run("weights", "download", "imagenet", "--url", url, "--quiet") == 0
    out, err = capsys.readouterr()
    assert "the file in the cache is damaged (its SHA-256 starts with" in err
    assert "it is replaced once the new one is verified" in err
    assert out.strip() == str(path) and path.read_bytes() == stand_in
    assert weights_server.requests == [f"/{RESNET18_FILE}"] and leftovers(weights_cache) == []
    assert _run("weights", "list") == 0
    assert capsys.readouterr().out.splitlines()[0].split()[:3] == [
        "resnet18",
        "imagenet",
        "present",
    ]


def test_cli_weights__a_failed_download_keeps_the_damaged_file_and_says_so_again(
    weights_cache, weights_server, stand_in, capsys, monkeypatch
):
    publish(monkeypatch, stand_in)
    path = weights_cache / RESNET18_FILE
    _damage(path, stand_in, "truncated")
    before = path.read_bytes()
    url = _serve(weights_server, stand_in, send=1000)  # cut short
    assert _run("weights", "download", "imagenet", "--url", url, "--quiet") == 2
    _one_line_error(capsys, "ended after 1000 of", "nothing was written")
    assert path.read_bytes() == before and leftovers(weights_cache) == []
    assert weights_info().damaged is not None


def _dinov2_stand_in() -> bytes:
    """A file in the layout of Meta's ``dinov2_vits14_reg4_pretrain.pth`` (every key and shape
    of the full ViT-S/14 with 4 registers: CLS position inside ``pos_embed``,
    ``register_tokens``, ``mask_token``), its values zeros in float16 (44 MB, not 88)."""
    import io

    import timm
    import torch

    with torch.device("meta"):
        model = timm.create_model("vit_small_patch14_reg4_dinov2", pretrained=False, num_classes=0)
    state = {k: torch.zeros(v.shape, dtype=torch.float16) for k, v in model.state_dict().items()}
    pos = state["pos_embed"]
    state["pos_embed"] = torch.zeros((1, pos.shape[1] + 1, pos.shape[2]), dtype=torch.float16)
    state["register_tokens"] = state.pop("reg_token")
    state["mask_token"] = torch.zeros((1, pos.shape[2]), dtype=torch.float16)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def test_cli_weights__dinov2_downloads_on_request_checked_by_loading_it(
    weights_cache, weights_server, capsys
):
    """``weights download dinov2`` from a loopback server: Meta publishes no SHA-256, so the
    file must load into vit_small_patch14_reg4_dinov2 (every key and shape) before it is moved
    into place; its SHA-256 is shown; then ``weights="dinov2"`` loads it.  Another file under
    its name (a ResNet's weights) is refused, and nothing is written."""
    import napari_segrep as sr

    assert _run("weights", "download", "dinov2", "--backbone", "resnet18") == 2  # not its weights
    assert (
        "--backbone resnet18 has no dinov2 weights: dinov2 weights are for vit_small_patch14_"
        in (capsys.readouterr().err)
    )
    data = _dinov2_stand_in()
    name = "dinov2_vits14_reg4_pretrain.pth"
    weights_server.routes["/wrong.pth"] = Route(state_dict_bytes())
    assert _run("weights", "download", "dinov2", "--url", weights_server.url("/wrong.pth")) == 2
    err = capsys.readouterr().err
    assert "is not Meta AI (DINOv2)'s DINOv2 weights for vit_small_patch14_reg4_dinov2" in err
    assert not (weights_cache / name).exists() and leftovers(weights_cache) == []
    weights_server.routes[f"/{name}"] = Route(data, chunk=1 << 20)
    url = weights_server.url(f"/{name}")
    assert _run("weights", "download", "dinov2", "--url", url, "--quiet") == 0
    out, err = capsys.readouterr()
    assert out.strip() == str(weights_cache / name) and (weights_cache / name).read_bytes() == data
    assert "downloading vit_small_patch14_reg4_dinov2 DINOv2 weights (about 84 MB, licence " in err
    assert f"it loads into vit_small_patch14_reg4_dinov2; its SHA-256 is {sha256(data)}" in err
    encoder = sr.SegmentEncoder("vit_small_patch14_reg4_dinov2", in_channels=1, weights="dinov2")
    assert encoder.weights_source == "dinov2" and encoder.backbone.pretrained
    assert float(encoder.input_mean) == pytest.approx(sum((0.485, 0.456, 0.406)) / 3)
    # --weights dinov2 without --backbone: the backbone that has those weights
    from ..conftest import disc_labels

    labels = disc_labels((48, 48), [(12, 12, 5), (30, 34, 6)])
    tifffile.imwrite(weights_cache.parent / "img.tif", (labels * 900).astype("uint16"))
    tifffile.imwrite(weights_cache.parent / "lab.tif", labels)
    out = weights_cache.parent / "out.csv"
    assert _run("embed", weights_cache.parent / "img.tif", weights_cache.parent / "lab.tif",
                "-o", out, "--weights", "dinov2", "--crop-size", 28) == 0  # fmt: skip
    assert "weights: DINOv2 (vit_small_patch14_reg4_dinov2, " in capsys.readouterr().err
    record = json.loads(sidecar_path(out).read_text())["encoder"]
    assert (record["backbone"], record["weights"]) == ("vit_small_patch14_reg4_dinov2", "dinov2")
