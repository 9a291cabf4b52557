"""Segment tables restricted to some ids, the diff of two label images, recorded
normalisations replayed."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from napari_segrep.engine.segments import (
    changed_segments,
    normalize_argument,
    resolve_normalization,
    segment_table,
)

from ..conftest import disc_labels

LABELS = arrays(np.int32, (12, 12), elements=st.integers(0, 5))


@settings(max_examples=60, deadline=None)
@given(before=LABELS, after=LABELS)
def test_changed_segments__exactly_the_touched_ids(before, after):
    changed, removed = changed_segments(before, after)
    diff = before != after
    touched = set(before[diff].tolist()) | set(after[diff].tolist())
    touched.discard(0)
    assert set(changed.tolist()) == touched & set(after.ravel().tolist())
    assert set(removed.tolist()) == touched - set(after.ravel().tolist())
    # every untouched segment has exactly the same pixels before and after
    for k in set(after.ravel().tolist()) - touched - {0}:
        np.testing.assert_array_equal(before == k, after == k)


def test_changed_segments__nothing_changed_and_shape_mismatch():
    labels = disc_labels((20, 20), [(10, 10, 4)])
    changed, removed = changed_segments(labels, labels.copy())
    assert changed.size == 0 and removed.size == 0
    with pytest.raises(ValueError, match="differ in shape"):
        changed_segments(labels, labels[:10])


@pytest.mark.parametrize("huge", [False, True])
def test_segment_table__only_keeps_those_ids_with_the_same_geometry(huge):
    labels = disc_labels((64, 64), [(10, 10, 5), (30, 30, 7), (50, 15, 4)])
    if huge:  # ids above 2^20 are compacted before find_objects
        labels = np.where(labels > 0, labels.astype(np.int64) + 3_000_000_000, 0)
    ids = np.unique(labels[labels > 0])
    full = segment_table(labels)
    part = segment_table(labels, only=[ids[2], ids[0], 12345])
    assert list(part.geometry["label"]) == [ids[0], ids[2]]
    np.testing.assert_array_equal(part.geometry.to_numpy(), full.geometry.iloc[[0, 2]].to_numpy())
    assert len(segment_table(labels, only=[])) == 0


@pytest.mark.parametrize("normalize", ["image", "segment", None, (10.0, 200.0)])
def test_normalize_argument__replays_the_recorded_numbers(normalize):
    image = np.random.default_rng(0).integers(0, 4000, (2, 30, 30)).astype(np.uint16)
    recorded = resolve_normalization(image, normalize).describe()
    again = resolve_normalization(image[:, :5, :5], normalize_argument(recorded))
    assert again.mode == {"image": "fixed"}.get(recorded["mode"], recorded["mode"])
    if recorded["mode"] in ("image", "fixed"):  # the same numbers, not the small image's
        assert again.describe()["low"] == recorded["low"]
        assert again.describe()["high"] == recorded["high"]


# ---------------------------------------------------------------------- labels that are not labels
def _jpeg(labels: np.ndarray, quality: int = 75) -> np.ndarray:
    """``labels`` saved as a JPEG and read back (ids change along edges)."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(labels.astype(np.uint8)).save(buffer, "JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buffer.getvalue()))).astype(np.int32)


def _label_warnings(labels) -> list[str]:
    from napari_segrep.engine.segments import labels_warnings

    return labels_warnings(segment_table(labels))


def test_labels_warnings__none_for_the_sample_data_and_test_scenes(scene):
    from napari_segrep._sample_data import make_cells, make_coins

    one_pixel = np.zeros((50, 60), np.uint16)  # test_embed's one-pixel and border scene
    one_pixel[25, 30], one_pixel[0:6, 0:9], one_pixel[44:50, 20:50] = 1, 2, 3
    for labels in (
        make_cells()[1],
        make_cells(shape=(160, 160), n_cells=24, seed=2)[1],
        make_coins()[1],
        scene[1],
        one_pixel,
        disc_labels((64, 64), [(32, 24, 8), (32, 40, 8)]),
    ):
        assert _label_warnings(labels) == []


@pytest.mark.parametrize("quality", [95, 75])
def test_labels_warnings__jpeg_labels(quality):
    from napari_segrep._sample_data import make_cells, make_coins

    for labels in (make_cells()[1], make_coins()[1]):
        (warning,) = _label_warnings(_jpeg(labels, quality))
        assert "JPEG" in warning and "PNG/TIFF" in warning


def test_labels_warnings__an_intensity_image_given_as_labels():
    from napari_segrep._sample_data import make_cells, make_coins

    cells_image, coins_image = make_cells()[0], make_coins()[0]
    for image in (cells_image, coins_image, (cells_image // 256).astype(np.uint8)):
        (warning,) = _label_warnings(image)
        assert "swapped" in warning


def test_embed_segments_and_training__warn_about_jpeg_labels(narrow_encoder):
    import napari_segrep as sr
    from napari_segrep._sample_data import make_cells
    from napari_segrep.engine.dataset import SegmentDataset

    image, labels, _ = make_cells(shape=(160, 160), n_cells=24, seed=2)
    with pytest.warns(UserWarning, match="JPEG"):
        sr.embed_segments(image, _jpeg(labels), narrow_encoder, crop_size=32, device="cpu")
    with pytest.warns(UserWarning, match="pair 0: .*JPEG"):
        SegmentDataset(image, _jpeg(labels), crop_size=32)


def test_validate_labels__rgb_and_fractional_labels_are_refused_with_the_likely_cause():
    from napari_segrep.engine.segments import validate_labels

    for rgb in (np.zeros((10, 12, 3), np.uint8), np.zeros((10, 12, 4), np.float32)):
        with pytest.raises(ValueError, match=r"labels look like an RGB image \(10, 12, \d\)"):
            validate_labels(rgb, (10, 12))
    intensity = np.random.default_rng(0).random((10, 12))
    with pytest.raises(TypeError, match="fractional.*swapped"):
        validate_labels(intensity, (10, 12))
    with pytest.raises(TypeError, match=r"astype\(np.int32\)"):  # whole numbers: just convert
        validate_labels(np.ones((10, 12)), (10, 12))


# ---------------------------------------------------------------------- geometry, 2D and 3D
#: The 2D table's geometry, pinned: names, order and dtypes (what every 2D table has had).
GEOMETRY_2D = {
    "label": "int64",
    "centroid_y": "float64",
    "centroid_x": "float64",
    "area": "int64",
    "bbox_y0": "int64",
    "bbox_x0": "int64",
    "bbox_y1": "int64",
    "bbox_x1": "int64",
    "scale": "float64",
}


def _regionprops(labels) -> pd.DataFrame:
    from skimage.measure import regionprops_table

    return pd.DataFrame(regionprops_table(labels, properties=("label", "area", "centroid", "bbox")))


def _assert_regionprops_geometry(geometry: pd.DataFrame, labels, axes: str) -> None:
    props = _regionprops(labels)
    nd = len(axes)
    np.testing.assert_array_equal(geometry["label"], props["label"])
    np.testing.assert_array_equal(geometry["area"], props["area"])
    for i, a in enumerate(axes):
        np.testing.assert_allclose(geometry[f"centroid_{a}"], props[f"centroid-{i}"], rtol=1e-12)
        np.testing.assert_array_equal(geometry[f"bbox_{a}0"], props[f"bbox-{i}"])
        np.testing.assert_array_equal(geometry[f"bbox_{a}1"], props[f"bbox-{i + nd}"])


@settings(max_examples=40, deadline=None)
@given(labels=arrays(np.int32, st.tuples(*[st.integers(2, 7)] * 3), elements=st.integers(0, 6)))
def test_segment_table__3d_geometry_is_regionprops(labels):
    from napari_segrep._images import layout_of
    from napari_segrep.engine.segments import GEOMETRY_COLUMNS_3D, geometry_columns

    table = segment_table(labels, layout=layout_of(labels, axes="zyx"))
    assert geometry_columns(3) == GEOMETRY_COLUMNS_3D
    assert list(table.geometry.columns) == ["label", *GEOMETRY_COLUMNS_3D]
    assert list(GEOMETRY_COLUMNS_3D) == [
        "centroid_z", "centroid_y", "centroid_x", "area",
        "bbox_z0", "bbox_y0", "bbox_x0", "bbox_z1", "bbox_y1", "bbox_x1", "scale",
    ]  # fmt: skip
    assert (table.geometry.dtypes.astype(str) != "object").all()
    if len(table):
        _assert_regionprops_geometry(table.geometry, labels, "zyx")
    assert len(table) == len(np.unique(labels[labels > 0]))


@settings(max_examples=40, deadline=None)
@given(
    labels=arrays(
        np.int32, st.tuples(st.integers(2, 12), st.integers(2, 12)), elements=st.integers(0, 6)
    )
)
def test_segment_table__2d_columns_dtypes_and_geometry_are_pinned(labels):
    from napari_segrep.engine.segments import GEOMETRY_COLUMNS, geometry_columns

    table = segment_table(labels)
    assert geometry_columns(2) is GEOMETRY_COLUMNS
    assert table.geometry.dtypes.astype(str).to_dict() == GEOMETRY_2D
    assert list(table.geometry.columns) == list(GEOMETRY_2D)
    if len(table):
        _assert_regionprops_geometry(table.geometry, labels, "yx")


def test_segment_table__3d_labels_say_their_axes():
    from napari_segrep._images import AxesUnknown, layout_of

    labels = np.zeros((4, 9, 9), np.int32)
    labels[1:3, 2:6, 3:7] = 5
    with pytest.raises(AxesUnknown, match="axes='zyx' for a z-stack"):
        segment_table(labels)
    with pytest.raises(ValueError, match="one frame"):  # a time-lapse is embedded frame by frame
        segment_table(labels, layout=layout_of(labels, axes="tyx"))
    table = segment_table(labels, layout=layout_of(labels, axes="zyx"))
    assert table.geometry[["label", "area", "bbox_z0", "bbox_z1"]].values.tolist() == [
        [5, 32, 1, 3]
    ]


def test_labels_warnings__in_3d_count_voxels_and_box_volumes():
    from napari_segrep._images import layout_of
    from napari_segrep.engine.segments import labels_warnings

    rng = np.random.default_rng(0)
    noise = rng.integers(0, 400, (6, 30, 30), dtype=np.int32)  # an intensity volume as labels
    (warning,) = labels_warnings(segment_table(noise, layout=layout_of(noise, axes="zyx")))
    assert "voxels" in warning and "swapped" in warning
    # compact blobs, 12 of them: no warning; the same ids scattered through the volume: one
    blobs = np.zeros((8, 40, 40), np.int32)
    for k in range(12):
        z, y, x = 1 + (k % 3) * 2, 3 + (k // 3) * 9, 3 + (k % 4) * 9
        blobs[z : z + 2, y : y + 5, x : x + 5] = k + 1
    layout = layout_of(blobs, axes="zyx")
    assert labels_warnings(segment_table(blobs, layout=layout)) == []
    scattered = blobs.copy()
    for k in range(12):  # one stray voxel each, across the volume
        z, y, x = np.argwhere(blobs == k + 1)[0]
        scattered[7 - z, 39 - y, 39 - x] = k + 1
    (warning,) = labels_warnings(segment_table(scattered, layout=layout))
    assert "scattered over the volume" in warning


def test_bbox_side__any_number_of_axes():
    from napari_segrep.engine.segments import bbox_side

    assert bbox_side((slice(2, 5), slice(0, 9))) == 9
    assert bbox_side((slice(0, 12), slice(3, 5), slice(1, 4))) == 12
