"""3D measurements: one row per 3D object, equal to scikit-image's regionprops with spacing,
physical sizes that follow the spacing, time-lapses of volumes, axes that are never guessed,
and embedding tables of volumes measured with their recorded layout."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from skimage.measure import regionprops
from skimage.morphology import convex_hull_image

import napari_segrep as sr
from napari_segrep._images import AxesUnknown
from napari_segrep.analysis import _measure3d
from napari_segrep.analysis._measure3d import convex_voxel_count, surface_area
from napari_segrep.analysis.measure import (
    SHAPE_COLUMNS_3D,
    add_measurements,
    geometry_columns,
    has_measurements,
    measure_segments,
    missing_measurements,
)

POSITION = [
    "centroid_z",
    "centroid_y",
    "centroid_x",
    "area",
    "bbox_z0",
    "bbox_y0",
    "bbox_x0",
    "bbox_z1",
    "bbox_y1",
    "bbox_x1",
]
COLUMNS_3D = ["label", *POSITION, *SHAPE_COLUMNS_3D, "intensity_mean_0", "intensity_std_0"]


def _random_volume(seed: int, shape=(10, 18, 20), n=7) -> np.ndarray:
    """Overlapping balls (squashed in z) and boxes, later ones cutting earlier ones: concave
    objects, holes, flat ones one plane thick, lines and single voxels happen; ids neither
    sequential nor small."""
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, np.int32)
    zz, yy, xx = np.indices(shape)
    for k in rng.choice(np.arange(1, 5000), n, replace=False):
        c = rng.integers(0, shape)
        if rng.random() < 0.5:
            r = rng.uniform(0.5, 6)
            labels[(2 * (zz - c[0])) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2 <= r * r] = k
        else:
            d, h, w = rng.integers(1, 7, 3)
            labels[c[0] : c[0] + d, c[1] : c[1] + h, c[2] : c[2] + w] = k
    return labels


def _ball(radius: float, dz: float, n: int = 32) -> np.ndarray:
    """A ball of ``radius`` (in units of y and x pixels) centred in an ``n``-wide cube, imaged
    with planes every ``dz``."""
    z = np.arange(0, n, dz)[:, None, None]
    y, x = np.arange(n)[None, :, None], np.arange(n)[None, None, :]
    c = (n - 1) / 2
    return (((z - c) ** 2 + (y - c) ** 2 + (x - c) ** 2) <= radius**2).astype(np.int32)


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    spacing=st.sampled_from([(1.0, 1.0, 1.0), (2.0, 0.5, 0.5), (0.3, 1.7, 0.9)]),
    dtype=st.sampled_from([np.uint8, np.uint16, np.float32]),
)
def test_measure_segments__3d_equals_regionprops_with_spacing(seed, spacing, dtype):
    labels = _random_volume(seed)
    image = (np.random.default_rng(seed + 1).random(labels.shape) * 200).astype(dtype)
    got = measure_segments(image, labels, axes="zyx", spacing=spacing)
    assert list(got.columns) == COLUMNS_3D
    assert got.attrs["layout"] == {
        "axes": "zyx",
        "spacing": list(spacing),
        "spacing_source": "given",
    }
    assert np.isfinite(got.drop(columns="label").to_numpy(np.float64)).all()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # skimage's failed hull of a flat object: checked below
        regions = regionprops(labels, image, spacing=spacing)
        assert list(got["label"]) == [r.label for r in regions]
        for row, r in zip(got.itertuples(index=False), regions, strict=True):
            assert row.area == r.num_pixels
            assert (
                row.bbox_z0,
                row.bbox_y0,
                row.bbox_x0,
                row.bbox_z1,
                row.bbox_y1,
                row.bbox_x1,
            ) == r.bbox
            centroid = np.array(r.centroid) / spacing  # regionprops': physical
            np.testing.assert_allclose([row.centroid_z, row.centroid_y, row.centroid_x], centroid)
            expected = {
                "volume": r.area,
                "equivalent_diameter": r.equivalent_diameter_area,
                "axis_major_length": r.axis_major_length,
                "axis_minor_length": r.axis_minor_length,
                "extent": r.extent,
                "intensity_mean_0": r.intensity_mean,
                "intensity_std_0": r.intensity_std,
            }
            for name, value in expected.items():
                assert getattr(row, name) == pytest.approx(value, rel=1e-6, abs=1e-6), name
            if np.isfinite(r.solidity):
                assert row.solidity == pytest.approx(r.solidity, rel=1e-12), "solidity"
            else:  # scikit-image fails on a flat or linear object: ours is its 2D solidity
                flat = next(a for a in range(3) if r.image.shape[a] == 1)
                plane = np.take(r.image, 0, axis=flat)
                assert row.solidity == pytest.approx(plane.sum() / convex_hull_image(plane).sum())


def test_convex_voxel_count__equals_convex_hull_image_across_row_chunks(monkeypatch):
    zz, yy, xx = np.indices((13, 17, 15)) - np.array([6, 8, 7])[:, None, None, None]
    obj = zz**2 + yy**2 + xx**2 <= 49
    obj &= ~((yy > 1) & (xx > 1))  # a notch: concave
    expected = int(convex_hull_image(obj).sum())
    assert expected > obj.sum()
    assert convex_voxel_count(obj) == expected
    monkeypatch.setattr(_measure3d, "_HULL_FLOATS", 1)  # one row at a time
    assert convex_voxel_count(obj) == expected


@pytest.mark.parametrize(
    ("spacing", "expected"),
    [((1.0, 1.0, 1.0), np.sqrt(3.0)), ((2.0, 1.0, 1.0), 3.0)],
)
def test_surface_area__of_one_voxel_is_its_octahedron(spacing, expected):
    # marching cubes around one voxel: vertices half a voxel out along each axis; at (2, 1, 1)
    # each of the 8 faces spans (1, 0, 0), (0, .5, 0), (0, 0, .5): area |(.25, .5, .5)| / 2
    assert surface_area(np.ones((1, 1, 1), bool), spacing) == pytest.approx(expected, rel=1e-6)
    labels = np.zeros((3, 3, 3), np.int32)
    labels[1, 1, 1] = 4
    row = measure_segments(np.ones(labels.shape), labels, axes="zyx", spacing=spacing).iloc[0]
    assert row["surface_area"] == pytest.approx(expected, rel=1e-6)
    assert row["solidity"] == 1.0 and row["volume"] == np.prod(spacing)


@pytest.mark.parametrize("radius", [6.0, 10.0])
def test_measure_segments__a_ball_has_the_same_size_at_half_the_planes(radius):
    """Physical size is a phenotype: the same ball imaged with every plane at spacing (1, 1, 1)
    and with half the planes at (2, 1, 1) measures about the same, and about a ball's."""
    full, half = _ball(radius, 1.0), _ball(radius, 2.0)
    assert half.shape[0] == full.shape[0] // 2
    a = measure_segments(np.ones(full.shape), full, axes="zyx").iloc[0]
    b = measure_segments(np.ones(half.shape), half, axes="zyx", spacing=(2, 1, 1)).iloc[0]
    assert b["area"] < 0.6 * a["area"]  # half the voxels...
    for name in ("volume", "surface_area", "equivalent_diameter", "axis_major_length"):
        assert b[name] == pytest.approx(a[name], rel=0.1), name  # ...the same ball
    assert a["volume"] == pytest.approx(4 / 3 * np.pi * radius**3, rel=0.1)
    assert a["surface_area"] == pytest.approx(4 * np.pi * radius**2, rel=0.15)
    assert a["equivalent_diameter"] == pytest.approx(2 * radius, rel=0.05)
    # without the spacing the half-plane ball is squashed: half the volume, unequal axes
    squashed = measure_segments(np.ones(half.shape), half, axes="zyx").iloc[0]
    assert squashed["volume"] < 0.6 * a["volume"]
    assert squashed["axis_minor_length"] < 0.6 * squashed["axis_major_length"]


def test_measure_segments__no_spacing_is_unit_voxels():
    labels = _random_volume(3)
    image = np.random.default_rng(0).random(labels.shape)
    plain = measure_segments(image, labels, axes="zyx")
    pd.testing.assert_frame_equal(
        plain, measure_segments(image, labels, axes="zyx", spacing=(1, 1, 1))
    )
    np.testing.assert_array_equal(plain["volume"], plain["area"])
    assert plain.attrs["layout"]["spacing"] is None


@pytest.mark.parametrize(
    ("shape", "channel_axis", "planes"),
    [
        ((6, 16, 16, 3), None, lambda im, c: im[..., c]),  # RGB last
        ((6, 16, 16, 4), None, lambda im, c: im[..., c]),  # RGBA: alpha dropped
        ((2, 6, 16, 16), 0, lambda im, c: im[c]),
        ((6, 16, 16, 2), 3, lambda im, c: im[..., c]),
        ((6, 2, 16, 16), 1, lambda im, c: im[:, c]),
    ],
)
def test_measure_segments__3d_intensity_per_channel(shape, channel_axis, planes):
    labels = _random_volume(5, shape=(6, 16, 16))
    image = np.random.default_rng(1).random(shape) * 100
    got = measure_segments(image, labels, channel_axis=channel_axis, axes="zyx")
    n = 3 if shape[-1] in (3, 4) and channel_axis is None else 2
    names = [f"intensity_{s}_{c}" for s in ("mean", "std") for c in range(n)]
    assert list(got.columns) == [*COLUMNS_3D[:-2], *names]
    for c in range(n):
        one = measure_segments(planes(image, c), labels, axes="zyx")
        for stat in ("mean", "std"):
            np.testing.assert_allclose(got[f"intensity_{stat}_{c}"], one[f"intensity_{stat}_0"])


def test_measure_segments__no_object_gives_an_empty_3d_table_with_the_columns():
    got = measure_segments(np.ones((4, 8, 8)), np.zeros((4, 8, 8), np.uint16), axes="zyx")
    assert len(got) == 0 and list(got.columns) == COLUMNS_3D
    assert got["label"].dtype == np.int64 and got["area"].dtype == np.int64
    assert all(got[c].dtype == np.int64 for c in POSITION[3:])
    assert all(got[c].dtype == np.float64 for c in (*POSITION[:3], *SHAPE_COLUMNS_3D))


def test_measure_segments__3d_huge_ids_are_kept():
    small = _random_volume(7)
    huge = small.astype(np.uint64) * np.uint64(2**40)
    a = measure_segments(np.ones(small.shape), small, axes="zyx", spacing=(3, 1, 1))
    b = measure_segments(np.ones(small.shape), huge, axes="zyx", spacing=(3, 1, 1))
    np.testing.assert_array_equal(b["label"], a["label"].to_numpy() * 2**40)
    pd.testing.assert_frame_equal(a.drop(columns="label"), b.drop(columns="label"))


def test_measure_segments__a_time_lapse_of_volumes_has_frames_of_3d_objects():
    labels = np.stack([_random_volume(1), np.zeros((10, 18, 20), np.int32), _random_volume(2)])
    image = np.random.default_rng(0).random((3, 10, 2, 18, 20))  # (T, Z, C, Y, X)
    got = measure_segments(image, labels, channel_axis=2, spacing=(2, 0.5, 0.5))  # 4D: tzyx
    assert list(got.columns[:3]) == ["label", "frame", "centroid_z"]
    assert got.attrs["layout"]["axes"] == "tzyx" and set(got["frame"]) == {0, 2}
    for t in (0, 2):
        frame = got[got["frame"] == t].drop(columns="frame").reset_index(drop=True)
        one = measure_segments(
            image[t], labels[t], channel_axis=1, axes="zyx", spacing=(2, 0.5, 0.5)
        )
        pd.testing.assert_frame_equal(frame, one)


def test_measure_segments__a_time_lapse_counts_the_channel_axis_in_the_whole_image():
    labels = np.stack([_random_volume(1)[0], _random_volume(2)[0]]).astype(np.int32)  # (T, Y, X)
    image = np.random.default_rng(0).random((2, 18, 20, 2))
    got = measure_segments(image, labels, channel_axis=3, axes="tyx")
    assert list(got.columns[:3]) == ["label", "frame", "area"]
    for t in (0, 1):
        frame = got[got["frame"] == t].drop(columns="frame").reset_index(drop=True)
        pd.testing.assert_frame_equal(frame, measure_segments(image[t], labels[t], channel_axis=2))
    with pytest.raises(ValueError, match="channel_axis=0 is the time axis"):
        measure_segments(image, labels, channel_axis=0, axes="tyx")


def test_measure_segments__3d_labels_without_axes_are_never_guessed():
    labels = _random_volume(1)
    with pytest.raises(AxesUnknown, match="axes='zyx' for a z-stack.*axes='tyx' for a time-lapse"):
        measure_segments(np.ones(labels.shape), labels)
    # the same labels said both ways: one row per 3D object, or per 2D segment and plane
    as_volume = measure_segments(np.ones(labels.shape), labels, axes="zyx")
    as_frames = measure_segments(np.ones(labels.shape), labels, axes="tyx")
    assert len(as_volume) == len(np.unique(labels)) - 1 < len(as_frames)


@pytest.mark.parametrize(
    ("image", "labels", "kw", "match"),
    [
        ((4, 8, 8), (4, 8, 8), {"spacing": (1, 1)}, "spacing has 2 values.*give \\(dz, dy, dx\\)"),
        ((4, 8, 8), (4, 8, 8), {"spacing": (0, 1, 1)}, "spacing must be positive"),
        ((4, 8, 8), (4, 8, 8), {"spacing": (1, -1, 1)}, "spacing must be positive"),
        ((4, 8, 8), (4, 8, 8), {"spacing": (1, np.nan, 1)}, "positive and finite"),
        ((4, 8, 8), (4, 8, 8), {"spacing": "big"}, "not a sequence of numbers"),
        ((8, 8), (8, 8), {"spacing": (0.5, 0.5), "axes": "yx"}, "2D measurements are in pixels"),
        ((4, 8, 8), (4, 8, 8), {"spacing": (0.5, 0.5), "axes": "tyx"}, "2D measurements"),
        ((8, 8), (4, 8, 8), {}, "the labels are a volume \\(Z, Y, X\\).*image is 2D"),
        ((4, 8, 9), (4, 8, 8), {}, "does not match the image's spatial shape"),
        ((4, 8, 8, 5), (4, 8, 8), {}, "one axis more than \\(Z, Y, X\\): pass channel_axis"),
        ((1, 8, 8), (1, 8, 8), {}, "a volume with 1 plane.*at least 2 planes"),
        ((4, 8, 8), (4, 8, 8), {"axes": "xyz"}, "not a layout: use one of yx, zyx"),
    ],
)
def test_measure_segments__bad_volume_input_is_named(image, labels, kw, match):
    kw = {"axes": "zyx", **kw}
    with pytest.raises(ValueError, match=match):
        measure_segments(np.ones(image), np.ones(labels, np.int32), **kw)


# ---------------------------------------------------------------------- add_measurements
def _volume_table(labels: np.ndarray, layout=None, d: int = 3) -> pd.DataFrame:
    """A table like the engine's for 3D objects: label, position, scale, emb_*, attrs."""
    table = measure_segments(np.ones(labels.shape), labels, axes="zyx")[["label", *POSITION]]
    table = table.assign(scale=1.0)
    emb = np.random.default_rng(0).normal(size=(len(table), d))
    table = pd.concat([table, pd.DataFrame(emb, columns=[f"emb_{i}" for i in range(d)])], axis=1)
    table.attrs["encoder"] = {"sha256": "abc"}
    if layout is not None:
        table.attrs["layout"] = layout
    return table


def test_add_measurements__3d_table_uses_its_recorded_spacing():
    labels = _random_volume(4)
    image = np.random.default_rng(2).random(labels.shape)
    layout = {"axes": "zyx", "spacing": [2.0, 0.5, 0.5], "spacing_source": "OME-TIFF"}
    table = _volume_table(labels, layout).sample(frac=1.0, random_state=0)
    out = add_measurements(table, image, labels)
    measured = measure_segments(image, labels, axes="zyx", spacing=(2, 0.5, 0.5))
    new = [c for c in geometry_columns(measured) if c != "area"]
    assert new == [*SHAPE_COLUMNS_3D, "intensity_mean_0", "intensity_std_0"]
    assert list(out.columns) == [*table.columns[:-3], *new, "emb_0", "emb_1", "emb_2"]
    assert out.attrs == table.attrs and has_measurements(out) and geometry_columns(out)[0] == "area"
    pd.testing.assert_frame_equal(out[table.columns], table)
    expected = measured.set_index("label").loc[table["label"], new]
    np.testing.assert_allclose(out[new].to_numpy(), expected.to_numpy())
    # given spacing wins over the recorded one; a table without attrs: its columns say 3D
    unit = add_measurements(table, image, labels, spacing=(1, 1, 1))
    np.testing.assert_array_equal(unit["volume"], unit["area"])
    bare = table.copy()
    bare.attrs = {}
    np.testing.assert_array_equal(add_measurements(bare, image, labels)["volume"], unit["volume"])


def test_add_measurements__a_time_lapse_of_volumes_is_matched_by_frame_and_label():
    labels = np.stack([_random_volume(1), _random_volume(2)])
    image = np.random.default_rng(0).random(labels.shape)
    measured = measure_segments(image, labels, spacing=(3, 1, 1))
    table = measured[["label", "frame", *POSITION]].iloc[::-1].assign(emb_0=1.0)
    table.attrs["layout"] = {"axes": "tzyx", "spacing": [3, 1, 1], "spacing_source": "given"}
    out = add_measurements(table, image, labels)
    np.testing.assert_array_equal(out["volume"], measured["volume"].iloc[::-1])
    assert out.columns[-1] == "emb_0"


def test_add_measurements__3d_labels_a_table_cannot_place_are_refused():
    labels = _random_volume(4)
    image = np.ones(labels.shape)
    table = _volume_table(labels)[["label", "area", "emb_0"]]  # no frame, no centroid_z
    with pytest.raises(ValueError, match="no 'frame' column.*nor 'centroid_z'.*pass axes='zyx'"):
        add_measurements(table, image, labels)
    assert "volume" in add_measurements(table, image, labels, axes="zyx").columns
    with pytest.raises(ValueError, match="'frame' column.*a volume"):
        add_measurements(table.assign(frame=0), image, labels, axes="zyx")
    with pytest.raises(ValueError, match="time-lapse.*no 'frame' column"):
        add_measurements(table, image, labels, axes="tyx")


def test_train_classifier__geometry_features_of_3d_objects():
    labels = _random_volume(9, shape=(12, 30, 30), n=14)
    image = np.random.default_rng(0).random(labels.shape)
    table = _volume_table(labels, {"axes": "zyx", "spacing": [2, 1, 1], "spacing_source": "x"})
    with pytest.raises(ValueError, match="lacks \\(volume, surface_area.*add_measurements"):
        sr.train_classifier(table, {1: "a"}, features="embedding+geometry")
    assert missing_measurements(table)[0] == "volume"
    measured = add_measurements(table, image, labels)
    big = measured["area"] >= measured["area"].median()
    annotations = dict(zip(measured["label"], np.where(big, "big", "small"), strict=True))
    clf = sr.train_classifier(
        measured, annotations, features="embedding+geometry", method="knn", k=1
    )
    assert clf.feature_columns[-len(geometry_columns(measured)) :] == geometry_columns(measured)
    assert list(clf.predict(measured)["class"]) == list(np.where(big, "big", "small"))


def test_add_measurements__a_2d_tables_recorded_spacing_leaves_pixels():
    """2D measurements are in pixels: a time-lapse table recording the pixel size (napari's
    scale) is measured as before, and the table keeps its record."""
    labels = np.stack([_random_volume(1)[0], _random_volume(2)[0]]).astype(np.int32)
    image = np.random.default_rng(0).random(labels.shape)
    measured = measure_segments(image, labels, axes="tyx")
    table = measured[["label", "frame", "area"]].assign(emb_0=1.0)
    table.attrs["layout"] = {"axes": "tyx", "spacing": [0.5, 0.5], "spacing_source": "napari"}
    out = add_measurements(table, image, labels)
    np.testing.assert_array_equal(out["perimeter"], measured["perimeter"])
    assert out.attrs["layout"]["spacing"] == [0.5, 0.5]
