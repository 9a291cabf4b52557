"""Axes and spacing read from OME-TIFF and ImageJ TIFF metadata: real files written with
tifffile and read back; plain files say nothing beyond 2D; nothing is guessed."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
import tifffile
from hypothesis import given, settings
from hypothesis import strategies as st

from napari_segrep._images import as_channels_first, frame_channel_axis, layout_of
from napari_segrep._tiff_meta import LayoutHint, read_layout_hint
from napari_segrep.io import read_image

# (tifffile axes, shape, our axes, channel axis in the array as read)
LAYOUTS = [
    ("YX", (8, 9), "yx", None),
    ("ZYX", (3, 8, 9), "zyx", None),
    ("TYX", (2, 8, 9), "tyx", None),
    ("TZYX", (2, 3, 8, 9), "tzyx", None),
    ("CYX", (2, 8, 9), "yx", 0),
    ("ZCYX", (3, 2, 8, 9), "zyx", 1),
    ("TZCYX", (2, 3, 2, 8, 9), "tzyx", 2),
    ("TCYX", (2, 2, 8, 9), "tyx", 1),
]


def _ome(path, axes, shape, **sizes):
    tifffile.imwrite(path, np.zeros(shape, np.uint16), ome=True, metadata={"axes": axes, **sizes})
    return path


def _imagej(path, axes, shape, *, resolution=None, **meta):
    data = np.zeros(shape, np.uint8)
    tifffile.imwrite(
        path, data, imagej=True, resolution=resolution, metadata={"axes": axes, **meta}
    )
    return path


def test_read_layout_hint__ome_zyx_with_its_physical_sizes(tmp_path):
    path = _ome(
        tmp_path / "vol.ome.tif",
        "ZYX",
        (4, 8, 8),
        PhysicalSizeZ=2.0,
        PhysicalSizeY=0.5,
        PhysicalSizeX=0.5,
    )
    hint = read_layout_hint(path)
    assert hint == LayoutHint("zyx", (2.0, 0.5, 0.5), "OME-TIFF", None, "µm", "ZYX")
    assert hint.sentence("vol.tif") == (
        "axes zyx and spacing (2, 0.5, 0.5) µm read from OME-TIFF metadata of vol.tif"
    )
    layout = layout_of((4, 8, 8), axes=hint.axes, spacing=hint.spacing, spacing_source=hint.source)
    assert layout.describe() == {
        "axes": "zyx",
        "spacing": [2.0, 0.5, 0.5],
        "spacing_source": "OME-TIFF",
    }


def test_read_layout_hint__ome_units_that_differ_are_converted_to_micrometres(tmp_path):
    path = _ome(
        tmp_path / "a.tif",
        "ZYX",
        (4, 8, 8),
        PhysicalSizeZ=2000.0,
        PhysicalSizeZUnit="nm",
        PhysicalSizeY=0.5,
        PhysicalSizeX=0.0005,
        PhysicalSizeXUnit="mm",
    )
    hint = read_layout_hint(path)
    assert hint.spacing == pytest.approx((2.0, 0.5, 0.5)) and hint.unit == "µm"
    same = _ome(
        tmp_path / "b.tif",
        "YX",
        (8, 8),
        PhysicalSizeY=80.0,
        PhysicalSizeYUnit="nm",
        PhysicalSizeX=90.0,
        PhysicalSizeXUnit="nm",
    )
    assert read_layout_hint(same)[1:5] == ((80.0, 90.0), "OME-TIFF", None, "nm")


@pytest.mark.parametrize(
    "sizes",
    [
        {},  # no calibration
        {"PhysicalSizeY": 0.5, "PhysicalSizeX": 0.5},  # z missing
        {
            "PhysicalSizeZ": 2.0,
            "PhysicalSizeZUnit": "parsec",
            "PhysicalSizeY": 0.5,
            "PhysicalSizeX": 0.5,
        },
    ],
)
def test_read_layout_hint__ome_without_every_physical_size_has_axes_but_no_spacing(tmp_path, sizes):
    hint = read_layout_hint(_ome(tmp_path / "a.tif", "ZYX", (4, 8, 8), **sizes))
    assert (hint.axes, hint.spacing, hint.source, hint.unit) == ("zyx", None, "OME-TIFF", "")
    assert hint.sentence("a.tif") == "axes zyx read from OME-TIFF metadata of a.tif"


@pytest.mark.parametrize("unit", ["um", "micron", "\\u00B5m"])  # tifffile writes ASCII only
def test_read_layout_hint__imagej_zyx_spacing_from_resolution_and_spacing(tmp_path, unit):
    path = _imagej(
        tmp_path / "a.tif", "ZYX", (5, 8, 8), resolution=(2.0, 4.0), spacing=3.0, unit=unit
    )
    hint = read_layout_hint(path)
    assert hint == LayoutHint("zyx", (3.0, 0.25, 0.5), "ImageJ TIFF", None, "µm", "ZYX")
    assert "ImageJ TIFF metadata of a.tif" in hint.sentence("a.tif")


def test_read_layout_hint__imagej_hyperstack_with_channels(tmp_path):
    path = _imagej(
        tmp_path / "a.tif",
        "TZCYX",
        (2, 3, 2, 8, 8),
        resolution=(4.0, 4.0),
        spacing=1.5,
        unit="micron",
    )
    hint = read_layout_hint(path)
    assert hint == LayoutHint("tzyx", (1.5, 0.25, 0.25), "ImageJ TIFF", 2, "µm", "TZCYX")
    assert hint.sentence("a.tif") == (
        "axes tzyx, channel axis 2 and spacing (1.5, 0.25, 0.25) µm read from ImageJ TIFF "
        "metadata of a.tif"
    )


def test_read_layout_hint__imagej_calibration_rules(tmp_path):
    # no unit: uncalibrated (ImageJ's pixels), axes only
    plain = read_layout_hint(_imagej(tmp_path / "a.tif", "ZYX", (5, 8, 8)))
    assert (plain.axes, plain.spacing, plain.source) == ("zyx", None, "ImageJ TIFF")
    pixels = _imagej(tmp_path / "p.tif", "ZYX", (5, 8, 8), resolution=(2, 2), unit="pixel")
    assert read_layout_hint(pixels).spacing is None
    # a unit without spacing: ImageJ leaves spacing out when the voxel depth is 1
    depth = _imagej(tmp_path / "b.tif", "ZYX", (5, 8, 8), resolution=(2, 2), unit="um")
    assert read_layout_hint(depth).spacing == (1.0, 0.5, 0.5)
    # a time-lapse: the spacing of y and x only
    lapse = _imagej(tmp_path / "c.tif", "TYX", (3, 8, 8), resolution=(2, 2), unit="nm")
    assert read_layout_hint(lapse)[:5] == ("tyx", (0.5, 0.5), "ImageJ TIFF", None, "nm")
    # RGB volume: colour last, read as RGB (no channel axis)
    rgb = tmp_path / "rgb.tif"
    tifffile.imwrite(
        rgb,
        np.zeros((3, 8, 8, 3), np.uint8),
        imagej=True,
        photometric="rgb",
        metadata={"axes": "ZYXS"},
    )
    assert read_layout_hint(rgb)[:4] == ("zyx", None, "ImageJ TIFF", None)
    assert read_image(rgb).shape == (3, 8, 8, 3)


@pytest.mark.filterwarnings("ignore:<tifffile.TiffWriter.write> data with shape")
def test_read_layout_hint__plain_tiffs_say_nothing_beyond_2d(tmp_path):
    tifffile.imwrite(tmp_path / "2d.tif", np.zeros((8, 8), np.uint16))
    tifffile.imwrite(tmp_path / "rgb.tif", np.zeros((8, 8, 3), np.uint8))
    tifffile.imwrite(tmp_path / "3d.tif", np.zeros((5, 8, 8), np.uint16))
    tifffile.imwrite(tmp_path / "pages.tif", np.zeros((5, 8, 8), np.uint16), metadata=None)
    # a plain (4, Y, X) stack: stored as 4 samples per pixel (or as 4 pages): not said either
    tifffile.imwrite(tmp_path / "four.tif", np.zeros((4, 8, 8), np.uint16))
    assert read_layout_hint(tmp_path / "four.tif").axes is None
    assert read_layout_hint(tmp_path / "2d.tif") == LayoutHint("yx", file_axes="YX")
    assert read_layout_hint(tmp_path / "rgb.tif") == LayoutHint("yx", file_axes="YXS")
    assert read_layout_hint(tmp_path / "3d.tif") == LayoutHint(file_axes="QYX")
    assert read_layout_hint(tmp_path / "pages.tif") == LayoutHint(file_axes="IYX")
    for name in ("2d.tif", "3d.tif"):
        assert read_layout_hint(tmp_path / name).sentence(name) == ""
    # tifffile's own description, when it names the axes, says them (no spacing)
    tifffile.imwrite(
        tmp_path / "said.tif", np.zeros((4, 8, 8), np.uint16), metadata={"axes": "ZYX"}
    )
    assert read_layout_hint(tmp_path / "said.tif") == LayoutHint(
        "zyx", None, "tifffile", None, "", "ZYX"
    )


def test_read_layout_hint__axes_napari_segrep_does_not_read_give_none(tmp_path):
    # z before time, and unknown letters: said by the file, but not a layout of ours
    zt = read_layout_hint(
        _ome(
            tmp_path / "zt.tif",
            "ZTYX",
            (3, 2, 8, 8),
            PhysicalSizeZ=2.0,
            PhysicalSizeY=1.0,
            PhysicalSizeX=1.0,
        )
    )
    assert (zt.axes, zt.spacing, zt.source, zt.file_axes) == (None, None, "OME-TIFF", "ZTYX")
    assert zt.sentence("zt.tif") == ""
    tifffile.imwrite(tmp_path / "q.tif", np.zeros((5, 8, 8), np.uint16), metadata={"axes": "QYX"})
    assert read_layout_hint(tmp_path / "q.tif").axes is None


def test_read_layout_hint__other_files_and_errors(tmp_path):
    import imageio.v3 as iio

    iio.imwrite(tmp_path / "a.png", np.zeros((8, 8), np.uint8))
    assert read_layout_hint(tmp_path / "a.png") == LayoutHint()
    with pytest.raises(FileNotFoundError, match="nope.tif does not exist"):
        read_layout_hint(tmp_path / "nope.tif")
    (tmp_path / "bad.tif").write_bytes(b"not a tiff at all")
    with pytest.raises(ValueError, match="cannot read .*bad.tif as a TIFF"):
        read_layout_hint(tmp_path / "bad.tif")


@settings(max_examples=30, deadline=None)
@given(
    case=st.sampled_from(LAYOUTS),
    kind=st.sampled_from(["ome", "imagej"]),
    spacing=st.tuples(*[st.floats(0.01, 50.0)] * 3),
)
def test_read_layout_hint__round_trips_and_fits_the_array_as_read(case, kind, spacing):
    """Whatever layout is written, the hint read back names it, its channel axis is the one of
    the array read_image returns, and the layout seam accepts them."""
    file_axes, shape, axes, channel_axis = case
    spatial = "".join(a for a in file_axes if a in "ZYX")
    values = spacing[-len(spatial) :]
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "x.tif"
        if kind == "ome":
            sizes = {f"PhysicalSize{a}": v for a, v in zip(spatial, values, strict=True)}
            _ome(path, file_axes, shape, **sizes)
        else:
            meta = {"unit": "um"}
            if "Z" in spatial:
                meta["spacing"] = values[0]
            resolution = (1 / values[-1], 1 / values[-2])
            _imagej(path, file_axes, shape, resolution=resolution, **meta)
        hint = read_layout_hint(path)
        image = read_image(path)
    assert (hint.axes, hint.channel_axis, hint.file_axes) == (axes, channel_axis, file_axes)
    assert hint.source == ("OME-TIFF" if kind == "ome" else "ImageJ TIFF") and hint.unit == "µm"
    assert hint.spacing == pytest.approx(values, rel=1e-6)
    assert image.shape == shape
    labels_shape = tuple(n for i, n in enumerate(shape) if i != channel_axis)
    layout = layout_of(labels_shape, axes=hint.axes, spacing=hint.spacing)
    frame = image[0] if layout.has_time else image
    frame_axis = frame_channel_axis(hint.channel_axis, layout, image.ndim)
    one = as_channels_first(frame, channel_axis=frame_axis, spatial_ndim=layout.spatial_ndim)
    assert one.shape[1:] == (labels_shape[1:] if layout.has_time else labels_shape)
