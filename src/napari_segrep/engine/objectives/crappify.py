"""BiaPy's ``crappify`` pretext task: degrade the segment and restore it.

Each item is degraded as BiaPy's crappify does, by a down- then up-sampling (a factor drawn
from :data:`DOWN_FACTORS`, bilinear or trilinear) and Gaussian noise (its standard deviation
drawn uniformly in :data:`NOISE_SIGMA`, in the scaled image's units: about 0-1).  The
degradation acts on the view already zeroed outside the segment, so no outside pixel blurs
into it; the decoder restores the clean view and the loss is the mean squared error over the
pixels **inside the segment**.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ._pretext import PretextObjective

__all__ = ["CrappifyObjective"]

#: Down-sampling factors, one drawn per item.
DOWN_FACTORS = (2, 3, 4)
#: The range of the noise's standard deviation, one drawn per item.
NOISE_SIGMA = (0.02, 0.15)


class CrappifyObjective(PretextObjective):
    """Restore a degraded segment (see the module docstring)."""

    name = "crappify"
    state_keys = ("crappify_state",)

    def settings(self) -> dict[str, float]:
        return {
            "down_factor_min": min(DOWN_FACTORS),
            "down_factor_max": max(DOWN_FACTORS),
            "noise_sigma_min": NOISE_SIGMA[0],
            "noise_sigma_max": NOISE_SIGMA[1],
        }

    def corrupt(self, views: Tensor, masks: Tensor, generators: list) -> tuple[Tensor, Tensor]:
        spatial = tuple(views.shape[2:])
        mode = "bilinear" if len(spatial) == 2 else "trilinear"
        low, high = NOISE_SIGMA
        out = []
        for view, g in zip(views, generators, strict=True):
            factor = DOWN_FACTORS[int(torch.randint(len(DOWN_FACTORS), (), generator=g))]
            small = tuple(max(1, s // factor) for s in spatial)
            x = F.interpolate(view[None], size=small, mode=mode, align_corners=False)
            x = F.interpolate(x, size=spatial, mode=mode, align_corners=False)[0]
            sigma = low + (high - low) * float(torch.rand((), generator=g))
            out.append(x + sigma * torch.randn(x.shape, generator=g, dtype=x.dtype))
        return torch.stack(out), masks.to(views.dtype)
