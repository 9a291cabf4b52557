"""Checkpoints: atomic save, ``weights_only`` load, provenance.

A napari-segrep checkpoint is a ``torch.save`` of a plain dict (tensors, numbers, strings,
lists, dicts only, so it loads with ``torch.load(weights_only=True)``)::

    {"format": "napari-segrep", "format_version": 1, "package_version": "...",
     "kind": "encoder" | "training", "encoder_config": {...}, "encoder": state_dict, ...}

Training checkpoints (issue 2/4) add head, optimiser, scheduler and loop state under more keys.

This module knows the file format only; :func:`napari_segrep.engine.encoder.save_encoder` and
:func:`~napari_segrep.engine.encoder.load_encoder` write and rebuild encoders with it.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import torch

from ..io import atomic_write

__all__ = [
    "CHECKPOINT_FORMAT",
    "encoder_state_from_checkpoint",
    "load_checkpoint",
    "save_checkpoint",
]

CHECKPOINT_FORMAT = "napari-segrep"
FORMAT_VERSION = 1


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


def load_checkpoint(path: str | os.PathLike, *, map_location: str | torch.device = "cpu") -> dict:
    """Load a napari-segrep checkpoint with ``torch.load(weights_only=True)``.

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    ValueError
        The file is not a torch file, holds arbitrary pickled objects (refused: loading them could
        run code), or is not a napari-segrep checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ValueError(
            f"{path} holds pickled Python objects that napari-segrep refuses to load "
            "(torch.load(weights_only=True) only accepts tensors and plain containers, because "
            f"unpickling can run arbitrary code). Is it a napari-segrep checkpoint? ({exc})"
        ) from None
    except Exception as exc:  # noqa: BLE001 - torch raises many types on corrupt files
        raise ValueError(
            f"{path} is not a readable checkpoint (not a torch file, or truncated): {exc}"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(
            f"{path} is a torch file but not a napari-segrep checkpoint (no "
            f"'format': {CHECKPOINT_FORMAT!r} key). For torchvision ImageNet weights use "
            "SegmentEncoder(weights='imagenet')."
        )
    return payload


def encoder_state_from_checkpoint(path: str | os.PathLike) -> tuple[dict, dict]:
    """``(encoder_config, encoder_state_dict)`` from a checkpoint file."""
    payload = load_checkpoint(path)
    try:
        return payload["encoder_config"], payload["encoder"]
    except KeyError as exc:
        raise ValueError(f"checkpoint {path} has no encoder ({exc.args[0]!r} missing)") from None
