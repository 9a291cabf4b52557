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
