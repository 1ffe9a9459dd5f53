"""SAM's prompt encoder, point path only: positive point prompts -> sparse tokens (RoofSAM's region prompts)."""

from __future__ import annotations

import torch
from torch import nn

from .prompt_encoder import PositionEmbeddingRandom

# SAM's point_embeddings rows: 0 negative point, 1 positive point, 2 / 3 box corners (kept for the key layout).
N_POINT_EMBEDDINGS = 4
POSITIVE_POINT = 1


class PointPromptEncoder(nn.Module):
    """Embeds positive point prompts exactly as SAM's `PromptEncoder` does without a box (pad=True).

    State-dict keys are SAM's point-path names: `pe_layer.positional_encoding_gaussian_matrix`,
    `point_embeddings.{0..3}.weight`, `not_a_point_embed.weight`, `no_mask_embed.weight`.

    forward(points [B, K, 2], (x, y) pixels in the encoder's input frame) -> sparse tokens [B, K + 1, embed_dim]:
    each point's positional encoding (at the pixel centre, +0.5) plus the positive-point embedding, then one
    padding token (`not_a_point_embed`).
    """

    def __init__(
        self,
        embed_dim: int = 256,
        image_embedding_size: tuple[int, int] = (64, 64),
        input_image_size: tuple[int, int] = (1024, 1024),
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.image_embedding_size = image_embedding_size
        self.input_image_size = input_image_size
        self.pe_layer = PositionEmbeddingRandom(embed_dim // 2)
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, embed_dim) for _ in range(N_POINT_EMBEDDINGS))
        self.not_a_point_embed = nn.Embedding(1, embed_dim)
        self.no_mask_embed = nn.Embedding(1, embed_dim)

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        if points.ndim != 3 or points.shape[-1] != 2:
            raise ValueError(f"points must be [B, K, 2] (x, y) pixels, got shape {list(points.shape)}")
        tokens = self.pe_layer.forward_with_coords(points + 0.5, self.input_image_size)
        tokens = tokens + self.point_embeddings[POSITIVE_POINT].weight
        padding = self.not_a_point_embed.weight.expand(points.shape[0], 1, -1)
        return torch.cat([tokens, padding.to(tokens.dtype)], dim=1)

    def dense_pe(self) -> torch.Tensor:
        """Positional encoding of the embedding grid: [1, embed_dim, h, w]."""
        return self.pe_layer(self.image_embedding_size).unsqueeze(0)

    def dense_no_mask(self) -> torch.Tensor:
        """The no-mask dense prompt on the embedding grid: [1, embed_dim, h, w] (an expanded view)."""
        return self.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(1, -1, *self.image_embedding_size)
