"""``train --config FILE``: a YAML file of the command's options, and the resolved one a run
writes (``LOG_DIR/config.yaml``).

A key is an option's long name with underscores (``crop_size: 32`` is ``--crop-size 32``; a
switch is ``true``/``false``: ``no_mask: true``); null is the option's default.  Options given
on the command line override the file.  Unknown keys, values of the wrong type and values
outside an option's choices are refused naming the key and the file, before any work; relative
paths are read from the current folder, as on the command line.

Standard library only at import time (PyYAML is imported when a file is read or written).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
from pathlib import Path

from ..engine.run_folder import CONFIG_NAME  # the resolved configuration in a run folder
from ._common import CLIError

__all__ = [
    "CONFIG_NAME",
    "NOT_IN_FILES",
    "PATH_KEYS",
    "config_text",
    "file_options",
    "read_config",
    "resolved_options",
    "with_config_file",
]

#: Options that say how to run this command rather than what the run is: refused in a file,
#: never written.
NOT_IN_FILES = ("config", "print_config", "debug")
#: Options holding paths (or globs), written absolute.
PATH_KEYS = (
    "images",
    "labels",
    "data",
    "log_dir",
    "resume_checkpoint",
    "init_checkpoint",
    "annotations",
)
#: Options not written into a run's config (how it shows its progress, not what it computes).
_NOT_WRITTEN = ("quiet",)


def file_options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """``{key: action}``: the options a config file may set (every option of ``parser`` but
    help and :data:`NOT_IN_FILES`)."""
    return {
        action.dest: action
        for action in parser._actions
        if action.option_strings
        and action.dest not in NOT_IN_FILES
        and not isinstance(action, argparse._HelpAction)
    }


def read_config(path: Path, parser: argparse.ArgumentParser) -> dict:
    """The options of the YAML file ``path``, checked against ``parser``'s: a
    :class:`CLIError` naming the file and the key for an unreadable file, an unknown key, a
    value of the wrong type or outside the option's choices."""
    import yaml

    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise CLIError(f"cannot read the config file {path}: {why}") from None
    try:
        values = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" (line {where.line + 1})" if where is not None else ""
        raise CLIError(f"{path}{line} is not valid YAML: {getattr(exc, 'problem', exc)}") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise CLIError(
            f"{path} must hold 'key: value' lines (the options' long names with underscores, "
            "e.g. crop_size: 32)"
        )
    options = file_options(parser)
    out = {}
    for key, value in values.items():
        action = options.get(key) if isinstance(key, str) else None
        if action is None:
            raise CLIError(f"{path}: unknown key {key!r}: {_known_hint(key, options)}")
        out[key] = _checked(path, key, value, action)
    return out


def _known_hint(key, options: dict) -> str:
    import difflib

    close = difflib.get_close_matches(str(key).replace("-", "_"), list(options), n=1)
    if close:
        return f"did you mean {close[0]!r}? (keys are the options' long names with underscores)"
    return "keys are the long option names of 'napari-segrep train --help' with underscores"


def _checked(path: Path, key: str, value, action: argparse.Action):
    """``value`` as the option ``action`` takes it (a float from a string such as ``1e-4``,
    which YAML reads as text), or a :class:`CLIError` naming the file and key."""

    def refuse(wanted: str):
        raise CLIError(f"{path}: {key}: {value!r} is not {wanted}")

    if value is None:
        if action.nargs == 0 and not isinstance(action, argparse.BooleanOptionalAction):
            refuse("true or false")
        return None  # the option's default (a yes/no option's: chosen from the data)
    if action.nargs == 0:  # a switch
        if not isinstance(value, bool):
            refuse("true or false")
        return value
    if action.nargs in ("+", "*"):
        if not isinstance(value, list) or not value:
            refuse("a list, e.g. [1.0, 0.5, 0.5]")
        return [_one(refuse, v, action) for v in value]
    return _one(refuse, value, action)


def _one(refuse, value, action: argparse.Action):
    kind = action.type
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            refuse("an integer")
    elif kind is float:
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                refuse("a number")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            refuse("a number")
        value = float(value)
    elif kind is Path:
        if not isinstance(value, str):
            refuse("a path")
        value = Path(value)
    elif not isinstance(value, str):
        refuse("text")
    if action.choices is not None and value not in action.choices:
        refuse("one of " + ", ".join(str(c) for c in action.choices))
    return value


def resolved_options(args: argparse.Namespace, parser: argparse.ArgumentParser, **chosen) -> dict:
    """Every option a config file may hold, as ``args`` has them, with ``chosen`` (values the
    command resolved from the data: crop size, backbone) and paths made absolute."""
    out = {}
    for key in file_options(parser):
        if key in _NOT_WRITTEN:
            continue
        value = chosen.get(key, getattr(args, key))
        if key in PATH_KEYS and value is not None:
            value = os.path.abspath(os.fspath(value))  # a glob stays a glob
        elif isinstance(value, Path):
            value = os.fspath(value)
        elif isinstance(value, tuple):
            value = list(value)
        out[key] = value
    return out


def config_text(options: dict) -> str:
    """The YAML text of a run's resolved ``options``, after comment lines that say what wrote
    it (package, torch and Python versions) and how to rerun it."""
    import yaml

    from .._version import __version__

    header = [
        "# napari-segrep train: the resolved configuration of this run (every option; null:",
        "# chosen from the data, as the command line chooses it). Rerun it with",
        "#   napari-segrep train --config THIS_FILE --log-dir NEW_FOLDER",
        f"# napari-segrep {__version__}, torch {_version_of('torch')}, "
        f"torchvision {_version_of('torchvision')}, Python {platform.python_version()}, "
        f"written {datetime.datetime.now().isoformat(timespec='seconds')}",
    ]
    body = "".join(_line(yaml, key, value) for key, value in options.items())
    return "\n".join(header) + "\n" + body


def _line(yaml, key: str, value) -> str:
    """``key: value`` as one YAML line (a list as ``[a, b, c]``)."""
    if isinstance(value, list):
        return f"{key}: {yaml.safe_dump(value, default_flow_style=True, width=1 << 16).strip()}\n"
    return yaml.safe_dump({key: value}, default_flow_style=False, allow_unicode=True, width=1 << 16)


def _version_of(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def with_config_file(args: argparse.Namespace) -> argparse.Namespace:
    """``args`` with the options of ``--config FILE`` where the command line does not give
    them (it is parsed again, the file's values as its defaults).  ``args.from_file``: the keys
    the file set (``train``'s: the only command that reads config files)."""
    args.from_file = set()
    if getattr(args, "config", None) is None:
        return args
    from . import get_arg_parser

    argv = getattr(args, "argv", None)
    if argv is None:
        raise CLIError("--config needs the command line (run napari-segrep train --config FILE)")
    parser = get_arg_parser()
    train = _train_subparser(parser)
    values = read_config(args.config, train)
    train.set_defaults(**{key: value for key, value in values.items() if value is not None})
    merged = parser.parse_args(argv)
    merged.argv = argv
    merged.from_file = set(values) - _given(argv)
    return merged


def _given(argv: list[str]) -> set[str]:
    """The ``train`` options given on the command line ``argv`` (as argparse reads it:
    abbreviations and ``--opt=value`` included)."""
    from . import get_arg_parser

    parser = get_arg_parser()
    train = _train_subparser(parser)
    for action in train._actions:
        action.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(argv))) & set(file_options(train))


def _train_subparser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The ``train`` subcommand's parser inside the whole command line's ``parser``."""
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return subparsers.choices["train"]
