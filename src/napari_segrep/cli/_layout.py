"""What the axes of an image/label pair are, for ``embed`` and ``classify``: the ``--axes`` and
``--spacing`` options, the TIFF metadata that may say them, and the check that an image and its
labels fit that layout, from their shapes alone (a pair of arrays, or a collection's file
headers), phrased for the command line.

The layout itself is :func:`napari_segrep._images.layout_of`'s (nothing here sniffs ``ndim``):
a 3D label image whose axes nobody said is refused with the fix (``--axes zyx`` for a z-stack,
``--axes tyx`` for a time-lapse), never guessed.

Standard library only at import time (``napari-segrep --help`` must not load numpy or torch).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ._common import CLIError

__all__ = [
    "AXES",
    "Hint",
    "add_layout_options",
    "check_encoder_dims",
    "choose_backbone",
    "layout_channels",
    "pair_hint",
    "resolve_layout",
]

#: ``--axes`` choices: :data:`napari_segrep._images.AXES` (not imported: it loads numpy, and
#: ``--help`` must stay cheap; a test checks they are the same).
AXES = ("yx", "zyx", "tyx", "tzyx")


def add_layout_options(parser) -> None:
    """``--axes`` and ``--spacing`` on ``parser`` (or one of its argument groups)."""
    parser.add_argument(
        "--axes",
        choices=AXES,
        default=None,
        help="what the LABELS' axes are: yx (2D), zyx (a z-stack: one row per 3D object), tyx "
        "(a time-lapse: one row per label and frame), tzyx (a time-lapse of volumes: frame + 3D "
        "objects) (default: from the OME/ImageJ TIFF metadata when it says, else yx for 2D "
        "labels and tzyx for 4D ones; 3D labels must say which)",
    )
    parser.add_argument(
        "--spacing",
        type=float,
        nargs="+",
        metavar="DZ DY DX",
        default=None,
        help="the voxel size along each spatial axis, DZ DY DX for volumes (DY DX for 2D), in "
        "any one unit: objects are resampled to near-isotropic voxels, so size and shape "
        "keep their physical meaning (default: from the OME/ImageJ TIFF metadata when it "
        "says, else 1 along every axis)",
    )


@dataclass(frozen=True)
class Hint:
    """What a file's metadata says about its axes and spacing (``None``: it does not say),
    ``source`` how it says it (``"OME-TIFF"``, ``"ImageJ TIFF"``), ``path`` the file, ``unit``
    the spacing's (:func:`napari_segrep._tiff_meta.read_layout_hint`)."""

    axes: str | None
    spacing: tuple[float, ...] | None
    source: str
    path: Path
    unit: str = ""

    @property
    def says(self) -> bool:
        return bool(self.source) and (self.axes is not None or self.spacing is not None)

    def where(self) -> str:
        return f"the {self.source} metadata of {self.path.name}"


def resolve_layout(
    labels_shape,
    *,
    axes: str | None,
    spacing,
    labels_path: Path,
    hint: Hint | None = None,
    notes: list[str] | None = None,
):
    """The :class:`~napari_segrep._images.Layout` of a label image of ``labels_shape``: the
    user's ``--axes``/``--spacing`` (None: not given), else what ``hint`` (a file's metadata)
    says, else :func:`~napari_segrep._images.layout_of`'s default.  What came from the file,
    and where the user's options overrode it, is appended to ``notes`` (one line each, for
    stderr).

    Raises
    ------
    CLIError
        3D labels whose axes nobody said (naming the file, ``--axes zyx`` and ``--axes tyx``);
        ``--axes`` that do not fit the labels; ``--spacing`` of the wrong count or not positive.
    """
    from .._images import AxesUnknown, layout_of

    hint = hint if hint is not None and hint.says else None
    use_axes = axes if axes is not None or hint is None else hint.axes
    shape = tuple(labels_shape)
    flag = (
        f"--axes {use_axes}" if axes is not None else f"axes {use_axes} ({hint and hint.where()})"
    )
    if use_axes is not None and len(use_axes) != len(shape):
        fits = {2: "--axes yx", 3: "--axes zyx (a z-stack) or --axes tyx (a time-lapse)"}
        fits[4] = "--axes tzyx"
        raise CLIError(
            f"{flag} names {len(use_axes)} axes but LABELS {labels_path.name} are "
            f"{len(shape)}D {shape}: "
            + (f"use {fits[len(shape)]}" if len(shape) in fits else "labels are 2D, 3D or 4D")
        )
    if use_axes is not None and "z" in use_axes and shape[use_axes.index("z")] < 2:
        raise CLIError(
            f"LABELS {labels_path.name} {shape} are a volume of 1 plane ({flag}): a z-stack "
            "needs at least 2 planes; save that plane as a 2D image and embed it as one"
        )
    try:
        layout = layout_of(tuple(labels_shape), axes=use_axes)
    except AxesUnknown as exc:
        raise CLIError(f"LABELS {labels_path.name}: {exc.message('--axes {axes}')}") from None
    except ValueError as exc:
        raise CLIError(f"{flag} for LABELS {labels_path.name}: {exc}") from None
    use_spacing, source = spacing, "given"
    if spacing is None and hint is not None and hint.spacing is not None:
        if len(hint.spacing) == layout.spatial_ndim:
            use_spacing, source = hint.spacing, f"{hint.source} metadata of {hint.path.name}"
    if hint is not None and notes is not None:
        said = [f"axes {hint.axes}"] if axes is None and hint.axes is not None else []
        if use_spacing is not None and spacing is None:
            said.append(f"spacing {_numbers(use_spacing)}{' ' + hint.unit if hint.unit else ''}")
        if said:
            notes.append(f"napari-segrep: {' and '.join(said)} from {hint.where()}")
        overridden = []
        if axes is not None and hint.axes is not None and hint.axes != axes:
            overridden.append(f"--axes {axes} (the file says {hint.axes})")
        if spacing is not None and hint.spacing is not None:
            if tuple(float(v) for v in hint.spacing) != tuple(float(v) for v in spacing):
                overridden.append(
                    f"--spacing {_numbers(spacing, ' ')} (the file says {_numbers(hint.spacing)})"
                )
        if overridden:
            notes.append(f"napari-segrep: using {' and '.join(overridden)} over {hint.where()}")
    if use_spacing is None:
        return layout
    use_spacing = tuple(float(v) for v in use_spacing)
    names = " ".join(f"D{a.upper()}" for a in layout.spatial_axes)
    if len(use_spacing) != layout.spatial_ndim:
        count = len(use_spacing)
        raise CLIError(
            f"--spacing {_numbers(use_spacing, ' ')}: {count} value{'s' * (count != 1)}, but "
            f"the objects of LABELS {labels_path.name} {tuple(labels_shape)} (axes "
            f"{layout.axes}) have {layout.spatial_ndim} spatial axes: give --spacing {names}"
        )
    if not all(0 < v < float("inf") for v in use_spacing):  # NaN fails too
        raise CLIError(
            f"--spacing {_numbers(use_spacing, ' ')}: a voxel size must be positive and finite "
            f"along every axis: give --spacing {names}"
        )
    return layout_of(
        tuple(labels_shape), axes=layout.axes, spacing=use_spacing, spacing_source=source
    )


def _numbers(values, sep: str = ", ") -> str:
    text = sep.join(f"{float(v):g}" for v in values)
    return text if sep == " " else f"({text})"


def layout_channels(
    image_shape,
    labels_shape,
    layout,
    *,
    channel_axis: int | None = None,
    image_name: str = "the image",
    labels_name: str = "labels",
) -> int:
    """The number of channels of an image of ``image_shape`` whose labels, of
    ``labels_shape``, have ``layout``; from the shapes alone (a pair's arrays, or a
    collection's file headers).  ``channel_axis`` is counted in the whole image (a
    time-lapse's time axis included), as ``--channel-axis`` is.

    Raises
    ------
    CLIError
        The image does not fit the labels, in words naming both files and the fix: a 2D image
        with 3D labels and the reverse, other planes or frames, a channel axis that is not one.
    """
    image_shape, labels_shape = tuple(image_shape), tuple(labels_shape)
    pair = f"{image_name} {image_shape} and {labels_name} {labels_shape}"
    kind = _KIND[layout.axes]
    said = "" if layout.axes == "yx" else f" (--axes {layout.axes})"
    inner = kind if layout.axes == "yx" else f"{kind}, --axes {layout.axes}"  # in parentheses
    spatial = labels_shape[1:] if layout.has_time else labels_shape
    frame, axis = image_shape, channel_axis
    shift = 1 if layout.has_time else 0  # a frame's axis k is the image's axis k + shift
    if layout.has_time:
        if not image_shape or image_shape[0] != labels_shape[0]:
            found = image_shape[0] if image_shape else 0
            raise CLIError(
                f"{pair}: the labels are {kind}{said} of {labels_shape[0]} frames but the "
                f"image's first axis has {found}: give the image the labels were made on"
            )
        frame = image_shape[1:]
        if axis is not None:
            axis = int(axis) + (len(image_shape) if axis < 0 else 0)
            if axis == 0:
                raise CLIError(
                    f"--channel-axis {channel_axis} is the time axis of {kind} ({pair}): give "
                    "the axis of the channels, counted in the whole image"
                )
            axis -= 1
    nd = layout.spatial_ndim
    mismatch = (
        f"{image_name} is {image_shape} but its {labels_name} are {labels_shape}: the labels' "
        f"shape does not match the image's; each pair ({inner}) must have the same "
        f"({', '.join(layout.axes.upper())}) shape"
    )
    if len(frame) == nd:
        if axis is not None:
            raise CLIError(
                f"--channel-axis {channel_axis}, but {pair} have no channel axis (the image has "
                "the labels' axes only): leave --channel-axis out"
            )
        if frame != spatial:
            raise CLIError(mismatch)
        return 1
    if len(frame) < nd:
        raise CLIError(
            f"{pair}: the labels are {kind}{said} but the image is {len(image_shape)}D: "
            "give the volume the labels were made on (or, for a 2D image, its 2D labels)"
        )
    if len(frame) > nd + 1:
        raise CLIError(
            f"{pair}: the image has {len(frame) - nd} axes more than the labels ({inner}), "
            "which allow one, its channels: give the image the labels were made on"
        )
    if axis is None:
        if frame[-1] in (3, 4) and frame[:-1] == spatial:
            return 3  # RGB(A), alpha dropped
        rests = _without_one_axis(frame)
        if spatial not in rests:
            raise CLIError(mismatch)
        k = rests.index(spatial) + shift
        if nd == 2:
            stack = "tzyx" if layout.has_time else "zyx"
            raise CLIError(
                f"{pair}: the image has one axis more than the labels ({inner}): for a "
                f"z-stack give its 3D labels (--axes {stack}); if axis {k} holds channels, "
                f"pass --channel-axis {k}"
            )
        raise CLIError(
            f"{pair}: the image has one axis more than the labels ({inner}): if axis {k} "
            f"holds its channels, pass --channel-axis {k}"
        )
    if not -len(frame) <= axis < len(frame):
        raise CLIError(
            f"--channel-axis {channel_axis} is not an axis of {image_name} {image_shape}: use "
            f"{shift} ... {len(image_shape) - 1} (or -1)"
        )
    rest = list(frame)
    channels = rest.pop(axis)
    if tuple(rest) != spatial:
        raise CLIError(f"{mismatch} (the image's without its --channel-axis {channel_axis})")
    if channels == 0:
        raise CLIError(f"{image_name} {image_shape} has no channels along --channel-axis")
    return int(channels)


def _without_one_axis(shape: tuple) -> list[tuple]:
    return [shape[:k] + shape[k + 1 :] for k in range(len(shape))]


def pair_hint(image_path: Path, labels_path: Path) -> Hint | None:
    """What the image's TIFF metadata (OME or ImageJ) says about the axes and spacing, else
    what the labels' says; None when neither says (a plain TIFF, a PNG...).  A file that cannot
    be read says nothing here: reading it names the problem."""
    from .._tiff_meta import read_layout_hint

    for path in (image_path, labels_path):
        try:
            hint = read_layout_hint(path)
        except (OSError, ValueError):
            continue
        found = Hint(hint.axes, hint.spacing, hint.source, Path(path), hint.unit)
        if found.says:
            return found
    return None


#: How the messages call each layout.
_KIND = {"yx": "2D", "zyx": "a z-stack", "tyx": "a time-lapse", "tzyx": "a time-lapse of volumes"}


def choose_backbone(
    backbone: str | None, layout, *, checkpoint=None, device=None, weights: str | None = None
) -> str:
    """The backbone to embed the objects of ``layout`` with: ``backbone`` (``--backbone``; None:
    resnet18 for 2D objects, for volumes :func:`~napari_segrep.engine.embed.volume_backbone`
    of ``device``, ``--device``: the native 3D network on CUDA, the planes elsewhere; None,
    as ``train`` asks: the native 3D network; for 2D objects with ``weights``, a weight set
    such as ``--weights dinov2``, the first 2D backbone that has it), checked to embed objects of as many dimensions (a :class:`CLIError` with the
    fix otherwise; not checked with a ``checkpoint``, whose encoder brings its own)."""
    from ..engine.backbones import BACKBONES, get_backbone
    from ._common import BACKBONES as CHOICES

    if backbone is None:
        if not layout.is_volume:
            # --weights dinov2 alone: the 2D backbone that has those weights
            from ..catalogue import backbone_choices, weights_backbones

            offered = [b for b in weights_backbones(weights or "") if b in backbone_choices(2)]
            return offered[0] if offered and checkpoint is None else "resnet18"
        from ..engine.embed import volume_backbone

        return volume_backbone(device)
    if checkpoint is not None:
        return backbone
    dims = get_backbone(backbone).spatial_dims
    if dims == layout.spatial_ndim:
        return backbone
    fitting = [n for n in CHOICES if n in BACKBONES and BACKBONES[n].spatial_dims != dims]
    kind = _KIND[layout.axes]
    if layout.is_volume:
        from ..engine.embed import volume_backbone

        raise CLIError(
            f"--backbone {backbone} embeds 2D objects, but the labels are {kind} (--axes "
            f"{layout.axes}: 3D objects): use --backbone {' or '.join(fitting)} "
            f"({volume_backbone(device)} by default here: leave --backbone out)"
        )
    raise CLIError(
        f"--backbone {backbone} embeds volumes, but the labels are {kind} (--axes "
        f"{layout.axes}: 2D objects): use a 2D backbone ({', '.join(fitting)}), or, if the "
        "labels are a z-stack, say so with --axes zyx"
    )


def check_encoder_dims(encoder, layout, *, checkpoint=None) -> None:
    """A :class:`CLIError` when ``encoder`` (a checkpoint's) embeds objects of other
    dimensions than ``layout``'s."""
    if encoder.spatial_dims == layout.spatial_ndim:
        return
    kind = _KIND[layout.axes]
    what = "volumes" if encoder.spatial_dims == 3 else "2D objects"
    source = f"--checkpoint {checkpoint}" if checkpoint is not None else "the encoder"
    fix = (
        "use a checkpoint trained on volumes, or leave --checkpoint out"
        if layout.is_volume
        else "use a checkpoint trained on 2D images, or, if the labels are a z-stack, say so "
        "with --axes zyx"
    )
    raise CLIError(
        f"{source} embeds {what} (backbone {encoder.backbone_name}), but the labels are {kind} "
        f"(--axes {layout.axes}): {fix}"
    )


@dataclass
class PairLayouts:
    """A collection's pairs as checked from their headers: per pair its shapes, its labels'
    layout and its image's channels; ``notes``: what the files' metadata said (for stderr)."""

    shapes: list
    layouts: list
    channels: list
    notes: list


def collection_layouts(
    pairs, *, axes: str | None, spacing, channel_axis: int | None, shown: int = 3
) -> PairLayouts:
    """Check every pair of a collection from the file headers (readable, integer labels, the
    layout of its labels, its image fitting them) and say every problem at once: a
    :class:`CLIError` naming each, 3D labels whose axes nobody said in one clause with the
    fix.  One encoder embeds them all, so the objects must all be 2D or all 3D."""
    from .._images import AxesUnknown
    from ..engine.input_files import check_pair_headers

    found: dict = {}  # labels path -> (layout, channels, notes)
    unknown: list[str] = []

    def check(image, labels, image_shape, labels_shape) -> str | None:
        notes: list[str] = []
        try:
            hint = pair_hint(image, labels)
            if axes is None and (hint is None or hint.axes is None) and len(labels_shape) == 3:
                unknown.append(f"{labels.name} {tuple(labels_shape)}")
                return None
            layout = resolve_layout(
                labels_shape,
                axes=axes,
                spacing=spacing,
                labels_path=labels,
                hint=hint,
                notes=notes,
            )
            channels = layout_channels(
                image_shape,
                labels_shape,
                layout,
                channel_axis=channel_axis,
                image_name=image.name,
                labels_name=f"labels {labels.name}",
            )
        except (CLIError, AxesUnknown, ValueError) as exc:
            return str(exc)
        found[labels] = (layout, channels, notes)
        return None

    try:
        shapes = check_pair_headers(pairs, channel_axis=channel_axis, shown=5, check=check)
        problem = None
    except ValueError as exc:
        problem = str(exc)
    if unknown:
        text = _unknown_axes(unknown, shown)
        problem = text if problem is None else f"{problem}; and {text}"
    if problem is not None:
        raise CLIError(problem)
    layouts = [found[labels][0] for _, labels in pairs]
    channels = [found[labels][1] for _, labels in pairs]
    notes = [note for _, labels in pairs for note in found[labels][2]]
    dims = {}
    for (image, _), layout in zip(pairs, layouts, strict=True):
        dims.setdefault(layout.spatial_ndim, []).append(f"{image.name} ({layout.axes})")
    if len(dims) > 1:
        shown_dims = "; ".join(
            f"{'volumes' if n == 3 else '2D'}: {', '.join(names[:shown])}"
            + (f" and {len(names) - shown} more" if len(names) > shown else "")
            for n, names in sorted(dims.items())
        )
        raise CLIError(
            f"the collection mixes 2D images and volumes ({shown_dims}): one encoder embeds "
            "2D objects or 3D ones, so the table holds one kind; embed them as separate "
            "collections"
        )
    if len(notes) > shown:
        notes = [*notes[: shown - 1], f"napari-segrep: ... and {len(notes) - shown + 1} more"]
    return PairLayouts(shapes, layouts, channels, notes)


def _unknown_axes(files: list[str], shown: int) -> str:
    listed = ", ".join(files[:shown]) + (
        f" and {len(files) - shown} more" if len(files) > shown else ""
    )
    count = len(files)
    return (
        f"{count} label image{'s' * (count > 1)} {'are' if count > 1 else 'is'} 3D and neither "
        f"--axes nor {'their' if count > 1 else 'its'} TIFF metadata says what the axes are "
        f"({listed}): say whether they are z-stacks or time-lapses, --axes zyx for z-stacks "
        "(one 3D object per label) or --axes tyx for time-lapses (one row per label and frame)"
    )
