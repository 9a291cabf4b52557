"""segment_thumbnails / ThumbnailSource on volumes: a 3D object is its z-, y- and x-planes side
by side (each showing the object, outlined), masked as the encoder sees it, drawn to scale with
the voxel spacing; time-lapses of 2D images unchanged; 3D labels without axes refused; tiles
that a montage pastes like any other."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import napari_segrep as sr
from napari_segrep._images import AxesUnknown
from napari_segrep.engine._thumbs3d import panel_layout
from napari_segrep.engine.thumbnails import BBOX_COLUMNS, BBOX_COLUMNS_3D, ThumbnailSource

from ..conftest import disc_labels

MAGENTA = (255, 0, 255)
SHAPE = (24, 48, 48)


def ellipsoids(shape, objects, *, spacing=(1.0, 1.0, 1.0)):
    """Labels with one ellipsoid per (centre, semi-axes) in physical units (voxel centres at
    ``(i + 0.5) * spacing``), ids from 1; later ones overwrite."""
    axes = [(np.arange(n) + 0.5) * d for n, d in zip(shape, spacing, strict=True)]
    zz, yy, xx = np.meshgrid(*axes, indexing="ij")
    labels = np.zeros(shape, np.int32)
    for k, ((cz, cy, cx), (rz, ry, rx)) in enumerate(objects, start=1):
        inside = ((zz - cz) / rz) ** 2 + ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        labels[inside] = k
    return labels


@pytest.fixture()
def volume():
    """Three objects on a 0.1 background, object k at brightness 0.2 + 0.2 k: 1 is an
    ellipsoid longest along x, then y, then z; 2 touches 1; 3 is small."""
    labels = ellipsoids(
        SHAPE,
        [((12, 20, 20), (4, 7, 10)), ((12, 20, 34), (5, 5, 5)), ((5, 38, 10), (2, 3, 3))],
    )
    image = np.where(labels > 0, 0.2 + 0.2 * labels, 0.1).astype(np.float32)
    return image, labels


def panels(tile: np.ndarray, size: int) -> list[np.ndarray]:
    """The three panels of a 3D tile (z-, y-, x-plane)."""
    side, top, lefts = panel_layout(size)
    return [tile[top : top + side, left : left + side] for left in lefts]


def extent(panel: np.ndarray) -> tuple[int, int]:
    """Rows and columns holding non-black pixels."""
    lit = panel.max(axis=-1) > 0
    return int(lit.any(axis=1).sum()), int(lit.any(axis=0).sum())


def test_segment_thumbnails3d__three_panels_each_show_the_object_the_right_way_round(volume):
    image, labels = volume
    size = 64
    out = sr.segment_thumbnails(image, labels, [1, 3, 2], axes="zyx", normalize=None, size=size)
    assert out.shape == (3, size, size, 3) and out.dtype == np.uint8
    for tile in out:
        for third in (tile[:, :21], tile[:, 21:43], tile[:, 43:]):
            assert (third.max(axis=-1) > 0).sum() >= 4  # each third shows part of the object
    masked = sr.segment_thumbnails(
        image, labels, [1], axes="zyx", normalize=None, size=size, masked=True, outline=False
    )[0]
    (zy_h, zy_w), (yz_h, yz_w), (xz_h, xz_w) = (extent(p) for p in panels(masked, size))
    # semi-axes z 4, y 7, x 10: the z-plane is wider (x) than tall (y), the y-plane wider (x)
    # than tall (z), the x-plane wider (y) than tall (z), in those proportions
    assert zy_w > zy_h > yz_h and yz_w > yz_h and xz_w > xz_h
    np.testing.assert_allclose([zy_h / zy_w, yz_h / yz_w, xz_h / xz_w], [0.7, 0.4, 4 / 7], atol=0.1)
    level = int(0.4 * 255 + 0.5)  # object 1's own brightness, in every panel
    for p in panels(masked, size):
        lit = p.max(axis=-1) > 0
        assert (np.abs(p[lit].astype(int) - level) <= 1).all()


def test_segment_thumbnails3d__outline_is_each_panels_edge_of_the_object(volume):
    image, labels = volume
    size = 64
    kwargs = {"axes": "zyx", "normalize": None, "size": size}
    outlined = sr.segment_thumbnails(image, labels, [1, 2, 3], outline_color=MAGENTA, **kwargs)
    masked = sr.segment_thumbnails(image, labels, [1, 2, 3], masked=True, outline=False, **kwargs)
    for o, m in zip(outlined, masked, strict=True):
        for po, pm in zip(panels(o, size), panels(m, size), strict=True):
            inside = pm.max(axis=-1) > 0
            edge = (po == MAGENTA).all(axis=-1)
            padded = np.pad(inside, 1)
            core = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
            np.testing.assert_array_equal(edge, inside & ~core)
            assert edge.sum() >= 4
        outside = np.ones((size, size), bool)
        for p in panels(outside, size):
            p[...] = False
        assert not (o[outside] == MAGENTA).all(axis=-1).any()  # nothing drawn between panels


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), normalize=st.sampled_from([None, "segment"]))
def test_segment_thumbnails3d__masked_tile_is_the_object_alone(seed, normalize):
    """Change every voxel outside object 1, image and labels: its masked tile is identical."""
    rng = np.random.default_rng(seed)
    shape = (10, 20, 20)
    centre = rng.uniform(4, 6, 1).tolist() + rng.uniform(7, 13, 2).tolist()
    labels = ellipsoids(shape, [(centre, rng.uniform(2, 5, 3))])
    obj = labels == 1
    image = rng.random(shape).astype(np.float32)
    other_image = np.where(obj, image, rng.random(shape) * 5).astype(np.float32)
    other_labels = np.where(obj, 1, rng.integers(0, 4, shape) * 7)  # neighbours touching it
    kwargs = {"axes": "zyx", "normalize": normalize, "masked": True, "size": 33}
    tile = sr.segment_thumbnails(image, labels, [1], **kwargs)
    np.testing.assert_array_equal(
        sr.segment_thumbnails(other_image, other_labels, [1], **kwargs), tile
    )
    kwargs["masked"] = False  # the context is there without masking
    plain = sr.segment_thumbnails(image, labels, [1], **kwargs)
    assert not np.array_equal(
        sr.segment_thumbnails(other_image, other_labels, [1], **kwargs), plain
    )


def sphere(nz: int, dz: float) -> np.ndarray:
    """A sphere of radius 10 centred at (20, 20, 20), sampled with ``nz`` planes ``dz`` apart."""
    return ellipsoids((nz, 40, 40), [((20, 20, 20), (10, 10, 10))], spacing=(dz, 1, 1))


def test_segment_thumbnails3d__spacing_stretches_the_side_views_to_true_shape():
    iso, coarse = sphere(40, 1.0), sphere(20, 2.0)  # the same sphere, half the planes
    size = 96
    kwargs = {"axes": "zyx", "normalize": None, "masked": True, "outline": False, "size": size}
    truth = sr.segment_thumbnails(iso * 200, iso, [1], **kwargs)[0]
    scaled = sr.segment_thumbnails(coarse * 200, coarse, [1], spacing=(2, 1, 1), **kwargs)[0]
    squashed = sr.segment_thumbnails(coarse * 200, coarse, [1], **kwargs)[0]  # unit voxels
    for t, s in zip(panels(truth, size), panels(scaled, size), strict=True):
        assert abs(extent(s)[0] - extent(t)[0]) <= 1 and abs(extent(s)[1] - extent(t)[1]) <= 1
        assert abs(extent(t)[0] - extent(t)[1]) <= 1  # round
    # without the spacing the side views are half as tall: the check above can fail
    assert [extent(p)[0] for p in panels(squashed, size)[1:]] <= [extent(truth)[0] * 0.6] * 2


def test_segment_thumbnails3d__every_panel_holds_the_object_when_its_middle_is_empty():
    """Two balls with one label: the centre of mass lies between them, and so does its
    x-plane; the nearest plane that holds some of the object is shown instead."""
    labels = ellipsoids((12, 24, 40), [((6, 12, 8), (3, 3, 3)), ((6, 12, 32), (3, 3, 3))])
    labels[labels > 0] = 5
    out = sr.segment_thumbnails(labels * 100, labels, [5], axes="zyx", normalize=None, masked=True)
    for p in panels(out[0], 64):
        assert (p.max(axis=-1) > 0).sum() >= 4


def bbox_table(labels: np.ndarray, columns) -> pd.DataFrame:
    """``label`` and bounding boxes named ``columns``, from scikit-image."""
    from skimage.measure import regionprops_table

    props = pd.DataFrame(regionprops_table(labels, properties=("label", "bbox")))
    return props.rename(columns={f"bbox-{i}": c for i, c in enumerate(columns)})


def test_segment_thumbnails3d__tyx_time_lapse_is_each_frames_2d_thumbnails():
    rng = np.random.default_rng(1)
    labels = np.stack(
        [
            disc_labels((64, 64), [(20, 20, 6), (40, 44, 8)]),
            disc_labels((64, 64), [(30, 30, 7), (50, 12, 4)]),
        ]
    )
    image = rng.random((2, 3, 64, 64)).astype(np.float32)  # (T, C, Y, X): channel_axis=1
    boxes = [bbox_table(frame, BBOX_COLUMNS) for frame in labels]
    table = pd.concat([b.assign(frame=t) for t, b in enumerate(boxes)])
    ids, frames = [2, 1, 1], [1, 0, 1]
    for kwargs in ({}, {"masked": True}, {"normalize": "segment"}):
        out = sr.segment_thumbnails(
            image, labels, ids, axes="tyx", channel_axis=1, frame=frames, **kwargs
        )
        with_table = sr.segment_thumbnails(
            image, labels, ids, axes="tyx", channel_axis=1, frame=frames, table=table, **kwargs
        )
        for tile, tabled, label, t in zip(out, with_table, ids, frames, strict=True):
            expected = sr.segment_thumbnails(image[t], labels[t], [label], channel_axis=0, **kwargs)
            np.testing.assert_array_equal(tile, expected[0])
            np.testing.assert_array_equal(tabled, expected[0])


def test_segment_thumbnails3d__3d_labels_without_axes_are_refused_with_the_fix(volume, tmp_path):
    import tifffile

    image, labels = volume
    with pytest.raises(AxesUnknown, match=r"axes='zyx' for a z-stack .* axes='tyx'"):
        sr.segment_thumbnails(image, labels, [1])
    with pytest.raises(AxesUnknown):
        ThumbnailSource(image, labels)  # arrays: at once, before any work
    tifffile.imwrite(tmp_path / "vol.tif", image)
    tifffile.imwrite(tmp_path / "vol_labels.tif", labels)
    source = ThumbnailSource(tmp_path / "vol.tif", tmp_path / "vol_labels.tif")  # not read yet
    with pytest.raises(AxesUnknown):
        source.thumbnails([1])
    from_files = ThumbnailSource(tmp_path / "vol.tif", tmp_path / "vol_labels.tif", axes="zyx")
    np.testing.assert_array_equal(
        from_files.thumbnails([2]), sr.segment_thumbnails(image, labels, [2], axes="zyx")
    )
    rgb = np.zeros((40, 40, 3), np.uint8)  # a coloured rendering of labels: still says so
    with pytest.raises(ValueError, match="look like an RGB image"):
        sr.segment_thumbnails(rgb, rgb, [1])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"spacing": (2, 0, 1)}, "spacing must be positive"),
        ({"spacing": (1, 1)}, "spacing has 2 values"),
        ({"size": 8}, "too small for a 3D object"),
        ({"frame": 0}, "the labels are a volume"),
        ({"axes": "tzyx"}, "names 4 axes"),
    ],
)
def test_segment_thumbnails3d__bad_options_are_refused(volume, kwargs, message):
    image, labels = volume
    kwargs = {"axes": "zyx", **kwargs}
    with pytest.raises(ValueError, match=message):
        sr.segment_thumbnails(image, labels, [1], **kwargs)


def test_segment_thumbnails3d__time_lapse_of_volumes_tables_and_huge_ids(volume):
    image, labels = volume
    later = np.roll(labels, 3, axis=2)  # frame 1: everything moved along x
    lapse_labels = np.stack([labels, later])
    lapse_image = np.stack([image, np.roll(image, 3, axis=2) * 2])
    out = sr.segment_thumbnails(lapse_image, lapse_labels, [1, 3], frame=[1, 0], normalize=None)
    np.testing.assert_array_equal(
        out[0], sr.segment_thumbnails(lapse_image[1], later, [1], axes="zyx", normalize=None)[0]
    )
    np.testing.assert_array_equal(
        out[1], sr.segment_thumbnails(image, labels, [3], axes="zyx", normalize=None)[0]
    )
    table = bbox_table(labels, BBOX_COLUMNS_3D)
    direct = sr.segment_thumbnails(image, labels, [3, 1, 2], axes="zyx")
    np.testing.assert_array_equal(
        sr.segment_thumbnails(image, labels, [3, 1, 2], axes="zyx", table=table), direct
    )
    stale = table.copy()
    stale.loc[stale["label"] == 1, ["bbox_z0", "bbox_z1"]] = [0, 1]  # holds none of it
    np.testing.assert_array_equal(
        sr.segment_thumbnails(image, labels, [3, 1, 2], axes="zyx", table=stale), direct
    )
    with pytest.raises(ValueError, match=r"lacks the columns \['bbox_z0', 'bbox_z1'\]"):
        sr.segment_thumbnails(
            image, labels, [1], axes="zyx", table=table.drop(columns=["bbox_z0", "bbox_z1"])
        )
    huge = np.where(labels > 0, labels.astype(np.int64) + 2**40, 0)
    np.testing.assert_array_equal(
        sr.segment_thumbnails(image, huge, [2**40 + 3, 2**40 + 1, 2**40 + 2], axes="zyx"), direct
    )
    with pytest.raises(ValueError, match="label 9 not in the labels of frame 1"):
        sr.segment_thumbnails(lapse_image, lapse_labels, [9], frame=1)


def test_segment_thumbnails3d__channels_of_a_volume(volume):
    image, labels = volume
    two = np.stack([image, np.zeros_like(image)], axis=-1)  # (Z, Y, X, 2)
    out = sr.segment_thumbnails(
        two, labels, [1], axes="zyx", channel_axis=-1, normalize=None, masked=True, outline=False
    )
    lit = out[0].max(axis=-1) > 0
    np.testing.assert_array_equal(out[0][lit][:, 1], 0)  # magenta: the first channel only
    np.testing.assert_array_equal(out[0][lit][:, 0], out[0][lit][:, 2])


def test_montage__of_3d_objects_pastes_their_tiles_unscaled(volume, tmp_path):
    from PIL import Image

    from napari_segrep.analysis.montage import montage_layout, write_montage

    image, labels = volume
    thumbs = sr.segment_thumbnails(image, labels, [1, 2, 3], axes="zyx", size=48)
    captions = ["1", "2", "3"]
    path = write_montage(tmp_path / "objects.png", thumbs, captions, columns=2)
    with Image.open(path) as png:
        sheet = np.asarray(png.convert("RGB"))
    height, width, origins = montage_layout(3, 48, columns=2, captions=True)
    assert sheet.shape == (height, width, 3)
    for thumb, (y, x) in zip(thumbs, origins, strict=True):
        np.testing.assert_array_equal(sheet[y : y + 48, x : x + 48], thumb)
