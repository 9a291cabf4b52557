"""Embedding 3D objects end to end: one row per object with its 3D geometry, exact context
invariance and neighbour isolation (as in 2D), the spacing honoured, time-lapses of volumes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import napari_segrep as sr
from napari_segrep.engine.segments import GEOMETRY_COLUMNS_3D

from ..conftest import disc_labels, emb, relative_max_diff
from .test_volumes import CROP, FIXED, blobs_volume, ellipsoid


def _embed3d(image, labels, encoder, **kw):
    kw.setdefault("axes", "zyx")
    kw.setdefault("crop_size", CROP)
    kw.setdefault("normalize", FIXED)
    kw.setdefault("device", "cpu")
    return sr.embed_segments(image, labels, encoder, **kw)


def test_embed_segments__one_row_per_3d_object_with_its_geometry(narrow_encoder_3d):
    from skimage.measure import regionprops_table

    image, labels = blobs_volume()
    df = _embed3d(image, labels, narrow_encoder_3d, spacing=(2.0, 1.0, 1.0))
    assert list(df.columns) == [
        "label",
        *GEOMETRY_COLUMNS_3D,
        *[f"emb_{i}" for i in range(narrow_encoder_3d.embedding_dim)],
    ]
    assert df["label"].tolist() == [1, 2, 3, 4, 5]
    props = pd.DataFrame(
        regionprops_table(labels, properties=("label", "area", "centroid", "bbox"))
    )
    np.testing.assert_array_equal(df["area"], props["area"])
    for i, a in enumerate("zyx"):
        np.testing.assert_allclose(df[f"centroid_{a}"], props[f"centroid-{i}"])
        np.testing.assert_array_equal(df[f"bbox_{a}0"], props[f"bbox-{i}"])
        np.testing.assert_array_equal(df[f"bbox_{a}1"], props[f"bbox-{i + 3}"])
    # object 4 spans 28 voxels in x, 10 planes of 2 (20 isotropic voxels) in z: downscaled
    assert df["scale"].tolist() == [1.0, 1.0, 1.0, pytest.approx(CROP / 28), 1.0]
    assert np.isfinite(emb(df)).all() and (np.abs(emb(df)).sum(axis=1) > 0).all()
    assert df.attrs["layout"] == {
        "axes": "zyx",
        "spacing": [2.0, 1.0, 1.0],
        "spacing_source": "given",
    }
    assert df.attrs["crop_size"] == CROP and df.attrs["encoder"]["sha256"]


@settings(
    max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    data=st.data(),
    spacing=st.sampled_from([None, (2.0, 1.0, 1.0)]),
    normalize=st.sampled_from([FIXED, "segment"]),
)
def test_embed_segments__3d_context_invariance(narrow_encoder_3d, data, spacing, normalize):
    """Changing any voxels outside an object leaves its embedding unchanged (objects at native
    scale, resampled for the spacing, and downscaled)."""
    image, labels = blobs_volume()
    target = data.draw(st.sampled_from([1, 2, 3, 4, 5]), label="object")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**31 - 1), label="seed"))
    changed = image.copy()
    pick = (labels != target) & (rng.random(image.shape) < rng.uniform(0.05, 1.0))
    changed[pick] = rng.uniform(-5, 50, pick.sum())
    kw = {"spacing": spacing, "normalize": normalize, "only": [target]}
    a = _embed3d(image, labels, narrow_encoder_3d, **kw)
    b = _embed3d(changed, labels, narrow_encoder_3d, **kw)
    assert relative_max_diff(emb(a), emb(b)) <= 1e-6


def test_embed_segments__3d_neighbour_isolation_and_batches(narrow_encoder_3d):
    """Objects 1 and 2 touch: the same embedding of 1 whether 2 is present, removed, grown or
    brighter, whatever the batch size and composition."""
    image, labels = blobs_volume()
    assert ((labels[:, :, 1:] == 1) & (labels[:, :, :-1] == 2)).any() or (
        (labels[:, :, 1:] == 2) & (labels[:, :, :-1] == 1)
    ).any()
    base = _embed3d(image, labels, narrow_encoder_3d, spacing=(2.0, 1.0, 1.0))
    grown = labels.copy()
    grown[(labels == 0) & ellipsoid(labels.shape, (6, 10, 19), (5, 6, 6))] = 2
    brighter = np.where(labels == 2, image * 7 + 3, image).astype(np.float32)
    cases = [
        (image, np.where(labels == 2, 0, labels), {}),
        (image, grown, {}),
        (brighter, labels, {}),
        (image, labels, {"batch_size": 1}),
        (image, np.where(np.isin(labels, [1, 5]), labels, 0), {"batch_size": 2}),
    ]
    for img, lab, kw in cases:
        other = _embed3d(img, lab, narrow_encoder_3d, spacing=(2.0, 1.0, 1.0), **kw)
        assert relative_max_diff(emb(base)[0], emb(other)[0]) <= 1e-5


def test_embed_segments__spacing_finds_the_same_object_imaged_at_another_z_step(
    narrow_encoder_3d,
):
    """Three objects (a ball, a rod along x, a disc flat in z) imaged with cubic voxels and
    with 3x fewer planes: given the spacing, each z-subsampled object's nearest neighbour among
    the isotropic ones is itself, and closer than without the spacing (squashed 3x in z)."""
    shapes = [(7, 7, 7), (3.5, 3.5, 10), (2.5, 9, 9)]

    def scene(depth, spacing):
        shape = (depth, 24, 72)
        labels = np.zeros(shape, np.int32)
        for k, radii in enumerate(shapes):
            labels[ellipsoid(shape, (12.0, 12.0, 12.0 + 24 * k), radii, spacing)] = k + 1
        image = np.where(labels > 0, 0.3 + 0.2 * labels, 0.0).astype(np.float32)
        return image, labels

    def unit(df):
        e = emb(df).astype(np.float64)
        return e / np.linalg.norm(e, axis=1, keepdims=True)

    iso = unit(_embed3d(*scene(24, (1, 1, 1)), narrow_encoder_3d, crop_size=24))
    sub = _embed3d(*scene(8, (3, 1, 1)), narrow_encoder_3d, crop_size=24, spacing=(3, 1, 1))
    squashed = _embed3d(*scene(8, (3, 1, 1)), narrow_encoder_3d, crop_size=24)
    cosine, without = unit(sub) @ iso.T, unit(squashed) @ iso.T
    assert cosine.argmax(axis=1).tolist() == [0, 1, 2], cosine
    assert np.diag(cosine).mean() > np.diag(without).mean() + 0.05, (cosine, without)


def test_embed_segments__tzyx_gives_a_frame_column_and_3d_rows(narrow_encoder_3d):
    image, labels = blobs_volume()
    lapse_image = np.stack([image, image[:, ::-1], image])
    lapse_labels = np.stack([labels, labels[:, ::-1], np.zeros_like(labels)])
    lapse_labels[1][lapse_labels[1] == 5] = 0
    calls = []
    df = _embed3d(
        lapse_image,
        lapse_labels,
        narrow_encoder_3d,
        axes=None,  # 4D labels: (T, Z, Y, X)
        spacing=(2.0, 1.0, 1.0),
        progress=lambda d, t: calls.append((d, t)),
    )
    assert list(df.columns[:4]) == ["label", "frame", "centroid_z", "centroid_y"]
    assert df[["label", "frame"]].values.tolist() == [[k, 0] for k in range(1, 6)] + [
        [k, 1] for k in range(1, 5)
    ]
    assert calls[-1] == (9, 9)
    for t in (0, 1):
        alone = _embed3d(lapse_image[t], lapse_labels[t], narrow_encoder_3d, spacing=(2, 1, 1))
        rows = df[df["frame"] == t].drop(columns="frame").reset_index(drop=True)
        pd.testing.assert_frame_equal(rows, alone, check_exact=True)
    assert df.attrs["layout"]["axes"] == "tzyx" and df.attrs["layout"]["spacing"] == [2, 1, 1]
    with pytest.raises(ValueError, match="image has 2 frames but labels have 3"):
        _embed3d(lapse_image[:2], lapse_labels, narrow_encoder_3d, axes="tzyx")
    noise = np.random.default_rng(0).integers(0, 300, labels.shape, dtype=np.int32)
    with pytest.warns(UserWarning, match=r"^frame 1: .*swapped"):
        _embed3d(lapse_image[:2], np.stack([labels, noise]), narrow_encoder_3d, axes="tzyx")


def test_embed_segments__volumes_without_objects_and_only_some_ids(narrow_encoder_3d):
    image, labels = blobs_volume()
    with pytest.warns(UserWarning, match="no segment"):
        empty = _embed3d(image, np.zeros_like(labels), narrow_encoder_3d)
    assert list(empty.columns[:12]) == ["label", *GEOMETRY_COLUMNS_3D] and len(empty) == 0
    assert empty["bbox_z0"].dtype == np.int64 and empty.attrs["layout"]["axes"] == "zyx"
    full = _embed3d(image, labels, narrow_encoder_3d, normalize="segment")
    part = _embed3d(image, labels, narrow_encoder_3d, normalize="segment", only=[4, 2, 42])
    assert part["label"].tolist() == [2, 4]
    assert relative_max_diff(emb(part), emb(full)[[1, 3]]) <= 1e-5


def test_embed_segments__default_volume_encoder_and_the_reverse_mismatch(narrow_encoder_3d):
    from napari_segrep.engine.embed import VOLUME_BACKBONE, volume_backbone

    image, labels = blobs_volume()
    df = _embed3d(image, labels, None, only=[5])  # on the CPU: the planes
    assert df.attrs["encoder"]["backbone"] == volume_backbone("cpu") == "resnet18_planes"
    assert df.shape == (1, 12 + 1536)
    assert volume_backbone(None) == VOLUME_BACKBONE == "resnet18_3d"  # what training starts
    flat = disc_labels((40, 40), [(20, 20, 6)])
    with pytest.raises(ValueError, match=r"3D volumes but the objects are 2D.*'resnet18'"):
        sr.embed_segments(image[0], flat, narrow_encoder_3d)
