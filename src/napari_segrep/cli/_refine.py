"""``napari-segrep train --annotations ANN.csv``: refine the encoder from the user's annotated
segments (:func:`napari_segrep.refine_encoder`, the supervised objective) in a run folder like
any training's.

ANN.csv (or ``.tsv``, ``.parquet``) has ``label`` and ``class`` (or ``class_annotation``, what
the napari widget exports), ``image`` when ``--data``/``--images`` give several pairs (the
image file's name, ``img0.tif``, or its stem, ``img0``: what ``embed --data`` writes in its
table's ``image`` column) and ``frame`` for time-lapses.  Every cell is text as written
(``NA`` is a class name like any other); a row whose class is empty is not an annotation.  The
file is checked against the label images before any work: one line naming the file, the
problem and the fix.

At the end the held-out annotations' accuracy before -> after is printed with what was kept,
and the kept encoder (the refined one, or the starting one when refining did not help) is
written to ``LOG_DIR/encoder.pt`` for ``embed --checkpoint``.

Standard library only at import time (``napari-segrep --help`` must not load torch).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from ._common import CLIError

__all__ = [
    "ENCODER_NAME",
    "Refinement",
    "add_refine_options",
    "check_objective",
    "read_annotations",
]

#: The encoder a refinement keeps, in its run folder (``embed --checkpoint LOG_DIR/encoder.pt``).
ENCODER_NAME = "encoder.pt"
#: The annotation columns read, the first one present wins (as ``classify`` reads them).
_CLASS_COLUMNS = ("class_annotation", "class")
_SUPERVISED = "supervised"  # engine.train_config.SUPERVISED (not imported: no torch for --help)
_MAX_LISTED = 5


def add_refine_options(group) -> None:
    """``--annotations FILE`` and ``--keep-if-worse`` on ``train``'s training options."""
    group.add_argument(
        "--annotations",
        metavar="FILE",
        type=Path,
        default=None,
        help="refine the encoder from annotated segments instead (the supervised objective): "
        "a CSV (or .tsv, .parquet) with label, class, image (the image file's name or stem; "
        "only needed with several images) and frame (time-lapses); at least 2 classes of 3 "
        "segments each, a third held out to compare the encoders. Prints their accuracy "
        "before -> after and writes the kept encoder to LOG_DIR/encoder.pt (the old one when "
        "refining did not help); epochs default to about 40 steps",
    )
    group.add_argument(
        "--keep-if-worse",
        dest="keep_if_worse",
        action="store_true",
        help="with --annotations: keep the refined encoder even when it classifies the "
        "held-out annotations worse than the old one",
    )


def check_objective(args: argparse.Namespace) -> None:
    """Before any work: ``--annotations`` trains the supervised objective (set here; another
    ``--objective`` is refused), in one process; the supervised objective and
    ``--keep-if-worse`` need ``--annotations``."""
    from_file = getattr(args, "from_file", set())

    def where(key: str) -> str:
        return f"{args.config}: {key}" if key in from_file else "--" + key.replace("_", "-")

    if args.annotations is None:
        if args.objective == _SUPERVISED:
            raise CLIError(
                f"{where('objective')}: supervised refines the encoder from annotations: give "
                "--annotations ANN.csv (columns label, class, and image with several images)"
            )
        if args.keep_if_worse:
            raise CLIError(
                f"{where('keep_if_worse')} is for refining from annotations: give --annotations "
                "ANN.csv, or leave it out"
            )
        return
    if args.objective not in ("contrastive", _SUPERVISED):  # contrastive: the default
        raise CLIError(
            f"{where('objective')} {args.objective} and --annotations: annotations refine the "
            "encoder with the supervised objective; leave --objective out"
        )
    args.objective = _SUPERVISED
    if args.devices > 1 or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise CLIError(
            "--annotations refines in one process (a few minutes on a CPU for ~500 segments): "
            "leave --devices out and run it without torchrun"
        )


# ------------------------------------------------------------------ the annotations file


def _read_raw(path: Path):
    """Every cell of the file as text (an empty cell, or a Parquet null, as ``""``)."""
    import pandas as pd

    from ..analysis.export import is_parquet

    try:
        if is_parquet(path):
            raw = pd.read_parquet(path)
            return raw.astype(object).where(raw.notna(), "").astype(str)
        sep = "\t" if path.suffix.lower() == ".tsv" else ","
        # as written: no value is taken for a missing one (NA is a class) or made a number
        return pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, na_filter=False)
    except FileNotFoundError:
        raise CLIError(f"{path}: no such annotations file") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise CLIError(f"{path} is not a readable CSV file: {exc}") from None
    except (OSError, ValueError) as exc:  # pyarrow: not a Parquet file
        raise CLIError(f"{path} is not a readable Parquet file: {exc}") from None


def read_annotations(path: Path, names: list[str], labels, layouts, *, min_size: int):
    """ANN.csv -> ``(table, shown)``: the DataFrame ``refine_encoder`` takes (``label``,
    ``class``; ``image``, the pair's position, with several pairs; ``frame`` with time-lapses)
    and a few words on it; a :class:`CLIError` naming the file, the problem and the fix for a
    missing column, an unknown image, a label not in its label image (or smaller than
    ``min_size``), a segment with two classes, a single class or one with fewer than
    :data:`~napari_segrep.refine.MIN_PER_CLASS` segments.  ``names``: the pairs' names
    as ``load_pairs`` gives them (``"img.tif / img_labels.tif"``)."""
    import numpy as np
    import pandas as pd

    from ..refine import MIN_PER_CLASS
    from .classify import _whole_numbers

    raw = _read_raw(Path(path))
    images = [name.split(" / ")[0] for name in names]  # a file name holds no "/"
    several = len(images) > 1
    time = any(layout.has_time for layout in layouts)
    column = next((c for c in _CLASS_COLUMNS if c in raw.columns), None)
    keys = ["label", *(["image"] if several else []), *(["frame"] if time else [])]
    missing = [k for k in keys if k not in raw.columns] + ([] if column else ["class"])
    if missing:
        why = " (there are several images)" if "image" in missing else ""
        why += " (there are time-lapses)" if "frame" in missing else ""
        raise CLIError(
            f"{path} has no {', '.join(missing)} column{why}: annotations need "
            f"{', '.join(keys)} and class; add the column"
        )
    classes = raw[column].str.strip()
    ann = raw.loc[classes != ""].copy()
    if ann.empty:
        raise CLIError(f"{path}: no annotated row (every {column} is empty): fill in the classes")
    out = pd.DataFrame({"label": _whole_numbers(ann["label"].str.strip(), path, "label")})
    out["class"] = classes[ann.index].to_numpy()
    out["image"] = _image_positions(ann, images, path) if "image" in ann.columns else 0
    if time:
        out["frame"] = _whole_numbers(ann["frame"].str.strip(), path, "frame")
    elif "frame" in ann.columns:
        frames = ann["frame"].str.strip()
        if (~frames.isin(["", "0"])).any():
            raise CLIError(
                f"{path}: frame {frames[~frames.isin(['', '0'])].iloc[0]!r}, but no image is a "
                "time-lapse: remove the frame column (or give --axes tyx for time-lapses)"
            )
        out["frame"] = 0
    else:
        out["frame"] = 0
    out = _one_class_each(out, images, path)
    _check_segments(out, images, labels, layouts, path, min_size=min_size)
    counts = out["class"].value_counts()
    if len(counts) < 2:
        raise CLIError(
            f"{path}: every annotation is of class {counts.index[0]!r}: refining needs at least "
            "2 classes; annotate segments of another class"
        )
    few = [f"{c!r} ({n})" for c, n in counts.sort_index().items() if n < MIN_PER_CLASS]
    if few:
        raise CLIError(
            f"{path}: refining needs at least {MIN_PER_CLASS} annotated segments of every class "
            f"(2 to learn from, 1 held out to check the refined encoder); {', '.join(few)} "
            f"{'has' if len(few) == 1 else 'have'} fewer: annotate more"
        )
    shown = ", ".join(f"{c} {n}" for c, n in counts.sort_index().items())
    table = out[["label", "class", *(["image"] if several else []), *(["frame"] if time else [])]]
    table = table.astype({"label": np.int64})
    return table.reset_index(drop=True), f"{len(out)} annotated segments ({shown})"


def _image_positions(ann, images: list[str], path: Path):
    """Each row's pair position, from its ``image`` cell: the image file's name or stem (empty:
    the only image)."""
    lookup: dict[str, int] = {}
    for i, name in enumerate(images):
        lookup.setdefault(name, i)
    for i, name in enumerate(images):
        lookup.setdefault(Path(name).stem, i)
    out = []
    for row, text in ann["image"].str.strip().items():
        if text == "" and len(images) == 1:
            out.append(0)
            continue
        if text not in lookup:
            known = ", ".join(Path(n).stem for n in images[:_MAX_LISTED])
            more = f" and {len(images) - _MAX_LISTED} more" if len(images) > _MAX_LISTED else ""
            raise CLIError(
                f"{path}, line {row + 2}: image {text!r} is none of the images given: name it "
                f"by its file name or stem ({known}{more})"
            )
        out.append(lookup[text])
    return out


def _segment_name(images, image: int, frame: int, label: int, time: bool) -> str:
    return f"{images[image]}{f' frame {frame}' if time else ''} label {label}"


def _one_class_each(out, images: list[str], path: Path):
    """``out`` without repeated rows; a segment annotated with two classes is refused."""
    keys = ["image", "frame", "label"]
    classes = out.groupby(keys)["class"].nunique()
    two = classes[classes > 1]
    if len(two):
        shown = ", ".join(_segment_name(images, *k, False) for k in two.index[:_MAX_LISTED])
        raise CLIError(
            f"{path}: {len(two)} segment(s) are annotated with two classes ({shown}): keep one "
            "class for each"
        )
    return out.drop_duplicates(keys)


def _check_segments(out, images, labels, layouts, path: Path, *, min_size: int) -> None:
    """Every annotated segment is in its label image (its frame in range) with at least
    ``min_size`` pixels (training skips smaller ones)."""
    import numpy as np

    absent, small = [], []
    for (i, f), rows in out.groupby(["image", "frame"]):
        lab, layout = np.asarray(labels[i]), layouts[i]
        time = layout.has_time
        if time and not 0 <= f < lab.shape[0]:
            sizes = {}
        else:
            ids, counts = np.unique(lab[f] if time else lab, return_counts=True)
            sizes = dict(zip(ids.tolist(), counts.tolist(), strict=True))
        for label in rows["label"]:
            n = sizes.get(int(label), 0) if label > 0 else 0
            name = _segment_name(images, i, f, int(label), time)
            if n == 0:
                absent.append(name)
            elif n < min_size:
                small.append(name)
    if absent:
        raise CLIError(
            f"{path}: {len(absent)} annotated segment(s) are not in the labels "
            f"({_listed(absent)}): correct their label (image, frame) or remove those rows"
        )
    if small:
        raise CLIError(
            f"{path}: {len(small)} annotated segment(s) have fewer than --min-size {min_size} "
            f"pixels, so training skips them ({_listed(small)}): remove those rows or lower "
            "--min-size"
        )


def _listed(names: list[str]) -> str:
    """The first :data:`_MAX_LISTED` names, and how many more."""
    more = f" and {len(names) - _MAX_LISTED} more" if len(names) > _MAX_LISTED else ""
    return ", ".join(names[:_MAX_LISTED]) + more


# ------------------------------------------------------------------ the run


class Refinement:
    """A ``train --annotations`` run: :meth:`fit` takes ``train_ssl``'s arguments (what
    ``train`` passes it) and runs ``refine_encoder``; :meth:`report` says what came of it."""

    def __init__(self, args: argparse.Namespace, table, shown: str) -> None:
        self.args, self.table, self.shown = args, table, shown

    @classmethod
    def read(cls, args: argparse.Namespace, names, labels, layouts) -> Refinement:
        """The annotations of ``--annotations``, checked against the pairs (before any work)."""
        from ..engine.train_config import default

        min_size = args.min_size if args.min_size is not None else default("min_size")
        table, shown = read_annotations(args.annotations, names, labels, layouts, min_size=min_size)
        return cls(args, table, shown)

    def fit(self, images, labels, *, encoder, epochs, run_config, **kwargs):
        """``refine_encoder`` with ``train``'s arguments: ``epochs`` None is ``"auto"``; no
        encoder is the one ``train`` would start from (an untrained ``backbone`` from ``seed``;
        for ``--resume-checkpoint``, the one the resumed run started from); ``config.yaml``
        also names the classes."""
        import napari_segrep as sr

        from ._train_data import channels_of

        kwargs.pop("objective", None)  # refine_encoder's own
        if kwargs.get("monitor_hold_out") is None:  # annotated segments are never held back
            kwargs.pop("monitor_hold_out", None)
        layouts = kwargs["axes"]
        if encoder is None:
            channels = channels_of(images[0], layouts[0], kwargs.get("channel_axis"))
            encoder = self._start(channels, kwargs["backbone"], kwargs["seed"])

        def config_text(config) -> str:
            text = run_config(config) if callable(run_config) else run_config
            classes = json.dumps(list(config.classes), ensure_ascii=False)
            return f"{text}# classes (from the annotations): {classes}\n"

        print(f"napari-segrep: refining from {self.shown}", file=sys.stderr)
        return sr.refine_encoder(
            images,
            labels,
            self.table,
            encoder=encoder,
            epochs="auto" if epochs is None else epochs,
            keep_if_worse=self.args.keep_if_worse,
            run_config=config_text,
            **kwargs,
        )

    def _start(self, channels: int, backbone: str, seed: int):
        """The encoder refining starts from when ``train`` has none: untrained ``backbone``
        from ``seed``; resuming, the start recorded in the resumed run's ``config.yaml``."""
        from ..engine.embed import encoder_for

        resume = self.args.resume_checkpoint
        if resume is None:
            return encoder_for(None, in_channels=channels, backbone=backbone, seed=seed)
        import yaml

        from ._config_file import CONFIG_NAME

        config_path = Path(resume).parent / CONFIG_NAME
        try:
            config = yaml.safe_load(config_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            config = None
        if not isinstance(config, dict) or config.get("annotations") is None:
            raise CLIError(
                f"cannot tell which encoder {resume} started from (no refinement's "
                f"{CONFIG_NAME} beside it), so the refined encoder could not be compared with "
                "it: resume a run of train --annotations in its own folder, or start again"
            )
        if config.get("init_checkpoint"):
            return encoder_for(Path(config["init_checkpoint"]), in_channels=channels)
        weights = "imagenet" if config.get("weights") == "imagenet" else None
        return encoder_for(
            weights,
            in_channels=channels,
            backbone=config.get("backbone") or backbone,
            seed=config.get("seed") if config.get("seed") is not None else seed,
        )

    def report(self, result, log_dir: Path) -> None:
        """The held-out accuracies before -> after and what was kept, written to
        ``LOG_DIR/encoder.pt`` (nothing when the run was stopped)."""
        if result.stopped:
            print(f"napari-segrep: {result.message}", file=sys.stderr)
            return
        from ..engine.encoder import save_encoder

        path = save_encoder(result.encoder, Path(log_dir) / ENCODER_NAME)
        classes = ", ".join(result.classes)
        print(
            f"napari-segrep: {result.message} (a logistic classifier trained on the embeddings "
            f"of the {result.n_learned} annotations refining learned from; classes {classes})",
            file=sys.stderr,
        )
        if result.accepted:
            kept = "the refined encoder"
        else:
            kept = (
                "the OLD encoder, unchanged (the refined one is in last.pt; --keep-if-worse "
                "keeps it)"
            )
        print(
            f"napari-segrep: encoder written to {path}: {kept}; embed with it: napari-segrep "
            f"embed ... --checkpoint {path}",
            file=sys.stderr,
        )
