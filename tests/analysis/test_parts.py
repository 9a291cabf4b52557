"""The parts folder of a resumable collection embedding (napari_segrep.analysis.parts): a part
counts only if it checks out, the manifest is validated, --overwrite replaces only another
run's parts, nothing the tool did not write is removed."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from napari_segrep.analysis.parts import BadManifest, PartsFolder, input_record

ENCODER = "a" * 64
NAMES = ["im0", "im1", "im2"]


def _table(name: str, *, rows: int = 3, encoder: str = ENCODER, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({"image": [name] * rows, "label": np.arange(1, rows + 1)})
    for j in range(4):
        df[f"emb_{j}"] = rng.normal(size=rows).astype(np.float32)
    df.attrs = {"encoder": {"sha256": encoder}, "crop_size": 32, "normalization": None}
    return df


def _manifest(root: Path, names=NAMES, *, crop_size: int = 32) -> dict:
    inputs = []
    for name in names:
        image, labels = root / f"{name}.tif", root / f"{name}_labels.tif"
        for path in (image, labels):
            if not path.exists():
                path.write_bytes(b"pixels")
        inputs.append(input_record(name, image, labels))
    return {"package": "napari-segrep", "settings": {"crop_size": crop_size}, "inputs": inputs}


def _started(root: Path, manifest: dict, *, overwrite: bool = False):
    folder = PartsFolder(root / "o.parquet.parts")
    start = folder.start(manifest, overwrite=overwrite, encoder_sha256=ENCODER)
    return folder, start


def test_parts_folder__a_part_counts_only_if_it_checks_out(tmp_path):
    """Edited, copied under another image's name, from another encoder, without its record,
    with a damaged record: none counts, each is named; files of other names are not looked
    at."""
    manifest = _manifest(tmp_path, [*NAMES, "im3", "im4", "im5"])
    folder, _ = _started(tmp_path, manifest)
    for i, name in enumerate(manifest["inputs"]):
        folder.write(i, name["name"], _table(name["name"], seed=i))
    good, bad = folder.verify([r["name"] for r in manifest["inputs"]], encoder_sha256=ENCODER)
    assert sorted(good) == [0, 1, 2, 3, 4, 5] and bad == []

    edited = pd.read_parquet(folder.part_path(0, "im0"))
    edited.loc[1, "emb_2"] = np.inf
    edited.to_parquet(folder.part_path(0, "im0"), index=False)
    shutil.copy(folder.part_path(2, "im2"), folder.part_path(1, "im1"))
    folder.write(2, "im2", _table("im2", encoder="b" * 64))
    folder.record_path(3, "im3").unlink()
    folder.record_path(4, "im4").write_text('{"kind": "napari-segrep embed part", "rows": "3"}')
    (folder.path / "000009-stray.parquet").write_bytes(b"junk")
    good, bad = folder.verify([r["name"] for r in manifest["inputs"]], encoder_sha256=ENCODER)
    assert sorted(good) == [5]
    assert [b.split(":")[0] for b in bad] == [
        "000000-im0.parquet",
        "000001-im1.parquet",
        "000002-im2.parquet",
        "000003-im3.parquet",
        "000004-im4.parquet",
    ]
    assert "changed since it was written" in bad[0] and "changed since it was written" in bad[1]
    assert "another encoder" in bad[2] and "no record" in bad[3] and "damaged" in bad[4]
    with pytest.raises(ValueError, match=r"000000-im0\.parquet does not check out"):
        folder.read(0, "im0", encoder_sha256=ENCODER)
    pd.testing.assert_frame_equal(
        folder.read(5, "im5", encoder_sha256=ENCODER), _table("im5", seed=5), check_exact=True
    )


def test_parts_folder__a_table_with_nan_or_another_images_rows_is_never_written(tmp_path):
    folder, _ = _started(tmp_path, _manifest(tmp_path))
    nan = _table("im0")
    nan.loc[0, "emb_1"] = np.nan
    with pytest.raises(ValueError, match="NaN or Inf"):
        folder.write(0, "im0", nan)
    with pytest.raises(ValueError, match="rows of image \\['im1'\\], not 'im0'"):
        folder.write(0, "im0", _table("im1"))
    twice = pd.concat([_table("im0"), _table("im0")], ignore_index=True)
    twice.attrs = _table("im0").attrs
    with pytest.raises(ValueError, match="a label twice"):
        folder.write(0, "im0", twice)
    assert folder.done() == {}


def test_parts_folder__overwrite_replaces_another_runs_parts_never_this_runs(tmp_path):
    manifest = _manifest(tmp_path)
    folder, start = _started(tmp_path, manifest)
    assert not start.resumed
    folder.write(0, "im0", _table("im0"))
    folder.release()
    again = _manifest(tmp_path)  # the same run
    for overwrite in (False, True):
        assert folder.check(again, overwrite=overwrite) == 1
        _, start = _started(tmp_path, again, overwrite=overwrite)
        assert start.resumed and sorted(start.good) == [0] and start.bad == []
        folder.release()

    other = _manifest(tmp_path, crop_size=48)
    with pytest.raises(ValueError, match="crop_size 32 then, 48 now.*--overwrite"):
        folder.check(other, overwrite=False)
    assert folder.check(other, overwrite=True) == 0
    (folder.path / "notes.txt").write_text("mine")
    _, start = _started(tmp_path, other, overwrite=True)
    assert not start.resumed and start.good == {}
    assert sorted(p.name for p in folder.path.iterdir()) == [".lock", "manifest.json", "notes.txt"]


def test_parts_folder__finish_removes_what_the_run_wrote_and_keeps_the_rest(tmp_path):
    folder, _ = _started(tmp_path, _manifest(tmp_path))
    for i, name in enumerate(NAMES):
        folder.write(i, name, _table(name))
    assert folder.finish() == []
    assert not folder.path.exists()

    folder, _ = _started(tmp_path, _manifest(tmp_path))
    folder.write(0, "im0", _table("im0"))
    (folder.path / "notes.txt").write_text("mine")
    (folder.path / "000007-somebody.parquet").write_bytes(b"not ours")
    assert folder.finish() == ["000007-somebody.parquet", "notes.txt"]
    assert (folder.path / "notes.txt").read_text() == "mine"


def test_parts_folder__the_merge_knows_only_the_files_it_wrote(tmp_path):
    folder, _ = _started(tmp_path, _manifest(tmp_path))
    out, side = tmp_path / "o.parquet", tmp_path / "o.parquet.json"
    assert not folder.wrote(out)
    folder.record_merge({out: b"table", side: b"sidecar"})
    out.write_bytes(b"table")
    assert folder.wrote(out) and not folder.wrote(side)  # no sidecar yet
    out.write_bytes(b"the user's table")
    assert not folder.wrote(out)
    folder.record_merge({out: b"table 2", side: b"sidecar"})  # a second merge: both known
    for data in (b"table", b"table 2"):
        out.write_bytes(data)
        assert folder.wrote(out)


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=6,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    where=st.sampled_from(
        ["settings", "inputs", "inputs.0", "inputs.0.name", "inputs.0.image_size", "merge", "kind"]
    ),
    value=_JSON,
)
def test_parts_folder__any_manifest_is_refused_in_one_line_or_used_never_a_traceback(where, value):
    """A manifest edited to hold any JSON value anywhere: the folder is used (the value fits),
    or refused with a ValueError naming the manifest or the folder and the way out."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        manifest = _manifest(root)
        folder, _ = _started(root, manifest)
        folder.write(0, "im0", _table("im0"))
        folder.release()
        record = json.loads(folder.manifest_path.read_text())
        *path, last = where.split(".")
        node = record
        for key in path:
            node = node[int(key)] if isinstance(node, list) else node[key]
        node[int(last) if isinstance(node, list) else last] = value
        folder.manifest_path.write_text(json.dumps(record))
        try:
            kept = folder.check(manifest, overwrite=False)
        except BadManifest as exc:
            assert str(folder.manifest_path) in str(exc) and "--overwrite" in str(exc)
        except ValueError as exc:
            assert str(folder.path) in str(exc)
        else:
            assert kept in (0, 1)
        if where != "kind":  # (a folder that is not ours is never emptied, whatever is asked)
            assert folder.check(manifest, overwrite=True) in (0, 1)  # --overwrite: a way out
