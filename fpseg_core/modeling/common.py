"""Small building blocks shared by the encoders and the decoder (names match SAM's state-dict keys)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MLPBlock(nn.Module):
    """Transformer feed-forward block: [..., embedding_dim] -> [..., embedding_dim] (keys `lin1`, `lin2`)."""

    def __init__(self, embedding_dim: int, mlp_dim: int, act: type[nn.Module] = nn.GELU) -> None:
        super().__init__()
        self.lin1 = nn.Linear(embedding_dim, mlp_dim)
        self.lin2 = nn.Linear(mlp_dim, embedding_dim)
        self.act = act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin2(self.act(self.lin1(x)))


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel axis of a [B, C, H, W] tensor (SAM's LayerNorm2d, eps 1e-6).

    Computed as `F.layer_norm` on channels-last values, so that the ONNX export (opset 17 and later) holds one
    LayerNormalization node, which TensorRT runs in fp32 inside fp16 engines, instead of a ReduceMean / Pow /
    Sqrt decomposition that overflows in fp16. Same numbers as SAM's formula to float rounding (~1e-6).
    """

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normed = F.layer_norm(x.permute(0, 2, 3, 1), self.weight.shape, self.weight, self.bias, self.eps)
        return normed.permute(0, 3, 1, 2).contiguous()
