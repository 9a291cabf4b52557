"""What a TIFF file says about its axes and voxel spacing: OME-TIFF and ImageJ TIFF metadata.

:func:`read_layout_hint` reads it (headers only, no pixels) as a :class:`LayoutHint`: the axes
in :func:`napari_segrep._images.layout_of`'s terms (``"yx"``, ``"zyx"``, ``"tyx"``,
``"tzyx"``), the channel axis, and the spacing with its unit.  Nothing is guessed: a file that
does not say (a plain TIFF of a 3D array, a generic image sequence, axes napari-segrep does not
read) gives no axes, and a spacing only comes from calibrated metadata.

Numpy and tifffile only (imported when called).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import NamedTuple

from ._images import AXES

__all__ = ["LayoutHint", "read_layout_hint"]

#: tifffile's axis letters that hold channels: C (channel), S (sample: RGB and other samples
#: stored per pixel).
_CHANNEL_LETTERS = "CS"
#: Lengths in micrometres, for spacings given in several units (OME's PhysicalSize*Unit, ImageJ's
#: unit, yunit, zunit).
_MICROMETRES = {
    "m": 1e6,
    "dm": 1e5,
    "cm": 1e4,
    "mm": 1e3,
    "µm": 1.0,
    "nm": 1e-3,
    "pm": 1e-6,
    "Å": 1e-4,
    "in": 25400.0,
    "inch": 25400.0,
}
#: How µm is also written (ImageJ writes "micron" or the escaped "\u00B5m"; μ is Greek mu).
_SPELLINGS = {
    "micron": "µm",
    "microns": "µm",
    "um": "µm",
    "μm": "µm",
    "\\u00b5m": "µm",
    "angstrom": "Å",
    "inches": "inch",
}
#: ImageJ's uncalibrated unit.
_NO_UNIT = {"", "pixel", "pixels", "px"}


class LayoutHint(NamedTuple):
    """What an image file says about its axes and spacing (:func:`read_layout_hint`).

    Attributes
    ----------
    axes : str or None
        ``"yx"``, ``"zyx"``, ``"tyx"`` or ``"tzyx"``: the axes of the image less its channels,
        hence of its labels; None when the file does not say (or says what napari-segrep does
        not read).
    spacing : tuple of float, or None
        The physical size of a voxel along each spatial axis (``(dz, dy, dx)`` or ``(dy, dx)``),
        in ``unit``; None when the file has no calibration for every spatial axis.
    source : str
        ``"OME-TIFF"``, ``"ImageJ TIFF"``, ``"tifffile"`` (the shape and axes tifffile writes
        in its own description), or ``""`` (no such metadata: a plain TIFF, another format).
    channel_axis : int or None
        The image's channel axis as read (counted in the whole array, time included); None when
        there is none, or for RGB(A) colour last (read as RGB without it).
    unit : str
        The spacing's unit (``"µm"``...); ``""`` without spacing.
    file_axes : str
        tifffile's axis letters for the image as read (``"TZCYX"``, ``"QYX"``...); ``""`` for a
        file that is not a TIFF.
    """

    axes: str | None = None
    spacing: tuple[float, ...] | None = None
    source: str = ""
    channel_axis: int | None = None
    unit: str = ""
    file_axes: str = ""

    def sentence(self, name: str) -> str:
        """One line for the user, e.g. ``axes zyx and spacing (2, 0.5, 0.5) µm read from OME-TIFF
        metadata of vol.tif``; ``""`` when the metadata said nothing."""
        if not self.source or self.axes is None:
            return ""
        said = [f"axes {self.axes}"]
        if self.channel_axis is not None:
            said.append(f"channel axis {self.channel_axis}")
        if self.spacing is not None:
            values = ", ".join(f"{v:g}" for v in self.spacing)
            said.append(f"spacing ({values}){' ' + self.unit if self.unit else ''}")
        listed = ", ".join(said[:-1]) + " and " + said[-1] if len(said) > 1 else said[0]
        return f"{listed} read from {self.source} metadata of {name}"


def read_layout_hint(path: str | os.PathLike) -> LayoutHint:
    """The axes, channel axis and spacing an image file's metadata state.

    Parameters
    ----------
    path : str or PathLike
        An image file.  Only TIFFs (``.tif``, ``.tiff``, OME-TIFF included) carry this
        metadata; other files give an empty hint.

    Returns
    -------
    LayoutHint
        * OME-TIFF: the axes tifffile reads from the OME ``DimensionOrder`` and sizes, the
          spacing from ``PhysicalSizeZ/Y/X`` (and their units: several units are converted to
          µm);
        * ImageJ TIFF: the axes from ``images``/``slices``/``frames``/``channels``, ``dy, dx``
          from the YResolution/XResolution tags and ``dz`` from ``spacing`` (1 when absent, as
          ImageJ omits it when it is 1), in ``unit``, for calibrated files only (an ImageJ file
          without unit, or in pixels, has no spacing);
        * a TIFF tifffile wrote with ``metadata={"axes": ...}``: those axes, no spacing;
        * a plain 2D TIFF (grey, or RGB(A) colour last): ``"yx"``; any other plain TIFF: no
          axes (tifffile reads a plain ``(3, Y, X)`` or ``(4, Y, X)`` stack as one image of 3
          or 4 samples: a z-stack or a time-lapse just as well).

        The array's singleton axes are dropped (as ``tifffile.imread`` and
        :func:`napari_segrep.io.read_image` drop them).  Axes napari-segrep does not read
        (unknown letters such as Q or I, z before time, two channel axes) give no axes.

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    ValueError
        A TIFF that cannot be read (its headers).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    if path.suffix.lower() not in (".tif", ".tiff"):
        return LayoutHint()
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            letters, shape = series.axes.upper(), tuple(series.shape)
            page = series.pages[0] if series.pages else tif.pages[0]
            rgb = page.photometric == tifffile.PHOTOMETRIC.RGB
            if tif.is_ome:
                source = "OME-TIFF"
                spacing = _ome_spacing(tif.ome_metadata, letters)
            elif tif.is_imagej:
                source = "ImageJ TIFF"
                spacing = _imagej_spacing(tif.imagej_metadata or {}, page, letters)
            else:
                source = "tifffile" if tif.is_shaped and _said_axes(tif) else ""
                spacing = None
    except Exception as exc:  # noqa: BLE001 - any reader failure is a user-facing error
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ValueError(f"cannot read {path} as a TIFF: {reason}") from None
    axes, channel_axis = _our_axes(letters, shape, rgb=rgb)
    if axes is None:
        return LayoutHint(source=source, file_axes=letters)
    if not source:  # a plain TIFF: only a 2D image, grey or RGB(A), says its axes by itself
        if axes == "yx" and channel_axis is None:
            return LayoutHint("yx", None, "", None, "", letters)
        return LayoutHint(file_axes=letters)
    values, unit = spacing if spacing is not None else (None, "")
    return LayoutHint(axes, values, source, channel_axis, unit, letters)


def _said_axes(tif) -> bool:
    """Whether tifffile's shaped description of the file names its axes (not only a shape)."""
    import json

    try:
        return "axes" in json.loads(tif.pages[0].description)
    except (ValueError, TypeError, AttributeError):
        return False


def _our_axes(letters: str, shape: tuple[int, ...], *, rgb: bool) -> tuple[str | None, int | None]:
    """``(axes, channel_axis)`` from tifffile's axis letters, ``(None, None)`` when they are not
    a layout napari-segrep reads."""
    channels = [i for i, a in enumerate(letters) if a in _CHANNEL_LETTERS]
    if len(channels) > 1:
        return None, None
    axes = "".join(a for a in letters if a not in _CHANNEL_LETTERS).lower()
    if axes not in AXES:
        return None, None
    if not channels:
        return axes, None
    at = channels[0]
    colour_last = letters[at] == "S" and at == len(letters) - 1 and shape[at] in (3, 4) and rgb
    return axes, None if colour_last else at


def _spatial(letters: str) -> str:
    """The spatial letters of ``letters`` in order (``"ZYX"`` or ``"YX"``)."""
    return "".join(a for a in letters if a in "ZYX")


def _ome_spacing(xml: str | None, letters: str):
    """``((d...), unit)`` from the first image's OME ``PhysicalSize*`` attributes, or None."""
    from xml.etree import ElementTree

    if not xml:
        return None
    try:
        root = ElementTree.fromstring(xml)
    except ElementTree.ParseError:
        return None
    pixels = next((e for e in root.iter() if e.tag.rsplit("}", 1)[-1] == "Pixels"), None)
    if pixels is None:
        return None
    sizes = []
    for axis in _spatial(letters):
        value = pixels.get(f"PhysicalSize{axis}")
        if value is None:
            return None
        sizes.append((value, pixels.get(f"PhysicalSize{axis}Unit", "µm")))
    return _in_one_unit(sizes)


def _imagej_spacing(meta: dict, page, letters: str):
    """``((d...), unit)`` from an ImageJ file's calibration, or None when uncalibrated."""
    unit = str(meta.get("unit", "")).strip()
    if unit.lower() in _NO_UNIT:
        return None
    sizes = []
    for axis in _spatial(letters):
        if axis == "Z":
            sizes.append((meta.get("spacing", 1.0), meta.get("zunit", unit)))
            continue
        tag = page.tags.get(f"{axis}Resolution")
        if tag is None:
            return None
        try:
            per_unit = float(tag.value[0]) / float(tag.value[1])
        except (TypeError, ValueError, IndexError, ZeroDivisionError):
            return None
        if not per_unit > 0:
            return None
        sizes.append((1.0 / per_unit, meta.get(f"{axis.lower()}unit", unit)))
    return _in_one_unit(sizes)


def _in_one_unit(sizes: list[tuple[object, object]]):
    """``((values...), unit)`` from ``(value, unit)`` pairs: their own unit when they share it,
    µm when their units differ (and are known); None for a value that is not positive and
    finite, or units that cannot be converted."""
    values, units = [], []
    for value, unit in sizes:
        try:
            number = float(value)
        except (TypeError, ValueError):
            return None
        if not (math.isfinite(number) and number > 0):
            return None
        values.append(number)
        name = str(unit).strip()
        units.append(_SPELLINGS.get(name.lower(), name))
    if len(set(units)) == 1:
        return tuple(values), units[0]
    if not all(u in _MICROMETRES for u in units):
        return None
    return tuple(v * _MICROMETRES[u] for v, u in zip(values, units, strict=True)), "µm"
