"""Command line: ``napari-segrep embed``, ``classify``, ``train``, ``demo``, ``weights``.

The same engine/analysis calls as the widgets.  One module per subcommand, each registering its
own parser with ``add_parser(subparsers)`` and running with ``run(args)``; this module assembles
the parser and turns user errors into one line and exit status 2.  Heavy modules are imported
inside the commands, so ``napari-segrep --help`` answers at once (no torch).
"""

from __future__ import annotations

import argparse
import sys
import warnings

from ..errors import TrainingDiverged
from . import classify, demo, embed, train, weights
from ._common import CLIError

__all__ = ["get_arg_parser", "main"]

# In the order ``--help`` lists them.
_SUBCOMMANDS = (embed, classify, train, demo, weights)

_EPILOG = """\
examples:
  napari-segrep embed cells.tif cells_labels.tif -o cells.csv
  napari-segrep embed rgb.png labels.png -o out.csv --normalize segment --crop-size 96
  napari-segrep embed stack.tif labels.tif -o out.csv --channel-axis 0 --checkpoint model.pt
  napari-segrep classify cells.csv --annotations ann.csv -o pred.csv --save-model cells.segclf
  napari-segrep classify more.csv --model cells.segclf -o more_pred.csv
  napari-segrep train --images 'data/images/*.tif' --labels 'data/labels/*.tif' --epochs 50
  napari-segrep train --data data --debug        # look at the augmented views first
  napari-segrep demo --out demo_output
  napari-segrep weights download imagenet       # torchvision's ImageNet weights, 45 MB

Outputs: OUT.csv (label, centroid_y, centroid_x, area, bbox_y0, bbox_x0, bbox_y1, bbox_x1,
scale, emb_0..emb_{D-1}) and OUT.csv.json (provenance: package version, encoder configuration,
checkpoint sha256, normalisation, crop size, seed, inputs), replaced together or not at all.
classify writes PRED.csv (label, after image/frame when the table has them, class, probability,
margin, prob_<class>), PRED.csv.json (inputs with sha256, the classifier, the encoder) and with
--save-model the classifier, together; ANN.csv has label (+ image/frame) and class.
Nothing is overwritten unless you say so: an existing OUT.csv/OUT.csv.json needs --overwrite, an
output is never an input, train never writes into another run's --log-dir, and demo replaces
only files it wrote (unchanged, or with --overwrite). -q/--quiet: no progress bar (every
command that shows one).
"""


def get_arg_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="napari-segrep",
        description="Mask-supervised segment representations (SegRep): one embedding per "
        "segment, computed from that segment alone (image and feature masking).",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from .._version import __version__

    parser.add_argument("--version", action="version", version=f"napari-segrep {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for command in _SUBCOMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status.

    0: done; 1: training diverged (the last good checkpoint is kept); 2: a user error (bad
    option, unreadable or invalid input, an output that exists or is an input, a file that
    cannot be written), printed as one line; 130: interrupted, saying what was written.
    Python warnings are printed as one line each.  Anything else is a bug and keeps its
    traceback.
    """
    parser = get_arg_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # train --config parses it again
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        if not sys.warnoptions:  # as for any program: libraries' deprecations are not for users
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", PendingDeprecationWarning)
        try:
            return args.func(args)
        except (CLIError, ValueError, FileNotFoundError) as exc:
            print(f"napari-segrep: error: {exc}", file=sys.stderr)
            return 2
        except OSError as exc:  # disk full, permissions...: the file and the reason
            text = f"{exc.filename}: {exc.strerror}" if exc.filename and exc.strerror else exc
            print(f"napari-segrep: error: {text}", file=sys.stderr)
            return 2
        except TrainingDiverged as exc:
            print(f"napari-segrep: error: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt as exc:
            what = getattr(exc, "what", None) or "nothing was written"
            print(f"napari-segrep: interrupted; {what}", file=sys.stderr)
            return 130


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """``warnings.showwarning`` while a command runs: one line, without Python's file:line."""
    text = " ".join(str(message).split())
    print(f"napari-segrep: warning: {text}", file=sys.stderr)
