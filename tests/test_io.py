"""napari_segrep.io: pairing image and label files."""

from __future__ import annotations

import pytest

from napari_segrep.io import pair_files


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
