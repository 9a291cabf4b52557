"""What training optimises, one objective per file (the loop does not know which).

- :class:`ContrastiveObjective` (``"contrastive"``, :mod:`.contrastive`): two augmented views
  of each segment, a projection head and a two-view loss (``TrainConfig.loss``: NT-Xent, TiCo,
  VICReg).  Today's only objective, and the default.

The interface is :class:`~napari_segrep.engine.objectives.base.Objective`.  Next (issue 24):
``masking`` (hide patches inside the segment, reconstruct them) and ``crappify`` (restore a
degraded segment) as ``masking.py`` and ``crappify.py`` here, each added to
:data:`OBJECTIVES`; then a supervised one.
"""

from __future__ import annotations

from .base import Objective, StepLoss
from .contrastive import ContrastiveObjective

__all__ = ["OBJECTIVES", "ContrastiveObjective", "Objective", "StepLoss", "make_objective"]

#: Every objective by name.
OBJECTIVES: dict[str, type[Objective]] = {
    ContrastiveObjective.name: ContrastiveObjective,
}


def objective_name(config) -> str:
    """The objective a config trains: ``"contrastive"`` for every loss today (its two-view
    losses are ``config.loss``).  The one place that maps a config to an objective: a config
    field choosing ``masking`` / ``crappify`` is read here."""
    return getattr(config, "objective", None) or ContrastiveObjective.name


def make_objective(config, *, distributed: bool = False) -> Objective:
    """The :class:`Objective` that ``config`` trains, built from it (a ``ValueError`` naming
    the choices for an unknown one)."""
    name = objective_name(config)
    try:
        cls = OBJECTIVES[name]
    except KeyError:
        raise ValueError(
            f"unknown objective {name!r}; choose one of {sorted(OBJECTIVES)}"
        ) from None
    return cls(config, distributed=distributed)
