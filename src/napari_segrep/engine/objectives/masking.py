"""BiaPy's ``masking`` pretext task (MAE-like, as ConvNeXt V2's FCMAE does for convolutional
networks): hide random patches inside the segment and reconstruct them from the rest.

The crop is cut into square (cubic) patches of ``crop_size / PATCH_DIVISOR`` pixels; each is
hidden with probability :data:`MASK_RATIO` (0.6, FCMAE's ratio for convolutional networks; MAE
and BiaPy hide 0.75 of ViT tokens).  Hidden pixels are zeroed in the input (the encoder's own
image masking zeroes everything outside the segment), the decoder reconstructs the view, and the
loss is the mean squared error over the **hidden pixels inside the segment** only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ._pretext import PretextObjective

__all__ = ["MaskingObjective"]

#: The fraction of patches hidden.
MASK_RATIO = 0.6
#: A patch's side is the crop's side over this (8 pixels for crops of 64, 4 for 32).
PATCH_DIVISOR = 8


class MaskingObjective(PretextObjective):
    """Reconstruct hidden in-segment patches (see the module docstring)."""

    name = "masking"
    state_keys = ("masking_state",)

    def settings(self) -> dict[str, float]:
        return {"mask_ratio": MASK_RATIO, "patch_divisor": PATCH_DIVISOR}

    def corrupt(self, views: Tensor, masks: Tensor, generators: list) -> tuple[Tensor, Tensor]:
        spatial = tuple(views.shape[2:])
        grid = tuple(PATCH_DIVISOR for _ in spatial)
        drawn = [torch.rand(grid, generator=g) < MASK_RATIO for g in generators]
        hidden = torch.stack(drawn)[:, None].float()
        hidden = F.interpolate(hidden, size=spatial, mode="nearest")  # patches to pixels
        hidden = hidden * masks.to(hidden.dtype)  # only pixels inside the segment count
        return views * (1.0 - hidden).to(views.dtype), hidden
