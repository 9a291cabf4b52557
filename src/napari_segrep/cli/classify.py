"""``napari-segrep classify TABLE.csv``: a class for every segment of an embedding table.

Trained here on annotations (``--annotations ANN.csv``) or loaded from a saved classifier
(``--model M.segclf``); writes the predictions (``PRED.csv``) with a JSON provenance sidecar,
and optionally the classifier (``--save-model``), all together or none.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from ._common import SKLEARN_SEED_MAX, CLIError, HelpFormatter, check_seed

__all__ = ["add_parser", "run"]

#: As in analysis/classify.py (not imported here: it loads numpy, and --help must stay cheap).
_METHODS = ("logistic", "random_forest", "knn", "auto")
_FEATURES = ("embedding", "embedding+geometry", "measurements", "auto")
#: Training options: dest -> (flag, default, the only method it applies to).  Their parser
#: default is None, so that one given with --model (or for another method) can be refused.
_TRAINING = {
    "method": ("--method", "logistic", None),
    "features": ("--features", "embedding", None),
    "size": ("--no-size", True, None),
    "seed": ("--seed", 0, None),
    "k": ("--k", 5, "knn"),
    "n_trees": ("--n-trees", 100, "random_forest"),
    "C": ("--C", 1.0, "logistic"),
}
#: The training options' ranges, checked before any work: dest -> (lowest, highest, rule)
#: (--seed: by check_seed, as for every command).
_RANGES = {
    "k": (1, None, "a whole number, at least 1"),
    "n_trees": (1, 10_000, "a whole number from 1 to 10000"),
    "C": (0, None, "a positive number"),
}
#: The annotation columns read, the first one present wins (the napari widget exports
#: class_annotation next to the predicted class).
_CLASS_COLUMNS = ("class_annotation", "class")


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``classify`` on ``subparsers`` (from ``ArgumentParser.add_subparsers``)."""
    parser = subparsers.add_parser(
        "classify",
        help="classify every segment of an embedding table (train on annotations, or a model)",
        description="Classify every row of TABLE.csv (from 'napari-segrep embed', or several "
        "images' tables with an 'image' column) and write PRED.csv (the segment keys, class, "
        "probability, margin and prob_<class>) plus a PRED.csv.json provenance sidecar. The "
        "classifier is trained on --annotations or read from --model. Existing files are only "
        "replaced with --overwrite; an input is never an output.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "table", type=Path, help="embedding table TABLE.csv (its TABLE.csv.json names the encoder)"
    )
    source = parser
    source.add_argument(
        "--annotations",
        type=Path,
        metavar="ANN.csv",
        help="annotations to train on: a CSV with label (and image/frame when the table has "
        "them) and class, or class_annotation (what the napari widget exports; it wins "
        "when both are there); rows with an empty class are ignored. It may be TABLE itself "
        "when TABLE has a class_annotation column",
    )
    source.add_argument(
        "--model",
        type=Path,
        metavar="M.segclf",
        help="a classifier saved by --save-model (or the napari widget) to predict with; "
        "with --annotations too, it is improved: trained on what it learnt plus the new "
        "annotations, with its own method and parameters",
    )
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        required=True,
        metavar="PRED.csv",
        help="output predictions PRED.csv; its provenance goes to PRED.csv.json beside it",
    )
    parser.add_argument(
        "--save-model",
        type=Path,
        default=None,
        metavar="M.segclf",
        help="also save the classifier trained from --annotations, for --model later",
    )
    training = parser.add_argument_group("training (with --annotations)")
    training.add_argument(
        "--method",
        choices=_METHODS,
        default=None,
        help="logistic regression, random forest or k-nearest neighbours, on standardised "
        "features; auto: the logistic regression or the forest, whichever cross-validates "
        "better on the annotations (default: logistic)",
    )
    training.add_argument(
        "--features",
        choices=_FEATURES,
        default=None,
        help="what to classify on: the embeddings (with the segment's size, see --no-size), "
        "the embeddings and the measurements of 'embed --measure', those measurements alone, "
        "or auto: whichever of the three is the most accurate in cross-validation on the "
        "annotations (embedding alone when TABLE has no measurements; default: embedding)",
    )
    training.add_argument(
        "--no-size",
        dest="size",
        action="store_const",
        const=False,
        default=None,
        help="with --features embedding: leave out the segment's size (log area, weighted by "
        "how much the annotated classes differ in it), which is used by default because a "
        "segment larger than the crop is downscaled and its embedding cannot show its size",
    )
    training.add_argument(
        "--seed",
        type=int,
        default=None,
        metavar="N",
        help=f"seed of the forest and the cross-validation folds, 0 to {SKLEARN_SEED_MAX} "
        "(default: 0)",
    )
    training.add_argument(
        "--k", type=int, default=None, help="neighbours, knn, at least 1 (default: 5)"
    )
    training.add_argument(
        "--n-trees",
        type=int,
        default=None,
        help="trees, random_forest, 1 to 10000 (default: 100)",
    )
    training.add_argument(
        "--C",
        type=float,
        default=None,
        help="inverse L2 strength, logistic, a positive number (default: 1.0)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace PRED.csv, PRED.csv.json and the --save-model file when they exist; a "
        "--save-model file that is not a classifier, or a PRED.csv.json that napari-segrep did "
        "not write, is never replaced",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="with --model: predict even when TABLE was embedded with another encoder than "
        "the classifier was trained on (the predictions are then likely wrong)",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """The ``classify`` command: check the options and outputs, read the table, train (or
    load) the classifier, predict every row, write PRED.csv, PRED.csv.json and the model."""
    check_seed(args.seed, maximum=SKLEARN_SEED_MAX)
    training = _training_options(args)
    outputs = _check_outputs(args)
    from ..analysis.export import read_table

    table = read_table(args.table)
    if "label" not in table.columns:
        raise CLIError(f"{args.table} has no 'label' column: pass a table from napari-segrep embed")
    if args.model is not None:
        clf = _load(args.model)
        if args.annotations is not None:
            clf = _improve(clf, table, read_annotations(args.annotations, table), args)
    else:
        annotations = read_annotations(args.annotations, table)
        clf = _train(table, annotations, training, args.annotations)
    try:
        predictions = clf.predict(table, force=args.force)
    except ValueError as exc:
        raise CLIError(f"{args.table}: {exc}") from None
    report = _report(args, clf, predictions, outputs)  # before writing: nothing fails after
    _write(args, outputs, table, clf, predictions)
    if not args.quiet:
        print(report, file=sys.stderr)
    return 0


# ---------------------------------------------------------------------- options and files
def _training_options(args: argparse.Namespace) -> dict:
    """The training keyword arguments (defaults filled in); a :class:`CLIError` for one given
    with --model, or one that does not apply to the chosen method."""
    given = {dest: getattr(args, dest) for dest in _TRAINING if getattr(args, dest) is not None}
    if args.model is None and args.annotations is None:
        raise CLIError(
            "give --annotations ANN.csv (train), --model M.segclf (predict), or both (improve "
            "the model with the annotations)"
        )
    if args.model is not None:
        if given:
            flags = ", ".join(_TRAINING[d][0] for d in given)
            raise CLIError(
                f"{flags}: training options apply to --annotations alone, not with --model (a "
                "saved classifier keeps its method and parameters, also when improved)"
            )
        if args.save_model is not None and args.annotations is None:
            raise CLIError(
                "--save-model saves a classifier trained (or improved) with --annotations; "
                "--model alone is already saved"
            )
    options = {dest: given.get(dest, default) for dest, (_, default, _) in _TRAINING.items()}
    for dest, (flag, _, method) in _TRAINING.items():
        chosen = options["method"]
        if dest in given and method is not None and method != chosen:
            if chosen == "auto" and method in ("logistic", "random_forest"):
                continue  # a setting of one of auto's candidates
            raise CLIError(f"{flag} applies to --method {method}, not {options['method']}")
    if "size" in given and options["features"] not in ("embedding", "auto"):
        raise CLIError(
            "--no-size applies to --features embedding or auto (the measurements have the area "
            "among them)"
        )
    for dest, (low, high, rule) in _RANGES.items():
        value = options[dest]
        if dest == "C":
            ok = math.isfinite(value) and value > low
        else:
            ok = value >= low and (high is None or value <= high)
        if not ok:
            raise CLIError(f"{_TRAINING[dest][0]} {value}: it must be {rule}")
    return options


def _check_outputs(args: argparse.Namespace) -> list[Path]:
    """Before any work: PRED.csv, PRED.csv.json (and the model) can be written, none is an input
    (TABLE, its sidecar, ANN, the model), none is another, none is a file napari-segrep did
    not write, and none exists without --overwrite.  Returns the outputs."""
    from ..analysis.classify import is_classifier_file
    from ..analysis.export import is_our_sidecar, sidecar_path
    from ..io import same_file
    from ._common import check_outputs

    try:
        outputs = [args.output, sidecar_path(args.output)]
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    if args.save_model is not None:
        outputs.append(args.save_model)
    inputs = {
        "table": args.table,
        "table sidecar": _sidecar_or_none(args.table),
        "annotations": args.annotations,
        "model": args.model,
    }
    check_outputs(outputs, inputs=inputs, overwrite=True)  # writable, never an input
    for i, a in enumerate(outputs):
        for b in outputs[i + 1 :]:
            if a.resolve() == b.resolve() or same_file(a, b):
                raise CLIError(f"--save-model {b} is also the output {a}: choose another name")
    sidecar = outputs[1]
    if sidecar.is_file() and not is_our_sidecar(sidecar):
        raise CLIError(
            f"{sidecar} exists and was not written by napari-segrep (it would become "
            f"{args.output}'s provenance): choose another output name"
        )
    model = args.save_model
    if model is not None and model.is_file() and not is_classifier_file(model):
        raise CLIError(
            f"--save-model {model} exists and is not a napari-segrep classifier: choose "
            "another file name"
        )
    check_outputs(outputs, inputs={}, overwrite=args.overwrite)
    return outputs


def _sidecar_or_none(path: Path) -> Path | None:
    """The sidecar TABLE is read with (``TABLE.csv.json``, or an earlier ``TABLE.json``)."""
    from ..analysis.export import find_sidecar

    return find_sidecar(path)


def read_annotations(path: Path, table):
    """ANN.csv -> a DataFrame of the table's segment keys and ``class`` (rows with an empty
    class dropped), for ``train_classifier``; a :class:`CLIError` naming what is wrong.

    Every cell is read as the text written there (``NA``, ``None``, ``null``, ``nan`` are
    class or image names like any other, ``000`` stays ``000``); only an empty cell (or one
    of spaces) means "not annotated".  Surrounding spaces are ignored.  A numeric key
    (``label``, and ``frame``/``image`` where the table holds numbers) must be a whole number
    in range in every annotated row: the first one that is not is named with its line.
    """
    import pandas as pd

    from ..analysis.classify import segment_keys

    try:  # as written: no value is taken for a missing one or converted to a number
        raw = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False)
    except FileNotFoundError:
        raise CLIError(f"{path}: no such annotations file") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise CLIError(f"{path} is not a readable CSV file: {exc}") from None
    column = next((c for c in _CLASS_COLUMNS if c in raw.columns), None)
    keys = segment_keys(table)
    missing = [k for k in keys if k not in raw.columns]
    if column is None or missing:
        lacking = ", ".join([*missing, *([] if column else ["class (or class_annotation)"])])
        several = f" (the table holds several {keys[0]}s)" if len(keys) > 1 else ""
        raise CLIError(
            f"{path} has no {lacking} column: annotations need {', '.join(keys)} and class{several}"
        )
    names = raw[column].str.strip()
    ann = raw.loc[names != "", keys].copy()
    ann["class"] = names[ann.index]
    if ann.empty:
        raise CLIError(f"{path}: no annotated row (every {column} is empty)")
    for key in keys:
        values = ann[key].str.strip()
        if key == "label" or table[key].dtype.kind in "iuf":
            numbers = _whole_numbers(values, path, key)
            ann[key] = numbers if table[key].dtype.kind != "f" else numbers.astype(table[key].dtype)
        else:
            ann[key] = values.astype(table[key].dtype)
    return ann.reset_index(drop=True)


_INT64 = (-(2**63), 2**63 - 1)


def _whole_numbers(values, path: Path, key: str):
    """The text of ``values`` (a Series of ``raw``'s rows) as int64, read exactly as a
    decimal (``12``, ``12.0``, ``1.2e1``; never through a float, which rounds labels above
    2^53); a :class:`CLIError` naming the line of the first that is not a whole number or
    is beyond int64."""
    from decimal import Decimal, InvalidOperation

    import numpy as np

    out = np.empty(len(values), np.int64)
    for i, (row, text) in enumerate(values.items()):
        try:
            number = Decimal(text)
        except InvalidOperation:
            number = None
        if number is None or not number.is_finite() or number != number.to_integral_value():
            problem = "is not a whole number"
        elif number.adjusted() > 19 or not _INT64[0] <= int(number) <= _INT64[1]:
            problem = f"is out of range (a {key} is at most {_INT64[1]})"
        else:
            out[i] = int(number)
            continue
        raise CLIError(
            f"{path}, line {row + 2}: {key} {text!r} {problem}: fix that row "
            f"({key} must be a whole number in every annotated row)"
        )
    return out


def _train(table, annotations, options: dict, path: Path):
    from ..analysis.classify import train_classifier

    try:
        return train_classifier(table, annotations, **options)
    except ValueError as exc:  # about the annotations, or the table's columns: it says which
        raise CLIError(f"cannot train on the annotations in {path}: {exc}") from None


def _improve(clf, table, annotations, args):
    from ..analysis.improve import improve_classifier

    try:
        return improve_classifier(clf, table, annotations)
    except ValueError as exc:
        raise CLIError(f"cannot improve {args.model} with {args.annotations}: {exc}") from None


def _load(path: Path):
    from ..analysis.classify import load_classifier

    try:
        return load_classifier(path)
    except FileNotFoundError as exc:
        raise CLIError(str(exc)) from None


def _write(args, outputs: list[Path], table, clf, predictions) -> None:
    """PRED.csv, PRED.csv.json and the model, replaced together or not at all."""
    from ..analysis.export import table_files
    from ..io import atomic_write_files

    files = table_files(predictions, args.output, provenance=_provenance(args, table, clf))
    if args.save_model is not None:
        files[args.save_model] = clf.to_bytes()
    atomic_write_files(
        {path: (lambda fh, data=data: fh.write(data)) for path, data in files.items()}
    )


def _provenance(args, table, clf) -> dict:
    import time

    from .._version import __version__
    from ..io import file_sha256

    def described(path: Path | None) -> dict | None:
        return None if path is None else {"path": str(path), "sha256": file_sha256(path)}

    mismatched = False
    if args.force:
        try:
            clf.check_encoder(table)
        except ValueError:
            mismatched = True
    return {
        "package": "napari-segrep",
        "package_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": "classify",
        "inputs": {
            "table": described(args.table),
            "annotations": described(args.annotations),
            "model": described(args.model),
        },
        "n_segments": len(table),
        "classifier": {
            "method": clf.method,
            "classes": list(clf.classes_),
            "cv_score": clf.cv_score_,
            "params": clf.params,
            "features": clf.info.get("features", "embedding"),
            "features_cv": clf.info.get("features_cv"),
            "method_cv": clf.info.get("method_cv"),
            "log_columns": list(clf.log_columns),
            "size_weight": clf.info.get("size_weight"),
            "n_annotations": clf.info.get("n_annotations"),
            "seed": clf.info.get("seed"),
            "encoder": clf.info.get("encoder"),
            "saved_to": None if args.save_model is None else str(args.save_model),
        },
        "encoder": table.attrs.get("encoder"),
        "normalization": table.attrs.get("normalization"),
        "forced": bool(args.force),
        "encoder_mismatch_forced": mismatched,
    }


def _report(args, clf, predictions, outputs: list[Path]) -> str:
    """What was trained (or loaded) and what was predicted, two lines for stderr."""
    counts = clf.info.get("n_annotations") or {}
    annotated = ", ".join(f"{name} {n}" for name, n in counts.items())
    cv = "n/a" if clf.cv_score_ is None else f"{clf.cv_score_:.3f}"
    if args.model is not None and args.annotations is not None:
        where = f"classifier {args.model} improved with {args.annotations}: "
    else:
        where = f"classifier {args.model}: " if args.model is not None else "trained "
    predicted = predictions["class"].value_counts()
    summary = ", ".join(f"{name} {int(predicted.get(name, 0))}" for name in clf.classes_)
    written = ", ".join(p.name for p in outputs[1:])
    scores = clf.info.get("features_cv")
    chosen = ""
    if scores:  # features="auto": what it chose, and every candidate's accuracy
        tried = ", ".join(f"{f} {'n/a' if v is None else f'{v:.3f}'}" for f, v in scores.items())
        chosen = f"; features auto chose {clf.info['features']} ({tried})"
    methods = clf.info.get("method_cv")
    if methods:  # method="auto": the method it chose, and each method's best accuracy
        tried = ", ".join(f"{m} {v:.3f}" for m, v in methods.items())
        chosen += f"; method auto chose {clf.method} ({tried})"
    return (
        f"{where}{clf.method} on {sum(counts.values())} annotations ({annotated}); "
        f"cross-validated accuracy {cv}{chosen}\n"
        f"{len(predictions)} segments classified -> {args.output} (+ {written}): {summary}"
    )
