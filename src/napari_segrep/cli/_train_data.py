"""``napari-segrep train``'s data: the image/label pairs read and checked before any work, each
with its layout, and the number of channels the encoder takes."""

from __future__ import annotations

import argparse
import sys

from ._common import CLIError, pairs_from_args

__all__ = ["channels_of", "load_pairs"]


def load_pairs(args: argparse.Namespace):
    """Read the image/label pairs, say what their axes are (``--axes``/``--spacing``, else the
    TIFF metadata, said in one line each, else the labels' dimensions: 3D labels must say) and
    check them as the engine's dataset would (one grid per pair, numeric images, integer
    labels): a pair it would refuse is a :class:`CLIError` naming the files, before any work.
    Returns ``(images, labels, names, layouts)``, a layout per pair (all 2D, or all volumes)."""
    import os

    from ..engine.dataset import check_pairs, refuse_rgb_labels
    from ..io import read_image
    from ._layout import pair_hint, resolve_layout

    pairs = pairs_from_args(args)
    images, labels, names, layouts, notes = [], [], [], [], []
    for image_path, label_path in pairs:
        image, lab = read_image(image_path), read_image(label_path)
        name = f"{image_path.name} / {label_path.name}"
        hint = pair_hint(image_path, label_path)
        if args.axes is None and (hint is None or hint.axes is None):
            try:  # a coloured rendering of labels, not a z-stack nor a time-lapse
                refuse_rgb_labels(image, lab, channel_axis=args.channel_axis, name=name)
            except (TypeError, ValueError) as exc:
                raise CLIError(str(exc)) from None
        layout = resolve_layout(
            lab.shape,
            axes=args.axes,
            spacing=args.spacing,
            labels_path=label_path,
            hint=hint,
            notes=notes,
        )
        if layout.axes == "yx" and image.ndim == lab.ndim and image.shape != lab.shape:
            raise CLIError(
                f"{image_path.name} is {image.shape} but its labels {label_path.name} are "
                f"{lab.shape}: each pair must have the same (Y, X) shape"
            )
        images.append(image)
        labels.append(lab)
        names.append(name)
        layouts.append(layout)
    try:
        check_pairs(images, labels, axes=layouts, channel_axis=args.channel_axis, names=names)
    except (TypeError, ValueError) as exc:
        raise CLIError(str(exc)) from None
    if os.environ.get("RANK", "0") == "0":
        for note in notes:  # what the files' metadata said
            print(note, file=sys.stderr)
    return images, labels, names, layouts


def channels_of(image, layout, channel_axis) -> int:
    """The number of channels of ``image`` (a pair's, checked), whatever its layout."""
    from .._images import as_channels_first, frame_channel_axis

    if layout.has_time:
        channel_axis = frame_channel_axis(channel_axis, layout, image.ndim)
        image = image[0]
    return as_channels_first(
        image, channel_axis=channel_axis, spatial_ndim=layout.spatial_ndim
    ).shape[0]
