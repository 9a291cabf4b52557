"""Training heads: the projection MLP the SSL losses see, and the encoder + head model.

Embeddings stay the encoder's pooled features; a head exists only during training (and in
training checkpoints, under ``"head"``).
"""

from __future__ import annotations

from torch import Tensor, nn

from .masking import MaskedBatchNorm2d

__all__ = ["ProjectionHead"]


class _BatchNorm1d(MaskedBatchNorm2d):
    """BatchNorm1d for (N, C) input, built on MaskedBatchNorm2d so that its statistics can be
    synchronised across processes on CPU (gloo) as well as on GPUs (``nn.SyncBatchNorm`` is
    GPU-only)."""

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        return super().forward(x[:, :, None, None])[:, :, 0, 0]


class ProjectionHead(nn.Module):
    """MLP head used only for training (embeddings stay the encoder's pooled features):
    Linear -> BatchNorm1d -> ReLU -> Linear, as TiCo/SimCLR heads."""

    def __init__(self, in_dim: int, hidden_dim: int = 1024, out_dim: int = 256) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden_dim, bias=False),
            _BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, out_dim),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class _SSLModel(nn.Module):
    """``head(encoder(images, masks))``: the one module DistributedDataParallel wraps."""

    def __init__(self, encoder: nn.Module, head: ProjectionHead) -> None:
        super().__init__()
        self.encoder, self.head = encoder, head

    def forward(self, images: Tensor, masks: Tensor) -> Tensor:
        return self.head(self.encoder(images, masks))
