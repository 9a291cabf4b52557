"""``napari-segrep demo``: napari on generated cells with Embed segments running, or (without
napari or a display, or with ``--headless``) the same embedding written to CSV."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ._common import DEVICE_HELP, CLIError, HelpFormatter, add_quiet_option

__all__ = ["add_parser", "run"]


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``demo`` on ``subparsers`` (from ``ArgumentParser.add_subparsers``)."""
    parser = subparsers.add_parser(
        "demo",
        help="open napari on generated cells with Embed segments running (or a headless demo)",
        description="Open napari on a generated image of three classes of cells, with the Embed "
        "segments widget docked and its run started. Without napari (or without a display), or "
        "with --headless: embed the cells with an untrained SegmentEncoder and write demo.csv "
        "and its JSON sidecar plus the sample image and labels (cells.tif, cells_labels.tif) to "
        "--out. The sidecar records every file's sha256: a later demo replaces a file it wrote "
        "that is unchanged, one changed since only with --overwrite, and never a file it did "
        "not write.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--headless", action="store_true", help="no viewer: write the CSV demo")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("segrep_demo"),
        metavar="DIR",
        help="output folder of the headless demo",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="also replace the files a previous demo wrote in --out that were changed since (a "
        "file the demo did not write is never replaced)",
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
        metavar="PNG",
        help="save a screenshot of the window once the map is shown, then close",
    )
    add_quiet_option(parser, help="no progress bar (headless demo)")
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


#: The files the headless demo writes into --out, besides the table's sidecar (whose name
#: :func:`~napari_segrep.analysis.export.sidecar_path` gives).
_DATA_FILES = ("cells.tif", "cells_labels.tif", "demo.csv")
#: In the sidecar: the sha256 of every other file the demo wrote, and of the sidecar itself
#: (computed with :data:`_SELF_PLACEHOLDER` where the hash then goes).
_FILES_KEY = "demo_files"
_SELF_KEY = "demo_record_sha256"
_SELF_PLACEHOLDER = "sha256 of this file with this text in place of the hash"


def _demo_names() -> list[str]:
    """The demo's file names in --out, the sidecar first."""
    from ..analysis.export import sidecar_path

    return [sidecar_path(Path("demo.csv")).name, *_DATA_FILES]


def _headless_demo(args: argparse.Namespace) -> int:
    """Embed the sample cells; write the image, the labels, demo.csv and its sidecar together
    (all four, or none: a Ctrl-C leaves nothing half-written).  The sidecar records the sha256
    of every file written, so that a later demo replaces only what is still as it was."""
    import hashlib
    import io

    import numpy as np
    import tifffile

    from .._sample_data import make_cells
    from ..analysis.export import sidecar_path, table_files
    from ..analysis.reduce import nearest_neighbour_class_agreement
    from ..analysis.tables import embedding_matrix
    from ..io import atomic_write_files
    from .embed import run_embedding

    _check_demo_folder(args.out, overwrite=args.overwrite)
    image, labels, classes = make_cells()
    output = args.out / _DATA_FILES[-1]
    df, seconds, sidecar = run_embedding(
        image,
        labels,
        device=args.device,
        quiet=args.quiet,
        inputs={"sample": "generated cells (napari_segrep._sample_data)"},
        command="demo",
    )
    files = {}
    for name, array in (("cells.tif", image), ("cells_labels.tif", labels)):
        buffer = io.BytesIO()
        tifffile.imwrite(buffer, array)
        files[args.out / name] = buffer.getvalue()
    files[output] = table_files(df, output, provenance=sidecar)[output]
    sidecar[_FILES_KEY] = {p.name: hashlib.sha256(data).hexdigest() for p, data in files.items()}
    sidecar[_SELF_KEY] = _SELF_PLACEHOLDER
    record = table_files(df, output, provenance=sidecar)[sidecar_path(output)]
    if record.count(_SELF_PLACEHOLDER.encode()) != 1:  # it is ours: never happens
        raise RuntimeError("the demo's record holds its placeholder more than once")
    digest = hashlib.sha256(record).hexdigest()
    files[sidecar_path(output)] = record.replace(_SELF_PLACEHOLDER.encode(), digest.encode())
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


def _read_demo_record(path: Path) -> tuple[dict | None, bool]:
    """``(sha256 by file name, intact)`` from a demo's sidecar at ``path``: ``(None, False)``
    when it is not a demo's record (missing, not JSON, another program's); ``intact`` when it is
    byte for byte what the demo wrote.  A record of an earlier version (no checksums) gives
    ``({}, False)``: its files are the demo's, but may have been changed."""
    import hashlib

    from ..analysis._sidecar import parse_json

    try:
        text = path.read_bytes()
        record = parse_json(text, str(path))
    except (OSError, ValueError):
        return None, False
    if not (
        isinstance(record, dict)
        and record.get("package") == "napari-segrep"
        and (record.get("command") == "demo" or "sample" in (record.get("inputs") or {}))
    ):
        return None, False
    hashes = record.get(_FILES_KEY)
    if not isinstance(hashes, dict):
        hashes = {}
    own = record.get(_SELF_KEY)
    intact = (
        isinstance(own, str)
        and len(own) == 64
        and text.count(own.encode()) == 1
        and hashlib.sha256(text.replace(own.encode(), _SELF_PLACEHOLDER.encode())).hexdigest()
        == own
    )
    return hashes, intact


def _check_demo_folder(out: Path, *, overwrite: bool) -> None:
    """Create ``out``; before any work, decide for each of the demo's files there: one the demo
    wrote and nobody changed since (its sha256 is the one recorded) is replaced; one it wrote
    that was changed since is replaced only with ``overwrite``; one it did not write (no record
    of it, or a link) is never replaced.  A :class:`CLIError` names the files and what to do."""
    import os

    from ..analysis.export import find_sidecar
    from ..io import check_output_paths, file_sha256

    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CLIError(f"cannot create the demo folder {out}: {exc.strerror}") from None
    names = _demo_names()
    paths = [out / name for name in names]
    try:  # folders in the way, an unwritable folder (whose files they are is decided below)
        check_output_paths(paths, overwrite=True)
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    # the record: demo.csv.json, else an earlier version's demo.json (no checksums: its files
    # count as changed, replaced only with --overwrite)
    record = paths[0] if os.path.lexists(paths[0]) else find_sidecar(out / _DATA_FILES[-1])
    hashes, intact = _read_demo_record(record or paths[0])
    foreign, changed = [], []
    for i, (name, path) in enumerate(zip(names, paths, strict=True)):
        if not os.path.lexists(path):
            continue
        if hashes is None or path.is_symlink() or (i and hashes and name not in hashes):
            foreign.append(path)  # no demo's record, a link (the demo writes none), not listed
        elif i == 0:
            if not intact:
                changed.append(path)
        elif name not in hashes or file_sha256(path) != hashes[name]:
            changed.append(path)  # changed, or written by a version that kept no checksums
    if foreign:
        raise CLIError(
            f"{_listed(foreign)} {_were(foreign)} not written by napari-segrep demo and "
            f"{'is' if len(foreign) == 1 else 'are'} never replaced: move "
            f"{'it' if len(foreign) == 1 else 'them'} away, or choose another --out"
        )
    if changed and not overwrite:
        raise CLIError(
            f"{_listed(changed)} {_were(changed)} changed since napari-segrep demo wrote "
            f"{'it' if len(changed) == 1 else 'them'}: pass --overwrite to replace "
            f"{'it' if len(changed) == 1 else 'them'} (the changes are lost), or choose "
            "another --out"
        )


def _listed(paths: list[Path]) -> str:
    text = ", ".join(str(p) for p in paths[:-1])
    return f"{text} and {paths[-1]}" if text else str(paths[-1])


def _were(paths: list[Path]) -> str:
    return "was" if len(paths) == 1 else "were"
