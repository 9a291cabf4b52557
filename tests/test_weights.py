"""Pretrained weights (napari_segrep.weights): where they lie, and their explicit download from
a real local HTTP server (tests/weights_server.py): verified, atomic, cancellable, clear errors."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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
    publish,
    sha256,
    state_dict_bytes,
)


def _serve(server, body: bytes, **route) -> str:
    server.routes[f"/{RESNET18_FILE}"] = Route(body, **route)
    return server.url(f"/{RESNET18_FILE}")


def _damaged(data: bytes, damage: str) -> bytes:
    """``data`` (the published file) damaged as files copied by hand are."""
    if damage == "empty":
        return b""
    if damage == "truncated":
        return data[: len(data) // 2]
    if damage == "html_page":
        return b"<!DOCTYPE html><html><body>Sign in to the proxy</body></html>"
    if damage == "tiny_dict":
        return state_dict_bytes(100)
    assert damage == "one_byte"  # the right size, one byte changed
    middle = len(data) // 2
    return data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1 :]


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


# ---------------------------------------------------------------------- a damaged file
@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        ("empty", "it is empty"),
        ("truncated", "its SHA-256 starts with"),  # within the size margin: the hash says it
        ("html_page", "its SHA-256 starts with"),  # (a stand-in is within the margin)
        ("tiny_dict", "its SHA-256 starts with"),
        ("one_byte", "its SHA-256 starts with"),
    ],
)
def test_weights_info__a_damaged_file_in_the_cache_is_named_with_the_reason(
    weights_cache, stand_in, monkeypatch, damage, reason
):
    publish(monkeypatch, stand_in)
    path = weights_info().path
    path.parent.mkdir(parents=True)
    path.write_bytes(_damaged(stand_in, damage))
    info = weights_info()
    assert info.present and not info.usable
    assert reason in info.damaged and "\n" not in info.damaged
    if damage == "html_page":
        assert info.damaged.endswith("it looks like a web page")
    assert weights_info().damaged == info.damaged  # asked again: the same verdict


def test_weights_info__torchvision_s_file_is_whole(weights_cache, stand_in, monkeypatch):
    publish(monkeypatch, stand_in)
    path = weights_info().path
    path.parent.mkdir(parents=True)
    path.write_bytes(stand_in)
    info = weights_info()
    assert info.present and info.usable and info.damaged is None


def test_weights_info__unpublished_bytes_under_torchvision_s_name_are_damaged(weights_cache):
    """Without a stand-in: the real checks, against torchvision's real size and digits."""
    path = weights_info().path
    path.parent.mkdir(parents=True)
    path.write_bytes(state_dict_bytes())
    info = weights_info()
    assert info.present and not info.usable
    assert "bytes, torchvision's file has 46,830,571" in info.damaged


def test_file_problem__a_file_changed_in_place_is_checked_again(tmp_path, stand_in):
    """The verdict is remembered per version of the file, never past a change."""
    from napari_segrep.weights import file_problem

    path = tmp_path / "w.pth"
    path.write_bytes(stand_in)
    facts = {"size": len(stand_in), "sha256": sha256(stand_in)[:8]}
    assert file_problem(path, **facts) is None
    st = path.stat()
    with open(path, "r+b") as fh:  # same size, one byte changed
        fh.seek(100)
        fh.write(bytes([stand_in[100] ^ 1]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert "SHA-256 starts with" in file_problem(path, **facts)
    path.write_bytes(stand_in)
    assert file_problem(path, **facts) is None


@settings(max_examples=30, deadline=None)
@given(
    cut=st.integers(min_value=0, max_value=4999),
    flip=st.tuples(st.integers(min_value=0, max_value=4999), st.integers(1, 255)),
    kind=st.sampled_from(["cut", "flip"]),
)
def test_file_problem__any_truncation_or_changed_byte_is_damage(cut, flip, kind):
    from napari_segrep.weights import file_problem

    data = _SMALL_STAND_IN
    if kind == "cut":
        changed = data[: cut % len(data)]
    else:
        at, xor = flip[0] % len(data), flip[1]
        changed = data[:at] + bytes([data[at] ^ xor]) + data[at + 1 :]
    facts = {"size": len(data), "sha256": sha256(data)[:8]}
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "w.pth"
        path.write_bytes(changed)
        assert file_problem(path, **facts) is not None
        path.write_bytes(data)  # in place, at once: never the remembered verdict
        assert file_problem(path, **facts) is None


_SMALL_STAND_IN = state_dict_bytes(1000)


@pytest.mark.parametrize(
    ("damage", "phrase"),
    [
        ("empty", "is damaged (it is not a whole torch file"),
        ("truncated", "is damaged (it is not a whole torch file"),
        ("html_page", "is damaged (it is not a whole torch file"),
        ("pickled_object", "is damaged (it holds pickled Python objects (posix.getcwd)"),
        ("tiny_dict", "does not hold resnet18 weights"),
    ],
)
def test_load_imagenet_weights__a_damaged_file_names_the_file_and_the_fix(
    weights_cache, damage, phrase
):
    """From Python too (SegmentEncoder(weights="imagenet") checks no digits: it loads what is
    there, never a pickle), one clear error instead of torch's."""
    import io

    import torch

    import napari_segrep as sr

    path = weights_info().path
    path.parent.mkdir(parents=True)
    if damage == "pickled_object":
        buffer = io.BytesIO()
        torch.save({"conv1.weight": torch.zeros(1), "x": os.getcwd}, buffer)
        path.write_bytes(buffer.getvalue())
    else:
        path.write_bytes(_damaged(_SMALL_STAND_IN, damage))
    with pytest.raises(ValueError) as info:
        sr.SegmentEncoder(weights="imagenet")
    text = str(info.value)
    assert phrase in text and str(path) in text and "\n" not in text
    assert "`napari-segrep weights download imagenet --force`" in text
    assert "weights_only" not in text  # torch's advice to load it unsafely is never shown


# ---------------------------------------------------------------------- download
def test_download_weights__writes_the_verified_file_atomically(
    weights_cache,
    weights_server,
    stand_in,
    monkeypatch,
):
    from .test_io import umask

    monkeypatch.setenv("SEGREP_WEIGHTS_URL", weights_server.base)  # a mirror, file name appended
    publish(monkeypatch, stand_in)
    _serve(weights_server, stand_in, chunk=50_000)
    calls = []
    with umask(0o027):
        path = download_weights(progress=lambda *a: calls.append(a))
    assert path == weights_info().path and path.parent == weights_cache
    assert path.read_bytes() == stand_in and weights_info().usable
    assert stat.S_IMODE(path.stat().st_mode) == 0o640  # the user's normal permissions
    assert weights_server.requests == [f"/{RESNET18_FILE}"]
    total = len(stand_in)
    assert calls[0] == (0, total) and calls[-1] == (total, total) and len(calls) > 3
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)
    assert leftovers(weights_cache) == [] and os.listdir(weights_cache) == [RESNET18_FILE]


def test_download_weights__a_whole_file_is_kept_and_force_replaces_it_only_by_a_verified_one(
    weights_cache,
    weights_server,
    stand_in,
    monkeypatch,
):
    publish(monkeypatch, stand_in)
    path = weights_info().path
    path.parent.mkdir(parents=True)
    path.write_bytes(stand_in)
    inode = path.stat().st_ino
    url = _serve(weights_server, stand_in[:-1] + b"x")  # another file
    assert download_weights(url=url) == path  # there and whole: not downloaded
    assert weights_server.requests == []
    with pytest.raises(ValueError, match="checksum mismatch"):  # force, but not verified
        download_weights(url=url, force=True)
    assert path.read_bytes() == stand_in and path.stat().st_ino == inode
    url = _serve(weights_server, stand_in)
    assert download_weights(url=url, force=True) == path
    assert path.read_bytes() == stand_in and path.stat().st_ino != inode  # a new file
    assert len(weights_server.requests) == 2 and leftovers(weights_cache) == []


@pytest.mark.parametrize("damage", ["empty", "truncated", "html_page", "tiny_dict", "one_byte"])
def test_download_weights__a_damaged_file_is_replaced_without_force(
    weights_cache,
    weights_server,
    stand_in,
    monkeypatch,
    damage,
):
    publish(monkeypatch, stand_in)
    path = weights_info().path
    path.parent.mkdir(parents=True)
    path.write_bytes(_damaged(stand_in, damage))
    url = _serve(weights_server, stand_in)
    assert download_weights(url=url) == path
    assert path.read_bytes() == stand_in and weights_info().usable
    assert weights_server.requests == [f"/{RESNET18_FILE}"] and leftovers(weights_cache) == []


def test_download_weights__a_sha256_that_disagrees_with_the_file_name_is_refused(
    weights_cache,
    weights_server,
    stand_in,
):
    """The cache keeps torchvision's file under torchvision's name: a file of other digits
    would be damaged there (and refused by every later check)."""
    url = _serve(weights_server, stand_in)
    with pytest.raises(ValueError) as info:
        download_weights(url=url, sha256=sha256(stand_in))
    text = str(info.value)
    assert "disagrees with torchvision's resnet18-f37072fd.pth" in text and "f37072fd" in text
    assert weights_server.requests == [] and not weights_cache.exists()
    with pytest.raises(ValueError, match="checksum mismatch"):  # agreeing digits: downloaded
        download_weights(url=url, sha256="f37072fd47e8")
    assert not weights_cache.exists() or os.listdir(weights_cache) == []


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
    monkeypatch,
    case,
):
    """Even when its checksum is the expected one: it must load as torch weights, whole."""
    if case == "html_page":
        body = b"<html><body>Sign in to the proxy</body></html>"
        url = _serve(weights_server, body)
    elif case == "truncated_without_length":
        body = stand_in[: len(stand_in) // 2]
        url = _serve(weights_server, body, content_length=False)
    else:  # the server announces the whole length, then the connection ends early
        body = stand_in
        url = _serve(weights_server, stand_in, send=len(stand_in) // 3)
    publish(monkeypatch, body)  # (what the server sends has the expected checksum)
    error = ConnectionError if case == "cut_short" else ValueError
    with pytest.raises(error) as info:
        download_weights(url=url)
    text = str(info.value)
    assert "nothing was written" in text and "\n" not in text
    if case == "cut_short":
        assert f"ended after {len(stand_in) // 3} of {len(stand_in)} bytes" in text
    else:
        assert "not a torch weights file" in text and "weights_only" not in text
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
    monkeypatch,
):
    publish(monkeypatch, stand_in)
    url = _serve(weights_server, stand_in, chunk=8192, delay_s=0.01)  # ~0.25 s for it all
    seen = []
    with pytest.raises(Cancelled, match="nothing was written"):
        download_weights(
            url=url,
            progress=lambda done, total: seen.append(done),
            should_stop=lambda: len(seen) > 3,
        )
    assert 0 < seen[-1] < len(stand_in)  # stopped midway
    assert os.listdir(weights_cache) == []


def test_download_weights__ctrl_c_midway_leaves_nothing_behind(
    weights_cache,
    weights_server,
    stand_in,
    monkeypatch,
):
    publish(monkeypatch, stand_in)
    url = _serve(weights_server, stand_in, chunk=8192, delay_s=0.01)

    def progress(done, total):
        if done > 20_000:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        download_weights(url=url, progress=progress)
    assert os.listdir(weights_cache) == []


def test_download_weights__from_a_file_mirror(weights_cache, tmp_path, stand_in, monkeypatch):
    mirror = tmp_path / "shared drive"
    mirror.mkdir()
    (mirror / RESNET18_FILE).write_bytes(stand_in)
    monkeypatch.setenv("SEGREP_WEIGHTS_URL", mirror.as_uri())
    publish(monkeypatch, stand_in)
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
    publish(monkeypatch, stand_in)
    with pytest.raises(OSError, match="cannot create the torch cache folder .*TORCH_HOME"):
        download_weights(url=_serve(weights_server, stand_in))
    assert weights_server.requests == []


# ---------------------------------------------------------------------- size and stall limits
@pytest.mark.parametrize("declared", ["huge", "just_over_the_limit"])
def test_download_weights__a_declared_size_beyond_the_file_s_is_refused_before_reading(
    weights_cache, weights_server, stand_in, monkeypatch, declared
):
    from napari_segrep.weights import size_limit

    publish(monkeypatch, stand_in)
    limit = size_limit(len(stand_in))  # the file's size, 2% and 1 MiB
    length = 10**15 if declared == "huge" else limit + 1
    url = _serve(weights_server, stand_in, content_length=length, endless=True)
    calls = []
    with pytest.raises(ValueError) as info:
        download_weights(url=url, progress=lambda *a: calls.append(a))
    text = str(info.value)
    assert f"announces {length:,} bytes, torchvision's {RESNET18_FILE} has {len(stand_in):,}" in (
        text
    )
    assert "refused, nothing was written" in text and "\n" not in text
    assert calls == []  # refused before reading a byte
    assert os.listdir(weights_cache) == []


def test_download_weights__a_declared_size_within_the_margin_is_read(
    weights_cache, weights_server, stand_in, monkeypatch
):
    """The boundary: the limit itself is accepted (the download then fails as cut short)."""
    from napari_segrep.weights import size_limit

    publish(monkeypatch, stand_in)
    limit = size_limit(len(stand_in))
    url = _serve(weights_server, stand_in, content_length=limit)
    with pytest.raises(ConnectionError, match=f"ended after {len(stand_in)} of {limit} bytes"):
        download_weights(url=url)
    assert os.listdir(weights_cache) == []


def test_download_weights__an_endless_body_is_stopped_at_the_limit(
    weights_cache, weights_server, stand_in, monkeypatch
):
    """No Content-Length, and bytes without end: reading stops once more than the limit (the
    file's size, 2% and 1 MiB) would have come."""
    from napari_segrep.weights import size_limit

    publish(monkeypatch, stand_in)
    limit = size_limit(len(stand_in))
    url = _serve(weights_server, stand_in, content_length=False, endless=True)
    seen = []
    with pytest.raises(ValueError) as info:
        download_weights(url=url, progress=lambda done, total: seen.append(done))
    text = str(info.value)
    assert f"sent more than {limit:,} bytes, torchvision's {RESNET18_FILE} has" in text
    assert "refused, nothing was written" in text and "\n" not in text
    assert len(stand_in) < seen[-1] <= limit
    assert os.listdir(weights_cache) == []


def test_download_weights__a_body_that_drips_trips_the_stall_timeout(
    weights_cache, weights_server, monkeypatch
):
    """1 byte every 0.3 s never trips a per-read timeout of 1 s; it is a stall all the same."""
    body = b"x" * 30  # ~9 s in all: far longer than the timeout
    publish(monkeypatch, body)
    url = _serve(weights_server, body, chunk=1, delay_s=0.3, content_length=False)
    seen = []
    with pytest.raises(ConnectionError) as info:
        download_weights(url=url, timeout=1, progress=lambda done, total: seen.append(done))
    text = str(info.value)
    assert f"the download of {RESNET18_FILE} from 127.0.0.1" in text
    assert "it stalled (less than 64 KiB in 1 s; --timeout sets the limit)" in text
    assert "nothing was written" in text and "\n" not in text
    assert 0 < seen[-1] < len(body)  # it was dripping, then stopped midway
    assert os.listdir(weights_cache) == []


def test_download_weights__headers_that_drip_trip_the_stall_timeout(
    weights_cache, weights_server, monkeypatch
):
    publish(monkeypatch, b"x" * 10)
    url = _serve(weights_server, b"x" * 10, drip_headers_s=0.3)  # ~6 s for the headers
    with pytest.raises(ConnectionError) as info:
        download_weights(url=url, timeout=1)
    text = str(info.value)
    assert f"could not download {RESNET18_FILE} from 127.0.0.1" in text
    assert "it stalled (less than 64 KiB in 1 s" in text and "\n" not in text
    assert os.listdir(weights_cache) == []


def test_download_weights__a_slow_steady_download_outlasts_the_timeout(
    weights_cache, weights_server, stand_in, monkeypatch
):
    """The timeout is for a stall, not for the whole download: 64 KiB every 0.05 s for
    ~0.7 s passes a timeout of 0.5 s."""
    publish(monkeypatch, stand_in)
    url = _serve(weights_server, stand_in, chunk=1 << 16, delay_s=0.05)
    assert len(stand_in) / (1 << 16) * 0.05 > 0.5
    path = download_weights(url=url, timeout=0.5)
    assert path.read_bytes() == stand_in


def test_download_weights__a_redirect_loop_is_one_line(weights_cache, weights_server):
    loop = weights_server.url("/loop.pth")
    weights_server.routes["/loop.pth"] = Route(b"", status=302, headers={"Location": loop})
    with pytest.raises(ConnectionError) as info:
        download_weights(url=loop)
    text = str(info.value)
    assert "HTTP 302: the server redirects in a loop (or too many times)" in text
    assert "nothing was written" in text and "\n" not in text
    assert weights_server.requests.count("/loop.pth") > 1
    assert not weights_cache.exists() or os.listdir(weights_cache) == []


@pytest.mark.parametrize("timeout", [0, -1, float("nan")])
def test_download_weights__a_timeout_must_be_positive(weights_cache, timeout):
    with pytest.raises(ValueError, match="timeout must be a positive number of seconds"):
        download_weights(timeout=timeout)


def test_weights_info__volume_backbones_read_their_2d_file_checked_as_published(weights_cache):
    """Every registered backbone with ImageNet weights that is not a torchvision ResNet itself
    (the 3D ResNets, the fast volume modes) reads a built-in's published file: the same path
    as the engine's, with its size and hash to check it against (answered without torch)."""
    from napari_segrep.engine.backbones import BACKBONES, imagenet_cache_path
    from napari_segrep.weights import BUILT_FROM

    others = {n for n, s in BACKBONES.items() if s.imagenet_url and n not in IMAGENET_FILES}
    assert others == set(BUILT_FROM)
    for name, source in BUILT_FROM.items():
        info = weights_info(name)
        assert info.path == imagenet_cache_path(name) == weights_info(source).path
        assert (info.size, info.sha256_prefix) == (
            weights_info(source).size,
            weights_info(source).sha256_prefix,
        )
        assert info.size and info.sha256_prefix
