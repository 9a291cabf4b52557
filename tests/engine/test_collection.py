"""embed_images: many images, one table; each image's rows are what embedding it alone gives."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import tifffile
import torch

import napari_segrep as sr
from napari_segrep._sample_data import make_cells
from napari_segrep.engine.collection import iter_embed_images, merge_parts
from napari_segrep.errors import Cancelled

KW = {"crop_size": 32, "device": "cpu"}


@pytest.fixture(scope="module")
def pairs():
    """Three generated images of different sizes and their labels."""
    return [make_cells(shape=(96 + 32 * i, 128), n_cells=5 + i, seed=i)[:2] for i in range(3)]


@pytest.mark.parametrize("normalize", ["image", "segment"])
def test_embed_images__each_images_rows_are_what_it_gives_alone(pairs, narrow_encoder, normalize):
    images, labels = zip(*pairs, strict=True)
    df = sr.embed_images(images, labels, encoder=narrow_encoder, normalize=normalize, **KW)
    assert list(df.columns[:2]) == ["image", "label"]
    assert list(dict.fromkeys(df["image"])) == ["image_0", "image_1", "image_2"]
    for i, (image, label_image) in enumerate(pairs):
        alone = sr.embed_segments(image, label_image, narrow_encoder, normalize=normalize, **KW)
        rows = df[df["image"] == f"image_{i}"].drop(columns="image").reset_index(drop=True)
        pd.testing.assert_frame_equal(rows, alone)
        assert df.attrs["normalization"][f"image_{i}"] == alone.attrs["normalization"]
    assert df.attrs["encoder"]["sha256"] == narrow_encoder.fingerprint()
    assert df.attrs["crop_size"] == 32


def test_embed_images__files_are_read_in_turn_and_named_by_their_stem(
    pairs, narrow_encoder, tmp_path
):
    paths = []
    for i, (image, label_image) in enumerate(pairs):
        tifffile.imwrite(tmp_path / f"field{i}.tif", image)
        tifffile.imwrite(tmp_path / f"field{i}_labels.tif", label_image)
        paths.append((tmp_path / f"field{i}.tif", str(tmp_path / f"field{i}_labels.tif")))
    done = []
    df = sr.embed_images(
        [p[0] for p in paths],
        [p[1] for p in paths],
        encoder=narrow_encoder,
        progress=lambda d, t: done.append((d, t)),
        **KW,
    )
    assert list(dict.fromkeys(df["image"])) == ["field0", "field1", "field2"]
    assert done == [(1, 3), (2, 3), (3, 3)]
    arrays = sr.embed_images(*zip(*pairs, strict=True), encoder=narrow_encoder, **KW)
    np.testing.assert_array_equal(
        df.filter(like="emb_").to_numpy(), arrays.filter(like="emb_").to_numpy()
    )
    named = sr.embed_images(
        *zip(*pairs, strict=True), names=["a", "b", "c"], encoder=narrow_encoder, **KW
    )
    assert list(dict.fromkeys(named["image"])) == ["a", "b", "c"]


def test_embed_images__stacks_get_frames(pairs, narrow_encoder):
    image, label_image = pairs[0]
    stack, stack_labels = np.stack([image, image]), np.stack([label_image, label_image])
    df = sr.embed_images(
        [stack], [stack_labels], names=["movie"], encoder=narrow_encoder, axes="tyx", **KW
    )
    assert list(df.columns[:3]) == ["image", "label", "frame"]  # as embed_stack, after image
    assert sorted(set(df["frame"])) == [0, 1]
    # 3D labels whose axes nobody said: that image's error, naming it and the fix
    with pytest.raises(
        ValueError,
        match=r"the labels of image 'movie' \(2, 96, 128\) are 3D .*axes='zyx'.*axes='tyx'",
    ):
        sr.embed_images([stack], [stack_labels], names=["movie"], encoder=narrow_encoder, **KW)


def test_embed_images__bad_input_is_named_before_any_work(pairs, narrow_encoder, tmp_path):
    images, labels = zip(*pairs, strict=True)
    calls = []
    with pytest.raises(ValueError, match="3 images but 2 label images"):
        sr.embed_images(images, labels[:2], encoder=narrow_encoder)
    with pytest.raises(ValueError, match="would both be called 'x'"):
        sr.embed_images(images, labels, names=["x", "y", "x"], encoder=narrow_encoder)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for folder in ("a", "b"):
        tifffile.imwrite(tmp_path / folder / "same.tif", images[0])
    with pytest.raises(ValueError, match="'same'.*names="):
        sr.embed_images([tmp_path / "a" / "same.tif", tmp_path / "b" / "same.tif"], labels[:2])
    with pytest.raises(ValueError, match="no such file: .*gone.tif"):
        sr.embed_images(
            [images[0], tmp_path / "gone.tif"],
            labels[:2],
            encoder=narrow_encoder,
            progress=lambda d, t: calls.append(d),
        )
    assert calls == []  # nothing was embedded
    with pytest.raises(ValueError, match="image 'image_1': .*shape"):
        sr.embed_images([images[0], images[0]], [labels[0], labels[1]], encoder=narrow_encoder)


def test_embed_images__cancel_stops_between_images(pairs, narrow_encoder):
    images, labels = zip(*pairs, strict=True)
    done = []
    with pytest.raises(Cancelled):
        sr.embed_images(
            images,
            labels,
            encoder=narrow_encoder,
            progress=lambda d, t: done.append(d),
            should_stop=lambda: len(done) >= 1,
            **KW,
        )
    assert done == [1]


def test_iter_embed_images__parts_merge_to_the_whole_table(pairs, narrow_encoder):
    images, labels = zip(*pairs, strict=True)
    whole = sr.embed_images(images, labels, encoder=narrow_encoder, **KW)
    parts = list(iter_embed_images(images, labels, encoder=narrow_encoder, **KW))
    assert [name for name, _ in parts] == ["image_0", "image_1", "image_2"]
    merged = merge_parts([part for _, part in parts])
    pd.testing.assert_frame_equal(merged, whole)
    assert merged.attrs == whole.attrs
    other = parts[1][1].copy()
    other.attrs = {**other.attrs, "crop_size": 48}
    with pytest.raises(ValueError, match="differ in crop_size"):
        merge_parts([parts[0][1], other])


def test_merge_parts__refuses_one_image_twice_and_non_finite_values(pairs, narrow_encoder):
    """A part copied under another image's name (one image twice), a part edited to hold NaN
    or Inf: refused naming the image, never a table."""
    images, labels = zip(*pairs, strict=True)
    parts = [part for _, part in iter_embed_images(images, labels, encoder=narrow_encoder, **KW)]
    with pytest.raises(ValueError, match=r"parts 1 and 2 both hold rows of image 'image_1'"):
        merge_parts([parts[0], parts[1], parts[1]])
    for bad in (np.nan, np.inf):
        edited = parts[2].copy()
        edited.loc[0, "emb_3"] = bad
        with pytest.raises(ValueError, match=r"image 'image_2' holds NaN or Inf"):
            merge_parts([parts[0], parts[1], edited])


# ----------------------------------------------------------------------------- worker processes
def _children() -> set[int]:
    import multiprocessing

    return {p.pid for p in multiprocessing.active_children()}


@pytest.mark.parametrize("normalize", ["image", "segment"])
def test_embed_images__workers_give_bit_identical_rows_in_order(pairs, narrow_encoder, normalize):
    images = [make_cells(shape=(160, 160), n_cells=14, seed=7)[0]]
    labels = [make_cells(shape=(160, 160), n_cells=14, seed=7)[1]]
    image, label_image = pairs[0]  # a (T, Y, X) time-lapse: all images share the axes "tyx"
    images.append(np.stack([image, image[::-1], image]))
    labels.append(np.stack([label_image, label_image[::-1], np.zeros_like(label_image)]))
    images += [pairs[1][0], pairs[2][0]]
    labels += [pairs[1][1], pairs[2][1]]
    images, labels = (
        [im if im.ndim == 3 else im[None] for im in images],
        [lab if lab.ndim == 3 else lab[None] for lab in labels],
    )
    kw = {**KW, "normalize": normalize, "batch_size": 3, "axes": "tyx"}  # several batches each
    before = _children()
    done = []
    none = sr.embed_images(images, labels, encoder=narrow_encoder, **kw)
    two = sr.embed_images(
        images,
        labels,
        encoder=narrow_encoder,
        num_workers=2,
        progress=lambda d, t: done.append(d),
        **kw,
    )
    pd.testing.assert_frame_equal(two, none, check_exact=True)
    assert two.attrs == none.attrs
    assert list(dict.fromkeys(two["image"])) == [f"image_{i}" for i in range(4)]
    assert done == [1, 2, 3, 4]  # in order, although image 0 (the largest) finishes last
    parts = dict(iter_embed_images(images, labels, encoder=narrow_encoder, num_workers=2, **kw))
    for i in (0, 2, 3):  # one-frame time-lapses: the 2D image's rows, frame 0
        alone = sr.embed_segments(
            images[i][0],
            labels[i][0],
            narrow_encoder,
            **KW,
            **{"normalize": normalize, "batch_size": 3},
        )
        alone.insert(1, "frame", np.int64(0))
        pd.testing.assert_frame_equal(
            parts[f"image_{i}"].drop(columns="image"), alone, check_exact=True
        )
    stack = sr.embed_stack(images[1], labels[1], narrow_encoder, **kw)
    pd.testing.assert_frame_equal(parts["image_1"].drop(columns="image"), stack, check_exact=True)
    assert sorted(set(stack["frame"])) == [0, 1]
    assert _children() == before


def test_embed_images__errors_in_workers_name_the_image(pairs, narrow_encoder, tmp_path):
    images, labels = zip(*pairs, strict=True)
    before = _children()
    with pytest.raises(ValueError, match="image 'image_1': .*shape"):
        sr.embed_images(
            images, [labels[0], labels[0], labels[2]], encoder=narrow_encoder, num_workers=2, **KW
        )
    broken = tmp_path / "broken.tif"
    broken.write_bytes(b"not a tiff at all")
    done = []
    with pytest.raises(ValueError, match="image 'broken': cannot read .*broken.tif") as info:
        sr.embed_images(
            [images[0], broken, images[2]],
            labels,
            encoder=narrow_encoder,
            num_workers=2,
            progress=lambda d, t: done.append(d),
            **KW,
        )
    assert "Traceback" not in str(info.value)  # the message, not the worker's traceback
    assert done == [1]  # the images before it were done, in turn
    with pytest.raises(ValueError) as in_process:
        sr.embed_images([images[0], broken, images[2]], labels, encoder=narrow_encoder, **KW)
    assert str(in_process.value) == str(info.value)  # the same error either way
    assert _children() == before


def test_embed_images__cancel_shuts_the_workers_down(pairs, narrow_encoder):
    images, labels = zip(*pairs, strict=True)
    before = _children()
    done = []
    with pytest.raises(Cancelled):
        sr.embed_images(
            images * 3,
            labels * 3,
            encoder=narrow_encoder,
            num_workers=2,
            progress=lambda d, t: done.append(d),
            should_stop=lambda: len(done) >= 1,
            **KW,
        )
    assert done == [1]
    assert _children() == before
    parts = iter_embed_images(images * 3, labels * 3, encoder=narrow_encoder, num_workers=2, **KW)
    assert next(parts)[0] == "image_0"
    assert _children() - before  # the workers are running
    parts.close()  # a caller that stops reading
    assert _children() == before


@pytest.mark.parametrize("num_workers", [0, 2])
def test_embed_images__label_warnings_reach_the_caller_once_per_image(narrow_encoder, num_workers):
    image = np.random.default_rng(0).random((64, 64))
    dots = np.zeros((64, 64), np.int32)
    dots.flat[::97] = np.arange(1, dots.flat[::97].size + 1)  # one-pixel "segments"
    with pytest.warns(UserWarning) as record:
        df = sr.embed_images(
            [image, image, image],
            [dots, np.zeros_like(dots), dots],
            names=["a", "b", "c"],
            encoder=narrow_encoder,
            num_workers=num_workers,
            **KW,
        )
    messages = [str(w.message) for w in record]
    assert sum(m.startswith("image 'a': ") and "1 or 2 pixels" in m for m in messages) == 1
    assert sum(m.startswith("image 'c': ") and "1 or 2 pixels" in m for m in messages) == 1
    assert sum(m.startswith("image 'b': labels contain no segment") for m in messages) == 1
    assert len(messages) == 3
    assert list(dict.fromkeys(df["image"])) == ["a", "c"]


def test_embed_images__options_are_checked(pairs, narrow_encoder):
    images, labels = zip(*pairs, strict=True)
    with pytest.raises(ValueError, match="num_workers must be an integer >= 0"):
        sr.embed_images(images, labels, encoder=narrow_encoder, num_workers=-1)
    with pytest.raises(TypeError, match="unexpected option.*crop"):
        sr.embed_images(images, labels, encoder=narrow_encoder, crop=32)


def test_iter_embed_images__the_encoder_keeps_its_mode_between_images(pairs, narrow_encoder):
    images, labels = zip(*pairs, strict=True)
    narrow_encoder.train()
    try:
        for _ in iter_embed_images(images, labels, encoder=narrow_encoder, **KW):
            assert narrow_encoder.training  # the caller's code runs with the caller's mode
            assert not torch.is_inference_mode_enabled()
        assert narrow_encoder.training
    finally:
        narrow_encoder.eval()


def test_embed_images__volumes_each_with_its_spacing_are_what_each_gives_alone(
    narrow_encoder_3d,
):
    """Two z-stacks of other voxel sizes in one table: each one's rows are what
    ``embed_segments`` gives for it alone with its own spacing (one per image); 3D labels
    whose axes nobody said, a list of the wrong length and 2D with 3D objects are refused
    before any work, naming the images."""
    from .test_volumes import blobs_volume

    (image_a, labels_a), (image_b, labels_b) = blobs_volume(seed=1), blobs_volume(seed=2)
    spacing = [(2.0, 1.0, 1.0), (1.0, 1.0, 1.0)]
    kw = {"crop_size": 16, "normalize": (0.0, 1.0), "device": "cpu"}
    df = sr.embed_images(
        [image_a, image_b],
        [labels_a, labels_b],
        names=["a", "b"],
        encoder=narrow_encoder_3d,
        axes="zyx",
        spacing=spacing,
        **kw,
    )
    pairs = zip("ab", (image_a, image_b), (labels_a, labels_b), spacing, strict=True)
    for name, image, labels, sp in pairs:
        alone = sr.embed_segments(image, labels, narrow_encoder_3d, axes="zyx", spacing=sp, **kw)
        rows = df[df["image"] == name].drop(columns="image").reset_index(drop=True)
        pd.testing.assert_frame_equal(rows, alone, check_exact=False, rtol=1e-5, atol=1e-6)
        assert df.attrs["layout"][name]["spacing"] == list(sp)
    with pytest.raises(ValueError, match=r"'a' \(12, 40, 40\), 'b' \(12, 40, 40\) are 3D"):
        sr.embed_images([image_a, image_b], [labels_a, labels_b], names=["a", "b"], **kw)
    with pytest.raises(ValueError, match="spacing holds 1 values for 2 images"):
        sr.embed_images(
            [image_a, image_b], [labels_a, labels_b], axes="zyx", spacing=[(2, 1, 1)], **kw
        )
    flat = image_a[0], labels_a[6]
    with pytest.raises(ValueError, match="one encoder embeds one kind"):
        sr.embed_images(
            [image_a, flat[0]], [labels_a, flat[1]], names=["a", "f"], axes=["zyx", None], **kw
        )
