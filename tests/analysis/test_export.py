"""CSV + JSON sidecar, written atomically; the provenance record shared by the CLI and napari."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from importlib.metadata import version

import numpy as np
import pandas as pd
import pytest

import napari_segrep
from napari_segrep.analysis.export import provenance, sidecar_path, write_table

NORMALIZATION = {"mode": "fixed", "low": [0.0], "high": [4000.0]}


def _provenance(**overrides):
    kwargs = dict(
        command="embed",
        encoder_config={"backbone": "resnet18", "in_channels": 1, "seed": 7},
        n_segments=np.int64(6),
        normalization=NORMALIZATION,
        crop_size=32,
        batch_size=16,
        channel_axis=None,
        device="cpu",
        inputs={"image": "img.tif", "labels": "lab.tif"},
    )
    return provenance(**{**kwargs, **overrides})


def test_write_table__round_trip_and_atomic(tmp_path):
    df = pd.DataFrame(
        {"label": np.array([3, 9], np.int64), "emb_0": np.array([0.1, 0.25], np.float32)}
    )
    path = write_table(df, tmp_path / "t.csv", provenance={"n": 2})
    back = pd.read_csv(path)
    assert back["label"].tolist() == [3, 9]
    np.testing.assert_allclose(back["emb_0"], df["emb_0"], rtol=1e-7)
    assert json.loads((tmp_path / "t.json").read_text()) == {"n": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.csv", "t.json"]
    with pytest.raises(ValueError, match="does not exist"):
        write_table(df, tmp_path / "missing" / "t.csv")


def test_sidecar_path__replaces_the_suffix(tmp_path):
    assert sidecar_path(tmp_path / "out.csv") == tmp_path / "out.json"
    assert sidecar_path("a/b.c.csv").name == "b.c.json"


def test_provenance__has_every_key_with_the_values_given():
    before = time.time()
    p = _provenance(seconds=1.23456)
    assert set(p) == {
        "package",
        "package_version",
        "created",
        "command",
        "inputs",
        "n_segments",
        "encoder",
        "checkpoint",
        "checkpoint_sha256",
        "normalization",
        "crop_size",
        "batch_size",
        "channel_axis",
        "seed",
        "device",
        "torch_version",
        "seconds",
    }
    assert p["package"] == "napari-segrep" and p["package_version"] == napari_segrep.__version__
    assert p["command"] == "embed" and p["inputs"] == {"image": "img.tif", "labels": "lab.tif"}
    assert p["n_segments"] == 6 and type(p["n_segments"]) is int
    assert p["encoder"]["backbone"] == "resnet18" and p["normalization"] == NORMALIZATION
    assert (p["crop_size"], p["batch_size"], p["channel_axis"], p["device"]) == (
        32,
        16,
        None,
        "cpu",
    )
    assert p["checkpoint"] is None and p["checkpoint_sha256"] is None
    assert p["seconds"] == 1.235
    created = time.mktime(time.strptime(p["created"], "%Y-%m-%dT%H:%M:%S%z"))
    assert before - 2 <= created <= time.time() + 2
    assert _provenance()["seconds"] is None


def test_provenance__seed_comes_from_the_encoder_config():
    assert _provenance()["seed"] == 7
    assert _provenance(encoder_config={"backbone": "resnet18", "seed": 0})["seed"] == 0
    assert _provenance(encoder_config={"backbone": "resnet18"})["seed"] is None


def test_provenance__checkpoint_and_its_sha256(tmp_path):
    ckpt = tmp_path / "model.pt"
    content = np.random.default_rng(0).bytes(3 << 20)  # more than one 1 MiB read
    ckpt.write_bytes(content)
    p = _provenance(checkpoint=ckpt)
    assert p["checkpoint"] == str(ckpt)
    assert p["checkpoint_sha256"] == hashlib.sha256(content).hexdigest()
    ckpt.write_bytes(content[:-1])
    assert _provenance(checkpoint=ckpt)["checkpoint_sha256"] != p["checkpoint_sha256"]
    with pytest.raises(FileNotFoundError):
        _provenance(checkpoint=tmp_path / "missing.pt")


def test_provenance__records_torch_version_without_importing_torch():
    code = (
        "import sys\n"
        "from napari_segrep.analysis.export import provenance\n"
        "p = provenance(command='embed', encoder_config={}, n_segments=0, normalization=None,\n"
        "               crop_size=64, batch_size=128, channel_axis=None, device='cpu', inputs={})\n"
        "print('torch' in sys.modules, p['torch_version'])\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["False", version("torch")]


def test_provenance__records_the_loaded_torch_version():
    import torch

    assert _provenance()["torch_version"] == torch.__version__


def test_provenance__extra_keys_are_added_and_written(tmp_path):
    p = _provenance(image_shape=[96, 96], image_dtype="uint16", map_method="umap")
    assert p["image_shape"] == [96, 96] and p["image_dtype"] == "uint16"
    assert p["map_method"] == "umap"
    df = pd.DataFrame({"label": [1], "emb_0": [0.5]})
    write_table(df, tmp_path / "t.csv", provenance=p)
    assert json.loads((tmp_path / "t.json").read_text()) == p
