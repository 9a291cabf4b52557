"""What the widgets share within one napari session."""

from __future__ import annotations

#: The encoder trained in this session (set by "Train SegRep"), offered by "Embed segments".
trained_encoder = None
#: Whether torchvision's ImageNet weights lie in the local torch cache (found by the warm-up).
imagenet_available = False
