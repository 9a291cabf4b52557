"""``napari-segrep train``: self-supervised fine-tuning on image/label file pairs.

``--devices N`` relaunches this command under torchrun (DDP); the first Ctrl-C stops after the
current step and writes a checkpoint; rank 0 prints one line per epoch (mean loss, effective
rank and view agreement against their start values, a collapse; not with ``--quiet``) and
writes ``LOG_DIR/history.csv`` (one row per step) and ``LOG_DIR/quality.csv`` (one row per
quality record); ``--debug`` writes the augmented view pairs instead of training.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ._common import (
    TORCH_SEED_MAX,
    CLIError,
    HelpFormatter,
    Interrupted,
    add_pair_options,
    add_quiet_option,
    check_seed,
    pairs_from_args,
    parse_normalize,
)
from ._layout import add_layout_options, choose_backbone
from ._torchrun import torchrun_command
from ._train_output import quality_line, quality_summary, write_debug_views, write_history

__all__ = ["add_parser", "run"]


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``train`` on ``subparsers`` (from ``ArgumentParser.add_subparsers``)."""
    parser = subparsers.add_parser(
        "train",
        help="self-supervised fine-tuning on your own segments (NT-Xent + AdamW by default)",
        description="Fine-tune a SegmentEncoder without class labels: two augmented views of "
        "every segment are pulled together (NT-Xent, TiCo or VICReg). Writes LOG_DIR/last.pt "
        "(every epoch, and when interrupted), LOG_DIR/history.csv and LOG_DIR/quality.csv "
        "(effective rank and view agreement of a fixed set of segments per epoch, also "
        "printed); a LOG_DIR that holds another run is refused (continue it with "
        "--resume-checkpoint LOG_DIR/last.pt). Option "
        "names follow the original segrep_training.py; its underscore spellings (--crop_size...) "
        "work too. Multi-GPU: --devices N (or run under torchrun).",
        formatter_class=HelpFormatter,
    )
    _add_data_options(parser.add_argument_group("data"))
    _add_training_options(parser.add_argument_group("training"))
    _add_hardware_options(parser.add_argument_group("hardware"))
    parser.set_defaults(func=run)
    return parser


def _add_data_options(data) -> None:
    add_pair_options(data)
    add_layout_options(data)
    data.add_argument(
        "--channel-axis",
        "--channel_axis",
        dest="channel_axis",
        metavar="K",
        type=int,
        default=None,
        help="channel axis of multichannel images (counted in the whole image: a time-lapse's "
        "time axis is axis 0)",
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
        metavar="N",
        type=int,
        default=16,
        help="skip segments with fewer pixels (voxels)",
    )


def _add_training_options(run) -> None:
    run.add_argument(
        "--log-dir",
        "--log_dir",
        dest="log_dir",
        metavar="DIR",
        type=Path,
        default=Path("logs"),
        help="last.pt, history.csv and quality.csv go here; a folder holding another run is "
        "refused",
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
    run.add_argument(
        "--crop-size",
        "--crop_size",
        dest="crop_size",
        metavar="N",
        type=int,
        default=None,
        help="crop side in pixels (voxels for volumes); larger segments are downscaled to fit "
        "(default: 64 for 2D images, 32 for volumes)",
    )
    run.add_argument(
        "--batch-size",
        "--batch_size",
        dest="batch_size",
        metavar="N",
        type=int,
        default=64,
        help="per process (per GPU)",
    )
    run.add_argument(
        "--epochs",
        type=int,
        default=None,
        metavar="N",
        help="passes over all segments (default: 10, more when the segments are few, so that "
        "training takes at least 160 steps)",
    )
    run.add_argument(
        "--loss",
        default="ntxent",
        choices=["ntxent", "tico", "vicreg"],
        help="self-supervised loss between the two views",
    )
    run.add_argument(
        "--optimizer",
        default="adamw",
        choices=["adamw", "lars"],
        help="AdamW (short fine-tuning, small batches) or LARS (SegRep's, for batches of "
        "thousands); warm-up then cosine decay",
    )
    run.add_argument(
        "--lr",
        type=float,
        default=None,
        help="learning rate (default: AdamW 1e-4, LARS 0.3 x global batch / 256)",
    )
    run.add_argument(
        "--rotations",
        action="store_true",
        help="also teach invariance to 90-degree rotations and flips (objects whose "
        "orientation carries no meaning; off by default: it merges a 6 and a 9)",
    )
    run.add_argument(
        "--batchnorm-stats",
        dest="batchnorm_stats",
        default="frozen",
        choices=["frozen", "update"],
        help="keep the encoder's BatchNorm statistics (default) or re-estimate them from the "
        "training views",
    )
    run.add_argument(
        "--seed",
        type=int,
        default=0,
        metavar="N",
        help=f"seed of the model, data order and views, 0 to {TORCH_SEED_MAX}",
    )
    run.add_argument(
        "--grad-accumulate",
        "--grad_accumulate",
        dest="grad_accumulate",
        metavar="N",
        type=int,
        default=1,
        help="micro-batches per optimiser step",
    )
    run.add_argument(
        "--num-workers",
        "--num_workers",
        dest="num_workers",
        metavar="N",
        type=int,
        default=0,
        help="data loader worker processes",
    )
    run.add_argument(
        "--backbone",
        default=None,
        metavar="NAME",
        help="encoder of a new run, a registered backbone: resnet18, resnet34, resnet50 for 2D "
        "images; resnet18_3d (native 3D) or resnet18_planes (fast, three orthogonal planes) for "
        "volumes (default: resnet18 for 2D images, resnet18_3d for volumes)",
    )
    run.add_argument(
        "--resume-checkpoint",
        "--resume_checkpoint",
        dest="resume_checkpoint",
        metavar="PATH",
        type=Path,
        default=None,
        help="training checkpoint to continue from (LOG_DIR/last.pt continues that run)",
    )
    run.add_argument(
        "--init-checkpoint",
        dest="init_checkpoint",
        metavar="PATH",
        type=Path,
        default=None,
        help="encoder checkpoint to start a new run from (default: see --weights)",
    )
    from .weights import add_weights_option

    add_weights_option(run, checkpoint_flag="--init-checkpoint")
    run.add_argument(
        "--debug",
        action="store_true",
        help="write LOG_DIR/debug_views.png (augmented view pairs with mask "
        "outlines) and exit without training",
    )
    add_quiet_option(run, help="no progress bar and no epoch lines")


def _add_hardware_options(hw) -> None:
    hw.add_argument(
        "--device",
        "--accelerator",
        dest="device",
        default="auto",
        help="auto, cpu, cuda (gpu), mps",
    )
    hw.add_argument(
        "--devices",
        type=int,
        default=1,
        metavar="N",
        help="processes/GPUs; > 1 relaunches under torchrun (DDP)",
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


def run(args: argparse.Namespace) -> int:
    """The ``train`` command (or, with ``--debug``, the view grid).  Interrupted (a second
    Ctrl-C, or one before training starts), it says truthfully which checkpoint is there."""
    import os

    try:
        return _run(args)
    except KeyboardInterrupt:
        ckpt = args.log_dir / "last.pt"
        there = os.environ.get("RANK", "0") == "0" and ckpt.exists()
        what = f"the last checkpoint is {ckpt}: continue with --resume-checkpoint {ckpt}"
        raise Interrupted(what if there else None) from None


def _run(args: argparse.Namespace) -> int:
    import os

    check_seed(args.seed, maximum=TORCH_SEED_MAX)
    if args.devices > 1 and "WORLD_SIZE" not in os.environ:
        return _relaunch_under_torchrun(args.devices)
    from ..io import check_writable_dir

    normalize = parse_normalize(args.normalize)
    images, labels, names, layouts = _load_pairs(args)
    layout = layouts[0]  # all pairs have objects of its dimension
    backbone = choose_backbone(args.backbone, layout)
    crop_size = args.crop_size
    if crop_size is None:
        from ..engine.pipeline import default_crop_size

        crop_size = default_crop_size(layout)
    rank = int(os.environ.get("RANK", "0"))
    try:
        args.log_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CLIError(f"cannot create the log directory {args.log_dir}: {exc.strerror}") from None
    check_writable_dir(args.log_dir)
    _check_log_dir(args)
    options = {
        "grad_accumulate": args.grad_accumulate,
        "num_workers": args.num_workers,
        "min_size": args.min_size,
        "normalize": normalize,
        "channel_axis": args.channel_axis,
        "backbone": backbone,
        "sync_batchnorm": not args.no_sync_batchnorm,
        "gather_distributed": not args.no_gather_distributed,
        "amp": not args.no_amp,
    }
    if args.debug:
        return write_debug_views(
            images, labels, names, args, normalize, layouts=layouts, crop_size=crop_size
        )

    import warnings

    import napari_segrep as sr

    from .weights import start_encoder

    encoder = start_encoder(
        args.weights,
        backbone=backbone,
        seed=args.seed,
        in_channels=_channels(images[0], layout, args.channel_axis),
        checkpoint=args.init_checkpoint,
        resume=args.resume_checkpoint,
        announce=not args.quiet,
    )
    bar = None
    show = rank == 0 and not args.quiet

    plan = {"epochs": args.epochs}  # the default is resolved once the segments are counted

    def on_step(record: dict) -> None:
        nonlocal bar
        plan["epochs"] = record["total_steps"] // record["steps_per_epoch"]
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

    quality: list[dict] = []  # the start record first (also when resuming)

    def on_quality(record: dict) -> None:
        quality.append(record)
        if not show:
            return
        line = quality_line(record, quality[0], epochs=plan["epochs"])
        if bar is not None:
            bar.write(line, file=sys.stderr)
        else:
            print(line, file=sys.stderr)

    # First Ctrl-C: stop after the current step and write a checkpoint; second: abort.
    import signal

    stop = {"requested": False}

    def on_interrupt(signum, frame):
        if stop["requested"]:
            raise KeyboardInterrupt
        stop["requested"] = True
        sys.stderr.write(  # one write: a second Ctrl-C cannot cut the line short
            "\nnapari-segrep: stopping after this step and writing a checkpoint "
            "(Ctrl-C again to abort)\n"
        )

    previous = signal.signal(signal.SIGINT, on_interrupt)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        try:
            result = sr.train_ssl(
                images,
                labels,
                encoder=encoder,
                axes=layouts,
                epochs=args.epochs,
                batch_size=args.batch_size,
                crop_size=crop_size,
                loss=args.loss,
                optimizer=args.optimizer,
                lr=args.lr,
                image_masking=not (args.no_mask or args.no_image_mask),
                feature_masking=not (args.no_mask or args.no_feature_mask),
                device=args.device,
                checkpoint_dir=args.log_dir,
                resume=args.resume_checkpoint,
                seed=args.seed,
                batchnorm_stats=args.batchnorm_stats,
                augment={"rotate90": args.rotations, "flip": args.rotations},
                on_step=on_step,
                should_stop=lambda: stop["requested"],
                on_quality=on_quality,
                **options,
            )
        finally:
            signal.signal(signal.SIGINT, previous)
            if bar is not None:
                bar.close()
    if rank == 0:
        write_history(result.history, args.log_dir / "history.csv")
        if result.quality:
            write_history(result.quality, args.log_dir / "quality.csv")
        if result.stopped:
            print(
                "napari-segrep: stopped early; continue with --resume-checkpoint "
                f"{result.checkpoint_path}",
                file=sys.stderr,
            )
        first = result.history[0]["loss"] if result.history else float("nan")
        last = result.history[-1]["loss"] if result.history else float("nan")
        figures = quality_summary(result.quality)
        print(
            f"trained {len(result.history)} steps on {len(images)} image(s): loss {first:.4f} "
            f"-> {last:.4f}{figures}; checkpoint {result.checkpoint_path}",
            file=sys.stderr,
        )
    return 0


def _check_log_dir(args: argparse.Namespace) -> None:
    """Before any work: the run writes nothing over another run's files (a new run into a
    folder holding last.pt, history.csv, quality.csv or debug_views.png is refused)."""
    from ..io import run_dir_conflict

    if args.debug:
        conflict = args.log_dir / "debug_views.png"
        conflict = conflict if conflict.exists() else None
    else:
        conflict = run_dir_conflict(
            args.log_dir, resume=args.resume_checkpoint, others=("history.csv", "quality.csv")
        )
    if conflict is None:
        return
    if conflict.name == "last.pt":
        raise CLIError(
            f"{args.log_dir} already holds a training run ({conflict}): continue it with "
            f"--resume-checkpoint {conflict}, or start a new one with another --log-dir"
        )
    raise CLIError(f"{conflict} exists and would be replaced: choose another --log-dir")


def _relaunch_under_torchrun(n: int) -> int:
    """``--devices N`` outside torchrun: run this same command under torchrun."""
    import subprocess

    cmd = torchrun_command(n)
    print("napari-segrep: starting", n, "processes:", " ".join(cmd[1:]), file=sys.stderr)
    return subprocess.call(cmd)


def _load_pairs(args: argparse.Namespace):
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


def _channels(image, layout, channel_axis) -> int:
    """The number of channels of ``image`` (a pair's, checked), whatever its layout."""
    from .._images import as_channels_first, frame_channel_axis

    if layout.has_time:
        channel_axis = frame_channel_axis(channel_axis, layout, image.ndim)
        image = image[0]
    return as_channels_first(
        image, channel_axis=channel_axis, spatial_ndim=layout.spatial_ndim
    ).shape[0]
