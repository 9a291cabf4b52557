"""``napari-segrep embed IMAGE LABELS -o OUT.csv``: one row per segment plus a JSON sidecar."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ._common import (
    BACKBONES,
    DEVICE_HELP,
    TORCH_SEED_MAX,
    CLIError,
    HelpFormatter,
    ProgressBar,
    add_quiet_option,
    check_outputs,
    check_seed,
    parse_normalize,
)
from ._embed_collection import add_collection_options, run_collection
from ._layout import (
    add_layout_options,
    check_encoder_dims,
    choose_backbone,
    layout_channels,
    pair_hint,
    resolve_layout,
)
from .weights import add_weights_option, choose_weights

__all__ = ["add_parser", "run", "run_embedding"]


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``embed`` on ``subparsers`` (from ``ArgumentParser.add_subparsers``)."""
    parser = subparsers.add_parser(
        "embed",
        help="embed every segment of a label image (or of a collection) and write a table",
        description="Embed every non-zero label of LABELS, seen in IMAGE, and write one row per "
        "segment to OUT.csv (or OUT.parquet) plus an OUT.csv.json provenance sidecar. Many pairs: "
        "--images GLOB --labels GLOB or --data DIR, into one table with an image column; "
        "finished images are kept in OUT.parquet.parts/ as they come, so rerunning an "
        "interrupted command continues it; --devices N shares the images among N processes "
        "(or run under torchrun). Existing files are only replaced with --overwrite; an input "
        "is never an output.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "image",
        type=Path,
        nargs="?",
        metavar="IMAGE",
        help="image file (TIFF, PNG or JPEG): 2D, RGB, a volume (z-stack), a time-lapse, "
        "multichannel with --channel-axis (default: none, with --images or --data)",
    )
    parser.add_argument(
        "labels_file",
        metavar="LABELS",
        type=Path,
        nargs="?",
        help="label image file of the image's shape, less its channels: (Y, X), or 3D "
        "(Z, Y, X) or (T, Y, X) with --axes, or (T, Z, Y, X); 0 is background (default: none)",
    )
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        required=True,
        metavar="OUT",
        help="output table OUT.csv, OUT.parquet or OUT.h5ad (AnnData: the [anndata] extra); its "
        "provenance goes to OUT.csv.json (OUT.parquet.json...) beside it",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace OUT.csv and OUT.csv.json when they exist (otherwise: an error, nothing done)",
    )
    parser.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        metavar="PATH",
        help="napari-segrep checkpoint to embed with (default: see --weights)",
    )
    add_weights_option(parser, checkpoint_flag="--checkpoint")
    parser.add_argument(
        "--backbone",
        default=None,
        choices=BACKBONES,
        metavar="NAME",
        help=f"backbone of the pretrained or untrained encoder, one of {', '.join(BACKBONES)} "
        "(the ViTs: timm's, with masked attention; crop 112 by default); ignored with "
        "--checkpoint (default: resnet18 for 2D objects, resnet18_3d for volumes; "
        "resnet18_planes is the fast mode for volumes: the 2D network on three orthogonal "
        "planes of each object)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        metavar="N",
        help=f"seed of the untrained encoder, 0 to {TORCH_SEED_MAX}",
    )
    parser.add_argument(
        "--crop-size",
        type=int,
        default=None,
        metavar="N",
        help="crop side in pixels (voxels); larger segments are downscaled to fit (default: 64 "
        "for 2D objects, 32 for volumes)",
    )
    parser.add_argument(
        "--batch-size", type=int, default=128, metavar="N", help="crops per forward pass"
    )
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)
    parser.add_argument(
        "--normalize",
        default="image",
        metavar="MODE",
        help="'image' (1st-99.8th percentile of the image), 'segment' (of each "
        "segment's pixels), 'none', or fixed 'LOW,HIGH'",
    )
    parser.add_argument(
        "--channel-axis",
        type=int,
        default=None,
        metavar="K",
        help="channel axis of a multichannel image, counted in the whole image (a time-lapse's "
        "time axis included; RGB (Y, X, 3) needs none)",
    )
    add_layout_options(parser)
    parser.add_argument(
        "--measure",
        action="store_true",
        help="also measure every segment (one IMAGE LABELS pair only): area, shape (perimeter, "
        "eccentricity, solidity, extent, axis lengths) and intensity mean and std per channel, "
        "as columns before emb_0 (for classify with features embedding+geometry)",
    )
    add_quiet_option(parser)
    add_collection_options(parser)
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """The ``embed`` command: check the outputs, read both files, embed, write OUT.csv and
    OUT.csv.json (together, or neither)."""
    from ..analysis.export import sidecar_path, write_table

    check_seed(args.seed, maximum=TORCH_SEED_MAX)
    collection = args.images is not None or args.labels is not None or args.data is not None
    if collection and (args.image is not None or args.labels_file is not None):
        raise CLIError(
            "give IMAGE LABELS, or --images GLOB --labels GLOB, or --data DIR: not both forms"
        )
    if args.images is not None and args.data is not None:
        raise CLIError("give --images GLOB --labels GLOB, or --data DIR: not both")
    if collection:
        return run_collection(args)
    if args.image is None or args.labels_file is None:
        raise CLIError(
            "give IMAGE LABELS (one pair), or --images GLOB --labels GLOB, or --data DIR"
        )
    if args.devices != 1 or args.hash or args.workers:
        raise CLIError("--devices, --hash and --workers are for collections (--images or --data)")
    args.labels = args.labels_file
    normalize = parse_normalize(args.normalize)
    check_outputs(
        [args.output, sidecar_path(args.output)],
        inputs={"image": args.image, "labels": args.labels, "checkpoint": args.checkpoint},
        overwrite=args.overwrite,
    )
    from ..io import read_image

    image = read_image(args.image)
    labels = read_image(args.labels)
    notes: list[str] = []
    layout = resolve_layout(
        labels.shape,
        axes=args.axes,
        spacing=args.spacing,
        labels_path=args.labels,
        hint=pair_hint(args.image, args.labels),
        notes=notes,
    )
    layout_channels(
        image.shape,
        labels.shape,
        layout,
        channel_axis=args.channel_axis,
        image_name=f"IMAGE {args.image.name}",
        labels_name=f"LABELS {args.labels.name}",
    )
    backbone = choose_backbone(
        args.backbone, layout, checkpoint=args.checkpoint, device=args.device, weights=args.weights
    )
    weights, start = choose_weights(
        args.weights, backbone=backbone, seed=args.seed, checkpoint=args.checkpoint
    )
    if not layout.is_volume and not layout.has_time:
        _refuse_swapped(image, labels, image_path=args.image, labels_path=args.labels)
    for note in notes:
        print(note, file=sys.stderr)
    if not args.quiet:
        print(start, file=sys.stderr)
    df, seconds, sidecar = run_embedding(
        image,
        labels,
        checkpoint=args.checkpoint,
        weights=weights,
        backbone=backbone,
        seed=args.seed,
        crop_size=args.crop_size,
        batch_size=args.batch_size,
        device=args.device,
        normalize=normalize,
        channel_axis=args.channel_axis,
        quiet=args.quiet,
        inputs={"image": str(args.image), "labels": str(args.labels)},
        layout=layout,
    )
    sidecar["measure"] = bool(args.measure)
    if args.measure:
        from ..analysis.measure import add_measurements, geometry_columns

        t0 = time.perf_counter()
        try:
            df = add_measurements(
                df,
                image,
                labels,
                channel_axis=args.channel_axis,
                axes=layout.axes,
                spacing=layout.spacing if layout.is_volume else None,  # 2D: in pixels
            )
        except (TypeError, ValueError) as exc:
            raise CLIError(str(exc)) from None
        sidecar["measurements"] = geometry_columns(df)
        sidecar["measure_seconds"] = round(time.perf_counter() - t0, 3)
    write_table(df, args.output, provenance=sidecar, overwrite=args.overwrite)
    print(
        f"{len(df)} segments embedded in {seconds:.1f} s"
        f"{' and measured' if args.measure else ''} -> {args.output} "
        f"(+ {sidecar_path(args.output).name})",
        file=sys.stderr,
    )
    return 0


def _refuse_swapped(image, labels, *, image_path: Path, labels_path: Path) -> None:
    """Before any work: a :class:`CLIError` naming both files when LABELS looks like an
    intensity image and IMAGE like a label image (the two were given the wrong way round).

    A label image is piecewise constant (most pixels equal their neighbour; an intensity
    image's noise makes that rare), integer, with background 0 and compact segments; the labels
    look like an intensity image when :func:`~napari_segrep.engine.segments.labels_warnings`
    finds tiny or scattered segments.  Only a plausible image is looked at in full, so a normal
    pair costs one comparison of neighbouring pixels.
    """
    import re

    import numpy as np

    from ..engine.segments import labels_warnings, segment_table

    if not (
        image.ndim == 2
        and image.shape == labels.shape
        and image.size > 1
        and np.issubdtype(image.dtype, np.integer)
        and np.issubdtype(labels.dtype, np.integer)
        and image.min() == 0
        and labels.min() >= 0
    ):
        return
    if np.mean(image[:, 1:] == image[:, :-1]) < _PIECEWISE_CONSTANT:
        return  # the image is not a label image: whatever the labels are, not swapped
    suspicious = labels_warnings(segment_table(labels))
    if not suspicious:
        return
    table = segment_table(image)
    if len(table) == 0 or labels_warnings(table):
        return
    reason = re.sub(r" \(.*\)$", "", suspicious[0].split(":")[0])  # "N of M segments ..."
    raise CLIError(
        f"image and labels seem swapped: the LABELS {labels_path} look like an intensity image "
        f"({reason}) and the IMAGE {image_path} like a label image ({len(table)} compact "
        f"segments); give the image first: napari-segrep embed {labels_path} {image_path} ..."
    )


#: The least share of pixels equal to their right neighbour for an image to be a label image
#: (labels: 0.97 for the sample cells, 0.98 for coins; intensity images: 0.002-0.6).
_PIECEWISE_CONSTANT = 0.8


def run_embedding(
    image,
    labels,
    *,
    checkpoint: Path | None = None,
    weights: str | None = None,
    backbone: str | None = None,
    seed: int = 0,
    crop_size: int | None = None,
    batch_size: int = 128,
    device: str = "auto",
    normalize="image",
    channel_axis: int | None = None,
    quiet: bool = False,
    inputs: dict | None = None,
    command: str = "embed",
    layout=None,
):
    """Check the inputs (a user's error is a :class:`CLIError`), embed; returns the table, the
    seconds it took and its provenance record (the caller writes them).  The encoder: the
    ``checkpoint``, else ``weights`` (``"imagenet"``, or None: untrained ``backbone``; None:
    the default for the objects' dimensions).  ``layout``: the labels'
    (:func:`~napari_segrep._images.layout_of`; default: 2D labels are ``"yx"``, 3D ones must
    say); ``crop_size`` None: the engine's default for it (64 for 2D objects, 32 for volumes).
    """
    from .._images import as_channels_first, frame_channel_axis, validate_labels
    from ..analysis.export import provenance
    from ..engine.devices import resolve_device
    from ..engine.embed import embed_segments, encoder_for

    if layout is None:
        layout = resolve_layout(labels.shape, axes=None, spacing=None, labels_path=Path("labels"))
    channels = layout_channels(image.shape, labels.shape, layout, channel_axis=channel_axis)
    try:  # the values, before any work (as the engine reads them)
        as_channels_first(
            image[0] if layout.has_time else image,
            channel_axis=frame_channel_axis(channel_axis, layout, image.ndim),
            spatial_ndim=layout.spatial_ndim,
        )
        validate_labels(labels, labels.shape)
    except (TypeError, ValueError) as exc:
        raise CLIError(str(exc)) from None
    backbone = choose_backbone(backbone, layout, checkpoint=checkpoint, device=device)
    encoder = encoder_for(
        checkpoint if checkpoint is not None else weights,
        in_channels=channels,
        backbone=backbone,
        seed=seed,
    )
    check_encoder_dims(encoder, layout, checkpoint=checkpoint)
    dev = resolve_device(device)
    bar = ProgressBar("embedding", disable=quiet)
    t0 = time.perf_counter()
    try:
        df = embed_segments(
            image,
            labels,
            encoder,
            axes=layout,
            crop_size=crop_size,
            batch_size=batch_size,
            device=dev,
            channel_axis=channel_axis,
            normalize=normalize,
            progress=bar,
        )
    finally:
        bar.close()
    seconds = time.perf_counter() - t0
    sidecar = provenance(
        command=command,
        encoder_config=encoder.record(),
        n_segments=len(df),
        normalization=df.attrs.get("normalization"),
        crop_size=df.attrs.get("crop_size", crop_size),
        batch_size=batch_size,
        channel_axis=channel_axis,
        device=str(dev),
        inputs=inputs or {},
        checkpoint=checkpoint,
        seconds=seconds,
        layout=layout.describe(),
        image_shape=list(image.shape),
        image_dtype=str(image.dtype),
    )
    return df, seconds, sidecar
