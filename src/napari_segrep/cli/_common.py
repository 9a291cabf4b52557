"""What the subcommands share: the user-error exception, the progress bar, ``--normalize``
parsing and the options that read the same everywhere.

Standard library only at import time (``napari-segrep --help`` must not load torch).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..catalogue import backbone_choices

__all__ = [
    "BACKBONES",
    "DEVICE_HELP",
    "CLIError",
    "HelpFormatter",
    "Interrupted",
    "ProgressBar",
    "add_pair_options",
    "add_quiet_option",
    "check_outputs",
    "check_seed",
    "pairs_from_args",
    "parse_normalize",
]

#: The catalogue's backbones (:mod:`napari_segrep.catalogue`, torch-free: ``--help`` loads no
#: torch): 2D (ResNets, ViTs), then volumes (the native 3D networks; resnet18_planes and
#: resnet18_slices, the fast modes: the 2D network on three orthogonal planes, or on every
#: z-slice, of each object).
BACKBONES = backbone_choices()
DEVICE_HELP = "auto, cpu, cuda, cuda:N or mps"
#: The largest --seed of embed and train: torch's generators take seeds up to 2**64 - 1 and
#: the engine derives others from it (seed + 1, seed + 2, seed + epoch), numpy's SeedSequence
#: and the checkpoint format refuse negative ones; int64 leaves room for every offset.
TORCH_SEED_MAX = 2**63 - 1
#: The largest --seed of classify: scikit-learn's random_state stops at 2**32 - 1.
SKLEARN_SEED_MAX = 2**32 - 1


class CLIError(Exception):
    """A user error: printed as one line on stderr, exit status 2."""


class Interrupted(KeyboardInterrupt):
    """A second Ctrl-C, with what the command leaves behind (None: nothing was written)."""

    def __init__(self, what: str | None = None) -> None:
        super().__init__(what)
        self.what = what


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's default, once: ``(default: ...)`` is added unless its help already says
    it; a required option says ``(required)`` instead."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.required and action.option_strings:
            return f"{text} (required)"
        if "(default:" in text:
            return text
        return super()._get_help_string(action) or ""

    def _format_args(self, action: argparse.Action, default_metavar: str) -> str:
        """A list option whose metavar names its values (``--spacing DZ DY DX``) reads as
        that, not as ``DZ DY DX [DZ DY DX ...]``."""
        if action.nargs == "+" and isinstance(action.metavar, str) and " " in action.metavar:
            return action.metavar
        return super()._format_args(action, default_metavar)


def add_quiet_option(parser, *, help: str = "no progress bar") -> None:
    """``-q``/``--quiet`` on ``parser`` (an ``ArgumentParser`` or one of its argument groups),
    the same spelling in every command."""
    parser.add_argument("-q", "--quiet", action="store_true", help=help)


def check_seed(seed: int | None, *, maximum: int) -> None:
    """Before any work: a :class:`CLIError` unless ``seed`` (``--seed``; None: not given) is an
    integer from 0 to ``maximum`` (instead of a library's "Overflow when unpacking long long"
    once the work has started)."""
    if seed is not None and not 0 <= seed <= maximum:
        raise CLIError(
            f"--seed {seed} is out of range: give an integer from 0 to {maximum} "
            f"(2**{maximum.bit_length()} - 1)"
        )


def parse_normalize(text: str):
    """``--normalize`` text -> the ``normalize`` argument of the engine.

    ``image`` and ``segment`` stay as they are, ``none`` becomes None and ``LOW,HIGH`` a pair of
    floats; anything else is a :class:`CLIError`.
    """
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


class ProgressBar:
    """tqdm on stderr, fed by ``progress(done, total)`` callbacks (``embed_segments``)."""

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


def add_pair_options(group) -> None:
    """``--images GLOB --labels GLOB`` or ``--data DIR``, and ``--skip-unmatched``: image/label
    files paired by stem (:func:`napari_segrep.io.pair_files`, read by :func:`pairs_from_args`),
    for ``train`` and ``embed``."""
    group.add_argument(
        "--images",
        metavar="GLOB",
        help="glob of image files, e.g. 'data/images/*.tif' (files the --labels glob matches "
        "are left out, so x.tif beside x_labels.tif works)",
    )
    group.add_argument(
        "--labels",
        metavar="GLOB",
        help="glob of label files, paired with images by file stem (a _labels/_mask suffix is "
        "allowed)",
    )
    group.add_argument(
        "--data",
        type=Path,
        metavar="DIR",
        help="folder with images/ and labels/, or with x.tif beside x_labels.tif (instead of "
        "the two globs)",
    )
    group.add_argument(
        "--skip-unmatched",
        action="store_true",
        help="leave out the files that pair with nothing (one warning lists them) instead of "
        "refusing them",
    )


def pairs_from_args(args: argparse.Namespace):
    """The image/label pairs of ``--images/--labels`` or ``--data`` (a
    :class:`napari_segrep.io.FilePairs`; with ``--skip-unmatched`` its ``skipped`` files are
    left out with one warning)."""
    from ..io import pair_files

    return pair_files(
        args.images,
        args.labels,
        data_dir=args.data,
        skip_unmatched=bool(getattr(args, "skip_unmatched", False)),
    )


def check_outputs(outputs, *, inputs: dict, overwrite: bool, flag: str = "--overwrite") -> None:
    """Before any work: every output can be written, none is an input, none exists unless
    ``overwrite`` (a :class:`CLIError` naming the file and ``flag``); a table's format can be
    written (``.h5ad`` needs anndata) and a file at its sidecar's place that napari-segrep did
    not write is refused whatever ``overwrite`` says."""
    from ..analysis.export import check_table_outputs
    from ..io import check_output_paths

    outputs = list(outputs)
    try:
        check_output_paths(outputs, inputs=inputs, overwrite=True)  # first: inputs, folders
        check_table_outputs(outputs)  # then: someone else's JSON, whatever overwrite says
        check_output_paths(
            outputs,
            inputs=inputs,
            overwrite=overwrite,
            overwrite_hint=f"pass {flag} to replace it, or choose another output name",
        )
    except ValueError as exc:
        raise CLIError(str(exc)) from None
