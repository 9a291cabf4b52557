"""``napari-segrep demo``: napari on generated cells with Embed segments running, or (without
napari or a display, or with ``--headless``) the same embedding written to CSV."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ._common import DEVICE_HELP, CLIError, HelpFormatter

__all__ = ["add_parser", "run"]


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``demo`` on ``subparsers`` (from ``ArgumentParser.add_subparsers``)."""
    parser = subparsers.add_parser(
        "demo",
        help="open napari on generated cells with Embed segments running (or a headless demo)",
        description="Open napari on a generated image of three classes of cells, with the Embed "
        "segments widget docked and its run started. Without napari (or without a display), or "
        "with --headless: embed the cells with an untrained SegmentEncoder and write "
        "demo.csv/demo.csv.json plus the sample image and labels (cells.tif, cells_labels.tif) to "
        "--out, replacing a previous demo's files there but no other file of those names.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--headless", action="store_true", help="no viewer: write the CSV demo")
    parser.add_argument(
        "--out", type=Path, default=Path("segrep_demo"), help="output folder of the headless demo"
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace files of the demo's names in --out even if a previous demo did not "
        "write them",
    )
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)
    parser.add_argument(
        "--quit-when-done",
        action="store_true",
        help="close the viewer once the UMAP map is shown (for scripts and tests)",
    )
    parser.add_argument(
        "--screenshot",
        type=Path,
        default=None,
        help="save a screenshot of the window once the map is shown, then close",
    )
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """The ``demo`` command: the napari demo when it can run here, else the headless one."""
    if not args.headless:
        why_not = _viewer_possible()
        if why_not is None:
            from .._widgets.demo import run_demo

            return run_demo(quit_when_done=args.quit_when_done, screenshot=args.screenshot)
        print(f"napari-segrep demo: {why_not}: running the headless demo instead", file=sys.stderr)
    return _headless_demo(args)


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


_DEMO_TABLE = "demo.csv"  # with its sidecar (analysis.export.sidecar_path): demo.csv.json
_DEMO_FILES = ("cells.tif", "cells_labels.tif", _DEMO_TABLE)


def _headless_demo(args: argparse.Namespace) -> int:
    """Embed the sample cells; write the image, the labels, demo.csv and its sidecar together
    (all four, or none: a Ctrl-C leaves nothing half-written)."""
    import io

    import numpy as np
    import tifffile

    from .._sample_data import make_cells
    from ..analysis.export import table_files
    from ..analysis.reduce import nearest_neighbour_class_agreement
    from ..analysis.tables import embedding_matrix
    from ..io import atomic_write_files
    from .embed import run_embedding

    _check_demo_folder(args.out, overwrite=args.overwrite)
    image, labels, classes = make_cells()
    output = args.out / _DEMO_TABLE
    df, seconds, sidecar = run_embedding(
        image,
        labels,
        device=args.device,
        inputs={"sample": "generated cells (napari_segrep._sample_data)"},
        command="demo",
    )
    files = {}
    for name, array in (("cells.tif", image), ("cells_labels.tif", labels)):
        buffer = io.BytesIO()
        tifffile.imwrite(buffer, array)
        files[args.out / name] = buffer.getvalue()
    files.update(table_files(df, output, provenance=sidecar))
    atomic_write_files(
        {path: (lambda fh, data=data: fh.write(data)) for path, data in files.items()}
    )
    # A first look at what the embeddings hold: nearest-neighbour class agreement.
    truth = np.array([classes[int(k)] for k in df["label"]])
    agreement = nearest_neighbour_class_agreement(embedding_matrix(df), truth)
    n_classes = len(set(truth))
    print(f"{len(df)} cells of {n_classes} classes embedded in {seconds:.1f} s -> {output}")
    print(
        f"nearest-neighbour class agreement of the untrained embeddings: {agreement:.0%} "
        f"(chance ~{1 / n_classes:.0%})"
    )
    return 0


def _check_demo_folder(out: Path, *, overwrite: bool) -> None:
    """Create ``out``; refuse (before any work) to replace a file of the demo's names that a
    previous demo did not write: a folder is a previous demo's when demo.csv's sidecar is a
    napari-segrep record of the generated sample."""
    from ..analysis.export import find_sidecar, read_sidecar, sidecar_path
    from ._common import check_outputs

    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CLIError(f"cannot create the demo folder {out}: {exc.strerror}") from None
    found = find_sidecar(out / _DEMO_TABLE)
    try:
        record = None if found is None else read_sidecar(found)  # None: not ours
    except (OSError, ValueError):  # damaged: not a demo's record
        record = None
    inputs = record.get("inputs") if record is not None else None
    ours = isinstance(inputs, dict) and "sample" in inputs
    sidecar = sidecar_path(out / _DEMO_TABLE)
    names = [sidecar, *(out / n for n in _DEMO_FILES)]  # the sidecar named first
    check_outputs(names, inputs={}, overwrite=overwrite or ours)
