"""``napari-segrep weights download imagenet`` and ``napari-segrep weights list``:
torchvision's ImageNet weights in the local torch cache, downloaded only when asked.

Also what ``embed`` and ``train`` share about their starting weights: the ``--weights
{auto,imagenet,none}`` option (:func:`add_weights_option`) and the choice it leads to, said in
one line (:func:`choose_weights`, :func:`start_encoder`).

Standard library only at import time (``napari-segrep --help`` must not load torch); ``weights
list`` needs no torch at all.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from ._common import BACKBONES, CLIError, HelpFormatter, add_quiet_option

__all__ = [
    "WEIGHTS_CHOICES",
    "DownloadProgress",
    "add_parser",
    "add_weights_option",
    "choose_weights",
    "run",
    "start_encoder",
]

#: The values of ``--weights`` (embed, train).
WEIGHTS_CHOICES = ("auto", "imagenet", "none")


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``weights`` (with its actions ``download`` and ``list``) on ``subparsers``."""
    from ..weights import MIRROR_ENV

    parser = subparsers.add_parser(
        "weights",
        help="download or list pretrained weights (torchvision's ImageNet weights)",
        description="Pretrained weights live in the local torch cache ($TORCH_HOME/hub/"
        "checkpoints, by default ~/.cache/torch/hub/checkpoints), where torchvision looks for "
        "them too. napari-segrep downloads them only when you ask: 'weights download imagenet'.",
        formatter_class=HelpFormatter,
    )
    actions = parser.add_subparsers(dest="weights_action", metavar="ACTION")
    actions.required = True
    download = actions.add_parser(
        "download",
        help="download torchvision's ImageNet weights into the torch cache",
        description="Download torchvision's ImageNet (IMAGENET1K_V1) weights of a backbone into "
        "the torch cache. The file is checked (its SHA-256 against the digits in torchvision's "
        "file name, and that it loads as weights) before it is moved into place; an "
        "interrupted or failed download leaves nothing behind, and a file already there is "
        "kept unless it is damaged (then it is replaced) or --force is given. A server that "
        "sends more than the file's size (with a small margin) or stalls is refused. Offline? "
        "Copy the file from a "
        "machine with internet to the path 'napari-segrep weights list' shows. Mirrors: "
        f"--url, or set {MIRROR_ENV} to a base URL holding the file.",
        formatter_class=HelpFormatter,
    )
    download.add_argument(
        "kind", choices=["imagenet"], help="which weights: imagenet (torchvision's IMAGENET1K_V1)"
    )
    download.add_argument(
        "--backbone",
        default="resnet18",
        choices=BACKBONES,
        metavar="NAME",
        help=f"whose weights to download, one of {', '.join(BACKBONES)} (a 3D or volume "
        "backbone reads its 2D ResNet's file: resnet18_3d, resnet18_planes and resnet18_slices "
        "resnet18's, resnet34_3d resnet34's)",
    )
    download.add_argument(
        "--url",
        default=None,
        help=f"the file's URL on a mirror (https://, http:// or file://) (default: "
        f"${MIRROR_ENV}/FILE when set, else torchvision's URL)",
    )
    download.add_argument(
        "--sha256",
        default=None,
        help="expected SHA-256 of the file, in full or its first 8+ hex digits; it must agree "
        "with the digits in torchvision's file name (default: those digits)",
    )
    download.add_argument(
        "--force",
        action="store_true",
        help="download again even when the file there is whole (a damaged one is downloaded "
        "again without it); it is replaced only once the new one is verified",
    )
    download.add_argument(
        "--timeout",
        type=_positive_seconds,
        default=30.0,
        help="give up after this many seconds without progress (no answer, or less than 64 "
        "KiB received)",
    )
    add_quiet_option(download)
    download.set_defaults(func=run)
    listing = actions.add_parser(
        "list",
        help="list the ImageNet weights: present, missing or damaged, size, path",
        description="For each backbone: whether its ImageNet weights are in the torch cache "
        "(present), not there (missing), or there but not torchvision's file (damaged: "
        "truncated, empty, an error page...; checked by size and SHA-256), their size, and "
        "where they go.",
        formatter_class=HelpFormatter,
    )
    listing.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """The ``weights`` command: ``download`` or ``list``."""
    if args.weights_action == "list":
        return _list()
    return _download(args)


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value


def _list() -> int:
    from ..weights import damaged_message, format_size, imagenet_backbones, weights_info

    infos = [weights_info(name) for name in imagenet_backbones()]
    for info in infos:
        if info.present:
            size = format_size(info.path.stat().st_size)
        else:
            size = f"~{info.size_text}"
        status = "damaged" if info.damaged else "present" if info.present else "missing"
        print(f"{info.backbone:<9} {status:<8} {size:>7}  {info.path}")
    for info in infos:
        if info.damaged:
            print(f"napari-segrep: {damaged_message(info)}", file=sys.stderr)
    missing = [info.backbone for info in infos if not info.present]
    if missing:
        from ..weights import download_command

        print(
            f"napari-segrep: missing weights download with: {download_command()} "
            f"--backbone NAME ({', '.join(missing)})",
            file=sys.stderr,
        )
    return 0


def _download(args: argparse.Namespace) -> int:
    from ..weights import download_weights, weights_info

    info = weights_info(args.backbone, url=args.url)
    if info.usable and not args.force:
        print(
            f"napari-segrep: {args.backbone} ImageNet weights are already in the cache, whole "
            "(size and SHA-256 checked; --force downloads them again)",
            file=sys.stderr,
        )
        print(info.path)
        return 0
    if info.damaged:
        print(
            f"napari-segrep: the file in the cache is damaged ({info.damaged}): it is replaced "
            "once the new one is verified",
            file=sys.stderr,
        )
    print(
        f"napari-segrep: downloading {args.backbone} ImageNet weights (about {info.size_text}) "
        f"from {info.url}",
        file=sys.stderr,
    )
    bar = DownloadProgress(info.filename, disable=args.quiet)
    try:
        path = download_weights(
            args.backbone,
            url=args.url,
            sha256=args.sha256,
            force=True,  # decided above: missing, damaged, or --force
            progress=bar,
            timeout=args.timeout,
        )
    finally:
        bar.close()
    print(f"napari-segrep: checked and saved {path.name} (SHA-256 verified)", file=sys.stderr)
    print(path)
    return 0


class DownloadProgress:
    """One progress line on stderr: bytes, percent, MB/s; at most ``1 / interval_s`` updates a
    second (the first and the last always)."""

    def __init__(self, name: str, *, disable: bool = False, interval_s: float = 0.25) -> None:
        self.name, self.disable, self.interval_s = name, disable, interval_s
        self.start = time.monotonic()
        self.last = -float("inf")
        self.shown = False

    def __call__(self, done: int, total: int | None) -> None:
        now = time.monotonic()
        final = total is not None and done >= total
        if self.disable or (now - self.last < self.interval_s and not final):
            return
        self.last = now
        mb = 2**20
        rate = done / mb / max(now - self.start, 1e-6)
        if total:
            text = f"{done / mb:.1f} / {total / mb:.1f} MB ({100 * done / total:.0f}%)"
        else:
            text = f"{done / mb:.1f} MB"
        sys.stderr.write(f"\r{self.name}: {text}, {rate:.1f} MB/s   ")
        sys.stderr.flush()
        self.shown = True

    def close(self) -> None:
        if self.shown:
            sys.stderr.write("\n")
            sys.stderr.flush()
            self.shown = False


# ---------------------------------------------------------------------- --weights (embed, train)
def add_weights_option(parser, *, checkpoint_flag: str) -> None:
    """``--weights {auto,imagenet,none}`` on ``parser`` (a parser or an argument group)."""
    parser.add_argument(
        "--weights",
        default="auto",
        choices=WEIGHTS_CHOICES,
        help="start from 'imagenet' (torchvision's weights, from the torch cache: 'napari-"
        "segrep weights download imagenet' fetches them), 'none' (untrained, from --seed), or "
        f"'auto': ImageNet when in the cache, else untrained; {checkpoint_flag} replaces both",
    )


def choose_weights(
    choice: str,
    *,
    backbone: str,
    seed: int = 0,
    checkpoint: Path | None = None,
    checkpoint_flag: str = "--checkpoint",
    resume: Path | None = None,
) -> tuple[str | Path | None, str]:
    """What a command starts from, and the line that says so.

    Returns
    -------
    weights : Path, "imagenet" or None
        The checkpoint, ImageNet, or untrained (``None``; also for a resumed run, whose
        checkpoint brings its own weights).
    line : str
        For stderr: which start is used; when ``auto`` falls back to untrained, also the
        command that downloads the ImageNet weights.

    Raises
    ------
    CLIError
        ``--weights imagenet``/``none`` together with a checkpoint or a resumed run,
        ``--weights imagenet`` while the weights are not in the cache, or ``imagenet``/``auto``
        while the file in the cache is damaged (the message names it and the fix).
    """
    from ..weights import damaged_message, download_command, weights_info

    if choice not in WEIGHTS_CHOICES:
        raise CLIError(f"--weights {choice!r}: choose one of {', '.join(WEIGHTS_CHOICES)}")
    for other, flag in ((checkpoint, checkpoint_flag), (resume, "--resume-checkpoint")):
        if other is not None and choice != "auto":
            raise CLIError(
                f"--weights {choice} and {flag} both choose the starting weights: give one of them"
            )
    if resume is not None:
        return None, f"napari-segrep: weights: those of the resumed run ({resume})"
    if checkpoint is not None:
        return Path(checkpoint), f"napari-segrep: weights: the checkpoint {checkpoint}"
    untrained = f"napari-segrep: weights: untrained {backbone} (random init, seed {seed})"
    if choice == "none":
        return None, untrained
    try:
        info = weights_info(backbone)
    except ValueError as exc:  # a backbone without ImageNet weights
        if choice == "imagenet":
            raise CLIError(str(exc)) from None
        return None, untrained
    if info.damaged:  # auto too: a user who put the file there means to use it
        raise CLIError(damaged_message(info))
    if info.present:
        return "imagenet", f"napari-segrep: weights: ImageNet ({backbone}, {info.path})"
    command = download_command(backbone)
    if choice == "imagenet":
        raise CLIError(
            f"ImageNet weights for {backbone} are not in the torch cache ({info.path}): "
            f"download them with `{command}` ({info.size_text}), or use --weights none"
        )
    return None, f"{untrained}; ImageNet weights are not in the torch cache: `{command}` gets them"


def start_encoder(
    choice: str,
    *,
    backbone: str,
    seed: int,
    in_channels: int,
    checkpoint: Path | None = None,
    checkpoint_flag: str = "--init-checkpoint",
    resume: Path | None = None,
    announce: bool = True,
):
    """The encoder ``train`` starts from (``None``: the engine builds an untrained one from
    ``backbone`` and ``seed``), after :func:`choose_weights`, for images of ``in_channels``
    channels.  ``announce``: print the line that says which
    start is used (on rank 0 only)."""
    weights, line = choose_weights(
        choice,
        backbone=backbone,
        seed=seed,
        checkpoint=checkpoint,
        checkpoint_flag=checkpoint_flag,
        resume=resume,
    )
    if announce and os.environ.get("RANK", "0") == "0":
        print(line, file=sys.stderr)
    if weights is None:
        return None
    from ..engine.embed import encoder_for

    return encoder_for(weights, in_channels=in_channels, backbone=backbone, seed=seed)
