"""Volumes: one row per 3D object, crops on near-isotropic voxels from the spacing, the axes
said (never guessed), time-lapses of images and of volumes, and bad input named."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import napari_segrep as sr
from napari_segrep._images import AxesUnknown, layout_of
from napari_segrep.engine._resample import _axis_weights, _resample
from napari_segrep.engine.segments import (
    GEOMETRY_COLUMNS_3D,
    Normalization,
    iter_crop_batches,
    segment_table,
)

from ..conftest import NARROW_BACKBONE, disc_labels

CROP = 16
FIXED = (0.0, 1.0)


def ellipsoid(shape, centre, radii, spacing=(1.0, 1.0, 1.0)) -> np.ndarray:
    """Bool volume of ``shape``: an ellipsoid given in physical units (voxel ``k`` spans
    ``[k, k + 1) * spacing``; its centre is tested)."""
    grids = np.meshgrid(
        *[(np.arange(n) + 0.5) * s for n, s in zip(shape, spacing, strict=True)], indexing="ij"
    )
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grids, centre, radii, strict=True)) <= 1.0


def crops(image, labels, *, spacing=None, crop_size=CROP, norm=None, mask_image=True, axes="zyx"):
    """All crops of a volume: (images, masks, scales, table)."""
    table = segment_table(labels, layout=layout_of(labels, axes=axes, spacing=spacing))
    image_cf = image[None] if image.ndim == labels.ndim else image
    batches = list(
        iter_crop_batches(
            image_cf,
            table,
            crop_size=crop_size,
            batch_size=3,
            norm=norm or Normalization("none"),
            mask_image=mask_image,
        )
    )
    return (
        np.concatenate([b.images for b in batches]),
        np.concatenate([b.masks for b in batches])[:, 0],
        np.concatenate([b.scales for b in batches]),
        table,
    )


def blobs_volume(seed=0, shape=(12, 40, 40)):
    """A random float volume and 5 labelled blobs (two touching, one at the border, one
    larger than a 16^3 crop)."""
    rng = np.random.default_rng(seed)
    image = rng.random(shape).astype(np.float32)
    labels = np.zeros(shape, np.int32)
    labels[ellipsoid(shape, (6, 10, 10), (4, 5, 5))] = 1
    labels[ellipsoid(shape, (6, 10, 19), (3, 4, 4))] = 2  # touches 1
    labels[0:3, 30:40, 0:6] = 3  # corner
    labels[ellipsoid(shape, (6, 28, 24), (5, 11, 14))] = 4  # 10 x 22 x 28: larger than the crop
    labels[9, 3, 35] = 5  # one voxel
    return image, labels


# ---------------------------------------------------------------------- crops
@pytest.mark.parametrize("spacing", [None, (0.7, 0.7, 0.7)])
def test_iter_crop_batches__isotropic_fitting_object_is_its_exact_window(spacing):
    image, labels = blobs_volume()
    images, masks, scales, table = crops(image, labels, spacing=spacing)
    assert images.shape == (5, 1, CROP, CROP, CROP) and masks.shape == (5, CROP, CROP, CROP)
    assert images.dtype == np.float32 and masks.dtype == bool
    for row, lab in enumerate(table.geometry["label"]):
        if lab == 4:
            continue  # larger than the crop: downscaled (below)
        sl = table.slices[row]
        starts = [s.start - (CROP - (s.stop - s.start)) // 2 for s in sl]
        padded = np.pad(image, CROP)
        window = padded[tuple(slice(a + CROP, a + 2 * CROP) for a in starts)]
        np.testing.assert_array_equal(images[row, 0], window)  # bit for bit: no resampling
        assert masks[row].sum() == (labels == lab).sum()  # native scale, own voxels only
        np.testing.assert_array_equal(
            np.sort(images[row, 0][masks[row]]), np.sort(image[labels == lab])
        )
        assert scales[row] == 1.0
    big = int(np.flatnonzero(table.geometry["label"] == 4)[0])
    assert scales[big] == pytest.approx(CROP / 28)


def test_iter_crop_batches__objects_larger_than_the_crop_are_area_averaged():
    """A 32^3 cube in a 16^3 crop: each crop voxel is the mean of its 2x2x2 block (the factor,
    0.5, in ``scale``), with image masking or without."""
    rng = np.random.default_rng(2)
    image = rng.random((40, 40, 40)).astype(np.float32)
    labels = np.zeros(image.shape, np.int32)
    labels[4:36, 5:37, 3:35] = 7
    block = image[4:36, 5:37, 3:35].reshape(16, 2, 16, 2, 16, 2).mean(axis=(1, 3, 5))
    for mask_image in (True, False):
        images, masks, scales, _ = crops(image, labels, mask_image=mask_image)
        assert scales.tolist() == [0.5] and masks.all()
        np.testing.assert_allclose(images[0, 0], block, rtol=1e-5, atol=1e-6)


def test_iter_crop_batches__spacing_gives_the_same_object_the_same_crop():
    """The same ellipsoid imaged isotropically (0.5 um voxels) and with 4x fewer planes (2 um
    in z): with the spacing, the crops' masks overlap (IoU > 0.8) and the image (a smooth
    function of the physical position) agrees; without it, the z-subsampled one is flat."""
    centre, radii = (16.0, 16.0, 16.0), (6.0, 4.0, 5.0)

    def render(shape, spacing):
        grids = np.meshgrid(
            *[(np.arange(n) + 0.5) * s for n, s in zip(shape, spacing, strict=True)],
            indexing="ij",
        )
        image = (np.sin(grids[0] / 2.0) + np.cos(grids[1] / 3.0) + grids[2] / 10).astype(np.float32)
        return image, ellipsoid(shape, centre, radii, spacing).astype(np.int32)

    iso_image, iso_labels = render((64, 64, 64), (0.5, 0.5, 0.5))
    sub_image, sub_labels = render((16, 64, 64), (2.0, 0.5, 0.5))
    a_img, a_mask, a_scale, _ = crops(iso_image, iso_labels, spacing=(0.5, 0.5, 0.5), crop_size=32)
    b_img, b_mask, b_scale, _ = crops(sub_image, sub_labels, spacing=(2.0, 0.5, 0.5), crop_size=32)
    assert a_scale.tolist() == b_scale.tolist() == [1.0]
    a_mask, b_mask, a_img, b_img = a_mask[0], b_mask[0], a_img[0, 0], b_img[0, 0]
    iou = (a_mask & b_mask).sum() / (a_mask | b_mask).sum()
    assert iou > 0.8, iou
    both = a_mask & b_mask
    assert np.abs(a_img[both] - b_img[both]).mean() < 0.1 * np.abs(a_img[both]).mean()
    _, flat_mask, _, _ = crops(sub_image, sub_labels, crop_size=32)  # spacing not given
    assert (flat_mask[0] & a_mask).sum() / (flat_mask[0] | a_mask).sum() < 0.5


def test_iter_crop_batches__resampled_masks_keep_the_physical_extent():
    """A z step of 3 voxel sides: a 2-plane slab becomes 6 isotropic planes, a 1-plane one 3;
    in y and x (the finest spacing) the crop is the raw window."""
    labels = np.zeros((6, 20, 20), np.int32)
    labels[2:4, 5:9, 6:13] = 1
    labels[5, 15:18, 2:4] = 2
    image = np.random.default_rng(0).random(labels.shape).astype(np.float32)
    _, masks, scales, _ = crops(image, labels, spacing=(3.0, 1.0, 1.0))
    assert scales.tolist() == [1.0, 1.0]
    np.testing.assert_array_equal(masks[0].any(axis=(1, 2)).sum(), 6)
    np.testing.assert_array_equal(masks[0].sum(axis=0).max(), 6)
    assert masks[0].sum() == 6 * 4 * 7 and masks[1].sum() == 3 * 3 * 2


def test_iter_crop_batches__2d_spacing_is_honoured_and_isotropic_2d_is_unchanged(scene):
    image, labels = scene
    plain, plain_masks, _, _ = crops(image, labels, axes="yx")
    square, square_masks, _, _ = crops(image, labels, axes="yx", spacing=(0.3, 0.3))
    np.testing.assert_array_equal(square, plain)  # square pixels: the 2D crops, bit for bit
    np.testing.assert_array_equal(square_masks, plain_masks)
    rect = np.zeros((20, 30), np.int32)
    rect[8:12, 10:18] = 1  # 4 rows of 2 um by 8 columns of 1 um: an 8 x 8 um square
    _, masks, scales, _ = crops(np.ones((20, 30), np.float32), rect, axes="yx", spacing=(2, 1))
    assert masks.shape == (1, CROP, CROP) and scales.tolist() == [1.0]
    rows, cols = np.nonzero(masks[0])
    assert masks[0].sum() == 64 and np.ptp(rows) == np.ptp(cols) == 7


@settings(max_examples=30, deadline=None)
@given(
    origin=st.floats(-5, 5),
    step=st.sampled_from([0.25, 1 / 3, 0.5, 0.8, 1.0, 1.7, 2.0, 3.5]),
    size=st.integers(1, 12),
)
def test_axis_weights__rows_sum_to_one_and_the_band_equals_the_dense_product(origin, step, size):
    first, w = _axis_weights(origin, step, size)
    assert w.shape[0] == size and (w >= 0).all()
    np.testing.assert_allclose(w.sum(axis=1), 1.0, rtol=1e-5)
    data = np.random.default_rng(0).random((2, w.shape[1], 3)).astype(np.float32)
    np.testing.assert_allclose(
        _resample(data, [w, np.eye(3, dtype=np.float32)]),
        np.einsum("sk,ckx->csx", w, data),
        rtol=1e-5,
        atol=1e-6,
    )


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    data=st.data(),
    spacing=st.sampled_from([None, (2.0, 0.5, 0.5), (1.0, 1.3, 0.9)]),
    normalize=st.sampled_from([FIXED, "segment"]),
)
def test_iter_crop_batches__voxels_outside_an_object_never_reach_its_crop(data, spacing, normalize):
    """Exact: any voxels outside an object changed (neighbours included), its mask and its crop
    under the mask (what the encoder sees) are bit-identical (resampled and downscaled crops
    too)."""
    from napari_segrep.engine.segments import resolve_normalization

    image, labels = blobs_volume()
    target = data.draw(st.sampled_from([1, 2, 3, 4, 5]), label="object")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**31 - 1), label="seed"))
    changed = image.copy()
    pick = (labels != target) & (rng.random(image.shape) < rng.uniform(0.05, 1.0))
    changed[pick] = rng.uniform(-5, 50, pick.sum())
    relabelled = np.where((labels != target) & (labels > 0), 0, labels)  # neighbours removed
    out = []
    for img, lab in ((image, labels), (changed, labels), (image, relabelled)):
        norm = resolve_normalization(img[None], normalize)
        images, masks, scales, table = crops(img, lab, spacing=spacing, norm=norm)
        row = int(np.flatnonzero(table.geometry["label"] == target)[0])
        out.append((np.where(masks[row], images[row], 0), masks[row], scales[row]))
    for other in out[1:]:
        np.testing.assert_array_equal(other[0], out[0][0])
        np.testing.assert_array_equal(other[1], out[0][1])
        assert other[2] == out[0][2]


# ---------------------------------------------------------------------- the axes, said
def test_embed_segments__3d_labels_without_axes_are_refused_never_guessed():
    image, labels = blobs_volume()
    with pytest.raises(AxesUnknown) as info:
        sr.embed_segments(image, labels)
    message = str(info.value)
    assert "axes='zyx' for a z-stack" in message and "axes='tyx' for a time-lapse" in message
    assert "channel_axis" not in message


def test_embed_segments__tyx_is_embed_stack_with_channel_axis_counted_in_the_whole_image(
    narrow_encoder,
):
    rng = np.random.default_rng(0)
    labels = np.stack([disc_labels((40, 40), [(12, 12, 6), (28, 26, 8)]), np.zeros((40, 40))])
    labels = labels.astype(np.int32)
    labels[1, 5:15, 20:33] = 3
    image = rng.random((2, 40, 40)).astype(np.float32)
    kw = {"crop_size": 32, "normalize": FIXED, "device": "cpu"}
    via_axes = sr.embed_segments(image, labels, narrow_encoder, axes="tyx", **kw)
    stack = sr.embed_stack(image, labels, narrow_encoder, **kw)
    pd.testing.assert_frame_equal(via_axes, stack, check_exact=True)
    assert via_axes[["label", "frame"]].values.tolist() == [[1, 0], [2, 0], [3, 1]]
    assert via_axes.attrs["layout"] == {"axes": "tyx", "spacing": None, "spacing_source": ""}
    # two channels on axis 1 of the whole (T, C, Y, X) image: axis 0 of each frame
    two = np.stack([image, image[:, ::-1]], axis=1)
    enc2 = sr.SegmentEncoder(NARROW_BACKBONE, in_channels=2)
    a = sr.embed_segments(two, labels, enc2, axes="tyx", channel_axis=1, **kw)
    b = sr.embed_stack(two, labels, enc2, channel_axis=0, **kw)
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    with pytest.raises(ValueError, match="time axis"):
        sr.embed_segments(two, labels, enc2, axes="tyx", channel_axis=0, **kw)


def test_embed_segments__2d_tables_record_their_layout(scene, narrow_encoder):
    image, labels = scene
    df = sr.embed_segments(image, labels, narrow_encoder, crop_size=32, device="cpu")
    assert df.attrs["layout"] == {"axes": "yx", "spacing": None, "spacing_source": ""}
    assert df.attrs["crop_size"] == 32
    default = sr.embed_segments(image, labels, narrow_encoder, device="cpu", only=[1])
    assert default.attrs["crop_size"] == 64  # crop_size=None: 64 in 2D


# ---------------------------------------------------------------------- bad input
def _volume_case(case):
    image, labels = blobs_volume()
    kw = {"axes": "zyx"}
    if case == "2d image":
        image = image[0]
    elif case == "3d image, 2d labels":
        labels, kw = labels[0], {}
    elif case == "shapes":
        image = image[:, :30]
    elif case == "spacing <= 0":
        kw["spacing"] = (0, 1, 1)
    elif case == "spacing count":
        kw["spacing"] = (1, 1)
    elif case == "one plane":
        image, labels = image[:1], labels[:1]
    elif case == "axes count":
        kw["axes"] = "tzyx"
    elif case == "too large":
        labels = np.ones_like(labels)  # the background labelled as an object
        image = np.zeros((4, 300, 300), np.float32)
        labels = np.ones(image.shape, np.int32)
        kw["crop_size"] = 4
    return image, labels, kw


@pytest.mark.parametrize(
    ("case", "match"),
    [
        ("2d image", r"labels are a volume \(Z, Y, X\) \(12, 40, 40\) but the image is 2D"),
        ("3d image, 2d labels", r"labels are 2D \(40, 40\) but the image is 3D.*axes='zyx'"),
        ("shapes", r"labels shape \(12, 40, 40\) does not match.*\(12, 30, 40\)"),
        ("spacing <= 0", "spacing must be positive"),
        ("spacing count", r"spacing has 2 values.*\(dz, dy, dx\)"),
        ("one plane", "a z-stack needs at least 2 planes"),
        ("axes count", "axes='tzyx' names 4 axes"),
        ("too large", r"object 1 spans 300 voxels.*shrink it 75x.*background.*crop_size >= 5"),
    ],
)
def test_embed_segments__bad_volumes_are_named(case, match):
    image, labels, kw = _volume_case(case)
    with pytest.raises(ValueError, match=match):
        sr.embed_segments(image, labels, **kw)


def test_embed_segments__an_encoder_of_the_other_dimension_is_refused_with_the_fix(
    narrow_encoder,
):
    image, labels = blobs_volume()
    with pytest.raises(ValueError, match=r"2D crops but the objects are 3D.*'resnet18_3d'.*planes"):
        sr.embed_segments(image, labels, narrow_encoder, axes="zyx")


def test_prepare_segments__very_many_objects_in_a_volume_warn_their_cost():
    from napari_segrep.engine.pipeline import MANY_OBJECTS, prepare_segments

    labels = np.zeros((2, 500, 400), np.int32)  # 100,000 single voxels on a lattice
    labels[:, ::2, ::2] = np.arange(1, MANY_OBJECTS + 1).reshape(2, 250, 200)
    image = np.zeros(labels.shape, np.uint8)
    prepared = prepare_segments(image, labels, layout=layout_of(labels, axes="zyx"))
    assert prepared.crop_size == 32  # crop_size=None: 32 for volumes
    (cost,) = [m for m in prepared.messages if "objects in one volume" in m]
    assert "100,000 objects" in cost and "32^3 crop" in cost and "3.3e+09 voxels" in cost
    image, labels = blobs_volume()  # a normal volume: no warning at all
    assert prepare_segments(image, labels, layout=layout_of(labels, axes="zyx")).messages == []


# ---------------------------------------------------------------------- the collection's stream
def test_image_items__volumes_and_time_lapses_of_volumes_by_the_axes_option():
    from napari_segrep.engine._image_stream import image_items

    image, labels = blobs_volume()
    options = {"crop_size": CROP, "batch_size": 2, "normalize": FIXED}

    def items(img, lab, **extra):
        return list(
            image_items(0, img, lab, options={**options, **extra}, in_channels=1, mask_image=True)
        )

    volume = items(image, labels, axes="zyx", spacing=(2.0, 1.0, 1.0))
    assert [i.kind for i in volume] == ["plane", "batch", "batch", "batch", "end"]
    assert volume[0].plane is None and volume[-1].info["stack"] is False
    assert list(volume[0].info["geometry"].columns) == ["label", *GEOMETRY_COLUMNS_3D]
    assert tuple(volume[1].images.shape) == (2, 1, CROP, CROP, CROP)
    assert volume[0].info["layout"].spacing == (2.0, 1.0, 1.0)
    # the same batches as iter_crop_batches gives
    ref, _, _, _ = crops(
        image,
        labels,
        spacing=(2.0, 1.0, 1.0),
        norm=Normalization("fixed", *map(np.array, ([0.0], [1.0]))),
    )
    np.testing.assert_array_equal(
        np.concatenate([i.images.numpy() for i in volume if i.kind == "batch"]), ref
    )
    lapse = items(np.stack([image, image]), np.stack([labels, np.zeros_like(labels)]), axes="tzyx")
    assert [(i.kind, i.plane) for i in lapse if i.kind != "batch"] == [("plane", 0), ("end", None)]
    assert lapse[-1].info["stack"] is True
    (error,) = items(image, labels)  # 3D labels, no axes: this image's error, never a guess
    assert error.kind == "error" and isinstance(error.error, AxesUnknown)
