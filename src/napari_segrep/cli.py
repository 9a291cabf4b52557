"""Command line: ``napari-segrep embed``, ``napari-segrep demo``.

The same engine/analysis calls as the widgets; heavy modules are imported inside the commands so
``napari-segrep --help`` answers at once.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

__all__ = ["get_arg_parser", "main"]

_EPILOG = """\
examples:
  napari-segrep embed cells.tif cells_labels.tif -o cells.csv
  napari-segrep embed rgb.png labels.png -o out.csv --normalize segment --crop-size 96
  napari-segrep embed stack.tif labels.tif -o out.csv --channel-axis 0 --checkpoint model.pt
  napari-segrep demo --out demo_output

Outputs: OUT.csv (label, centroid_y, centroid_x, area, bbox_y0, bbox_x0, bbox_y1, bbox_x1,
scale, emb_0..emb_{D-1}) and OUT.json (provenance: package version, encoder configuration,
checkpoint sha256, normalisation, crop size, seed, inputs). Both are written atomically.
"""


class CLIError(Exception):
    """A user error: printed as one line on stderr, exit status 2."""


def get_arg_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="napari-segrep",
        description="Mask-supervised segment representations (SegRep): one embedding per "
        "segment, computed from that segment alone (image and feature masking).",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"napari-segrep {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    embed = sub.add_parser(
        "embed",
        help="embed every segment of a label image and write a CSV",
        description="Embed every non-zero label of LABELS, seen in IMAGE, and write one row per "
        "segment to OUT.csv plus an OUT.json provenance sidecar.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    embed.add_argument(
        "image",
        type=Path,
        help="image file (TIFF, PNG or JPEG): 2D, RGB, or multichannel with --channel-axis",
    )
    embed.add_argument(
        "labels", type=Path, help="label image file of the same (Y, X) shape; 0 is background"
    )
    _add_embed_options(embed)
    embed.set_defaults(func=_cmd_embed)

    demo = sub.add_parser(
        "demo",
        help="run the main job on generated sample cells (headless: writes a CSV)",
        description="Generate a sample image of three classes of cells, embed every cell with an "
        "untrained SegmentEncoder, and write demo.csv/demo.json plus the sample image and labels.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    demo.add_argument("--out", type=Path, default=Path("segrep_demo"), help="output folder")
    demo.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    demo.set_defaults(func=_cmd_demo)
    return parser


def _add_embed_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", type=Path, required=True, help="output CSV path (OUT.csv)")
    p.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        help="napari-segrep checkpoint to embed with (default: untrained encoder)",
    )
    p.add_argument(
        "--backbone",
        default="resnet18",
        choices=["resnet18", "resnet34", "resnet50"],
        help="backbone of the untrained encoder (ignored with --checkpoint)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the untrained encoder")
    p.add_argument(
        "--crop-size",
        type=int,
        default=64,
        help="crop side in pixels; larger segments are downscaled to fit",
    )
    p.add_argument("--batch-size", type=int, default=128, help="crops per forward pass")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument(
        "--normalize",
        default="image",
        metavar="MODE",
        help="'image' (1st-99.8th percentile of the image), 'segment' (of each "
        "segment's pixels), 'none', or fixed 'LOW,HIGH'",
    )
    p.add_argument(
        "--channel-axis",
        type=int,
        default=None,
        help="channel axis of a multichannel image (RGB (Y, X, 3) needs none)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _parse_normalize(text: str):
    mode = text.strip().lower()
    if mode in ("image", "segment"):
        return mode
    if mode == "none":
        return None
    parts = mode.split(",")
    if len(parts) == 2:
        try:
            return float(parts[0]), float(parts[1])
        except ValueError:
            pass
    raise CLIError(
        f"--normalize {text!r} is not understood: use image, segment, none or LOW,HIGH "
        "(e.g. 0,4095)"
    )


def read_image(path: Path):
    """Read TIFF with tifffile, PNG/JPEG (and anything else imageio knows) with imageio."""
    import numpy as np

    if not path.is_file():
        raise CLIError(f"{path} does not exist")
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            return np.asarray(tifffile.imread(path))
        import imageio.v3 as iio

        return np.asarray(iio.imread(path))
    except Exception as exc:  # noqa: BLE001 - any reader failure is a user-facing error
        raise CLIError(f"cannot read {path} as an image: {exc}") from None


class _ProgressBar:
    """tqdm on stderr, fed by embed_segments' progress(done, total)."""

    def __init__(self, desc: str, disable: bool) -> None:
        self.desc, self.disable, self.bar = desc, disable, None

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(
                total=total, desc=self.desc, unit="seg", file=sys.stderr, disable=self.disable
            )
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run_embedding(
    image,
    labels,
    *,
    output: Path,
    checkpoint: Path | None = None,
    backbone: str = "resnet18",
    seed: int = 0,
    crop_size: int = 64,
    batch_size: int = 128,
    device: str = "auto",
    normalize="image",
    channel_axis: int | None = None,
    quiet: bool = False,
    inputs: dict | None = None,
):
    """Embed, then write ``output`` and its sidecar.  Checks the output folder first."""
    import torch

    from . import __version__
    from .analysis.export import write_table
    from .engine.checkpoint import check_writable_dir, file_sha256, load_encoder
    from .engine.embed import embed_segments, resolve_device
    from .engine.encoder import SegmentEncoder
    from .engine.segments import as_channels_first, resolve_normalization

    check_writable_dir(output.parent if str(output.parent) else Path("."))
    if checkpoint is not None:
        encoder = load_encoder(checkpoint)
    else:
        n_channels = as_channels_first(image, channel_axis=channel_axis).shape[0]
        encoder = SegmentEncoder(backbone, in_channels=n_channels, seed=seed)
    dev = resolve_device(device)
    bar = _ProgressBar("embedding", disable=quiet)
    t0 = time.perf_counter()
    try:
        df = embed_segments(
            image,
            labels,
            encoder,
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
    norm = resolve_normalization(as_channels_first(image, channel_axis=channel_axis), normalize)
    provenance = {
        "package": "napari-segrep",
        "package_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": "embed",
        "inputs": inputs or {},
        "image_shape": list(image.shape),
        "image_dtype": str(image.dtype),
        "n_segments": int(len(df)),
        "encoder": encoder.config(),
        "checkpoint": str(checkpoint) if checkpoint else None,
        "checkpoint_sha256": file_sha256(checkpoint) if checkpoint else None,
        "normalization": norm.describe(),
        "crop_size": crop_size,
        "batch_size": batch_size,
        "channel_axis": channel_axis,
        "seed": encoder.seed,
        "device": str(dev),
        "torch_version": torch.__version__,
        "seconds": round(seconds, 3),
    }
    write_table(df, output, provenance=provenance)
    return df, seconds


def _cmd_embed(args: argparse.Namespace) -> int:
    normalize = _parse_normalize(args.normalize)
    image = read_image(args.image)
    labels = read_image(args.labels)
    df, seconds = run_embedding(
        image,
        labels,
        output=args.output,
        checkpoint=args.checkpoint,
        backbone=args.backbone,
        seed=args.seed,
        crop_size=args.crop_size,
        batch_size=args.batch_size,
        device=args.device,
        normalize=normalize,
        channel_axis=args.channel_axis,
        quiet=args.quiet,
        inputs={"image": str(args.image), "labels": str(args.labels)},
    )
    print(
        f"{len(df)} segments embedded in {seconds:.1f} s -> {args.output} "
        f"(+ {args.output.with_suffix('.json').name})",
        file=sys.stderr,
    )
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    import numpy as np
    import tifffile

    from ._sample_data import make_cells

    args.out.mkdir(parents=True, exist_ok=True)
    image, labels, classes = make_cells()
    tifffile.imwrite(args.out / "cells.tif", image)
    tifffile.imwrite(args.out / "cells_labels.tif", labels)
    output = args.out / "demo.csv"
    df, seconds = run_embedding(
        image,
        labels,
        output=output,
        device=args.device,
        inputs={"sample": "generated cells (napari_segrep._sample_data)"},
    )
    # A first look at what the embeddings hold: nearest-neighbour class agreement.
    emb = df.filter(like="emb_").to_numpy()
    emb = (emb - emb.mean(0)) / (emb.std(0) + 1e-8)
    d = ((emb[:, None] - emb[None]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    truth = np.array([classes[int(k)] for k in df["label"]])
    agreement = float((truth[d.argmin(1)] == truth).mean())
    print(f"{len(df)} cells of {len(set(truth))} classes embedded in {seconds:.1f} s -> {output}")
    print(
        f"nearest-neighbour class agreement of the untrained embeddings: {agreement:.0%} "
        f"(chance ~{1 / len(set(truth)):.0%})"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = get_arg_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except CLIError as exc:
        print(f"napari-segrep: error: {exc}", file=sys.stderr)
        return 2
    except (ValueError, TypeError, FileNotFoundError) as exc:
        print(f"napari-segrep: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("napari-segrep: interrupted; nothing was written", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
