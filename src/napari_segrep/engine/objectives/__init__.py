"""What training optimises, one objective per file (the loop does not know which).

- :class:`ContrastiveObjective` (``"contrastive"``, :mod:`.contrastive`): two augmented views
  of each segment, a projection head and a two-view loss (``TrainConfig.loss``: NT-Xent, TiCo,
  VICReg).  The default.
- :class:`MaskingObjective` (``"masking"``, :mod:`.masking`) and :class:`CrappifyObjective`
  (``"crappify"``, :mod:`.crappify`): BiaPy's pretext tasks, one view of each segment, hidden
  patches or a degradation restored by a light decoder from the encoder's masked feature map
  (:mod:`._pretext`).
- :class:`SupervisedObjective` (``"supervised"``, :mod:`.supervised`): refines the encoder from
  the user's annotations (SupCon on all segments, weighted cross-entropy on the annotated ones);
  ``TrainConfig.classes`` names the classes (:func:`~napari_segrep.refine.refine_encoder`).

The interface is :class:`~napari_segrep.engine.objectives.base.Objective`; chosen by
``TrainConfig.objective``.  A new objective is a new file here, added to
:data:`OBJECTIVES`.
"""

from __future__ import annotations

from .base import Objective, StepLoss
from .contrastive import ContrastiveObjective
from .crappify import CrappifyObjective
from .masking import MaskingObjective
from .supervised import SupervisedObjective

__all__ = [
    "OBJECTIVES",
    "ContrastiveObjective",
    "CrappifyObjective",
    "MaskingObjective",
    "Objective",
    "StepLoss",
    "SupervisedObjective",
    "make_objective",
    "objective_class",
]

#: Every objective by name.
OBJECTIVES: dict[str, type[Objective]] = {
    ContrastiveObjective.name: ContrastiveObjective,
    MaskingObjective.name: MaskingObjective,
    CrappifyObjective.name: CrappifyObjective,
    SupervisedObjective.name: SupervisedObjective,
}


def objective_name(config) -> str:
    """The objective a config trains (``config.objective``; ``"contrastive"`` for a config
    without one: checkpoints written before objectives could be chosen).  The one place that
    maps a config to an objective."""
    return getattr(config, "objective", None) or ContrastiveObjective.name


def objective_class(config) -> type[Objective]:
    """The :class:`Objective` class ``config`` trains (a ``ValueError`` naming the choices for
    an unknown one)."""
    name = objective_name(config)
    try:
        return OBJECTIVES[name]
    except KeyError:
        raise ValueError(
            f"unknown objective {name!r}; choose one of {sorted(OBJECTIVES)}"
        ) from None


def make_objective(config, *, distributed: bool = False) -> Objective:
    """The :class:`Objective` that ``config`` trains, built from it."""
    return objective_class(config)(config, distributed=distributed)
