"""FPSeg prompt encoder: the per-class prompt bank, the dense no-mask embedding and SAM's positional encoding."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class PositionEmbeddingRandom(nn.Module):
    """SAM's random Fourier-feature positional encoding, of the embedding grid and of point prompts.

    forward((H, W)) -> [2 * num_pos_feats, H, W]; the 2 x num_pos_feats Gaussian matrix is a buffer that
    official checkpoints carry (`pe_layer.positional_encoding_gaussian_matrix`).
    """

    def __init__(self, num_pos_feats: int = 128, scale: float | None = None) -> None:
        super().__init__()
        scale = 1.0 if scale is None or scale <= 0.0 else scale
        self.register_buffer("positional_encoding_gaussian_matrix", scale * torch.randn((2, num_pos_feats)))

    def _pe_encoding(self, coords: torch.Tensor) -> torch.Tensor:
        coords = 2 * coords - 1
        coords = coords @ self.positional_encoding_gaussian_matrix
        coords = 2 * np.pi * coords
        return torch.cat([torch.sin(coords), torch.cos(coords)], dim=-1)

    def forward_with_coords(self, coords: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
        """Points [..., 2] as (x, y) pixels of an image of `image_size` (H, W) -> [..., 2 * num_pos_feats]."""
        dtype = self.positional_encoding_gaussian_matrix.dtype
        scale = torch.tensor([image_size[1], image_size[0]], device=coords.device, dtype=dtype)
        return self._pe_encoding(coords.to(dtype) / scale)

    def forward(self, size: tuple[int, int]) -> torch.Tensor:
        h, w = size
        matrix = self.positional_encoding_gaussian_matrix
        grid = torch.ones((h, w), device=matrix.device, dtype=matrix.dtype)
        y_embed = (grid.cumsum(dim=0) - 0.5) / h
        x_embed = (grid.cumsum(dim=1) - 0.5) / w
        pe = self._pe_encoding(torch.stack([x_embed, y_embed], dim=-1))
        return pe.permute(2, 0, 1)


class FPSegPromptEncoder(nn.Module):
    """Holds the learned prompt tokens of every class and the class-independent prompt inputs.

    - `prompt_embeddings`: [n_classes, prompt_size, embed_dim], row i is class i of the bank.
    - `no_mask_embed`: one learned vector added to every image-embedding position (dense prompt).
    - `pe_layer`: positional encoding of the image-embedding grid.
    """

    def __init__(
        self,
        n_classes: int,
        prompt_size: int,
        image_embedding_size: tuple[int, int] = (64, 64),
        embed_dim: int = 256,
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.image_embedding_size = image_embedding_size
        self.prompt_embeddings = nn.Parameter(torch.randn(n_classes, prompt_size, embed_dim) * 0.02)
        self.pe_layer = PositionEmbeddingRandom(embed_dim // 2)
        self.no_mask_embed = nn.Embedding(1, embed_dim)

    @property
    def n_classes(self) -> int:
        return self.prompt_embeddings.shape[0]

    @property
    def prompt_size(self) -> int:
        return self.prompt_embeddings.shape[1]

    def get_dense_pe(self) -> torch.Tensor:
        """Positional encoding of the embedding grid: [1, embed_dim, H, W]."""
        return self.pe_layer(self.image_embedding_size).unsqueeze(0)

    def dense_embedding(self) -> torch.Tensor:
        """The no-mask dense prompt as [1, embed_dim, 1, 1], broadcast over the grid by the decoder."""
        return self.no_mask_embed.weight.reshape(1, -1, 1, 1)
