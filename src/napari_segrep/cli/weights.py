"""``napari-segrep weights download imagenet|dinov2`` and ``napari-segrep weights list``: the
catalogue's pretrained weights (:mod:`napari_segrep.catalogue`: torchvision's ImageNet weights
of the ResNets, Meta's DINOv2 weights of ``vit_small_patch14_reg4_dinov2``) in the local torch
cache, downloaded only when asked.

Also what ``embed`` and ``train`` share about their starting weights: the ``--weights
{auto,none,imagenet,dinov2}`` option (:func:`add_weights_option`) and the choice it leads to,
said in one line (:func:`choose_weights`, :func:`start_encoder`).

Standard library only at import time (``napari-segrep --help`` must not load torch); ``weights
list`` needs no torch at all.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from ..catalogue import weight_set_names, weights_backbones
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

#: The values of ``--weights`` (embed, train): auto, none, and the catalogue's weight sets.
WEIGHTS_CHOICES = ("auto", "none", *weight_set_names())


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``weights`` (with its actions ``download`` and ``list``) on ``subparsers``."""
    from ..weights import MIRROR_ENV

    parser = subparsers.add_parser(
        "weights",
        help="download or list pretrained weights (torchvision's ImageNet, Meta's DINOv2)",
        description="Pretrained weights live in the local torch cache ($TORCH_HOME/hub/"
        "checkpoints, by default ~/.cache/torch/hub/checkpoints), where torchvision and "
        "torch.hub look for them too. napari-segrep downloads them only when you ask: 'weights "
        "download imagenet' (the ResNets) or 'weights download dinov2' "
        "(vit_small_patch14_reg4_dinov2).",
        formatter_class=HelpFormatter,
    )
    actions = parser.add_subparsers(dest="weights_action", metavar="ACTION")
    actions.required = True
    download = actions.add_parser(
        "download",
        help="download a backbone's pretrained weights into the torch cache",
        description="Download pretrained weights of a backbone into the torch cache: imagenet "
        "(torchvision's IMAGENET1K_V1, BSD-3-Clause) or dinov2 (Meta's DINOv2 ViT-S/14 with "
        "registers, Apache-2.0, about 84 MB). The file is checked (its SHA-256 against the "
        "digits in torchvision's file name; DINOv2's, whose publisher gives no SHA-256: that it "
        "loads into the backbone, every tensor and shape, and its SHA-256 is shown) before it "
        "is moved into place; an "
        "interrupted or failed download leaves nothing behind, and a file already there is "
        "kept unless it is damaged (then it is replaced) or --force is given. A server that "
        "sends more than the file's size (with a small margin) or stalls is refused. Offline? "
        "Copy the file from a "
        "machine with internet to the path 'napari-segrep weights list' shows. Mirrors: "
        f"--url, or set {MIRROR_ENV} to a base URL holding the file.",
        formatter_class=HelpFormatter,
    )
    download.add_argument(
        "kind",
        choices=weight_set_names(),
        help="which weights: imagenet (torchvision's IMAGENET1K_V1, for "
        f"{', '.join(weights_backbones('imagenet'))}) or dinov2 (Meta's, for "
        f"{', '.join(weights_backbones('dinov2'))})",
    )
    download.add_argument(
        "--backbone",
        default=None,
        choices=BACKBONES,
        metavar="NAME",
        help=f"whose weights to download, one of {', '.join(BACKBONES)} (default: resnet18 "
        "for imagenet, vit_small_patch14_reg4_dinov2 for dinov2; a 3D or volume backbone reads "
        "its 2D ResNet's file: resnet18_3d, resnet18_planes and resnet18_slices resnet18's, "
        "resnet34_3d resnet34's)",
    )
    download.add_argument(
        "--url",
        default=None,
        help=f"the file's URL on a mirror (https://, http:// or file://) (default: "
        f"${MIRROR_ENV}/FILE when set, else the publisher's URL)",
    )
    download.add_argument(
        "--sha256",
        default=None,
        help="expected SHA-256 of the file, in full or its first 8+ hex digits; it must agree "
        "with the digits in torchvision's file name (default: those digits; none for dinov2)",
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
        help="list the pretrained weights: present, missing or damaged, size, licence, path",
        description="For each weights file of the catalogue (the backbone that reads it, and "
        "which weights): whether it is in the torch cache (present), not there (missing), or "
        "there but not the publisher's file (damaged: truncated, empty, an error page...; "
        "checked by size and SHA-256 where published), its size, licence, and where it goes.",
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
    from ..catalogue import published_files
    from ..weights import damaged_message, download_command, format_size, weights_info

    infos = [
        weights_info(backbones[0], weights=ws.name) for ws, backbones in published_files().values()
    ]
    width = max(len(info.backbone) for info in infos)
    for info in infos:
        if info.present:
            size = format_size(info.path.stat().st_size)
        else:
            size = f"~{format_size(info.size or info.approx_size or 0)}"
        status = "damaged" if info.damaged else "present" if info.present else "missing"
        print(
            f"{info.backbone:<{width}} {info.weights:<8} {status:<8} {size:>7}  "
            f"{info.licence:<12} {info.path}"
        )
    for info in infos:
        if info.damaged:
            print(f"napari-segrep: {damaged_message(info)}", file=sys.stderr)
    missing = [info for info in infos if not info.present]
    if missing:
        commands = "; ".join(download_command(i.backbone, i.weights) for i in missing)
        print(f"napari-segrep: missing weights download with: {commands}", file=sys.stderr)
    return 0


def _download(args: argparse.Namespace) -> int:
    from ..weights import download_weights, weights_info

    kind = args.kind
    if args.backbone is None:
        args.backbone = weights_backbones(kind)[0]
    if args.backbone not in weights_backbones(kind):
        raise CLIError(
            f"--backbone {args.backbone} has no {kind} weights: {kind} weights are for "
            f"{', '.join(weights_backbones(kind))} (leave --backbone out for the first)"
        )
    info = weights_info(args.backbone, weights=kind, url=args.url)
    label = info.label
    if info.usable and not args.force:
        checked = "size and SHA-256 checked" if info.sha256_prefix else "present, not empty"
        print(
            f"napari-segrep: {args.backbone} {label} weights are already in the cache, whole "
            f"({checked}; --force downloads them again)",
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
        f"napari-segrep: downloading {args.backbone} {label} weights (about "
        f"{info.size_text.removeprefix('about ')}, licence {info.licence}) from {info.url}",
        file=sys.stderr,
    )
    bar = DownloadProgress(info.filename, disable=args.quiet)
    try:
        path = download_weights(
            args.backbone,
            weights=kind,
            url=args.url,
            sha256=args.sha256,
            force=True,  # decided above: missing, damaged, or --force
            progress=bar,
            timeout=args.timeout,
        )
    finally:
        bar.close()
    if info.sha256_prefix or args.sha256:
        how = "SHA-256 verified"
    else:
        from ..io import file_sha256

        how = f"it loads into {args.backbone}; its SHA-256 is {file_sha256(path)}"
    print(f"napari-segrep: checked and saved {path.name} ({how})", file=sys.stderr)
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
    """``--weights {auto,none,imagenet,dinov2}`` on ``parser`` (a parser or an argument
    group)."""
    parser.add_argument(
        "--weights",
        default="auto",
        choices=WEIGHTS_CHOICES,
        help="start from 'imagenet' (torchvision's weights of a ResNet, from the torch cache: "
        "'napari-segrep weights download imagenet' fetches them), 'dinov2' (Meta's weights of "
        "vit_small_patch14_reg4_dinov2: 'weights download dinov2'), 'none' (untrained, from "
        "--seed), or 'auto': the backbone's pretrained weights when in the cache, else "
        f"untrained; {checkpoint_flag} replaces them",
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
    weights : Path, a weight set ("imagenet", "dinov2") or None
        The checkpoint, pretrained weights, or untrained (``None``; also for a resumed run,
        whose checkpoint brings its own weights).
    line : str
        For stderr: which start is used; when ``auto`` falls back to untrained, also the
        command that downloads the backbone's pretrained weights.

    Raises
    ------
    CLIError
        ``--weights imagenet``/``dinov2``/``none`` together with a checkpoint or a resumed
        run, a weight set the backbone has not, or one not in the cache, or a damaged file in
        the cache (``auto`` too; the message names it and the fix).
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
    from ..catalogue import BY_NAME

    entry = BY_NAME.get(backbone)
    if choice == "auto":
        if entry is not None and not entry.weights:  # a backbone without pretrained weights
            return None, untrained
        # the catalogue's first weight set; a plugin's backbone: its ImageNet weights, if any
        choice_set, asked = (entry.weights[0].name if entry else "imagenet"), False
    else:
        choice_set, asked = choice, True
    try:
        info = weights_info(backbone, weights=choice_set)
    except ValueError as exc:  # a backbone without these weights
        if asked:
            raise CLIError(str(exc).replace("weights=None", "--weights none")) from None
        return None, untrained
    if info.damaged:  # auto too: a user who put the file there means to use it
        raise CLIError(damaged_message(info))
    if info.present:
        return choice_set, f"napari-segrep: weights: {info.label} ({backbone}, {info.path})"
    command = download_command(backbone, choice_set)
    if asked:
        raise CLIError(
            f"{info.label} weights for {backbone} are not in the torch cache ({info.path}): "
            f"download them with `{command}` ({info.size_text}), or use --weights none"
        )
    return None, (
        f"{untrained}; {info.label} weights are not in the torch cache: `{command}` gets them"
    )


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
