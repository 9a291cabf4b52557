"""Checkpoints: atomic save, ``weights_only`` load, provenance.

A napari-segrep checkpoint is a ``torch.save`` of a plain dict (tensors, numbers, strings,
lists, dicts only, so it loads with ``torch.load(weights_only=True)``)::

    {"format": "napari-segrep", "format_version": 1, "package_version": "...",
     "kind": "encoder" | "training", "encoder_config": {...}, "encoder": state_dict, ...}

Training checkpoints (issue 2/4) add head, optimiser, scheduler and loop state under more keys.

This module knows the file format only; :func:`napari_segrep.engine.encoder.save_encoder` and
:func:`~napari_segrep.engine.encoder.load_encoder` write and rebuild encoders with it.

A loaded checkpoint is checked before anything is built from it: every floating-point tensor
must be finite (a diverged or corrupt model is refused, it would embed NaN), and the encoder's
config must be complete, sane and agree with its weights (:func:`validate_encoder_config`).
"""

from __future__ import annotations

import os
import pickle
import re
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from ..io import atomic_write

__all__ = [
    "CHECKPOINT_FORMAT",
    "encoder_state_from_checkpoint",
    "load_checkpoint",
    "nonfinite_tensors",
    "save_checkpoint",
    "load_state_checked",
    "load_state_into",
    "load_training_checkpoint",
    "state_mismatches",
    "training_checkpoint_problems",
    "validate_encoder_config",
]

CHECKPOINT_FORMAT = "napari-segrep"
FORMAT_VERSION = 1
#: The most input channels a checkpoint may declare (a sanity bound, checked before building).
MAX_IN_CHANNELS = 4096
_NOT_OURS = (
    "is not a napari-segrep checkpoint: not a readable checkpoint file (it is corrupt or "
    "truncated, or in another format)"
)


def _tensors(tree, prefix: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    """``(name, tensor)`` for every tensor in nested dicts/lists (``encoder/backbone.conv1...``)."""
    if isinstance(tree, torch.Tensor):
        yield prefix, tree
    elif isinstance(tree, dict):
        for key, value in tree.items():
            yield from _tensors(value, f"{prefix}/{key}" if prefix else str(key))
    elif isinstance(tree, (list, tuple)):
        for i, value in enumerate(tree):
            yield from _tensors(value, f"{prefix}[{i}]")


def nonfinite_tensors(tree) -> list[str]:
    """Names of the floating-point tensors in ``tree`` (nested dicts/lists) holding NaN or Inf.

    One device synchronisation for all tensors; names are only collected when one is bad.
    """
    floats = [(k, t) for k, t in _tensors(tree) if t.is_floating_point() and t.numel()]
    if not floats:
        return []
    flags = torch.stack([torch.isfinite(t).all().to(floats[0][1].device) for _, t in floats])
    if bool(flags.all()):
        return []
    return [k for (k, _), ok in zip(floats, flags.tolist(), strict=True) if not ok]


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def validate_encoder_config(config, state, *, source: str) -> dict:
    """Check a checkpoint's ``encoder_config`` and encoder weights before anything is built.

    Keys present with the right types, sane ranges (``1 <= in_channels <=``
    :data:`MAX_IN_CHANNELS`), a registered backbone, and ``in_channels`` equal to the channels
    the weights were saved for (``input_mean``).  The weights' other shapes are compared with the
    built encoder by :func:`state_mismatches`.

    Raises
    ------
    ValueError
        One message naming ``source`` and every problem found.
    """
    from .backbones import BACKBONES, backbone_names

    if not isinstance(config, dict):
        raise ValueError(f"checkpoint {source}: its encoder_config is not a dict: {config!r}")
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise ValueError(f"checkpoint {source}: its encoder weights are not a dict of tensors")
    problems = []
    backbone = config.get("backbone")
    if backbone is None:
        problems.append("'backbone' is missing")
    elif backbone not in BACKBONES:
        problems.append(f"unknown backbone {backbone!r} (registered: {backbone_names()})")
    channels = config.get("in_channels")
    mean = state.get("input_mean")
    if channels is None:
        problems.append("'in_channels' is missing")
    elif not _is_int(channels) or not 1 <= channels <= MAX_IN_CHANNELS:
        problems.append(f"in_channels={channels!r} is not an integer in 1..{MAX_IN_CHANNELS}")
    elif mean is not None and tuple(mean.shape) != (channels,):
        problems.append(f"in_channels={channels} but its weights are for {mean.numel()} channel(s)")
    for key in ("image_masking", "feature_masking"):
        if not isinstance(config.get(key, True), bool):
            problems.append(f"{key}={config[key]!r} is not True or False")
    for key, low in (("seed", 0), ("embedding_dim", 1)):
        value = config.get(key, low)
        if not _is_int(value) or value < low:
            problems.append(f"{key}={value!r} is not an integer >= {low}")
    if problems:
        raise ValueError(
            f"checkpoint {source} does not describe a usable encoder: {'; '.join(problems)}. "
            "Is it a napari-segrep checkpoint written by this package, and intact?"
        )
    return config


def state_mismatches(expected: dict, saved: dict, *, limit: int = 3) -> list[str]:
    """How ``saved`` (a state dict from a file) differs from ``expected`` (the module's own):
    missing keys, unexpected keys, and shapes that differ; ``[]`` when it fits."""
    missing = [k for k in expected if k not in saved]
    unexpected = [k for k in saved if k not in expected]
    shapes = [
        f"{k} is {tuple(saved[k].shape)} in the file, {tuple(v.shape)} in the model"
        for k, v in expected.items()
        if k in saved and tuple(saved[k].shape) != tuple(v.shape)
    ]
    out = []
    for what, keys in (("missing", missing), ("unexpected", unexpected), ("shapes", shapes)):
        if keys:
            more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
            out.append(f"{what}: {', '.join(keys[:limit])}{more}")
    return out


def save_checkpoint(payload: dict, path: str | os.PathLike) -> Path:
    """Atomically ``torch.save`` ``payload`` (plus format keys) to ``path``."""
    from .._version import __version__

    payload = {
        "format": CHECKPOINT_FORMAT,
        "format_version": FORMAT_VERSION,
        "package_version": __version__,
        **payload,
    }
    return atomic_write(path, lambda fh: torch.save(payload, fh))


def load_state_checked(module: torch.nn.Module, state, *, what: str, source: str) -> None:
    """``module.load_state_dict(state)``, or one ``ValueError`` naming ``source`` and how the
    saved ``what`` differs (instead of torch's size-mismatch dump)."""
    problems = (
        state_mismatches(module.state_dict(), state)
        if isinstance(state, dict)
        else [f"not a dict of tensors: {type(state).__name__}"]
    )
    if problems:
        raise ValueError(
            f"checkpoint {source}: its {what} does not fit this run ({'; '.join(problems)}): "
            "resume with the settings it was trained with"
        )
    module.load_state_dict(state)


def load_checkpoint(path: str | os.PathLike, *, map_location: str | torch.device = "cpu") -> dict:
    """Load a napari-segrep checkpoint with ``torch.load(weights_only=True)``.

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    ValueError
        The file is not a torch file (corrupt, truncated, another format), holds arbitrary
        pickled objects (refused: loading them could run code), is not a napari-segrep
        checkpoint, or holds NaN/Inf values (a diverged or corrupt model).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        with warnings.catch_warnings():  # torch's remarks on the pickle protocol of odd files
            warnings.filterwarnings("ignore", message=".*pickle protocol", category=UserWarning)
            payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's message advises weights_only=False, which would run the file's code: never
        # shown.  "Unsupported global" means a real pickle naming classes; else it is garbage.
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
        if found is None:
            raise ValueError(f"{path} {_NOT_OURS}") from None
        raise ValueError(
            f"{path} holds pickled Python objects ({found.group(1)}) that napari-segrep refuses "
            "to load: unpickling them could run arbitrary code, and a napari-segrep checkpoint "
            "holds only tensors, numbers and strings. It is not a napari-segrep checkpoint."
        ) from None
    except Exception:  # noqa: BLE001 - torch raises many types on corrupt files
        raise ValueError(f"{path} {_NOT_OURS}") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(
            f"{path} is a torch file but not a napari-segrep checkpoint (no "
            f"'format': {CHECKPOINT_FORMAT!r} key). For torchvision ImageNet weights use "
            "SegmentEncoder(weights='imagenet')."
        )
    bad = nonfinite_tensors(payload)
    if bad:
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise ValueError(
            f"{path} holds NaN or Inf values (in {', '.join(bad[:3])}{more}): the model diverged "
            "during training or the file is corrupt, and would embed garbage. Use an earlier "
            "checkpoint, or train again with a lower learning rate."
        )
    return payload


def encoder_state_from_checkpoint(path: str | os.PathLike) -> tuple[dict, dict]:
    """``(encoder_config, encoder_state_dict)`` from a checkpoint file, validated
    (:func:`validate_encoder_config`)."""
    payload = load_checkpoint(path)
    try:
        config, state = payload["encoder_config"], payload["encoder"]
    except KeyError as exc:
        raise ValueError(f"checkpoint {path} has no encoder ({exc.args[0]!r} missing)") from None
    return validate_encoder_config(config, state, source=str(path)), state


_TRAINING_KEYS = ("config", "encoder_config", "encoder", "head", "optimizer", "scheduler")
_TRAINING_KEYS += ("scaler", "epoch", "epoch_step", "global_step", "rng")
#: The contrastive objective's own keys (what an objective keeps besides the model:
#: ``Objective.state_keys``), the default of the checks below.
_CONTRASTIVE_KEYS = ("loss_state",)
#: The largest step or epoch count a training checkpoint may hold (int64, as torch keeps them).
_MAX_COUNT = 2**63 - 1


def _short(value, limit: int = 40) -> str:
    """``repr(value)`` cut to ``limit`` characters (a crafted file may hold huge values)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


def _count_problem(key: str, value) -> str | None:
    if _is_int(value) and 0 <= value <= _MAX_COUNT:
        return None
    return f"{key}={_short(value)} is not a count (an integer from 0 to 2**63-1)"


def _records_problem(key: str, records, required: dict) -> str | None:
    """What is wrong with a list of records (``history``/``quality``): each a dict holding
    ``required`` keys of the given types."""
    if not isinstance(records, list):
        return f"{key} is not a list of records: {type(records).__name__}"
    for i, record in enumerate(records):
        if not isinstance(record, dict):
            return f"{key}[{i}] is not a record (dict): {_short(record)}"
        for name, types in required.items():
            value = record.get(name)
            if not isinstance(value, types) or isinstance(value, bool) and bool not in types:
                return f"{key}[{i}][{name!r}] is {_short(value)}"
    return None


_NUMBER = (int, float)
_HISTORY_RECORD = {"epoch": (int,), "step": (int,), "loss": _NUMBER}
_QUALITY_RECORD = {
    "epoch": (int,),
    "effective_rank": _NUMBER,
    "view_agreement": _NUMBER,
    "n": (int,),
    "monitor": (str,),
    "loss": (*_NUMBER, type(None)),
}


def training_checkpoint_problems(
    payload: dict, *, objective_keys: Sequence[str] = _CONTRASTIVE_KEYS
) -> list[str]:
    """What keeps a loaded training checkpoint's ``payload`` from being resumed: a missing key,
    or a value of the wrong type or range (``epoch="one"``, ``config=None``, a random state that
    is not torch's).  ``[]`` for a checkpoint this package wrote.  The weights and optimiser
    states are compared with the run when they are loaded (:func:`load_state_checked`).
    ``objective_keys``: the objective's own state (dicts), ``Objective.state_keys``."""
    objective_keys = tuple(objective_keys)
    missing = [k for k in (*_TRAINING_KEYS, *objective_keys) if k not in payload]
    if missing:
        return [f"{', '.join(repr(k) for k in missing)} missing"]
    problems = []
    for key in ("config", "encoder_config", "encoder", "head", *objective_keys, "scaler"):
        if not isinstance(payload[key], dict):
            problems.append(f"{key} is not a dict: {_short(payload[key])}")
    optimizer = payload["optimizer"]
    if not (
        isinstance(optimizer, dict)
        and isinstance(optimizer.get("state"), dict)
        and isinstance(optimizer.get("param_groups"), list)
        and all(isinstance(g, dict) for g in optimizer["param_groups"])
    ):
        problems.append("optimizer is not an optimiser state (state and param_groups)")
    scheduler = payload["scheduler"]
    if not isinstance(scheduler, dict) or not _is_int(scheduler.get("last_epoch")):
        problems.append("scheduler is not a learning-rate schedule's state")
    for key in ("epoch", "epoch_step", "global_step"):
        problem = _count_problem(key, payload[key])
        if problem:
            problems.append(problem)
    rng = payload["rng"]
    state = rng.get("torch") if isinstance(rng, dict) else None
    expected = torch.get_rng_state()
    if not (
        isinstance(state, torch.Tensor)
        and state.dtype == expected.dtype
        and tuple(state.shape) == tuple(expected.shape)
    ):
        what = (
            f"a {state.dtype} tensor of shape {tuple(state.shape)}"
            if isinstance(state, torch.Tensor)
            else _short(state if isinstance(rng, dict) else rng)
        )
        problems.append(
            f"rng is not torch's random state (a {expected.dtype} tensor of shape "
            f"{tuple(expected.shape)} under 'torch'): {what}"
        )
    for key, required in (("history", _HISTORY_RECORD), ("quality", _QUALITY_RECORD)):
        problem = _records_problem(key, payload.get(key, []), required)
        if problem:
            problems.append(problem)
    monitor = payload.get("monitor")
    if monitor is not None and not (
        isinstance(monitor, dict)
        and isinstance(monitor.get("indices"), list)
        and all(_is_int(i) for i in monitor["indices"])
    ):
        problems.append(f"monitor is not a monitor set (a list of indices): {_short(monitor)}")
    return problems


def load_training_checkpoint(
    path: str | os.PathLike,
    *,
    objective_keys: Sequence[str] = _CONTRASTIVE_KEYS,
    objective: str | None = None,
) -> dict:
    """:func:`load_checkpoint` for resuming: a complete training checkpoint, or one ValueError
    naming ``path`` and every problem (:func:`training_checkpoint_problems`, with the
    objective's ``objective_keys``); given ``objective``, a checkpoint of another objective is
    refused naming both."""
    payload = load_checkpoint(path, map_location="cpu")
    if payload.get("kind") != "training":
        raise ValueError(
            f"{path} is an encoder checkpoint, not a training checkpoint: to start a new run "
            "from it, pass encoder=napari_segrep.load_encoder(path) instead of resume="
        )
    config = payload.get("config")
    saved = (config.get("objective") if isinstance(config, dict) else None) or "contrastive"
    if objective is not None and saved != objective:
        raise ValueError(
            f"training checkpoint {path} was trained with objective={saved!r}, this run is "
            f"{objective!r}: resume it with objective={saved!r} (--objective {saved}), or start "
            "a new run from its encoder (--init-checkpoint)"
        )
    problems = training_checkpoint_problems(payload, objective_keys=objective_keys)
    if problems:
        raise ValueError(
            f"training checkpoint {path} cannot be resumed: {'; '.join(problems)}. It was not "
            "written by napari-segrep, or was altered: resume from an intact checkpoint, or "
            "start a new run"
        )
    return payload


def load_state_into(obj, state, *, what: str, source: str) -> None:
    """``obj.load_state_dict(state)`` for an optimiser, schedule or gradient scaler, or one
    ``ValueError`` naming ``source`` and the saved ``what`` (instead of torch's KeyError or
    size message)."""
    try:
        obj.load_state_dict(state)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, RuntimeError) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise ValueError(
            f"checkpoint {source}: its {what} does not fit this run ({_short(reason, 200)}): "
            "resume with the settings it was trained with, from an intact checkpoint"
        ) from None
