"""Label colours by lookup table: the same colours napari's DirectLabelColormap gives, as an
RGBA image (for highlights of 100,000 segments)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_segrep._widgets._label_colours import (
    index_colormap,
    indexed_colours,
    label_lut,
    paint_labels,
)

from ..conftest import disc_labels, require_napari

DIMMED = np.array([0.6, 0.6, 0.6, 0.15])


def test_label_lut__selected_in_their_colours_others_dimmed_background_clear():
    labels = np.array([3, 1, 7])
    colours = np.array([[1.0, 0, 0, 1], [0, 1.0, 0, 1], [0, 0, 1.0, 0.5]])
    lut = label_lut(labels, colours, selected={7, 3}, dimmed=DIMMED)
    assert lut.shape == (9, 4) and lut.dtype == np.uint8
    assert lut[3].tolist() == [255, 0, 0, 255] and lut[7].tolist() == [0, 0, 255, 128]
    assert lut[1].tolist() == [153, 153, 153, 38]  # not selected: dimmed
    assert lut[0].tolist() == [0, 0, 0, 0] and lut[2].tolist() == [0, 0, 0, 0]  # not a segment
    everything = label_lut(labels, colours)  # no selection: every label in its colour
    assert everything[1].tolist() == [0, 255, 0, 255]
    one_colour = label_lut(labels, (0.0, 0.0, 1.0), selected=[1])
    assert one_colour[1].tolist() == [0, 0, 255, 255] and one_colour[3, 3] == 38


def test_paint_labels__each_pixel_its_labels_colour_and_unknown_values_the_default():
    lut = label_lut(np.array([1, 2]), np.array([[1.0, 0, 0], [0, 1.0, 0]]), default=(0, 0, 1, 1))
    image = np.array([[0, 1, 2], [2, 9, 1]], np.uint32)  # 9: beyond the table
    rgba = paint_labels(image, lut)
    assert rgba.shape == (2, 3, 4) and rgba.dtype == np.uint8
    np.testing.assert_array_equal(rgba, lut[np.minimum(image, len(lut) - 1)])
    assert rgba[1, 1].tolist() == [0, 0, 255, 255]
    signed = paint_labels(np.array([[-4, 2]], np.int32), lut)  # negative: the default too
    assert signed[0, 0].tolist() == [0, 0, 255, 255]
    out = np.zeros((2, 3, 4), np.uint8)
    assert paint_labels(image, lut, out=out) is out
    np.testing.assert_array_equal(out, rgba)


def test_indexed_colours__same_colours_as_the_rgba_table_through_a_small_palette():
    rng = np.random.default_rng(0)
    labels = rng.choice(np.arange(1, 5000), 1000, replace=False)
    colours = np.array([[0.9, 0.1, 0.1, 1.0], [0.1, 0.8, 0.2, 1.0], [0.2, 0.3, 0.9, 0.5]])
    colours = colours[rng.integers(0, 3, len(labels))]
    selected = labels[:400]
    index, palette = indexed_colours(labels, colours, selected=selected, dimmed=DIMMED)
    assert index.dtype == np.uint8 and len(palette) == 5  # clear, dimmed, 3 colours
    assert index[0] == 0 and (palette[0] == 0).all()
    rgba = label_lut(labels, colours, selected=selected, dimmed=DIMMED)
    np.testing.assert_array_equal(np.round(palette[index] * 255).astype(np.uint8), rgba)
    many = rng.uniform(0.1, 1, (len(labels), 4))  # 1,000 colours: uint16 indices
    index16, palette16 = indexed_colours(labels, many)
    assert index16.dtype == np.uint16 and len(palette16) == len(labels) + 1
    np.testing.assert_array_equal(
        np.round(palette16[index16] * 255).astype(np.uint8), label_lut(labels, many)
    )


def test_label_lut__bad_input():
    with pytest.raises(ValueError, match="2 labels but 3 colours"):
        label_lut(np.array([1, 2]), np.ones((3, 4)))
    with pytest.raises(ValueError, match="non-negative"):
        label_lut(np.array([-1, 2]), np.ones((2, 4)))
    with pytest.raises(ValueError, match="3 or 4 channels"):
        label_lut(np.array([1]), np.ones((1, 2)))
    with pytest.raises(ValueError, match=r"\(M, 4\)"):
        paint_labels(np.zeros((2, 2), np.uint32), np.zeros((3, 3), np.uint8))


def test_paint_labels__matches_napari_direct_colormap_in_a_viewer(make_napari_viewer):
    """The overlay shows a selected segment in its colour and an unselected one dimmed: the
    colours napari's labels layer shows with the equivalent DirectLabelColormap."""
    require_napari()
    from napari.utils.colormaps import DirectLabelColormap

    labels = disc_labels((60, 60), [(15, 15, 8), (40, 40, 10), (15, 45, 6)]).astype(np.uint32)
    ids = np.array([1, 2, 3])
    colours = np.array([[0.9, 0.1, 0.1, 1.0], [0.1, 0.8, 0.2, 1.0], [0.2, 0.3, 0.9, 1.0]])
    viewer = make_napari_viewer()
    layer = viewer.add_labels(labels, name="cells")
    layer.colormap = DirectLabelColormap(
        color_dict={None: DIMMED, 0: np.zeros(4), 2: colours[1]}  # label 2 selected
    )
    overlay = viewer.add_image(
        paint_labels(labels, label_lut(ids, colours, selected=[2], dimmed=DIMMED)),
        rgb=True,
        name="highlight",
    )
    selected_px, other_px, background_px = (40, 40), (15, 15), (59, 0)
    for y, x in (selected_px, other_px, background_px):
        shown = np.asarray(overlay.get_value((y, x)), float) / 255
        expected = layer.colormap.map(np.array([labels[y, x]], np.uint32))[0]
        np.testing.assert_allclose(shown, expected, atol=1 / 255)
    assert np.allclose(
        np.asarray(overlay.get_value(selected_px), float) / 255, colours[1], atol=0.01
    )
    assert overlay.get_value(other_px)[3] < 60  # dimmed: faint


def test_indexed_overlay__a_uint8_labels_layer_shows_the_highlight(make_napari_viewer):
    """The indexed form in napari: a uint8 labels layer painted with the indices, coloured by
    ``index_colormap``, shows a selected segment in its colour and another one dimmed (the
    colour napari's layer gives the value at that pixel)."""
    require_napari()
    labels = disc_labels((60, 60), [(15, 15, 8), (40, 40, 10), (15, 45, 6)]).astype(np.uint32)
    labels[labels == 3] = 70_000  # beyond uint16: napari would re-map every pixel
    ids = np.array([1, 2, 70_000])
    colours = np.array([[0.9, 0.1, 0.1, 1.0], [0.1, 0.8, 0.2, 1.0], [0.2, 0.3, 0.9, 1.0]])
    viewer = make_napari_viewer()
    viewer.add_labels(labels, name="cells")
    index, palette = indexed_colours(ids, colours, selected=[2, 70_000], dimmed=DIMMED)
    overlay = viewer.add_labels(paint_labels(labels, index), name="highlight")
    overlay.colormap = index_colormap(palette)
    assert overlay.data.dtype == np.uint8
    for (y, x), expected in (
        ((40, 40), colours[1]),  # selected: its colour
        ((15, 45), colours[2]),  # selected (label 70,000)
        ((15, 15), DIMMED),  # not selected: dimmed
        ((59, 0), np.zeros(4)),  # background: clear
    ):
        value = overlay.get_value((y, x))
        shown = overlay.get_color(value) if value else np.zeros(4)  # None for background
        np.testing.assert_allclose(shown, expected, atol=1 / 255)
