"""napari-segrep: mask-supervised segment representations (SegRep) with dual masking.

The headless API is importable without napari or Qt, and ``import napari_segrep`` is cheap:
torch and friends load on first use of a name below.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from ._version import __version__

# public name -> module that defines it
_LAZY = {
    "SegmentEncoder": "napari_segrep.engine.encoder",
    "embed_segments": "napari_segrep.engine.embed",
    "embed_stack": "napari_segrep.engine.embed",
    "embed_images": "napari_segrep.engine.collection",
    "train_ssl": "napari_segrep.engine.training",
    "TrainingDiverged": "napari_segrep.errors",
    "resolve_device": "napari_segrep.engine.devices",
    "Cancelled": "napari_segrep.errors",
    "save_encoder": "napari_segrep.engine.encoder",
    "load_encoder": "napari_segrep.engine.encoder",
    "write_table": "napari_segrep.analysis.export",
    "train_classifier": "napari_segrep.analysis.classify",
    "load_classifier": "napari_segrep.analysis.classify",
    "improve_classifier": "napari_segrep.analysis.improve",
    "measure_segments": "napari_segrep.analysis.measure",
    "add_measurements": "napari_segrep.analysis.measure",
    "segment_thumbnails": "napari_segrep.engine.thumbnails",
    "nearest_segments": "napari_segrep.analysis.neighbours",
}

__all__ = [
    "Cancelled",
    "SegmentEncoder",
    "__version__",
    "TrainingDiverged",
    "add_measurements",
    "embed_images",
    "embed_segments",
    "embed_stack",
    "improve_classifier",
    "load_classifier",
    "load_encoder",
    "measure_segments",
    "nearest_segments",
    "resolve_device",
    "save_encoder",
    "segment_thumbnails",
    "train_classifier",
    "train_ssl",
    "write_table",
]

if TYPE_CHECKING:  # pragma: no cover
    from .analysis.classify import load_classifier, train_classifier
    from .analysis.export import write_table
    from .analysis.improve import improve_classifier
    from .analysis.measure import add_measurements, measure_segments
    from .analysis.neighbours import nearest_segments
    from .engine.collection import embed_images
    from .engine.devices import resolve_device
    from .engine.embed import embed_segments, embed_stack
    from .engine.encoder import SegmentEncoder, load_encoder, save_encoder
    from .engine.thumbnails import segment_thumbnails
    from .engine.training import train_ssl
    from .errors import Cancelled, TrainingDiverged


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
