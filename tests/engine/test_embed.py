"""embed_segments: the per-segment guarantees, the table, streaming, cancel and bad input."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from skimage.measure import regionprops_table

import napari_segrep as sr
from napari_segrep.engine.segments import GEOMETRY_COLUMNS, iter_crop_batches, segment_table

from ..conftest import NARROW_BACKBONE, disc_labels, emb, relative_max_diff

# Tests where the model's size is irrelevant use the narrow test ResNet (same code path); those
# about the default encoder (resnet18, 512-d) keep it.
pytestmark = pytest.mark.usefixtures("narrow_backbone")

FIXED = (0.0, 1.0)
CROP = 32


def _embed(image, labels, encoder, **kw):
    kw.setdefault("crop_size", CROP)
    kw.setdefault("normalize", FIXED)
    kw.setdefault("device", "cpu")
    return sr.embed_segments(image, labels, encoder, **kw)


# ---------------------------------------------------------------------- guarantees
@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    data=st.data(),
    normalize=st.sampled_from([FIXED, "segment"]),
)
def test_embed_segments__context_invariance(scene, narrow_encoder, data, normalize):
    """Changing any pixels outside a segment leaves its embedding unchanged."""
    image, labels = scene
    target = data.draw(st.sampled_from([1, 3, 4, 6]), label="segment")
    seed = data.draw(st.integers(0, 2**31 - 1), label="seed")
    rng = np.random.default_rng(seed)
    outside = labels != target
    changed = image.copy()
    pick = outside & (rng.random(image.shape) < rng.uniform(0.05, 1.0))
    changed[pick] = rng.uniform(-5, 50, pick.sum())
    a = _embed(image, labels, narrow_encoder, normalize=normalize)
    b = _embed(changed, labels, narrow_encoder, normalize=normalize)
    row = int(np.flatnonzero(a["label"] == target)[0])
    assert relative_max_diff(emb(a)[row], emb(b)[row]) <= 1e-6


def test_embed_segments__context_invariance_for_downscaled_segments(narrow_encoder):
    """Segments larger than the crop are resampled; context still cannot leak in."""
    rng = np.random.default_rng(0)
    image = rng.random((120, 120)).astype(np.float32)
    labels = disc_labels((120, 120), [(60, 60, 40), (10, 10, 6)])
    changed = np.where(labels == 1, image, rng.random(image.shape) * 9).astype(np.float32)
    a = _embed(image, labels, narrow_encoder)
    b = _embed(changed, labels, narrow_encoder)
    assert a["scale"].iloc[0] == pytest.approx(CROP / 81)
    assert relative_max_diff(emb(a)[0], emb(b)[0]) <= 1e-6


def test_embed_segments__image_normalisation_depends_on_the_image_as_documented(
    scene, narrow_encoder
):
    image, labels = scene
    brighter = image.copy()
    brighter[labels == 0] *= 10  # background only: the image percentiles move
    a = _embed(image, labels, narrow_encoder, normalize="image")
    b = _embed(brighter, labels, narrow_encoder, normalize="image")
    assert relative_max_diff(emb(a), emb(b)) > 1e-3


def test_embed_segments__neighbour_isolation(narrow_encoder):
    """Same embedding whether a touching neighbour is present, removed or changed."""
    rng = np.random.default_rng(1)
    image = rng.random((64, 64)).astype(np.float32)
    labels = disc_labels((64, 64), [(32, 24, 8), (32, 40, 8)])  # they touch/overlap at x=32
    assert (
        (labels[:, 1:] == 1) & (labels[:, :-1] == 2) | (labels[:, 1:] == 2) & (labels[:, :-1] == 1)
    ).any()
    base = emb(_embed(image, labels, narrow_encoder))[0]

    removed = np.where(labels == 2, 0, labels)
    changed_shape = labels.copy()
    changed_shape[(labels == 0) & (np.arange(64)[None, :] > 40)] = 2  # neighbour grows
    brighter = np.where(labels == 2, image * 7 + 3, image).astype(np.float32)
    for img, lab in [(image, removed), (image, changed_shape), (brighter, labels)]:
        other = emb(_embed(img, lab, narrow_encoder))[0]
        assert relative_max_diff(base, other) <= 1e-6


def test_embed_segments__batch_size_and_composition_do_not_matter(scene, narrow_encoder):
    image, labels = scene
    ref = _embed(image, labels, narrow_encoder, batch_size=128)
    for bs in (1, 2, 5):
        other = _embed(image, labels, narrow_encoder, batch_size=bs)
        assert relative_max_diff(emb(ref), emb(other)) <= 1e-5, bs
    # a different batch composition: only segments 2 and 5 present
    subset = np.where(np.isin(labels, [2, 5]), labels, 0)
    sub = _embed(image, subset, narrow_encoder)
    assert relative_max_diff(emb(ref)[[1, 4]], emb(sub)) <= 1e-5


def test_embed_segments__relabelling_permutes_rows_only(scene, narrow_encoder):
    image, labels = scene
    ref = _embed(image, labels, narrow_encoder)
    new_ids = np.array([0, 50, 7, 3_000_000_000, 2, 11, 400])  # old id -> new id (huge ids too)
    relabelled = new_ids[labels].astype(np.int64)
    out = _embed(image, relabelled, narrow_encoder)
    assert list(out["label"]) == sorted(new_ids[1:])
    assert out["label"].dtype == np.int64
    back = out.set_index("label").loc[new_ids[ref["label"]]].reset_index(drop=True)
    expected = ref.drop(columns="label")
    assert relative_max_diff(emb(expected), emb(back)) <= 1e-5
    pd.testing.assert_frame_equal(
        expected[list(GEOMETRY_COLUMNS)], back[list(GEOMETRY_COLUMNS)], check_dtype=False
    )


def test_embed_segments__same_seed_same_embeddings(scene):
    image, labels = scene
    runs = [_embed(image, labels, sr.SegmentEncoder(NARROW_BACKBONE, seed=s)) for s in (3, 3, 4)]
    pd.testing.assert_frame_equal(runs[0], runs[1])
    assert relative_max_diff(emb(runs[0]), emb(runs[2])) > 1e-3
    default = sr.embed_segments(image, labels, crop_size=CROP, normalize=FIXED, device="cpu")
    assert relative_max_diff(emb(default), emb(_embed(image, labels, sr.SegmentEncoder()))) == 0


# ---------------------------------------------------------------------- the table
def test_embed_segments__table_columns_dtypes_and_geometry(scene, narrow_encoder):
    image, labels = scene
    df = _embed(image, labels, narrow_encoder)
    assert list(df.columns[:9]) == ["label", *GEOMETRY_COLUMNS]
    assert list(df.columns[9:]) == [f"emb_{i}" for i in range(narrow_encoder.embedding_dim)]
    assert df["label"].dtype == np.int64 and (df.filter(like="emb_").dtypes == np.float32).all()
    assert list(df["label"]) == sorted(np.unique(labels[labels > 0]))
    props = pd.DataFrame(
        regionprops_table(labels, properties=("label", "area", "centroid", "bbox"))
    )
    np.testing.assert_array_equal(df["area"], props["area"])
    np.testing.assert_allclose(df["centroid_y"], props["centroid-0"])
    np.testing.assert_allclose(df["centroid_x"], props["centroid-1"])
    np.testing.assert_array_equal(
        df[["bbox_y0", "bbox_x0", "bbox_y1", "bbox_x1"]],
        props[["bbox-0", "bbox-1", "bbox-2", "bbox-3"]],
    )
    assert (df["scale"] == 1.0).all()
    assert df.attrs["encoder"] == {
        **narrow_encoder.config(),
        "sha256": narrow_encoder.fingerprint(),
    }


def test_embed_segments__crops_keep_native_scale_and_own_pixels_only(scene):
    image, labels = scene
    table = segment_table(labels)
    from napari_segrep.engine.segments import Normalization

    batches = list(
        iter_crop_batches(
            image[None], table, crop_size=CROP, batch_size=4, norm=Normalization("none")
        )
    )
    assert [len(b.images) for b in batches] == [4, 2]  # bounded by the batch size
    masks = np.concatenate([b.masks for b in batches])[:, 0]
    areas = masks.sum(axis=(1, 2))
    np.testing.assert_array_equal(areas, table.geometry["area"])  # native scale, own pixels
    crops = np.concatenate([b.images for b in batches])[:, 0]
    # segment 1 (touching segment 2): its crop holds its own pixel values under its mask
    values = np.sort(crops[0][masks[0]])
    np.testing.assert_array_equal(values, np.sort(image[labels == 1]))


def test_embed_segments__one_pixel_and_border_segments(narrow_encoder):
    image = np.random.default_rng(3).random((50, 60)).astype(np.float32)
    labels = np.zeros((50, 60), np.uint16)
    labels[25, 30] = 1  # a single pixel
    labels[0:6, 0:9] = 2  # corner
    labels[44:50, 20:50] = 3  # bottom edge
    labels[10:20, 55:60] = 4  # right edge
    df = _embed(image, labels, narrow_encoder)
    assert list(df["label"]) == [1, 2, 3, 4]
    e = emb(df)
    assert np.isfinite(e).all() and (np.abs(e).sum(1) > 0).all()
    assert df.loc[0, "area"] == 1


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32, np.float32, np.float64])
def test_embed_segments__any_dtype_same_embeddings_with_image_normalisation(
    scene, narrow_encoder, dtype
):
    image, labels = scene
    ref = _embed(image, labels, narrow_encoder, normalize="image")
    integer = np.issubdtype(dtype, np.integer)
    scaled = image * (250 if dtype == np.uint8 else 60000) + 3  # an affine change of units
    quantised = _embed(
        (np.round(scaled) if integer else scaled).astype(dtype),
        labels,
        narrow_encoder,
        normalize="image",
    )
    tol = 0.05 if dtype == np.uint8 else 1e-3  # uint8 quantises the image
    assert relative_max_diff(emb(ref), emb(quantised)) < tol


def test_embed_segments__rgb_and_multichannel(scene):
    image, labels = scene
    rgb = np.stack([image, image**2, 1 - image], axis=-1)
    df_rgb = sr.embed_segments(
        rgb, labels, sr.SegmentEncoder(NARROW_BACKBONE, in_channels=3), crop_size=CROP, device="cpu"
    )
    stack = np.moveaxis(rgb, -1, 0)
    df_ca = sr.embed_segments(
        stack,
        labels,
        sr.SegmentEncoder(NARROW_BACKBONE, in_channels=3),
        crop_size=CROP,
        device="cpu",
        channel_axis=0,
    )
    assert relative_max_diff(emb(df_rgb), emb(df_ca)) <= 1e-6
    with pytest.raises(ValueError, match="encoder takes 1 channel"):
        sr.embed_segments(
            rgb, labels, sr.SegmentEncoder(NARROW_BACKBONE, in_channels=1), device="cpu"
        )


# ---------------------------------------------------------------------- streaming and cancel
def test_embed_segments__progress_per_batch_and_cancel(scene, narrow_encoder):
    image, labels = scene
    calls = []
    _embed(image, labels, narrow_encoder, batch_size=4, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(0, 6), (4, 6), (6, 6)]

    polls = []

    def stop_after_first():
        polls.append(1)
        return len(polls) > 1

    with pytest.raises(sr.Cancelled):
        _embed(image, labels, narrow_encoder, batch_size=2, should_stop=stop_after_first)
    assert len(polls) == 2
    assert not narrow_encoder.training  # mode restored


def test_embed_segments__restores_training_mode(scene):
    image, labels = scene
    enc = sr.SegmentEncoder(NARROW_BACKBONE).train()
    _embed(image, labels, enc)
    assert enc.training


# ---------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("image", "labels", "kwargs", "error", "match"),
    [
        (np.zeros((10, 10)), np.zeros((10, 11), int), {}, ValueError, "does not match"),
        (np.zeros((10, 10)), np.zeros((10, 10), float), {}, TypeError, "integer"),
        (np.zeros((10, 10)), np.zeros((10, 10), bool), {}, TypeError, "skimage.measure.label"),
        (np.zeros((10, 10)), -np.ones((10, 10), int), {}, ValueError, "negative"),
        (np.full((10, 10), np.nan), np.ones((10, 10), int), {}, ValueError, "NaN or Inf"),
        (np.full((10, 10), np.inf), np.ones((10, 10), int), {}, ValueError, "NaN or Inf"),
        (np.zeros((2, 3, 10, 10)), np.ones((10, 10), int), {}, ValueError, "ndim=4"),
        (np.zeros((10,)), np.ones((10,), int), {}, ValueError, r"labels must be 2D.*\(10,\)"),
        (np.zeros((5, 10, 10)), np.ones((10, 10), int), {}, ValueError, "channel_axis"),
        (
            np.zeros((5, 10, 10)),
            np.ones((10, 10), int),
            {"channel_axis": 3},
            ValueError,
            "not an axis",
        ),
        (
            np.zeros((10, 10)),
            np.ones((10, 10), int),
            {"channel_axis": 0},
            ValueError,
            "2D image has no channel axis",
        ),
        (np.zeros((10, 10), dtype=complex), np.ones((10, 10), int), {}, TypeError, "numeric"),
        (
            np.zeros((10, 10)),
            np.ones((10, 10), int),
            {"normalize": "median"},
            ValueError,
            "not a mode",
        ),
        (
            np.zeros((10, 10)),
            np.ones((10, 10), int),
            {"normalize": (1, 0)},
            ValueError,
            "high > low",
        ),
        (np.zeros((10, 10)), np.ones((10, 10), int), {"crop_size": 0}, ValueError, "crop_size"),
        (np.zeros((10, 10)), np.ones((10, 10), int), {"batch_size": 1.5}, ValueError, "batch_size"),
        (np.zeros((10, 10)), np.ones((10, 10), int), {"device": "tpu"}, ValueError, "device"),
        (np.zeros((0, 0)), np.zeros((0, 0), int), {}, ValueError, r"empty.*\(0, 0\)"),
        (np.zeros((0, 7)), np.zeros((0, 7), int), {}, ValueError, r"empty.*\(0, 7\)"),
        (np.full((10, 10), 1e39), np.ones((10, 10), int), {}, ValueError, "float32 range"),
        (np.full((10, 10), -1e300), np.ones((10, 10), int), {}, ValueError, "float32 range"),
        (
            np.zeros((10, 10)),
            np.full((10, 10), 2**63 + 5, np.uint64),
            {},
            ValueError,
            r"2\*\*63.*relabel",
        ),
        (np.zeros((10, 10)), np.ones((10, 10), int), {"crop_size": 100_000}, ValueError, "4096"),
        (
            np.zeros((300, 200)),
            np.ones((300, 200), int),
            {"crop_size": 601},
            ValueError,
            r"crop_size=601.*twice.*600",
        ),
    ],
)
def test_embed_segments__bad_input_is_named(image, labels, kwargs, error, match):
    with pytest.raises(error, match=match):
        sr.embed_segments(image, labels, **kwargs)


def test_embed_segments__largest_accepted_crop_sizes_still_work(narrow_encoder):
    labels = np.zeros((20, 12), np.int32)
    labels[5:9, 4:8] = 1
    image = np.random.default_rng(0).random((20, 12))
    for crop_size in (64, 256):  # crops up to 256 are accepted whatever the image size
        assert len(_embed(image, labels, narrow_encoder, crop_size=crop_size)) == 1


def test_embed_segments__a_model_that_gives_nan_is_named_not_written(scene, tmp_path):
    """Finite but huge weights (as a diverged run leaves them) overflow to NaN/Inf: the result
    is refused, naming the model and the likely cause, instead of a table of NaN."""
    image, labels = scene
    enc = sr.SegmentEncoder(NARROW_BACKBONE)
    with torch.no_grad():
        for p in enc.parameters():
            p.mul_(1e12)
    path = sr.save_encoder(enc, tmp_path / "diverged.pt")
    for model, name in ((sr.load_encoder(path), str(path)), (enc, "untrained")):
        with pytest.raises(ValueError, match="NaN or Inf") as info:
            _embed(image, labels, model)
        assert name in str(info.value) and "diverged or corrupt" in str(info.value)


def test_embed_segments__no_segment_gives_an_empty_table_and_a_warning(encoder):
    with pytest.warns(UserWarning, match="no segment"):
        df = sr.embed_segments(np.zeros((20, 20)), np.zeros((20, 20), np.uint8), encoder)
    assert len(df) == 0
    assert list(df.columns) == ["label", *GEOMETRY_COLUMNS, *[f"emb_{i}" for i in range(512)]]
    assert df["label"].dtype == np.int64 and df["emb_0"].dtype == np.float32


def test_embed_segments__no_warning_for_normal_input(scene, narrow_encoder):
    image, labels = scene
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _embed(image, labels, narrow_encoder)


def test_embed_stack__plane_by_plane_with_a_frame_column(narrow_encoder):
    rng = np.random.default_rng(0)
    image = rng.random((3, 40, 40)).astype(np.float32)
    labels = np.zeros((3, 40, 40), np.int32)
    labels[0, 5:15, 5:15] = 1
    labels[2, 20:30, 10:20] = 1
    labels[2, 2:8, 30:38] = 4
    calls = []
    df = sr.embed_stack(
        image,
        labels,
        narrow_encoder,
        crop_size=CROP,
        normalize=FIXED,
        device="cpu",
        progress=lambda d, t: calls.append((d, t)),
    )
    assert list(df.columns[:3]) == ["label", "frame", "centroid_y"]
    assert df[["label", "frame"]].values.tolist() == [[1, 0], [1, 2], [4, 2]]
    assert calls[-1] == (3, 3)
    plane = _embed(image[2], labels[2], narrow_encoder)
    np.testing.assert_array_equal(emb(df)[1:], emb(plane))
    with pytest.raises(ValueError, match="leading"):
        sr.embed_stack(image[:2], labels)


def test_embed_stack__a_planes_warning_is_shown_once_naming_its_planes(narrow_encoder):
    rng = np.random.default_rng(1)
    image = rng.random((3, 40, 40)).astype(np.float32)
    labels = np.zeros((3, 40, 40), np.int32)
    labels[0, 5:15, 5:15] = 1  # a real segment
    noise = rng.integers(0, 200, (2, 40, 40), dtype=np.int32)  # an intensity image as labels
    labels[1:] = noise
    with pytest.warns(UserWarning) as record:
        sr.embed_stack(image, labels, narrow_encoder, crop_size=CROP, device="cpu")
    messages = [str(w.message) for w in record]
    swapped = [m for m in messages if "swapped" in m]
    assert len(swapped) == 1 and swapped[0].startswith("planes 1, 2 (2; plane 1 shown): "), messages


# ---------------------------------------------------------------------- a few segments again
@settings(
    max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(subset=st.sets(st.sampled_from([1, 2, 3, 4, 5, 6, 42]), max_size=7))
def test_embed_segments__only_gives_the_full_calls_rows(scene, narrow_encoder, subset):
    image, labels = scene
    full = _embed(image, labels, narrow_encoder, normalize="segment")
    part = _embed(image, labels, narrow_encoder, normalize="segment", only=sorted(subset))
    wanted = full[full["label"].isin(subset)].reset_index(drop=True)
    assert list(part["label"]) == list(wanted["label"])  # 42 is no segment: ignored
    pd.testing.assert_frame_equal(
        part.drop(columns=list(part.filter(like="emb_"))),
        wanted.drop(columns=list(wanted.filter(like="emb_"))),
        check_exact=True,
    )
    # embeddings as for any other batch composition (float rounding of batched arithmetic)
    if len(part):
        assert relative_max_diff(emb(part), emb(wanted)) <= 1e-5


def test_encoder_for__each_choice_builds_the_encoder_it_names(tmp_path, narrow_encoder):
    from napari_segrep.engine.embed import encoder_for

    assert encoder_for(narrow_encoder, in_channels=1) is narrow_encoder
    untrained = encoder_for(None, in_channels=2, backbone=NARROW_BACKBONE, seed=3)
    assert (untrained.in_channels, untrained.seed) == (2, 3)
    assert untrained.backbone_name == NARROW_BACKBONE and untrained.weights_source is None
    path = sr.save_encoder(untrained, tmp_path / "enc.pt")
    loaded = encoder_for(path, in_channels=1)  # a checkpoint keeps its own channels
    assert loaded.config() == {**untrained.config(), "weights": str(path)}
    with pytest.raises(FileNotFoundError, match="not in the local torch cache"):
        encoder_for("imagenet", in_channels=1, backbone="resnet18")
