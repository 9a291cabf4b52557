"""Contact sheets of thumbnails: exact layout, captions clipped to their cells, colour frames,
PNG files written atomically."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFont

from napari_segrep.analysis.montage import (
    FRAME,
    _text_box,
    caption_boxes,
    montage,
    montage_layout,
    write_montage,
)

WHITE = (255, 255, 255)


def _thumbnails(n, size=20, seed=0):
    """``n`` random RGB thumbnails that differ from each other and contain no pure white."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 250, (n, size, size, 3), dtype=np.uint8)


def _expected(thumbs, origins, shape, *, colours=None, background=WHITE):
    """The montage without text: background, frames, thumbnails at ``origins``."""
    out = np.empty((*shape, 3), np.uint8)
    out[...] = background
    size = thumbs.shape[1]
    for i, (y, x) in enumerate(origins):
        if colours is not None and colours[i] is not None:
            rgb = np.rint(np.asarray(colours[i][:3]) * 255).astype(np.uint8)
            out[y - FRAME : y + size + FRAME, x - FRAME : x + size + FRAME] = rgb
        out[y : y + size, x : x + size] = thumbs[i]
    return out


def _outside(boxes, shape):
    """Mask of the pixels outside all ``boxes`` (y0, x0, y1, x1)."""
    mask = np.ones(shape, bool)
    for y0, x0, y1, x1 in boxes:
        mask[y0:y1, x0:x1] = False
    return mask


@pytest.mark.parametrize(
    ("n", "columns"), [(1, None), (1, 3), (2, None), (5, None), (5, 2), (7, 3), (12, 4), (3, 1)]
)
def test_montage__thumbnails_are_pasted_unscaled_at_their_origins(n, columns):
    thumbs = _thumbnails(n, size=17, seed=n)
    m = montage(thumbs, columns=columns)
    height, width, origins = montage_layout(n, 17, columns=columns, captions=False)
    assert m.shape == (height, width, 3) and m.dtype == np.uint8
    np.testing.assert_array_equal(m, _expected(thumbs, origins, (height, width)))
    used = min(columns or int(np.ceil(np.sqrt(n))), n)
    for i, (y, x) in enumerate(origins):
        np.testing.assert_array_equal(m[y : y + 17, x : x + 17], thumbs[i])
        row, col = divmod(i, used)
        assert y == origins[row * used, 0] and x == origins[col, 1]  # row i // c, column i % c
        assert row == 0 or y > origins[i - used, 0]


def test_montage__with_captions_thumbnails_and_background_are_exact_outside_caption_boxes():
    thumbs = _thumbnails(7, size=32)
    captions = [f"img_{i}.tif  label {i}\nnucleus (0.9{i})" for i in range(7)]
    m = montage(thumbs, captions, columns=3)
    height, width, origins = montage_layout(7, 32, columns=3)
    boxes = caption_boxes(origins, 32)
    assert m.shape == (height, width, 3)
    outside = _outside(boxes, (height, width))
    expected = _expected(thumbs, origins, (height, width))
    np.testing.assert_array_equal(m[outside], expected[outside])
    assert (boxes[:, 2] <= height).all() and (boxes[:, 3] <= width).all()


def test_montage__grey_thumbnails_become_rgb():
    grey = _thumbnails(3, size=10)[..., 0]
    m = montage(grey)
    _, _, origins = montage_layout(3, 10, captions=False)
    for i, (y, x) in enumerate(origins):
        for c in range(3):
            np.testing.assert_array_equal(m[y : y + 10, x : x + 10, c], grey[i])
    np.testing.assert_array_equal(montage(grey[..., None]), m)


def test_montage__captions_draw_only_where_there_is_text():
    thumbs = _thumbnails(4, size=48)
    captions = ["a.tif  label 12\nnucleus (0.93)", "", None, "x"]
    m = montage(thumbs, captions, columns=2)
    _, _, origins = montage_layout(4, 48, columns=2)
    boxes = caption_boxes(origins, 48)
    inked = [bool((m[y0:y1, x0:x1] != 255).any()) for y0, x0, y1, x1 in boxes]
    assert inked == [True, False, False, True]
    # two lines: ink in the top and the bottom half of the box
    y0, x0, y1, x1 = boxes[0]
    middle = (y0 + y1) // 2
    assert (m[y0:middle, x0:x1] != 255).any() and (m[middle:y1, x0:x1] != 255).any()


def test_montage__a_long_caption_stays_inside_its_own_cell():
    thumbs = _thumbnails(6, size=24)
    long = "W" * 200 + "\n" + "M" * 200 + "\nthird line\nfourth"
    captions = ["", long, "", long, "", ""]
    m = montage(thumbs, captions, columns=3, padding=1)
    height, width, origins = montage_layout(6, 24, columns=3, padding=1)
    boxes = caption_boxes(origins, 24)
    for i in (1, 3):
        y0, x0, y1, x1 = boxes[i]
        assert (m[y0:y1, x0:x1] != 255).any()
    # everything outside the two long captions' boxes is as if there were no text at all
    outside = _outside(boxes[[1, 3]], (height, width))
    expected = _expected(thumbs, origins, (height, width))
    np.testing.assert_array_equal(m[outside], expected[outside])


def test_montage__title_sits_above_the_grid():
    thumbs = _thumbnails(5, size=30)
    plain = montage(thumbs)
    titled = montage(thumbs, title="Cluster 3: 5 segments\n(second line joined)")
    height, width, origins = montage_layout(5, 30, captions=False, title=True)
    _, _, plain_origins = montage_layout(5, 30, captions=False)
    assert titled.shape == (height, width, 3)
    dy = int(origins[0, 0] - plain_origins[0, 0])
    assert dy > 0 and (origins - plain_origins == [dy, 0]).all()
    np.testing.assert_array_equal(titled[dy:], plain)
    assert (titled[:dy] != 255).any()
    assert (titled[:dy, :4] == 255).all() and (titled[:dy, -4:] == 255).all()  # padding kept


def test_montage__colours_frame_exactly_the_thumbnails_given_one():
    thumbs = _thumbnails(5, size=16)
    colours = [(1.0, 0.0, 0.0), None, (0.0, 0.5, 1.0, 1.0), None, np.array([0.2, 0.8, 0.2])]
    m = montage(thumbs, colours=colours)
    height, width, origins = montage_layout(5, 16, captions=False)
    np.testing.assert_array_equal(m, _expected(thumbs, origins, (height, width), colours=colours))
    for i, (y, x) in enumerate(origins):
        ring = m[y - FRAME : y + 16 + FRAME, x - FRAME : x + 16 + FRAME].copy()
        inner = np.zeros(ring.shape[:2], bool)
        inner[FRAME:-FRAME, FRAME:-FRAME] = True
        want = WHITE if colours[i] is None else np.rint(np.asarray(colours[i][:3]) * 255)
        assert (ring[~inner] == want).all(), i
        np.testing.assert_array_equal(ring[inner].reshape(16, 16, 3), thumbs[i])


def test_montage__rgba_colours_are_blended_over_the_background():
    m = montage(_thumbnails(1, size=8), colours=[(0.0, 0.0, 0.0, 0.5)], background=(200, 100, 0))
    _, _, origins = montage_layout(1, 8, captions=False)
    y, x = origins[0]
    np.testing.assert_array_equal(m[y - 1, x], [100, 50, 0])


def test_montage__background_colour_and_light_text_on_dark():
    thumbs = _thumbnails(2, size=40)
    m = montage(thumbs, ["label 1", "label 2"], background=(0, 0, 0))
    height, width, origins = montage_layout(2, 40)
    boxes = caption_boxes(origins, 40)
    outside = _outside(boxes, (height, width))
    expected = _expected(thumbs, origins, (height, width), background=(0, 0, 0))
    np.testing.assert_array_equal(m[outside], expected[outside])
    y0, x0, y1, x1 = boxes[0]
    assert m[y0:y1, x0:x1].max() > 128  # visible text


def test_montage__bitmap_font_fallback_draws_non_latin_text():
    box = _text_box(
        ["µm² 细胞 \u2192 ok", "line 2"],
        ImageFont.load_default_imagefont(),
        (30, 40),
        background=WHITE,
        line_height=13,
        max_lines=2,
    )
    assert box.shape == (30, 40, 3) and box.dtype == np.uint8 and (box != 255).any()


def test_montage__default_columns_are_a_square_capped_at_16():
    assert montage_layout(10, 8, captions=False)[2][:, 1].tolist().count(6) == 3  # 4 columns
    _, _, origins = montage_layout(1000, 8, captions=False)
    assert len(np.unique(origins[:, 1])) == 16
    _, width, origins = montage_layout(3, 8, columns=10, captions=False)
    assert len(np.unique(origins[:, 1])) == 3 and width == 4 + 3 * (8 + 2 * FRAME + 4)


@pytest.mark.parametrize(
    ("thumbnails", "kwargs", "message"),
    [
        (np.zeros((0, 8, 8, 3), np.uint8), {}, "nothing to put in a montage"),
        (np.zeros((2, 8, 8, 3), np.float32), {}, r"uint8.*float32.*astype\(np.uint8\)"),
        (np.zeros((2, 8, 8, 4), np.uint8), {}, r"\(N, S, S, 3\).*thumbnails\[\.\.\., :3\]"),
        (np.zeros((8, 8), np.uint8), {}, r"\(N, S, S, 3\).*\(8, 8\)"),
        (np.zeros((2, 8, 9, 3), np.uint8), {}, "square"),
        (np.zeros((2, 8, 8, 3), np.uint8), {"captions": ["a"]}, "1 captions for 2 thumbnails"),
        (np.zeros((2, 8, 8, 3), np.uint8), {"captions": "ab"}, "list of strings"),
        (np.zeros((2, 8, 8, 3), np.uint8), {"colours": [None]}, "1 colours for 2 thumbnails"),
        (np.zeros((2, 8, 8, 3), np.uint8), {"colours": [None, (1, 0)]}, "colour 1 must be RGB"),
        (np.zeros((2, 8, 8, 3), np.uint8), {"colours": [(0, 0, 255), None]}, "0..1"),
        (np.zeros((2, 8, 8, 3), np.uint8), {"colours": [(np.nan, 0, 0), None]}, "0..1"),
        (np.zeros((2, 8, 8, 3), np.uint8), {"colours": np.zeros((2, 2, 3))}, r"\(N, 3\)"),
        (np.zeros((2, 8, 8, 3), np.uint8), {"columns": 0}, "columns must be at least 1"),
        (np.zeros((2, 8, 8, 3), np.uint8), {"columns": 1.5}, "columns must be a whole number"),
        (np.zeros((2, 8, 8, 3), np.uint8), {"padding": -1}, "padding must be at least 0"),
        (np.zeros((2, 8, 8, 3), np.uint8), {"background": (1.0, 1.0, 1.0)}, "background"),
        (
            np.broadcast_to(np.uint8(0), (1, 10_000, 10_000, 3)),  # no memory
            {},
            "fewer or smaller thumbnails",
        ),
    ],
)
def test_montage__bad_inputs_are_value_errors_naming_the_problem(thumbnails, kwargs, message):
    with pytest.raises(ValueError, match=message):
        montage(thumbnails, **kwargs)


def _read_png(path):
    with Image.open(path) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB"))


def test_montage__write_montage_round_trips(tmp_path):
    thumbs = _thumbnails(5, size=24)
    captions = [f"s{i}\nclass {i % 2}" for i in range(5)]
    colours = [(1, 0, 0), None, None, (0, 0, 1), None]
    out = write_montage(
        tmp_path / "sheet.PNG", thumbs, captions, columns=2, colours=colours, title="t"
    )
    assert out == tmp_path / "sheet.PNG"
    expected = montage(thumbs, captions, columns=2, colours=colours, title="t")
    np.testing.assert_array_equal(_read_png(out), expected)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sheet.PNG"]  # no temporaries
    with Image.open(out) as image:
        assert image.text["Software"].startswith("napari-segrep ")


def test_montage__write_montage_refuses_other_suffixes_and_directories(tmp_path):
    thumbs = _thumbnails(2)
    for name in ("sheet.jpg", "sheet", "sheet.png.tif"):
        with pytest.raises(ValueError, match=r"PNG: name the file '.*\.png'"):
            write_montage(tmp_path / name, thumbs)
    folder = tmp_path / "folder.png"
    folder.mkdir()
    with pytest.raises(ValueError, match="is a directory"):
        write_montage(folder, thumbs, overwrite=True)
    with pytest.raises(ValueError, match="does not exist"):
        write_montage(tmp_path / "missing" / "sheet.png", thumbs)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder.png"]


def test_montage__write_montage_replaces_only_with_overwrite(tmp_path):
    path = tmp_path / "sheet.png"
    path.write_bytes(b"not yours to lose")
    with pytest.raises(FileExistsError, match=r"sheet\.png exists.*overwrite=True"):
        write_montage(path, _thumbnails(3))
    assert path.read_bytes() == b"not yours to lose"
    write_montage(path, _thumbnails(3), overwrite=True)
    np.testing.assert_array_equal(_read_png(path), montage(_thumbnails(3)))
    assert [p.name for p in tmp_path.iterdir()] == ["sheet.png"]


def test_montage__write_montage_bad_input_leaves_the_file_alone(tmp_path):
    path = tmp_path / "sheet.png"
    write_montage(path, _thumbnails(2))
    before = path.read_bytes()
    with pytest.raises(ValueError, match="uint8"):
        write_montage(path, _thumbnails(2).astype(float), overwrite=True)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["sheet.png"]
    assert Image.open(io.BytesIO(before)).size[::-1] == montage(_thumbnails(2)).shape[:2]


def test_montage__write_montage_into_a_read_only_folder_leaves_no_temporaries(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    (folder / "sheet.png").write_bytes(b"old")
    folder.chmod(0o500)
    try:
        if os.access(folder, os.W_OK):
            pytest.skip("this user can write into a 0o500 folder (root)")
        with pytest.raises((ValueError, OSError), match="not writable|Permission"):
            write_montage(folder / "sheet.png", _thumbnails(2), overwrite=True)
        assert [p.name for p in folder.iterdir()] == ["sheet.png"]
        assert (folder / "sheet.png").read_bytes() == b"old"
    finally:
        folder.chmod(0o700)


@settings(max_examples=200, deadline=None)
@given(
    n=st.integers(1, 60),
    size=st.integers(1, 70),
    columns=st.one_of(st.none(), st.integers(1, 20)),
    captions=st.booleans(),
    title=st.booleans(),
    padding=st.integers(0, 9),
)
def test_montage__layout_cells_never_overlap_and_fit(n, size, columns, captions, title, padding):
    height, width, origins = montage_layout(
        n, size, columns=columns, captions=captions, title=title, padding=padding
    )
    assert origins.shape == (n, 2) and origins.dtype == np.int64
    # a cell: the frame around the thumbnail and, below it, the caption box
    top, left = origins[:, 0] - FRAME, origins[:, 1] - FRAME
    right = origins[:, 1] + size + FRAME
    bottom = caption_boxes(origins, size)[:, 2] if captions else origins[:, 0] + size + FRAME
    if captions:
        np.testing.assert_array_equal(caption_boxes(origins, size)[:, 1], left)
        np.testing.assert_array_equal(caption_boxes(origins, size)[:, 3], right)
    assert (top >= padding).all() and (left >= padding).all()
    assert (bottom <= height - padding).all() and (right <= width - padding).all()
    apart = (
        (bottom[:, None] + padding <= top[None, :])
        | (bottom[None, :] + padding <= top[:, None])
        | (right[:, None] + padding <= left[None, :])
        | (right[None, :] + padding <= left[:, None])
    )
    np.fill_diagonal(apart, True)
    assert apart.all()
    used = min(columns or int(np.ceil(np.sqrt(n))), 16 if columns is None else n, n)
    index = np.arange(n)
    rows_of = np.unique(origins[:, 0], return_inverse=True)[1].ravel()
    cols_of = np.unique(origins[:, 1], return_inverse=True)[1].ravel()
    np.testing.assert_array_equal(rows_of, index // used)
    np.testing.assert_array_equal(cols_of, index % used)
