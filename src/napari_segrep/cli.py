"""Command line: ``napari-segrep embed``, ``napari-segrep train``, ``napari-segrep demo``.

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
  napari-segrep train --images 'data/images/*.tif' --labels 'data/labels/*.tif' --epochs 50
  napari-segrep train --data data --debug        # look at the augmented views first
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
    from ._version import __version__

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

    train = sub.add_parser(
        "train",
        help="self-supervised fine-tuning on your own segments (TiCo + LARS by default)",
        description="Fine-tune a SegmentEncoder without class labels: two augmented views of "
        "every segment are pulled together (TiCo, NT-Xent or VICReg). Writes LOG_DIR/last.pt "
        "(every epoch, and when interrupted) and LOG_DIR/history.csv. Option names follow the "
        "original segrep_training.py; its underscore spellings (--crop_size...) work too. "
        "Multi-GPU: --devices N (or run under torchrun).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    _add_train_options(train)
    train.set_defaults(func=_cmd_train)

    demo = sub.add_parser(
        "demo",
        help="open napari on generated cells with Embed segments running (or a headless demo)",
        description="Open napari on a generated image of three classes of cells, with the Embed "
        "segments widget docked and its run started. Without napari (or without a display), or "
        "with --headless: embed the cells with an untrained SegmentEncoder and write "
        "demo.csv/demo.json plus the sample image and labels.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    demo.add_argument("--headless", action="store_true", help="no viewer: write the CSV demo")
    demo.add_argument(
        "--out", type=Path, default=Path("segrep_demo"), help="output folder of the headless demo"
    )
    demo.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    demo.add_argument(
        "--quit-when-done",
        action="store_true",
        help="close the viewer once the UMAP map is shown (for scripts and tests)",
    )
    demo.add_argument(
        "--screenshot",
        type=Path,
        default=None,
        help="save a screenshot of the window once the map is shown, then close",
    )
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


def _add_train_options(p: argparse.ArgumentParser) -> None:
    data = p.add_argument_group("data")
    data.add_argument("--images", help="glob of image files, e.g. 'data/images/*.tif'")
    data.add_argument(
        "--labels",
        help="glob of label files, paired with images by file stem "
        "(a _labels/_mask suffix is allowed)",
    )
    data.add_argument(
        "--data", type=Path, help="folder with images/ and labels/ (instead of --images/--labels)"
    )
    data.add_argument(
        "--channel-axis",
        "--channel_axis",
        dest="channel_axis",
        type=int,
        default=None,
        help="channel axis of multichannel images",
    )
    data.add_argument(
        "--normalize",
        default="image",
        metavar="MODE",
        help="image, segment, none or LOW,HIGH (as for embed)",
    )
    data.add_argument(
        "--min-size",
        "--min_size",
        dest="min_size",
        type=int,
        default=16,
        help="skip segments with fewer pixels",
    )
    run = p.add_argument_group("training")
    run.add_argument(
        "--log-dir",
        "--log_dir",
        dest="log_dir",
        type=Path,
        default=Path("logs"),
        help="checkpoints (last.pt) and history.csv go here",
    )
    run.add_argument(
        "--no-mask",
        "--no_mask",
        dest="no_mask",
        action="store_true",
        help="switch off image and feature masking (the plain SSL baseline)",
    )
    run.add_argument(
        "--no-image-mask",
        dest="no_image_mask",
        action="store_true",
        help="switch off image masking only",
    )
    run.add_argument(
        "--no-feature-mask",
        dest="no_feature_mask",
        action="store_true",
        help="switch off feature masking only",
    )
    run.add_argument("--crop-size", "--crop_size", dest="crop_size", type=int, default=64)
    run.add_argument(
        "--batch-size",
        "--batch_size",
        dest="batch_size",
        type=int,
        default=64,
        help="per process (per GPU)",
    )
    run.add_argument("--epochs", type=int, default=20)
    run.add_argument("--loss", default="tico", choices=["tico", "ntxent", "vicreg"])
    run.add_argument("--optimizer", default="lars", choices=["lars", "adamw"])
    run.add_argument(
        "--lr",
        type=float,
        default=None,
        help="learning rate (default: LARS 0.3 x global batch / 256, AdamW 1e-3)",
    )
    run.add_argument("--seed", type=int, default=0)
    run.add_argument(
        "--grad-accumulate",
        "--grad_accumulate",
        dest="grad_accumulate",
        type=int,
        default=1,
        help="micro-batches per optimiser step",
    )
    run.add_argument(
        "--num-workers",
        "--num_workers",
        dest="num_workers",
        type=int,
        default=0,
        help="data loader worker processes",
    )
    run.add_argument("--backbone", default="resnet18", choices=["resnet18", "resnet34", "resnet50"])
    run.add_argument(
        "--resume-checkpoint",
        "--resume_checkpoint",
        dest="resume_checkpoint",
        type=Path,
        default=None,
        help="training checkpoint to continue from",
    )
    run.add_argument(
        "--init-checkpoint",
        dest="init_checkpoint",
        type=Path,
        default=None,
        help="encoder checkpoint to start a new run from",
    )
    run.add_argument(
        "--debug",
        action="store_true",
        help="write LOG_DIR/debug_views.png (augmented view pairs with mask "
        "outlines) and exit without training",
    )
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    hw = p.add_argument_group("hardware")
    hw.add_argument(
        "--device",
        "--accelerator",
        dest="device",
        default="auto",
        help="auto, cpu, cuda (gpu), mps",
    )
    hw.add_argument(
        "--devices", type=int, default=1, help="processes/GPUs; > 1 relaunches under torchrun (DDP)"
    )
    hw.add_argument(
        "--strategy",
        default="auto",
        choices=["auto", "ddp"],
        help="multi-process strategy (DDP whenever --devices > 1 or under torchrun)",
    )
    hw.add_argument(
        "--no-sync-batchnorm",
        "--no_sync_batchnorm",
        dest="no_sync_batchnorm",
        action="store_true",
        help="per-process BatchNorm statistics under DDP",
    )
    hw.add_argument(
        "--no-gather-distributed",
        "--no_gather_distributed",
        dest="no_gather_distributed",
        action="store_true",
        help="compute the loss on each process's batch only under DDP",
    )
    hw.add_argument(
        "--no-amp", dest="no_amp", action="store_true", help="no mixed precision on CUDA"
    )


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
    from .analysis.export import provenance, write_table
    from .engine.devices import resolve_device
    from .engine.embed import embed_segments, encoder_for
    from .engine.segments import as_channels_first
    from .io import check_writable_dir

    check_writable_dir(output.parent if str(output.parent) else Path("."))
    n_channels = as_channels_first(image, channel_axis=channel_axis).shape[0]
    encoder = encoder_for(checkpoint, in_channels=n_channels, backbone=backbone, seed=seed)
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
    sidecar = provenance(
        command="embed",
        encoder_config=encoder.config(),
        n_segments=len(df),
        normalization=df.attrs.get("normalization"),
        crop_size=crop_size,
        batch_size=batch_size,
        channel_axis=channel_axis,
        device=str(dev),
        inputs=inputs or {},
        checkpoint=checkpoint,
        seconds=seconds,
        image_shape=list(image.shape),
        image_dtype=str(image.dtype),
    )
    write_table(df, output, provenance=sidecar)
    return df, seconds


def _cmd_embed(args: argparse.Namespace) -> int:
    normalize = _parse_normalize(args.normalize)
    from .io import read_image

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


def _relaunch_under_torchrun(n: int) -> int:
    """``--devices N`` outside torchrun: run this same command under torchrun."""
    import subprocess

    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={n}",
        "-m",
        "napari_segrep.cli",
        *sys.argv[1:],
    ]
    print("napari-segrep: starting", n, "processes:", " ".join(cmd[1:]), file=sys.stderr)
    return subprocess.call(cmd)


def _load_pairs(args: argparse.Namespace):
    from .io import pair_files, read_image

    pairs = pair_files(args.images, args.labels, data_dir=args.data)
    images, labels, names = [], [], []
    for image_path, label_path in pairs:
        image, lab = read_image(image_path), read_image(label_path)
        spatial = image.shape if image.ndim == 2 else None
        if spatial is not None and lab.shape != spatial:
            raise CLIError(
                f"{image_path.name} is {image.shape} but its labels {label_path.name} are "
                f"{lab.shape}: each pair must have the same (Y, X) shape"
            )
        images.append(image)
        labels.append(lab)
        names.append(f"{image_path.name} / {label_path.name}")
    return images, labels, names


def _cmd_train(args: argparse.Namespace) -> int:
    import os

    if args.devices > 1 and "WORLD_SIZE" not in os.environ:
        return _relaunch_under_torchrun(args.devices)
    from .io import check_writable_dir

    normalize = _parse_normalize(args.normalize)
    images, labels, names = _load_pairs(args)
    rank = int(os.environ.get("RANK", "0"))
    try:
        args.log_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CLIError(f"cannot create the log directory {args.log_dir}: {exc.strerror}") from None
    check_writable_dir(args.log_dir)
    options = {
        "grad_accumulate": args.grad_accumulate,
        "num_workers": args.num_workers,
        "min_size": args.min_size,
        "normalize": normalize,
        "channel_axis": args.channel_axis,
        "backbone": args.backbone,
        "sync_batchnorm": not args.no_sync_batchnorm,
        "gather_distributed": not args.no_gather_distributed,
        "amp": not args.no_amp,
    }
    if args.debug:
        return _write_debug_views(images, labels, names, args, normalize)

    import warnings

    from .engine.checkpoint import load_encoder
    from .engine.training import train_ssl

    encoder = load_encoder(args.init_checkpoint) if args.init_checkpoint else None
    bar = None
    show = rank == 0 and not args.quiet

    def on_step(record: dict) -> None:
        nonlocal bar
        if not show:
            return
        if bar is None:
            from tqdm import tqdm

            bar = tqdm(
                total=record["total_steps"],
                initial=record["step"] - 1,
                unit="step",
                desc="training",
                file=sys.stderr,
            )
        bar.set_postfix(
            epoch=record["epoch"],
            loss=f"{record['loss']:.4f}",
            crops_s=f"{record['crops_per_s']:.0f}",
        )
        bar.update(1)

    # First Ctrl-C: stop after the current step and write a checkpoint; second: abort.
    import signal

    stop = {"requested": False}

    def on_interrupt(signum, frame):
        if stop["requested"]:
            raise KeyboardInterrupt
        stop["requested"] = True
        print(
            "\nnapari-segrep: stopping after this step and writing a checkpoint "
            "(Ctrl-C again to abort)",
            file=sys.stderr,
        )

    previous = signal.signal(signal.SIGINT, on_interrupt)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        try:
            result = train_ssl(
                images,
                labels,
                encoder=encoder,
                epochs=args.epochs,
                batch_size=args.batch_size,
                crop_size=args.crop_size,
                loss=args.loss,
                optimizer=args.optimizer,
                lr=args.lr,
                image_masking=not (args.no_mask or args.no_image_mask),
                feature_masking=not (args.no_mask or args.no_feature_mask),
                device=args.device,
                checkpoint_dir=args.log_dir,
                resume=args.resume_checkpoint,
                seed=args.seed,
                on_step=on_step,
                should_stop=lambda: stop["requested"],
                **options,
            )
        finally:
            signal.signal(signal.SIGINT, previous)
            if bar is not None:
                bar.close()
    if rank == 0:
        _write_history(result.history, args.log_dir / "history.csv")
        if result.stopped:
            print(
                "napari-segrep: stopped early; continue with --resume-checkpoint "
                f"{result.checkpoint_path}",
                file=sys.stderr,
            )
        first = result.history[0]["loss"] if result.history else float("nan")
        last = result.history[-1]["loss"] if result.history else float("nan")
        print(
            f"trained {len(result.history)} steps on {len(images)} image(s): loss {first:.4f} "
            f"-> {last:.4f}; checkpoint {result.checkpoint_path}",
            file=sys.stderr,
        )
    return 0


def _write_history(history: list[dict], path: Path) -> None:
    import pandas as pd

    from .io import atomic_write

    text = pd.DataFrame(history).to_csv(index=False).encode()
    atomic_write(path, lambda fh: fh.write(text))


def _write_debug_views(images, labels, names, args, normalize) -> int:
    """A PNG grid: for 8 segments, view A and view B with their mask outlines in red."""
    import imageio.v3 as iio
    import numpy as np
    from skimage.segmentation import find_boundaries

    from .engine.augment import AugmentConfig
    from .engine.dataset import SegmentDataset
    from .io import atomic_write

    ds = SegmentDataset(
        images,
        labels,
        crop_size=args.crop_size,
        channel_axis=args.channel_axis,
        normalize=normalize,
        min_size=args.min_size,
        augment=AugmentConfig(crop_size=args.crop_size),
        seed=args.seed,
        names=names,
    )
    if len(ds) == 0:
        raise CLIError("no segment of at least --min-size pixels in the data")
    tiles = []
    for i in np.linspace(0, len(ds) - 1, min(8, len(ds))).astype(int):
        a, ma, b, mb = ds[int(i)]
        pair = []
        for view, mask in ((a, ma), (b, mb)):
            grey = np.clip(view.numpy().mean(0), 0, 1)
            rgb = np.stack([grey] * 3, -1)
            rgb[find_boundaries(mask[0].numpy(), mode="inner")] = (1.0, 0.1, 0.1)
            pair.append(np.pad(rgb, ((2, 2), (2, 2), (0, 0)), constant_values=1))
        tiles.append(np.concatenate(pair, axis=1))
    grid = (np.concatenate(tiles, axis=0) * 255).astype(np.uint8)
    grid = np.kron(grid, np.ones((2, 2, 1), np.uint8))
    path = args.log_dir / "debug_views.png"
    atomic_write(path, lambda fh: fh.write(iio.imwrite("<bytes>", grid, extension=".png")))
    print(
        f"{len(ds)} segments ({ds.n_skipped} skipped as smaller than --min-size); "
        f"view pairs written to {path}",
        file=sys.stderr,
    )
    return 0


def _viewer_possible() -> str | None:
    """Why the napari demo can't run here (None when it can)."""
    import importlib.util
    import os

    if importlib.util.find_spec("napari") is None:
        return "napari is not installed (pip install 'napari-segrep[napari]')"
    if sys.platform.startswith("linux") and not (
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    ):
        return "no display (DISPLAY is not set)"
    return None


def _cmd_demo(args: argparse.Namespace) -> int:
    if not args.headless:
        why_not = _viewer_possible()
        if why_not is None:
            from ._widgets.demo import run_demo

            return run_demo(quit_when_done=args.quit_when_done, screenshot=args.screenshot)
        print(f"napari-segrep demo: {why_not}: running the headless demo instead", file=sys.stderr)
    return _headless_demo(args)


def _headless_demo(args: argparse.Namespace) -> int:
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
    except RuntimeError as exc:
        from .errors import TrainingDiverged

        if isinstance(exc, TrainingDiverged):
            print(f"napari-segrep: error: {exc}", file=sys.stderr)
            return 1
        raise
    except KeyboardInterrupt:
        print("napari-segrep: interrupted; nothing was written", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
