"""Segment tables restricted to some ids, the diff of two label images, recorded
normalisations replayed."""

from __future__ import annotations

import numpy as np
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
