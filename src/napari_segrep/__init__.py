"""napari-segrep: mask-supervised segment representations (SegRep) with dual masking.

The headless API is importable without napari or Qt, and ``import napari_segrep`` is cheap:
torch and friends load on first use of a name below.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from ._version import __version__

# The public names, each with the module that defines it: the one list (``__all__`` is made
# from it; the imports for type checkers below are tested to match it).
_LAZY = {
    "SegmentEncoder": "napari_segrep.engine.encoder",
    "embed_segments": "napari_segrep.engine.embed",
    "embed_stack": "napari_segrep.engine.embed",
    "embed_images": "napari_segrep.engine.collection",
    "train_ssl": "napari_segrep.engine.training",
    "refine_encoder": "napari_segrep.refine",
    "TrainingDiverged": "napari_segrep.errors",
    "resolve_device": "napari_segrep.engine.devices",
    "Cancelled": "napari_segrep.errors",
    "save_encoder": "napari_segrep.engine.encoder",
    "load_encoder": "napari_segrep.engine.encoder",
    "write_table": "napari_segrep.analysis.export",
    "read_table": "napari_segrep.analysis.export",
    "train_classifier": "napari_segrep.analysis.classify",
    "load_classifier": "napari_segrep.analysis.classify",
    "improve_classifier": "napari_segrep.analysis.improve",
    "measure_segments": "napari_segrep.analysis.measure",
    "add_measurements": "napari_segrep.analysis.measure",
    "segment_thumbnails": "napari_segrep.engine.thumbnails",
    "nearest_segments": "napari_segrep.analysis.neighbours",
}

__all__ = ["__version__", *sorted(_LAZY)]

if TYPE_CHECKING:  # pragma: no cover - for type checkers: _LAZY's names (tested to agree)
    from .analysis.classify import load_classifier, train_classifier  # noqa: F401
    from .analysis.export import read_table, write_table  # noqa: F401
    from .analysis.improve import improve_classifier  # noqa: F401
    from .analysis.measure import add_measurements, measure_segments  # noqa: F401
    from .analysis.neighbours import nearest_segments  # noqa: F401
    from .engine.collection import embed_images  # noqa: F401
    from .engine.devices import resolve_device  # noqa: F401
    from .engine.embed import embed_segments, embed_stack  # noqa: F401
    from .engine.encoder import SegmentEncoder, load_encoder, save_encoder  # noqa: F401
    from .engine.thumbnails import segment_thumbnails  # noqa: F401
    from .engine.training import train_ssl  # noqa: F401
    from .errors import Cancelled, TrainingDiverged  # noqa: F401
    from .refine import refine_encoder  # noqa: F401


def __getattr__(name: str):
    try:
        module = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'napari_segrep' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(__all__)
