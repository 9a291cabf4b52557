"""CSV + JSON sidecar, written atomically; the provenance record shared by the CLI and napari."""

from __future__ import annotations

import hashlib
import json
import stat
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


def _table():
    return pd.DataFrame({"label": [1, 2], "emb_0": [0.5, 0.25]})


def test_write_table__refuses_an_output_that_its_sidecar_would_replace(tmp_path):
    for name in ("res.json", "res.JSON"):
        with pytest.raises(ValueError, match="its own JSON sidecar"):
            write_table(_table(), tmp_path / name, provenance={"n": 2})
    assert not list(tmp_path.iterdir())


def test_write_table__a_directory_in_place_of_the_sidecar_keeps_the_old_pair(tmp_path):
    (tmp_path / "t.csv").write_text("old table\n")
    (tmp_path / "t.json").mkdir()
    with pytest.raises(ValueError, match=r"t\.json is a directory"):
        write_table(_table(), tmp_path / "t.csv", provenance={"n": 2})
    assert (tmp_path / "t.csv").read_text() == "old table\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.csv", "t.json"]


def test_write_table__a_failed_write_keeps_the_old_pair(tmp_path):
    from ..test_io import file_size_limit

    write_table(_table(), tmp_path / "t.csv", provenance={"run": 1})
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    big = pd.DataFrame({"label": np.arange(2000), "emb_0": np.linspace(0, 1, 2000)})
    with file_size_limit(4096), pytest.raises(OSError, match=r"could not write .*t\.csv"):
        write_table(big, tmp_path / "t.csv", provenance={"run": 2}, overwrite=True)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_write_table__replaces_its_own_sidecar_but_never_a_foreign_json(tmp_path):
    write_table(_table(), tmp_path / "t.csv", provenance=_provenance())
    write_table(_table(), tmp_path / "t.csv", provenance=_provenance(crop_size=48))  # ours
    assert json.loads((tmp_path / "t.json").read_text())["crop_size"] == 48
    (tmp_path / "u.json").write_text('{"my": "notes"}')
    with pytest.raises(ValueError, match=r"u\.json exists and was not written by napari-segrep"):
        write_table(_table(), tmp_path / "u.csv", provenance=_provenance())
    assert (tmp_path / "u.json").read_text() == '{"my": "notes"}'
    assert not (tmp_path / "u.csv").exists()
    write_table(_table(), tmp_path / "u.csv", provenance=_provenance(), overwrite=True)
    assert json.loads((tmp_path / "u.json").read_text())["package"] == "napari-segrep"


def test_write_table__overwrite_false_refuses_any_existing_file(tmp_path):
    write_table(_table(), tmp_path / "t.csv", provenance=_provenance())
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    (tmp_path / "v.json").write_text("{}")
    for name in ("t.csv", "v.csv"):
        with pytest.raises(ValueError, match="exists"):
            write_table(_table(), tmp_path / name, provenance=_provenance(), overwrite=False)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == {**before, "v.json": b"{}"}


def test_write_table__files_get_the_users_permissions(tmp_path):
    from ..test_io import umask

    with umask(0o027):
        write_table(_table(), tmp_path / "t.csv", provenance={"n": 2})
    for name in ("t.csv", "t.json"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o640, name


def test_write_table__parquet_by_extension_exact_and_read_back_with_its_sidecar(tmp_path):
    from napari_segrep.analysis.export import read_table

    rng = np.random.default_rng(0)
    df = pd.DataFrame(
        {
            "image": ["a", "a", "b"],
            "label": np.array([3, 9, 3], np.int64),
            "emb_0": rng.random(3).astype(np.float32),
        }
    )
    record = _provenance(encoder_config={"backbone": "resnet18", "sha256": "f" * 64})
    write_table(df, tmp_path / "t.parquet", provenance=record)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.json", "t.parquet"]
    assert (tmp_path / "t.parquet").read_bytes()[:4] == b"PAR1"
    back = read_table(tmp_path / "t.parquet")
    pd.testing.assert_frame_equal(back, df)  # exact: no decimal text on the way
    assert back.attrs["encoder"]["sha256"] == "f" * 64
    (tmp_path / "text.parquet").write_text("label,emb_0\n1,0.5\n")
    with pytest.raises(ValueError, match="not a readable Parquet table"):
        read_table(tmp_path / "text.parquet")


def test_write_table__h5ad_for_scverse_round_trips_with_provenance(tmp_path):
    anndata = pytest.importorskip("anndata")  # the [anndata] extra; installed by [test]
    from napari_segrep.analysis.export import read_table

    rng = np.random.default_rng(0)
    df = pd.DataFrame(
        {
            "image": ["a", "a", "b"],
            "label": np.array([1, 2, 1], np.int64),
            "area": np.array([10, 20, 30], np.int64),
            "emb_0": rng.random(3, dtype=np.float32),
            "emb_1": rng.random(3, dtype=np.float32),
            "umap_0": rng.random(3),
            "umap_1": rng.random(3),
            "cluster": np.array([0, 1, 1], np.int64),
        }
    )
    record = {"package": "napari-segrep", "encoder": {"sha256": "ab"}, "crop_size": 32}
    write_table(df, tmp_path / "t.h5ad", provenance=record)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.h5ad", "t.json"]
    adata = anndata.read_h5ad(tmp_path / "t.h5ad")  # what scanpy users get
    assert adata.n_obs == 3
    np.testing.assert_array_equal(adata.obsm["X_segrep"], df[["emb_0", "emb_1"]].to_numpy())
    np.testing.assert_array_equal(adata.obsm["X_umap"], df[["umap_0", "umap_1"]].to_numpy())
    assert list(adata.obs["image"]) == ["a", "a", "b"]
    back = read_table(tmp_path / "t.h5ad")
    pd.testing.assert_frame_equal(back, df)
    assert back.attrs["encoder"] == {"sha256": "ab"} and back.attrs["crop_size"] == 32
    (tmp_path / "t.json").unlink()  # the provenance travels inside the file too
    assert read_table(tmp_path / "t.h5ad").attrs["crop_size"] == 32
    (tmp_path / "bad.h5ad").write_text("label\n1\n")
    with pytest.raises(ValueError, match="not a readable AnnData"):
        read_table(tmp_path / "bad.h5ad")


def test_check_table_path__names_the_install_when_anndata_is_missing(tmp_path):
    code = (
        "import sys; sys.modules['anndata'] = None\n"
        "from napari_segrep.analysis.export import check_table_path\n"
        "check_table_path('t.csv'); check_table_path('t.parquet')\n"
        "try:\n    check_table_path('t.h5ad')\n"
        "except ValueError as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "napari-segrep[anndata]" in out.stdout


@pytest.mark.parametrize("method, key", [("umap", "X_umap"), ("pca", "X_pca")])
def test_write_table__h5ad_takes_the_widgets_map_columns(tmp_path, method, key):
    anndata = pytest.importorskip("anndata")
    from napari_segrep.analysis.export import read_table
    from napari_segrep.analysis.tables import export_frame

    rng = np.random.default_rng(1)
    table = pd.DataFrame({"label": np.arange(1, 5), "emb_0": rng.random(4, dtype=np.float32)})
    df = export_frame(table, rng.random((4, 2)), map_method=method)
    write_table(df, tmp_path / "w.h5ad", provenance={})
    adata = anndata.read_h5ad(tmp_path / "w.h5ad")
    np.testing.assert_array_equal(adata.obsm[key], df[["map_0", "map_1"]].to_numpy())
    pd.testing.assert_frame_equal(read_table(tmp_path / "w.h5ad"), df)
