"""embed_images: many images, one table; each image's rows are what embedding it alone gives."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import tifffile

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
    df = sr.embed_images([stack], [stack_labels], names=["movie"], encoder=narrow_encoder, **KW)
    assert list(df.columns[:3]) == ["image", "label", "frame"]  # as embed_stack, after image
    assert sorted(set(df["frame"])) == [0, 1]


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
