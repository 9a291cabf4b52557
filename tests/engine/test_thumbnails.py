"""segment_thumbnails / ThumbnailSource: the right segment, centred, outlined, masked as the
encoder sees it; order, stacks, lazily read files, bounding boxes from a table."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import napari_segrep as sr
from napari_segrep._sample_data import make_cells
from napari_segrep.engine.thumbnails import ThumbnailSource

from ..conftest import disc_labels

BACKGROUND = 0.1
MAGENTA = (255, 0, 255)


def level(label: int) -> float:
    return 0.2 + 0.15 * label


def grey(value: float) -> int:
    return int(value * 255 + 0.5)


@pytest.fixture()
def scene():
    """Discs of constant brightness (label k: level(k)) on a 0.1 background: 1 and 2 touch,
    3 is large, 4 tiny, 5 runs off the right edge."""
    labels = disc_labels(
        (96, 96), [(20, 20, 6), (20, 31, 5), (60, 55, 12), (75, 20, 3), (50, 88, 7)]
    )
    image = np.where(labels > 0, level(labels), BACKGROUND).astype(np.float32)
    return image, labels


def thumbs(scene, ids, **kwargs):
    image, labels = scene
    kwargs.setdefault("normalize", None)
    return sr.segment_thumbnails(image, labels, ids, **kwargs)


def test_segment_thumbnails__centre_pixel_is_the_segments_own_in_the_order_given(scene):
    ids = [4, 1, 5, 3, 2, 1]
    out = thumbs(scene, ids, size=32, outline=False)
    assert out.shape == (6, 32, 32, 3) and out.dtype == np.uint8
    for t, label in zip(out, ids, strict=True):
        centre = t[15:17, 15:17].reshape(-1, 3)
        assert np.abs(centre.astype(int) - grey(level(label))).max() <= 1, label
        assert (t[..., 0] == t[..., 1]).all() and (t[..., 1] == t[..., 2]).all()  # grey


def test_segment_thumbnails__masked_view_is_the_segment_alone_zero_outside(scene):
    ids = [1, 2, 3, 4, 5]
    masked = thumbs(scene, ids, size=40, outline=False, masked=True)
    plain = thumbs(scene, ids, size=40, outline=False)
    for m, p, label in zip(masked, plain, ids, strict=True):
        inside = m[..., 0] > 0
        assert 0 < inside.sum() < inside.size
        assert np.abs(m[inside].astype(int) - grey(level(label))).max() <= 1
        assert (m[~inside] == 0).all()
        assert (p[~inside] != m[~inside]).any()  # the unmasked view shows context
    # the touching neighbour: in 1's context, masked away
    assert (np.abs(plain[0].astype(int) - grey(level(2))) <= 1).all(axis=-1).any()
    assert not (np.abs(masked[0].astype(int) - grey(level(2))) <= 1).all(axis=-1).any()


def test_segment_thumbnails__outline_is_the_edge_of_the_segments_own_pixels(scene):
    ids = [1, 2, 3, 4, 5]
    outlined = thumbs(scene, ids, size=40, outline_color=MAGENTA)
    masked = thumbs(scene, ids, size=40, outline=False, masked=True)
    for o, m in zip(outlined, masked, strict=True):
        inside = m[..., 0] > 0
        edge = (o == MAGENTA).all(axis=-1)
        padded = np.pad(inside, 1)
        core = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
        np.testing.assert_array_equal(edge, inside & ~core)
        assert edge.sum() >= 8


def test_segment_thumbnails__window_has_context_and_zeros_beyond_the_image(scene):
    out = thumbs(scene, [3, 5], size=16, outline=False, masked=True)
    big = out[0, ..., 0] > 0
    assert not big[0].any() and not big[-1].any() and not big[:, 0].any()  # margin all round
    edge = thumbs(scene, [5], size=32, outline=False)[0, ..., 0]
    assert (edge[:, -3:] == 0).all()  # beyond the image's right edge: padding
    assert (np.abs(edge[:3, :3].astype(int) - grey(BACKGROUND)) <= 1).all()  # inside: image


def test_segment_thumbnails__missing_ids_are_named(scene):
    with pytest.raises(ValueError, match=r"label 99, 7 not in the labels"):
        thumbs(scene, [1, 99, 7, 99])
    empty = thumbs(scene, [], size=24)
    assert empty.shape == (0, 24, 24, 3) and empty.dtype == np.uint8


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"size": 2}, "size=2 is out of range"),
        ({"size": 8.0}, "size must be an integer"),
        ({"frame": 0}, "the labels are 2D"),
        ({"context": -1}, "context must be"),
    ],
)
def test_segment_thumbnails__bad_options_are_refused(scene, kwargs, message):
    with pytest.raises(ValueError, match=message):
        thumbs(scene, [1], **kwargs)


def test_segment_thumbnails__stack_frame_per_id(scene):
    image, labels = scene
    stack_image = np.stack([image, np.where(labels > 0, 0.9, BACKGROUND).astype(np.float32)])
    stack_labels = np.stack([labels, labels])
    out = sr.segment_thumbnails(
        stack_image,
        stack_labels,
        [1, 1, 2],
        axes="tyx",
        frame=[0, 1, 1],
        normalize=None,
        outline=False,
    )
    centres = out[:, 32, 32, 0].astype(int)
    np.testing.assert_allclose(centres, [grey(level(1)), grey(0.9), grey(0.9)], atol=1)
    one_frame = sr.segment_thumbnails(
        stack_image, stack_labels, [2, 3], axes="tyx", frame=0, normalize=None
    )
    np.testing.assert_array_equal(one_frame, thumbs(scene, [2, 3]))
    with pytest.raises(ValueError, match="pass frame="):
        sr.segment_thumbnails(stack_image, stack_labels, [1], axes="tyx")
    with pytest.raises(ValueError, match="frame 2 is not in the stack"):
        sr.segment_thumbnails(stack_image, stack_labels, [1], axes="tyx", frame=2)
    with pytest.raises(ValueError, match="label 3 not in the labels of frame 1"):
        without_3 = np.stack([labels, labels * (labels != 3)])
        sr.segment_thumbnails(stack_image, without_3, [3, 1], axes="tyx", frame=[1, 0])


def test_segment_thumbnails__files_are_read_when_called(scene, tmp_path):
    import tifffile

    image, labels = scene
    image_path, labels_path = tmp_path / "cells.tif", tmp_path / "cells_labels.tif"
    source = ThumbnailSource(image_path, labels_path, normalize=None)  # not there yet: fine
    tifffile.imwrite(image_path, image)
    tifffile.imwrite(labels_path, labels)
    np.testing.assert_array_equal(source.thumbnails([2, 1]), thumbs(scene, [2, 1]))
    from_paths = sr.segment_thumbnails(str(image_path), labels_path, [5], normalize=None)
    np.testing.assert_array_equal(from_paths, thumbs(scene, [5]))
    with pytest.raises(FileNotFoundError):
        ThumbnailSource(tmp_path / "gone.tif", labels_path).thumbnails([1])


def test_segment_thumbnails__table_bounding_boxes_give_the_same_and_stale_ones_are_found():
    from skimage.measure import regionprops_table

    image, labels, _ = make_cells((160, 160), n_cells=20, seed=3)
    props = regionprops_table(labels, properties=("label", "bbox"))
    table = pd.DataFrame(props).rename(
        columns={"bbox-0": "bbox_y0", "bbox-1": "bbox_x0", "bbox-2": "bbox_y1", "bbox-3": "bbox_x1"}
    )
    ids = table["label"].to_numpy()[::-1][:12]
    direct = sr.segment_thumbnails(image, labels, ids)
    np.testing.assert_array_equal(sr.segment_thumbnails(image, labels, ids, table=table), direct)
    stale = table.copy()
    stale.loc[stale["label"] == ids[0], ["bbox_y0", "bbox_x0", "bbox_y1", "bbox_x1"]] = [0, 0, 1, 1]
    stale = stale[stale["label"] != ids[1]]  # and one row missing
    np.testing.assert_array_equal(sr.segment_thumbnails(image, labels, ids, table=stale), direct)
    with pytest.raises(ValueError, match="lacks the columns"):
        ThumbnailSource(image, labels, table=table[["label"]])


def test_thumbnail_source__pages_match_one_call_and_huge_ids_work(scene):
    image, labels = scene
    source = ThumbnailSource(image, labels, normalize=None)
    pages = np.concatenate([source.thumbnails([3, 1]), source.thumbnails([2, 5, 4])])
    np.testing.assert_array_equal(pages, thumbs(scene, [3, 1, 2, 5, 4]))
    huge = np.where(labels > 0, labels.astype(np.int64) + 2**40, 0)
    out = sr.segment_thumbnails(image, huge, [2**40 + 3, 2**40 + 1], normalize=None)
    np.testing.assert_array_equal(out, thumbs(scene, [3, 1]))


def test_segment_thumbnails__channels_grey_magenta_green_rgb(scene):
    image, labels = scene
    two = np.stack([image, np.zeros_like(image)])
    out = sr.segment_thumbnails(two, labels, [1], channel_axis=0, normalize=None, outline=False)
    centre = out[0, 32, 32]
    assert centre[0] == centre[2] == pytest.approx(grey(level(1)), abs=1) and centre[1] == 0
    rgb = np.zeros((96, 96, 3), np.uint8)
    rgb[..., 1] = np.where(labels > 0, 200, 10)
    out = sr.segment_thumbnails(rgb, labels, [3], normalize=None, outline=False)
    np.testing.assert_array_equal(out[0, 32, 32], [0, 200, 0])
    cells, cell_labels, _ = make_cells((128, 128), n_cells=8)
    out = sr.segment_thumbnails(cells, cell_labels, [1, 2], normalize="segment")
    assert out.shape == (2, 64, 64, 3) and out.max() == 255
