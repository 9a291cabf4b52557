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

from ..engine.run_folder import CHARTS_DIR, TENSORBOARD_DIR
from ..engine.train_config import ROTATIONS_HELP, default, help_text, setting
from ..refine import BATCH_SIZE as REFINE_BATCH_SIZE
from ._common import (
    TORCH_SEED_MAX,
    CLIError,
    HelpFormatter,
    Interrupted,
    add_pair_options,
    add_quiet_option,
    check_seed,
    parse_normalize,
)
from ._config_file import CONFIG_NAME, config_text, resolved_options, with_config_file
from ._layout import add_layout_options, choose_backbone
from ._refine import ENCODER_NAME, Refinement, add_refine_options, check_objective
from ._torchrun import torchrun_command
from ._train_data import channels_of, load_pairs
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
    _setting_option(data, "channel_axis", "--channel-axis", "--channel_axis")
    _setting_option(data, "normalize", "--normalize")
    _setting_option(data, "min_size", "--min-size", "--min_size")


def _add_training_options(run) -> None:
    run.add_argument(
        "--config",
        metavar="FILE",
        type=Path,
        default=None,
        help="a YAML file of these options (keys: the long option names with underscores, "
        "e.g. crop_size: 32); options given here override it. Every run writes its resolved "
        "one, LOG_DIR/config.yaml, which reruns it: --config LOG_DIR/config.yaml --log-dir NEW",
    )
    run.add_argument(
        "--print-config",
        dest="print_config",
        action="store_true",
        help="print the resolved configuration (YAML, as LOG_DIR/config.yaml) and exit",
    )
    run.add_argument(
        "--log-dir",
        "--log_dir",
        dest="log_dir",
        metavar="DIR",
        type=Path,
        default=Path("logs"),
        help="config.yaml, last.pt, history.csv, quality.csv, charts/ and tensorboard/ go "
        "here; a folder holding another run is refused",
    )
    run.add_argument(
        "--no-tensorboard",
        dest="no_tensorboard",
        action="store_true",
        help="write no LOG_DIR/tensorboard/ (default: written when tensorboard is installed)",
    )
    run.add_argument(
        "--no-mask",
        "--no_mask",
        dest="no_mask",
        action="store_true",
        help="switch off image and feature masking (the plain SSL baseline)",
    )
    _switch_off(run, "image_masking", "--no-image-mask", dest="no_image_mask")
    _switch_off(run, "feature_masking", "--no-feature-mask", dest="no_feature_mask")
    _setting_option(run, "crop_size", "--crop-size", "--crop_size")
    _setting_option(
        run,
        "batch_size",
        "--batch-size",
        "--batch_size",
        default=None,
        help=help_text("batch_size") + f" (default: {default('batch_size')}; refining with "
        f"--annotations: {REFINE_BATCH_SIZE})",
    )
    _setting_option(run, "epochs", "--epochs")
    _setting_option(run, "objective", "--objective")
    _setting_option(run, "loss", "--loss")
    _setting_option(run, "optimizer", "--optimizer")
    _setting_option(run, "lr", "--lr")
    run.add_argument("--rotations", action="store_true", help=ROTATIONS_HELP)
    _setting_option(run, "batchnorm_stats", "--batchnorm-stats")
    _setting_option(
        run,
        "seed",
        "--seed",
        help=f"{help_text('seed')}, 0 to {TORCH_SEED_MAX}",
    )
    _setting_option(run, "grad_accumulate", "--grad-accumulate", "--grad_accumulate")
    _setting_option(run, "num_workers", "--num-workers", "--num_workers")
    _setting_option(run, "backbone", "--backbone")
    _add_tuning_options(run)
    add_refine_options(run)
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


#: The settings of a recipe a run rarely changes (``--weight-decay``...): passed to
#: ``train_ssl`` as they are.
_TUNING = (
    "weight_decay",
    "warmup_fraction",
    "head_lr_scale",
    "projection_hidden",
    "projection_dim",
    "min_steps",
    "monitor_size",
)


def _add_tuning_options(run) -> None:
    for name in _TUNING:
        _setting_option(run, name, "--" + name.replace("_", "-"))
    run.add_argument(
        "--monitor-hold-out",
        dest="monitor_hold_out",
        action=argparse.BooleanOptionalAction,
        default=None,
        help=help_text("monitor_hold_out", with_default=True),
    )


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
    _switch_off(hw, "sync_batchnorm", "--no-sync-batchnorm", "--no_sync_batchnorm")
    _switch_off(hw, "gather_distributed", "--no-gather-distributed", "--no_gather_distributed")
    _switch_off(hw, "amp", "--no-amp")


def _setting_option(group, name: str, *flags: str, **overrides) -> None:
    """The option ``flags`` of the :class:`~napari_segrep.engine.train_config.TrainConfig`
    setting ``name``: its default (None where the run chooses it from the data or the
    optimiser, as the help says), help text, choices and type from there."""
    spec = setting(name)
    meta = spec.metadata
    kind = str(spec.type).split("|")[0].strip()
    options = {
        "dest": name,
        "default": None if "auto" in meta else default(name),
        "help": help_text(name, with_default=True),
        "type": {"int": int, "float": float}.get(kind),
    }
    if meta.get("choices"):
        options["choices"] = list(meta["choices"])
    if meta.get("metavar"):
        options["metavar"] = meta["metavar"]
    options.update(overrides)
    group.add_argument(*flags, **options)


def _switch_off(group, name: str, *flags: str, dest: str | None = None) -> None:
    """``--no-...``: the switch that turns the setting ``name`` (True by default) off."""
    if default(name) is not True:
        raise ValueError(f"{name} is not on by default: no switch turns it off")
    dest = dest or flags[0].lstrip("-").replace("-", "_")
    group.add_argument(*flags, dest=dest, action="store_true", help=setting(name).metadata["off"])


def run(args: argparse.Namespace) -> int:
    """The ``train`` command (or, with ``--debug``, the view grid).  Interrupted (a second
    Ctrl-C, or one before training starts), it says truthfully which checkpoint is there."""
    import os

    args = with_config_file(args)
    try:
        return _run(args)
    except KeyboardInterrupt:
        ckpt = args.log_dir / "last.pt"
        there = os.environ.get("RANK", "0") == "0" and ckpt.exists()
        what = f"the last checkpoint is {ckpt}: continue with --resume-checkpoint {ckpt}"
        raise Interrupted(what if there else None) from None


def _run(args: argparse.Namespace) -> int:
    import os

    check_objective(args)  # --annotations: the supervised objective
    normalize = _check_settings(args)
    if args.devices > 1 and "WORLD_SIZE" not in os.environ and not args.print_config:
        return _relaunch_under_torchrun(args.devices)
    from ..io import check_writable_dir

    images, labels, names, layouts = load_pairs(args)
    refine = None if args.annotations is None else Refinement.read(args, names, labels, layouts)
    layout = layouts[0]  # all pairs have objects of its dimension
    backbone = choose_backbone(args.backbone, layout, weights=args.weights)
    crop_size = args.crop_size
    if crop_size is None:
        from ..engine.pipeline import default_crop_size

        crop_size = default_crop_size(layout, backbone)
    batch_size = args.batch_size
    if batch_size is None:
        batch_size = default("batch_size") if args.annotations is None else REFINE_BATCH_SIZE
    resolved = {"crop_size": crop_size, "backbone": backbone, "batch_size": batch_size}
    if args.print_config:
        print(config_text(resolved_options(args, _train_parser(), **resolved)), end="")
        return 0
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
        "objective": args.objective,
        "sync_batchnorm": not args.no_sync_batchnorm,
        "gather_distributed": not args.no_gather_distributed,
        "amp": not args.no_amp,
        "monitor_hold_out": args.monitor_hold_out,
        **{name: getattr(args, name) for name in _TUNING if getattr(args, name) is not None},
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
        in_channels=channels_of(images[0], layout, args.channel_axis),
        checkpoint=args.init_checkpoint,
        resume=args.resume_checkpoint,
        announce=not args.quiet,
    )
    bar = None
    show = rank == 0 and not args.quiet
    if not (args.init_checkpoint or args.resume_checkpoint):  # what "auto" chose
        resolved["weights"] = "none" if encoder is None else "imagenet"

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
            fit = sr.train_ssl if refine is None else refine.fit
            result = fit(
                images,
                labels,
                encoder=encoder,
                axes=layouts,
                epochs=args.epochs,
                batch_size=batch_size,
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
                run_config=lambda config: _config_yaml(args, {**resolved, "epochs": config.epochs}),
                charts=True,
                tensorboard=False if args.no_tensorboard else None,
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
        if refine is not None:
            refine.report(result, args.log_dir)
    return 0


def _train_parser() -> argparse.ArgumentParser:
    """A fresh ``train`` parser (its defaults untouched)."""
    parser = argparse.ArgumentParser(prog="napari-segrep")
    return add_parser(parser.add_subparsers())


def _check_settings(args: argparse.Namespace):
    """Before any work: the seed's range, ``--normalize``'s text and each training setting's
    value as :class:`~napari_segrep.engine.train_config.TrainConfig` checks it; one line naming
    the option, or the config file and its key.  Returns the ``normalize`` argument."""
    from ..engine.train_config import TrainConfig

    def where(key: str) -> str:
        if key in args.from_file:
            return f"{args.config}: {key}"
        return "--" + key.replace("_", "-")

    try:
        check_seed(args.seed, maximum=TORCH_SEED_MAX)
    except CLIError as exc:
        if "seed" not in args.from_file:
            raise
        raise CLIError(f"{where('seed')}: {exc}".replace("--seed ", "")) from None
    try:
        normalize = parse_normalize(args.normalize)
    except CLIError as exc:
        if "normalize" not in args.from_file:
            raise
        raise CLIError(f"{where('normalize')}: {exc}".replace("--normalize ", "")) from None
    for key in (
        "epochs",
        "batch_size",
        "crop_size",
        "grad_accumulate",
        "optimizer",
        "lr",
        *_TUNING,
    ):
        value = getattr(args, key)
        if value is None:
            continue
        try:
            TrainConfig(**{key: value})
        except ValueError as exc:
            raise CLIError(f"{where(key)}: {exc}") from None
    try:  # --loss is the contrastive objective's (argparse has checked the choices)
        TrainConfig(objective=args.objective, loss=args.loss)
    except ValueError as exc:
        raise CLIError(f"{where('loss')}: {exc}") from None
    return normalize


def _config_yaml(args: argparse.Namespace, resolved: dict) -> str:
    """The text of ``LOG_DIR/config.yaml``: the run's resolved options (``train_ssl`` writes it
    when training starts; a resumed run's own folder keeps the config it started with)."""
    return config_text(resolved_options(args, _train_parser(), **resolved))


def _check_log_dir(args: argparse.Namespace) -> None:
    """Before any work: the run writes nothing over another run's files (a new run into a
    folder holding last.pt, history.csv, quality.csv, config.yaml, charts/, tensorboard/ or
    debug_views.png is refused)."""
    from ..io import run_dir_conflict

    if args.debug:
        conflict = args.log_dir / "debug_views.png"
        conflict = conflict if conflict.exists() else None
    else:
        conflict = run_dir_conflict(
            args.log_dir,
            resume=args.resume_checkpoint,
            others=(
                "history.csv",
                "quality.csv",
                CONFIG_NAME,
                CHARTS_DIR,
                TENSORBOARD_DIR,
                ENCODER_NAME,
            ),
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
