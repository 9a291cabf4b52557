"""Segment measurements: equal to scikit-image's regionprops_table, per channel, added to
embedding tables before emb_0, with clear errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from skimage.measure import regionprops_table

import napari_segrep as sr
from napari_segrep.analysis.measure import (
    SHAPE_COLUMNS,
    add_measurements,
    geometry_columns,
    measure_segments,
)

REGIONPROPS = ("label", "area", *SHAPE_COLUMNS, "intensity_mean", "intensity_std")
COLUMNS = ["label", "area", *SHAPE_COLUMNS, "intensity_mean_0", "intensity_std_0"]


def _random_labels(seed: int, shape=(40, 48), n=8) -> np.ndarray:
    """Overlapping discs and rectangles (later ones cut earlier ones: concave segments, holes,
    single pixels and lines happen), with ids that are neither sequential nor small."""
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, np.int32)
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    ids = rng.choice(np.arange(1, 5000), n, replace=False)
    for k in ids:
        cy, cx = rng.integers(0, shape[0]), rng.integers(0, shape[1])
        if rng.random() < 0.5:
            r = rng.uniform(0.5, 9)
            labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = k
        else:
            h, w = rng.integers(1, 12, 2)
            labels[cy : cy + h, cx : cx + w] = k
    return labels


def _reference(image: np.ndarray, labels: np.ndarray) -> pd.DataFrame:
    ref = pd.DataFrame(regionprops_table(labels, image, properties=REGIONPROPS))
    return ref.rename(
        columns={"intensity_mean": "intensity_mean_0", "intensity_std": "intensity_std_0"}
    )


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), dtype=st.sampled_from([np.uint8, np.uint16, np.float32]))
def test_measure_segments__equals_regionprops_table(seed, dtype):
    labels = _random_labels(seed)
    rng = np.random.default_rng(seed + 1)
    image = (rng.random(labels.shape) * 200).astype(dtype)
    got = measure_segments(image, labels)
    ref = _reference(image, labels)
    assert list(got.columns) == COLUMNS
    np.testing.assert_array_equal(got["label"], ref["label"])
    np.testing.assert_array_equal(got["area"], ref["area"])
    for col in COLUMNS[2:]:
        np.testing.assert_allclose(got[col], ref[col], rtol=1e-5, atol=1e-9, err_msg=col)


def test_measure_segments__one_row_per_label_ascending_with_the_right_dtypes(scene):
    image, labels = scene
    got = measure_segments(image, labels)
    assert list(got["label"]) == sorted(set(np.unique(labels)) - {0})
    assert got["label"].dtype == np.int64 and got["area"].dtype == np.int64
    assert all(got[c].dtype == np.float64 for c in COLUMNS[2:])
    assert geometry_columns(got) == COLUMNS[1:]


@pytest.mark.parametrize("case", ["rgb", "rgba", "channels_first", "channels_last"])
def test_measure_segments__intensity_per_channel(case):
    labels = _random_labels(3, shape=(30, 30))
    rng = np.random.default_rng(0)
    channels = [rng.random(labels.shape) * (c + 1) * 50 for c in range(3)]
    if case == "rgb":
        image, axis = np.stack(channels, -1).astype(np.uint8), None
    elif case == "rgba":
        image = np.stack([*channels, np.full(labels.shape, 255.0)], -1).astype(np.uint8)
        axis = None  # alpha dropped, as embed_segments does
    elif case == "channels_first":
        image, axis = np.stack(channels), 0
    else:
        image, axis = np.stack(channels, -1), 2
    got = measure_segments(image, labels, channel_axis=axis)
    expected = [f"intensity_mean_{c}" for c in range(3)] + [f"intensity_std_{c}" for c in range(3)]
    assert list(got.columns) == ["label", "area", *SHAPE_COLUMNS, *expected]
    for c in range(3):
        plane = image[c] if case == "channels_first" else image[..., c]
        ref = _reference(plane, labels)
        for stat in ("mean", "std"):
            name = f"intensity_{stat}_{c}"
            np.testing.assert_allclose(
                got[name], ref[f"intensity_{stat}_0"], rtol=1e-9, atol=1e-9, err_msg=name
            )


@pytest.mark.parametrize(("image", "channels"), [((12, 12), 1), ((12, 12, 3), 3), ((2, 12, 12), 2)])
def test_measure_segments__no_segment_gives_an_empty_table_with_the_columns(image, channels):
    axis = 0 if image[0] == 2 else None
    got = measure_segments(np.ones(image), np.zeros((12, 12), np.int32), channel_axis=axis)
    assert len(got) == 0
    intensity = [f"intensity_{s}_{c}" for s in ("mean", "std") for c in range(channels)]
    assert list(got.columns) == ["label", "area", *SHAPE_COLUMNS, *intensity]
    assert got["label"].dtype == np.int64 and got["area"].dtype == np.int64
    assert all(got[c].dtype == np.float64 for c in got.columns[2:])


def test_measure_segments__huge_ids_are_kept():
    small = _random_labels(7)
    huge = small.astype(np.uint64) * np.uint64(2**40)
    a, b = (
        measure_segments(np.ones(small.shape), small),
        measure_segments(np.ones(small.shape), huge),
    )
    np.testing.assert_array_equal(b["label"], a["label"].to_numpy() * 2**40)
    pd.testing.assert_frame_equal(a.drop(columns="label"), b.drop(columns="label"))


def test_measure_segments__a_stack_is_measured_plane_by_plane():
    labels = np.stack([_random_labels(1), np.zeros((40, 48), np.int32), _random_labels(2)])
    image = np.random.default_rng(0).random((3, 40, 48, 3))
    got = measure_segments(image, labels, axes="tyx")
    assert list(got.columns[:2]) == ["label", "frame"]
    assert set(got["frame"]) == {0, 2}
    for t in (0, 2):
        plane = got[got["frame"] == t].drop(columns="frame").reset_index(drop=True)
        pd.testing.assert_frame_equal(plane, measure_segments(image[t], labels[t]))


@pytest.mark.parametrize(
    ("image", "labels", "channel_axis", "match"),
    [
        ((8, 8), (2, 2, 8, 8), None, "time-lapse of volumes.*image is 2D"),
        ((2, 8, 8), (2, 2, 2, 8, 8), None, "labels must be 2D.*3D.*or 4D"),
        ((3, 8), (3, 8, 8), None, "time-lapse \\(T, Y, X\\).*pass the image the labels"),
        ((2, 8, 8), (3, 8, 8), None, "time-lapse of 3 frames.*pass the time-lapse's image"),
        ((8, 9), (8, 8), None, "does not match"),
        ((8, 8, 5), (8, 8), None, "ambiguous: pass channel_axis"),
        ((8, 8), (8, 8), 0, "a 2D image has no channel axis"),
    ],
)
def test_measure_segments__bad_shapes_are_named(image, labels, channel_axis, match):
    axes = "tyx" if len(labels) == 3 else None
    with pytest.raises(ValueError, match=match):
        measure_segments(
            np.ones(image), np.ones(labels, np.int32), channel_axis=channel_axis, axes=axes
        )


def test_measure_segments__bad_labels_are_refused_like_embed_segments():
    with pytest.raises(TypeError, match="integer"):
        measure_segments(np.ones((8, 8)), np.ones((8, 8)) * 0.5)
    with pytest.raises(ValueError, match="negative"):
        measure_segments(np.ones((8, 8)), -np.ones((8, 8), np.int32))


# ---------------------------------------------------------------------- add_measurements
def _embedding_like(labels: np.ndarray, d: int = 4) -> pd.DataFrame:
    """A table like embed_segments': label, geometry (area among it), scale, emb_*."""
    ids = np.unique(labels[labels > 0])
    table = pd.DataFrame(
        {
            "label": ids,
            "centroid_y": 0.0,
            "area": [int((labels == i).sum()) for i in ids],
            "scale": 1.0,
        }
    )
    emb = np.random.default_rng(0).normal(size=(len(ids), d)).astype(np.float32)
    table = pd.concat([table, pd.DataFrame(emb, columns=[f"emb_{i}" for i in range(d)])], axis=1)
    table.attrs["encoder"] = {"sha256": "abc"}
    return table


def test_add_measurements__columns_before_emb_0_rows_matched_by_label():
    labels = _random_labels(5)
    image = np.random.default_rng(1).random(labels.shape)
    table = _embedding_like(labels).sample(frac=1.0, random_state=0)  # rows in another order
    out = add_measurements(table, image, labels)
    measured = measure_segments(image, labels)
    new = [c for c in measured.columns if c not in ("label", "area")]
    assert list(out.columns) == [
        "label",
        "centroid_y",
        "area",
        "scale",
        *new,
        "emb_0",
        "emb_1",
        "emb_2",
        "emb_3",
    ]
    assert out.index.equals(table.index) and out.attrs == table.attrs
    pd.testing.assert_frame_equal(out[table.columns], table)
    expected = measured.set_index("label").loc[table["label"], new]
    np.testing.assert_array_equal(out[new].to_numpy(), expected.to_numpy())
    # again (another image: other channels): replaced, not duplicated
    again = add_measurements(out, np.stack([image, image], -1), labels, channel_axis=2)
    assert again.columns.is_unique and "intensity_mean_1" in again.columns
    assert list(again.columns[-4:]) == ["emb_0", "emb_1", "emb_2", "emb_3"]
    pd.testing.assert_frame_equal(again[out.columns[:-8].tolist()], out[out.columns[:-8].tolist()])


def test_add_measurements__a_table_without_area_or_embeddings():
    labels = _random_labels(6)
    table = pd.DataFrame({"label": np.unique(labels[labels > 0])[::-1], "note": "x"})
    out = add_measurements(table, np.ones(labels.shape), labels)
    assert list(out.columns[:3]) == ["label", "note", "area"]
    assert list(out.columns[2:]) == COLUMNS[1:]


def test_add_measurements__a_stack_table_is_matched_by_frame_and_label():
    labels = np.stack([_random_labels(1), _random_labels(2)])
    image = np.random.default_rng(0).random(labels.shape)
    measured = measure_segments(image, labels, axes="tyx")
    table = measured[["label", "frame", "area"]].iloc[::-1].assign(emb_0=1.0)
    out = add_measurements(table, image, labels)
    assert list(out.columns[:3]) == ["label", "frame", "area"] and out.columns[-1] == "emb_0"
    np.testing.assert_array_equal(out["perimeter"], measured["perimeter"].iloc[::-1])


def test_add_measurements__errors_are_named():
    labels = _random_labels(5)
    image = np.ones(labels.shape)
    table = _embedding_like(labels)
    first = int(table["label"].iloc[0])
    with pytest.raises(
        ValueError, match=f"1 segment\\(s\\) of the table are not in the labels \\(label {first}\\)"
    ):
        add_measurements(table, image, np.where(labels == first, 0, labels))
    grown = labels.copy()
    grown[grown == 0] = first
    with pytest.raises(
        ValueError, match=f"another area.*label {first}.*labels the table was made from"
    ):
        add_measurements(table, image, grown)
    two = pd.concat([table.assign(image="a"), table.assign(image="b")], ignore_index=True)
    with pytest.raises(ValueError, match="2 images.*each image's table"):
        add_measurements(two, image, labels)
    add_measurements(table.assign(image="a"), image, labels)  # one image: fine
    with pytest.raises(ValueError, match="'frame' column.*\\(T, Y, X\\) labels"):
        add_measurements(table.assign(frame=0), image, labels)
    with pytest.raises(ValueError, match="stack.*no 'frame' column"):
        add_measurements(table, np.stack([image]), labels[None])
    with pytest.raises(ValueError, match="no 'label' column"):
        add_measurements(table.drop(columns="label"), image, labels)


def test_add_measurements__on_a_real_embedding_table(scene, narrow_encoder):
    image, labels = scene
    table = sr.embed_segments(image, labels, narrow_encoder, crop_size=32, device="cpu")
    out = sr.add_measurements(table, image, labels)
    assert out.columns.is_unique and out.attrs["encoder"] == table.attrs["encoder"]
    geometry = geometry_columns(out)
    first = out.columns.get_loc("emb_0")
    assert list(out.columns[first - len(geometry) + 1 : first]) == geometry[1:]
    pd.testing.assert_frame_equal(out[table.columns], table)
    with pytest.warns(UserWarning, match="no segment"):
        empty = sr.embed_segments(image, np.zeros_like(labels), narrow_encoder, crop_size=32)
    assert list(sr.add_measurements(empty, image, np.zeros_like(labels)).columns) == list(
        out.columns
    )
