"""Pretrained weights (napari_segrep.weights): where they lie, and their explicit download from
a real local HTTP server (tests/weights_server.py): verified, atomic, cancellable, clear errors."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest

from napari_segrep.errors import Cancelled
from napari_segrep.weights import (
    IMAGENET_FILES,
    download_command,
    download_weights,
    weights_info,
)

from .weights_server import (
    RESNET18_FILE,
    Route,
    free_port,
    leftovers,
    sha256,
    state_dict_bytes,
)


@pytest.fixture(scope="module")
def stand_in() -> bytes:
    return state_dict_bytes()


def _serve(server, body: bytes, **route) -> str:
    server.routes[f"/{RESNET18_FILE}"] = Route(body, **route)
    return server.url(f"/{RESNET18_FILE}")


# ---------------------------------------------------------------------- where they lie
@pytest.mark.parametrize("name", sorted(IMAGENET_FILES))
def test_weights_info__agrees_with_torchvision_and_the_engine(weights_cache, name):
    from torchvision.models import get_model_weights

    from napari_segrep.engine.backbones import imagenet_cache_path
    from napari_segrep.engine.backbones.resnet import imagenet_url

    info = weights_info(name)
    assert info.url == imagenet_url(name)
    assert info.path == imagenet_cache_path(name) and info.path.parent == weights_cache
    assert not info.present
    assert info.sha256_prefix and f"-{info.sha256_prefix}." in info.url
    mib = get_model_weights(name).IMAGENET1K_V1.meta["_file_size"]  # torchvision's, in MiB
    assert abs(info.size - mib * 2**20) < 0.001 * 2**20
    assert info.size_text == f"{mib:.0f} MB"


@pytest.mark.parametrize("env", [{"TORCH_HOME": "th"}, {"XDG_CACHE_HOME": "xdg"}, {}])
def test_weights_info__needs_no_torch_and_finds_torch_s_own_cache_folder(tmp_path, env):
    """Without torch loaded, the path follows torch.hub.get_dir()'s rule exactly."""
    environ = {k: v for k, v in os.environ.items() if k not in ("TORCH_HOME", "XDG_CACHE_HOME")}
    environ.update({k: str(tmp_path / v) for k, v in env.items()})
    ours = (
        "import sys, json\nfrom napari_segrep.weights import weights_info\n"
        "p = str(weights_info('resnet34').path)\nprint(json.dumps([p, 'torch' in sys.modules]))"
    )
    theirs = "import torch\nprint(torch.hub.get_dir())"
    run = [sys.executable, "-c"]
    out = subprocess.run([*run, ours], env=environ, capture_output=True, text=True, check=True)
    path, torch_loaded = json.loads(out.stdout)
    hub = subprocess.run([*run, theirs], env=environ, capture_output=True, text=True, check=True)
    assert not torch_loaded
    assert path == os.path.join(hub.stdout.strip(), "checkpoints", "resnet34-b627a593.pth")


def test_weights_info__a_mirror_from_the_environment_or_the_call(weights_cache, monkeypatch):
    monkeypatch.setenv("SEGREP_WEIGHTS_URL", "https://mirror.example.org/weights/")
    assert weights_info().url == f"https://mirror.example.org/weights/{RESNET18_FILE}"
    assert weights_info(url="http://other/x.pth").url == "http://other/x.pth"
    assert weights_info().path.name == RESNET18_FILE  # the destination does not move


def test_weights_info__unknown_backbones_and_those_without_imagenet_weights(narrow_backbone):
    with pytest.raises(ValueError, match="unknown backbone 'resnet9'"):
        weights_info("resnet9")
    with pytest.raises(ValueError, match="no ImageNet weights"):
        weights_info(narrow_backbone)


def test_load_imagenet_weights__a_missing_file_names_the_download_command(weights_cache):
    import napari_segrep as sr

    with pytest.raises(FileNotFoundError) as info:
        sr.SegmentEncoder("resnet34", weights="imagenet")
    text = str(info.value)
    assert download_command("resnet34") in text
    assert (
        download_command("resnet34")
        == "napari-segrep weights download imagenet --backbone resnet34"
    )
    assert str(weights_info("resnet34").path) in text and "never downloads" not in text


# ---------------------------------------------------------------------- download
def test_download_weights__writes_the_verified_file_atomically(
    weights_cache,
    weights_server,
    stand_in,
    monkeypatch,
):
    from .test_io import umask

    monkeypatch.setenv("SEGREP_WEIGHTS_URL", weights_server.base)  # a mirror, file name appended
    _serve(weights_server, stand_in, chunk=50_000)
    calls = []
    with umask(0o027):
        path = download_weights(sha256=sha256(stand_in), progress=lambda *a: calls.append(a))
    assert path == weights_info().path and path.parent == weights_cache
    assert path.read_bytes() == stand_in and weights_info().present
    assert stat.S_IMODE(path.stat().st_mode) == 0o640  # the user's normal permissions
    assert weights_server.requests == [f"/{RESNET18_FILE}"]
    total = len(stand_in)
    assert calls[0] == (0, total) and calls[-1] == (total, total) and len(calls) > 3
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)
    assert leftovers(weights_cache) == [] and os.listdir(weights_cache) == [RESNET18_FILE]


def test_download_weights__an_existing_file_is_kept_and_replaced_only_by_a_verified_one(
    weights_cache,
    weights_server,
    stand_in,
):
    url = _serve(weights_server, stand_in)
    path = weights_info().path
    path.parent.mkdir(parents=True)
    path.write_bytes(b"the user's own file")
    assert download_weights(url=url) == path  # there: not downloaded
    assert weights_server.requests == [] and path.read_bytes() == b"the user's own file"
    with pytest.raises(ValueError, match="checksum mismatch"):  # force, but not verified
        download_weights(url=url, force=True)
    assert path.read_bytes() == b"the user's own file"
    assert download_weights(url=url, force=True, sha256=sha256(stand_in)) == path
    assert path.read_bytes() == stand_in and leftovers(weights_cache) == []


def test_download_weights__a_checksum_mismatch_writes_nothing(
    weights_cache,
    weights_server,
    stand_in,
):
    url = _serve(weights_server, stand_in)
    with pytest.raises(ValueError) as info:
        download_weights(url=url)  # torchvision's digits in the name: f37072fd
    text = str(info.value)
    assert "expected a SHA-256 starting with f37072fd" in text and sha256(stand_in) in text
    assert "nothing was written" in text
    assert os.listdir(weights_cache) == []


@pytest.mark.parametrize("case", ["html_page", "truncated_without_length", "cut_short"])
def test_download_weights__an_error_page_or_a_truncated_file_is_refused(
    weights_cache,
    weights_server,
    stand_in,
    case,
):
    """Even when its checksum is the expected one: it must load as torch weights, whole."""
    if case == "html_page":
        body = b"<html><body>Sign in to the proxy</body></html>"
        url, expected = _serve(weights_server, body), sha256(body)
    elif case == "truncated_without_length":
        body = stand_in[: len(stand_in) // 2]
        url = _serve(weights_server, body, content_length=False)
        expected = sha256(body)
    else:  # the server announces the whole length, then the connection ends early
        url = _serve(weights_server, stand_in, send=len(stand_in) // 3)
        expected = sha256(stand_in)
    error = ConnectionError if case == "cut_short" else ValueError
    with pytest.raises(error) as info:
        download_weights(url=url, sha256=expected)
    text = str(info.value)
    assert "nothing was written" in text and "\n" not in text
    if case == "cut_short":
        assert f"ended after {len(stand_in) // 3} of {len(stand_in)} bytes" in text
    else:
        assert "not a torch weights file" in text
    assert os.listdir(weights_cache) == []


def test_download_weights__an_unreachable_server_names_the_host_and_the_fixes(weights_cache):
    port = free_port()
    with pytest.raises(ConnectionError) as info:
        download_weights(url=f"http://127.0.0.1:{port}/{RESNET18_FILE}", timeout=5)
    text = str(info.value)
    path = weights_info().path
    assert f"could not download {RESNET18_FILE} from 127.0.0.1:{port}" in text
    assert "refused" in text.lower() and "proxy" in text and "SEGREP_WEIGHTS_URL" in text
    assert f"copy {RESNET18_FILE} from a machine with internet to {path}" in text
    assert "\n" not in text and os.listdir(weights_cache) == []


def test_download_weights__http_404_is_named(weights_cache, weights_server):
    with pytest.raises(ConnectionError, match="HTTP 404 Not Found; nothing was written"):
        download_weights(url=weights_server.url("/models/nope.pth"))
    assert weights_server.requests == ["/models/nope.pth"] and os.listdir(weights_cache) == []


def test_download_weights__cancel_midway_leaves_nothing_behind(
    weights_cache,
    weights_server,
    stand_in,
):
    url = _serve(weights_server, stand_in, chunk=8192, delay_s=0.01)  # ~0.25 s for it all
    seen = []
    with pytest.raises(Cancelled, match="nothing was written"):
        download_weights(
            url=url,
            sha256=sha256(stand_in),
            progress=lambda done, total: seen.append(done),
            should_stop=lambda: len(seen) > 3,
        )
    assert 0 < seen[-1] < len(stand_in)  # stopped midway
    assert os.listdir(weights_cache) == []


def test_download_weights__ctrl_c_midway_leaves_nothing_behind(
    weights_cache,
    weights_server,
    stand_in,
):
    url = _serve(weights_server, stand_in, chunk=8192, delay_s=0.01)

    def progress(done, total):
        if done > 20_000:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        download_weights(url=url, sha256=sha256(stand_in), progress=progress)
    assert os.listdir(weights_cache) == []


def test_download_weights__from_a_file_mirror(weights_cache, tmp_path, stand_in, monkeypatch):
    mirror = tmp_path / "shared drive"
    mirror.mkdir()
    (mirror / RESNET18_FILE).write_bytes(stand_in)
    monkeypatch.setenv("SEGREP_WEIGHTS_URL", mirror.as_uri())
    path = download_weights(sha256=sha256(stand_in)[:12])  # a prefix is enough
    assert path.read_bytes() == stand_in
    with pytest.raises(ConnectionError, match="could not download resnet34-b627a593.pth"):
        download_weights("resnet34")  # not on the mirror


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"sha256": "f3707"}, "at least the first 8"),
        ({"sha256": "not hex!"}, "is not a SHA-256"),
        ({"url": "ftp://example.org/resnet18.pth"}, "use an http://, https:// or file:// URL"),
        ({"backbone": "vgg16"}, "unknown backbone 'vgg16'"),
    ],
)
def test_download_weights__bad_arguments_are_named(weights_cache, kwargs, match):
    with pytest.raises(ValueError, match=match):
        download_weights(**kwargs)
    assert not weights_cache.exists() or os.listdir(weights_cache) == []


def test_download_weights__an_unwritable_cache_is_named_with_the_fix(
    tmp_path,
    monkeypatch,
    weights_server,
    stand_in,
):
    if os.geteuid() == 0:
        blocker = tmp_path / "not a folder"  # root writes anywhere: a file in the way instead
        blocker.write_text("x")
        monkeypatch.setenv("TORCH_HOME", str(blocker))
    else:
        home = tmp_path / "ro"
        home.mkdir(mode=0o500)
        monkeypatch.setenv("TORCH_HOME", str(home))
    with pytest.raises(OSError, match="cannot create the torch cache folder .*TORCH_HOME"):
        download_weights(url=_serve(weights_server, stand_in), sha256=sha256(stand_in))
    assert weights_server.requests == []
