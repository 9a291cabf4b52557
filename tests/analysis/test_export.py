"""Tables + JSON sidecars (``t.csv`` + ``t.csv.json``), written atomically and read back as
written; the provenance record shared by the CLI and napari; damaged sidecars."""

from __future__ import annotations

import hashlib
import json
import stat
import subprocess
import sys
import time
import warnings
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import napari_segrep
from napari_segrep.analysis.export import provenance, read_table, sidecar_path, write_table

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
    assert json.loads((tmp_path / "t.csv.json").read_text()) == {"n": 2, "package": "napari-segrep"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.csv", "t.csv.json"]
    with pytest.raises(ValueError, match="does not exist"):
        write_table(df, tmp_path / "missing" / "t.csv")


def test_sidecar_path__is_the_tables_whole_name_and_json(tmp_path):
    assert sidecar_path(tmp_path / "out.csv") == tmp_path / "out.csv.json"
    assert sidecar_path("a/b.c.parquet") == Path("a/b.c.parquet.json")
    assert sidecar_path("x.h5ad").name == "x.h5ad.json"
    assert sidecar_path("noext").name == "noext.json"


@pytest.mark.parametrize("name", [".", "", "/", "..", "a/.."])
def test_sidecar_path__a_folder_is_not_a_file_name(name):
    with pytest.raises(ValueError, match="is a folder, not a file name: give the table a file"):
        sidecar_path(name)


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
        "layout",
    }
    assert p["layout"] is None  # not given: not known
    layout = {"axes": "zyx", "spacing": [2.0, 0.5, 0.5], "spacing_source": "given"}
    assert _provenance(layout=layout)["layout"] == layout
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
    assert json.loads((tmp_path / "t.csv.json").read_text()) == p


def _table():
    return pd.DataFrame({"label": [1, 2], "emb_0": [0.5, 0.25]})


def test_write_table__refuses_a_json_name_for_a_table(tmp_path):
    for name in ("res.json", "res.JSON"):
        with pytest.raises(ValueError, match="ends in .json, which napari-segrep keeps for"):
            write_table(_table(), tmp_path / name, provenance={"n": 2})
    assert not list(tmp_path.iterdir())


def test_write_table__a_directory_in_place_of_the_sidecar_keeps_the_old_pair(tmp_path):
    (tmp_path / "t.csv").write_text("old table\n")
    (tmp_path / "t.csv.json").mkdir()
    with pytest.raises(ValueError, match=r"t\.csv\.json is a directory"):
        write_table(_table(), tmp_path / "t.csv", provenance={"n": 2}, overwrite=True)
    assert (tmp_path / "t.csv").read_text() == "old table\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.csv", "t.csv.json"]


def test_write_table__a_failed_write_keeps_the_old_pair(tmp_path):
    from ..test_io import file_size_limit

    write_table(_table(), tmp_path / "t.csv", provenance={"run": 1})
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    big = pd.DataFrame({"label": np.arange(2000), "emb_0": np.linspace(0, 1, 2000)})
    with file_size_limit(4096), pytest.raises(OSError, match=r"could not write .*t\.csv"):
        write_table(big, tmp_path / "t.csv", provenance={"run": 2}, overwrite=True)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


@pytest.mark.parametrize(
    "foreign",
    ['{"my": "notes"}', "[1, 2]", "not json", "", "[" * 5000 + "]" * 5000],
    ids=["notes", "a list", "not json", "empty", "5000 deep"],
)
def test_write_table__replaces_its_own_sidecar_but_never_a_foreign_json(tmp_path, foreign):
    write_table(_table(), tmp_path / "t.csv", provenance=_provenance())
    write_table(_table(), tmp_path / "t.csv", provenance=_provenance(crop_size=48), overwrite=True)
    assert json.loads((tmp_path / "t.csv.json").read_text())["crop_size"] == 48
    (tmp_path / "u.csv.json").write_text(foreign)
    (tmp_path / "u.json").write_text('{"my": "older notes"}')  # the old sidecar name
    for overwrite in (False, True):  # never, whatever overwrite says
        with pytest.raises(
            ValueError,
            match=r"u\.csv\.json exists and was not written by napari-segrep .*: choose another "
            "output name, or move that file",
        ):
            write_table(_table(), tmp_path / "u.csv", provenance=_provenance(), overwrite=overwrite)
    assert (tmp_path / "u.csv.json").read_text() == foreign
    assert not (tmp_path / "u.csv").exists()
    (tmp_path / "u.csv.json").unlink()
    write_table(_table(), tmp_path / "u.csv", provenance=_provenance(), overwrite=True)
    assert json.loads((tmp_path / "u.csv.json").read_text())["package"] == "napari-segrep"
    assert (tmp_path / "u.json").read_text() == '{"my": "older notes"}'  # never touched


def test_write_table__overwrite_false_refuses_any_existing_file(tmp_path):
    write_table(_table(), tmp_path / "t.csv", provenance=_provenance())
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    write_table(_table(), tmp_path / "v.csv", provenance=_provenance())
    (tmp_path / "v.csv").unlink()  # an orphan sidecar of ours is an existing file too
    before["v.csv.json"] = (tmp_path / "v.csv.json").read_bytes()
    for name in ("t.csv", "v.csv"):
        with pytest.raises(ValueError, match="exists: pass overwrite=True to replace it"):
            write_table(_table(), tmp_path / name, provenance=_provenance(), overwrite=False)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_write_table__files_get_the_users_permissions(tmp_path):
    from ..test_io import umask

    with umask(0o027):
        write_table(_table(), tmp_path / "t.csv", provenance={"n": 2})
    for name in ("t.csv", "t.csv.json"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o640, name


def test_write_table__parquet_by_extension_exact_and_read_back_with_its_sidecar(tmp_path):

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
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.parquet", "t.parquet.json"]
    assert (tmp_path / "t.parquet").read_bytes()[:4] == b"PAR1"
    back = read_table(tmp_path / "t.parquet")
    pd.testing.assert_frame_equal(back, df)  # exact: no decimal text on the way
    assert back.attrs["encoder"]["sha256"] == "f" * 64
    (tmp_path / "text.parquet").write_text("label,emb_0\n1,0.5\n")
    with pytest.raises(ValueError, match="not a readable Parquet table"):
        read_table(tmp_path / "text.parquet")


def test_write_table__h5ad_for_scverse_round_trips_with_provenance(tmp_path):
    anndata = pytest.importorskip("anndata")  # the [anndata] extra; installed by [test]

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
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.h5ad", "t.h5ad.json"]
    adata = anndata.read_h5ad(tmp_path / "t.h5ad")  # what scanpy users get
    assert adata.n_obs == 3
    np.testing.assert_array_equal(adata.obsm["X_segrep"], df[["emb_0", "emb_1"]].to_numpy())
    np.testing.assert_array_equal(adata.obsm["X_umap"], df[["umap_0", "umap_1"]].to_numpy())
    assert list(adata.obs["image"]) == ["a", "a", "b"]
    back = read_table(tmp_path / "t.h5ad")
    pd.testing.assert_frame_equal(back, df)
    assert back.attrs["encoder"] == {"sha256": "ab"} and back.attrs["crop_size"] == 32
    (tmp_path / "t.h5ad.json").unlink()  # the provenance travels inside the file too
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
    from napari_segrep.analysis.tables import export_frame

    rng = np.random.default_rng(1)
    table = pd.DataFrame({"label": np.arange(1, 5), "emb_0": rng.random(4, dtype=np.float32)})
    df = export_frame(table, rng.random((4, 2)), map_method=method)
    write_table(df, tmp_path / "w.h5ad", provenance={})
    adata = anndata.read_h5ad(tmp_path / "w.h5ad")
    np.testing.assert_array_equal(adata.obsm[key], df[["map_0", "map_1"]].to_numpy())
    pd.testing.assert_frame_equal(read_table(tmp_path / "w.h5ad"), df)


# ------------------------------------------------------------ one sidecar per table (item 3)
def test_write_table__csv_and_parquet_of_one_stem_keep_their_own_provenance(tmp_path):
    df = _table()
    write_table(df, tmp_path / "x.csv", provenance=_provenance(crop_size=32))
    write_table(df, tmp_path / "x.parquet", provenance=_provenance(crop_size=48))
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "x.csv",
        "x.csv.json",
        "x.parquet",
        "x.parquet.json",
    ]
    assert read_table(tmp_path / "x.csv").attrs["crop_size"] == 32
    assert read_table(tmp_path / "x.parquet").attrs["crop_size"] == 48


def test_read_table__an_earlier_versions_sidecar_is_read_when_the_new_one_is_absent(tmp_path):
    df = _table()
    df.to_csv(tmp_path / "old.csv", index=False)
    legacy = tmp_path / "old.json"  # what earlier versions wrote beside old.csv
    legacy.write_text(json.dumps(_provenance(crop_size=40, encoder_config={"sha256": "e" * 64})))
    back = read_table(tmp_path / "old.csv")
    assert back.attrs == {
        "encoder": {"sha256": "e" * 64},
        "normalization": NORMALIZATION,
        "crop_size": 40,
    }
    write_table(df, tmp_path / "old.csv", provenance=_provenance(crop_size=56), overwrite=True)
    assert read_table(tmp_path / "old.csv").attrs["crop_size"] == 56  # the new one wins
    assert json.loads(legacy.read_text())["crop_size"] == 40  # and the old one is left alone
    legacy.write_text('{"encoder": {"sha256": "f"}, "crop_size": 8}')  # someone else's JSON
    df.to_csv(tmp_path / "plain.csv", index=False)
    (tmp_path / "plain.json").write_text(legacy.read_text())
    assert read_table(tmp_path / "plain.csv").attrs == {}


# ------------------------------------------------------------- text as written (item 5)
_TRICKY = ["NA", "None", "null", "nan", "N/A", "#N/A", "000", "001", "1e3", "TRUE", "", " x "]
_TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"))


@settings(max_examples=20, deadline=None)
@given(
    names=st.lists(st.one_of(st.sampled_from(_TRICKY), _TEXT), min_size=1, max_size=6),
    data=st.data(),
)
def test_read_table__names_and_classes_come_back_exactly_as_written(tmp_path_factory, names, data):
    n = len(names)
    classes = data.draw(st.lists(st.sampled_from(_TRICKY), min_size=n, max_size=n))
    df = pd.DataFrame(
        {
            "image": names,
            "label": np.arange(1, n + 1, dtype=np.int64),
            "area": np.arange(n, dtype=np.int64) * 7,
            "class_annotation": classes,
            "class_predicted": list(reversed(classes)),
            "class_margin": np.where(np.arange(n) % 2, np.nan, 0.25),
            "emb_0": np.linspace(-1, 1, n, dtype=np.float32),
        }
    )
    folder = tmp_path_factory.mktemp("names")
    for name in ("t.csv", "t.parquet"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # text cells starting with "-", "="...
            write_table(df, folder / name, provenance=_provenance(), overwrite=True)
        back = read_table(folder / name)
        for column in ("image", "class_annotation", "class_predicted"):
            assert back[column].tolist() == df[column].tolist(), (name, column)
        assert back["label"].dtype == np.int64 and back["area"].dtype == np.int64
        np.testing.assert_array_equal(back["class_margin"], df["class_margin"])  # NaN stays NaN
        np.testing.assert_array_equal(back["emb_0"].to_numpy(np.float32), df["emb_0"])


def test_read_table__h5ad_keeps_names_that_look_missing_or_numeric(tmp_path):
    pytest.importorskip("anndata")
    df = pd.DataFrame(
        {
            "image": ["NA", "None", "000", "001"],
            "label": np.array([1, 2, 1, 2], np.int64),
            "class": ["null", "NA", "", "7"],
            "emb_0": np.zeros(4, np.float32),
        }
    )
    write_table(df, tmp_path / "t.h5ad")
    pd.testing.assert_frame_equal(read_table(tmp_path / "t.h5ad"), df)


def test_read_table__a_users_own_text_column_keeps_NA_as_written(tmp_path):
    (tmp_path / "t.csv").write_text("label,note,score,emb_0\n1,NA,NA,0.5\n2,ok,0.25,\n3,,1,0\n")
    back = read_table(tmp_path / "t.csv")
    assert back["note"].tolist() == ["NA", "ok", ""]  # text: exactly as written
    assert back["score"].dtype == np.float64 and np.isnan(back["score"][0])  # numbers: NaN
    assert np.isnan(back["emb_0"][1]) and back["label"].tolist() == [1, 2, 3]


# ------------------------------------------------------------ damaged sidecars (item 8)
@pytest.mark.parametrize(
    "content, problem",
    [
        pytest.param("[" * 200_000 + "]" * 200_000, "nested deeper than 32", id="200000 deep"),
        pytest.param('{"a":' * 100 + "1" + "}" * 100, "nested deeper than 32", id="100 deep"),
        ("{not json", "is not valid JSON"),
        (b"\xff\xfe\x00", "is not valid JSON"),
        ('{"package": "napari-segrep", "encoder": 5}', "'encoder' must be an object"),
        ('{"package": "napari-segrep", "encoder": {"sha256": 7}}', "'encoder.sha256' must be"),
        ('{"package": "napari-segrep", "normalization": "image"}', "'normalization' must be"),
        (
            '{"package": "napari-segrep", "normalization": {"mode": "fixed", "low": "x"}}',
            "'normalization.low' must be a list of numbers",
        ),
        (
            '{"package": "napari-segrep", "normalization": {"im0": 3}}',
            "'normalization['im0']' must be an object",
        ),
        ('{"package": "napari-segrep", "crop_size": "64"}', "'crop_size' must be a whole number"),
        ('{"package": "napari-segrep", "crop_size": true}', "'crop_size' must be a whole number"),
        ('{"package": "napari-segrep", "images": [5]}', "'images[0]' must be an object"),
        ('{"package": "napari-segrep", "images": [{"name": 1}]}', "'images[0].name' must be"),
        ('{"package": "napari-segrep", "normalize": {"a": 1}}', "'normalize' must be"),
    ],
)
def test_read_table__a_damaged_sidecar_is_one_line_naming_the_file_and_the_fix(
    tmp_path, content, problem
):
    _table().to_csv(tmp_path / "t.csv", index=False)
    sidecar = tmp_path / "t.csv.json"
    sidecar.write_bytes(content.encode() if isinstance(content, str) else content)
    with pytest.raises(ValueError) as caught:
        read_table(tmp_path / "t.csv")
    message = str(caught.value)
    assert message.startswith(str(sidecar)) and problem in message
    assert "delete it to read t.csv without its provenance, or restore it" in message
    assert "\n" not in message and len(message) < 400


def test_read_table__a_sidecar_too_large_is_refused_before_it_is_read(tmp_path, monkeypatch):
    from napari_segrep.analysis import _sidecar

    _table().to_csv(tmp_path / "t.csv", index=False)
    write_table(_table(), tmp_path / "t.csv", provenance=_provenance(), overwrite=True)
    size = (tmp_path / "t.csv.json").stat().st_size
    monkeypatch.setattr(_sidecar, "MAX_SIDECAR_BYTES", size - 1)  # the limit, made small
    with pytest.raises(
        ValueError, match=rf"t\.csv\.json is {size} bytes, more than a sidecar can be \({size - 1}"
    ):
        read_table(tmp_path / "t.csv")
    monkeypatch.setattr(_sidecar, "MAX_SIDECAR_BYTES", size)
    assert read_table(tmp_path / "t.csv").attrs["crop_size"] == 32


def test_read_table__a_directory_at_the_sidecar_place_is_one_line(tmp_path):
    _table().to_csv(tmp_path / "t.csv", index=False)
    (tmp_path / "t.csv.json").mkdir()
    with pytest.raises(ValueError, match=r"t\.csv\.json cannot be read \(Is a directory\): delete"):
        read_table(tmp_path / "t.csv")


def test_read_table__a_damaged_record_inside_an_h5ad_is_one_line(tmp_path):
    anndata = pytest.importorskip("anndata")
    write_table(_table(), tmp_path / "t.h5ad", provenance=_provenance())
    (tmp_path / "t.h5ad.json").unlink()
    adata = anndata.read_h5ad(tmp_path / "t.h5ad")
    for key, value, problem in [
        ("provenance", "[" * 5000 + "]" * 5000, "nested deeper"),
        ("provenance", '{"encoder": 5}', "'encoder' must be an object"),
        ("columns", '{"a": 1}', "columns must be a list of column names"),
    ]:
        bad = adata.copy()
        bad.uns["napari_segrep"] = {**adata.uns["napari_segrep"], key: value}
        bad.write_h5ad(tmp_path / "bad.h5ad")
        with pytest.raises(ValueError, match=problem) as caught:
            read_table(tmp_path / "bad.h5ad")
        assert "bad.h5ad" in str(caught.value) and "write it again" in str(caught.value)


def test_write_table__never_writes_a_record_it_would_refuse_to_read(tmp_path):
    with pytest.raises(ValueError, match="'crop_size' must be a whole number"):
        write_table(_table(), tmp_path / "t.csv", provenance={"crop_size": "big"})
    with pytest.raises(ValueError, match="cannot be written as JSON"):
        write_table(_table(), tmp_path / "t.csv", provenance={"seconds": float("nan")})
    assert not list(tmp_path.iterdir())


# --------------------------------------------------------------- the Python API (item 14)
def test_write_table__without_provenance_keeps_what_the_table_records(tmp_path):
    import napari_segrep as sr

    df = _table()
    df.attrs = {
        "encoder": {"backbone": "resnet18", "sha256": "c" * 64, "in_channels": np.int64(1)},
        "normalization": NORMALIZATION,
        "crop_size": np.int64(48),
    }
    for name in ("x.parquet", "x.csv"):
        sr.write_table(df, tmp_path / name)
        back = sr.read_table(tmp_path / name)
        assert back.attrs == {
            "encoder": {"backbone": "resnet18", "sha256": "c" * 64, "in_channels": 1},
            "normalization": NORMALIZATION,
            "crop_size": 48,
        }
        record = json.loads(sidecar_path(tmp_path / name).read_text())
        assert record["package"] == "napari-segrep" and record["n_segments"] == 2


def test_write_table__the_same_line_again_asks_for_overwrite_truthfully(tmp_path):
    import napari_segrep as sr

    sr.write_table(_table(), tmp_path / "x.parquet")
    with pytest.raises(ValueError) as caught:
        sr.write_table(_table(), tmp_path / "x.parquet")
    assert str(caught.value) == (
        f"{tmp_path / 'x.parquet'} exists: pass overwrite=True to replace it, or choose "
        "another name"
    )
    bigger = pd.concat([_table(), _table()], ignore_index=True)
    sr.write_table(bigger, tmp_path / "x.parquet", overwrite=True)
    assert len(sr.read_table(tmp_path / "x.parquet")) == 4


# ------------------------------------------------------------------------ CSV injection
def test_write_table__warns_about_text_a_spreadsheet_could_run_but_writes_it_as_is(tmp_path):
    df = pd.DataFrame(
        {
            "image": ["a", '=HYPERLINK("http://x")', "b", "@SUM(1)"],
            "label": [1, 2, 3, 4],
            "class": ["-1", "+", "\tx", "pos"],
            "emb_0": [-1.0, 0.0, 1.0, 2.0],
        }
    )
    with pytest.warns(UserWarning) as caught:
        write_table(df, tmp_path / "t.csv")
    assert len(caught) == 1
    message = str(caught[0].message)
    assert message.startswith("t.csv: 4 text cell(s) start with =, +, -, @, a tab or a")
    assert "image '=HYPERLINK(\"http://x\")' in row 2" in message and "\n" not in message
    assert caught[0].filename == __file__  # points at the caller's line
    back = read_table(tmp_path / "t.csv")
    assert back["image"].tolist() == df["image"].tolist()  # not altered
    assert back["class"].tolist() == df["class"].tolist()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Parquet is never run by a spreadsheet: no warning
        write_table(df, tmp_path / "t.parquet")
        write_table(df.assign(image="a", **{"class": "-1"}), tmp_path / "safe.csv")  # numbers
