"""RoofSAM's trainable network on image embeddings: point prompt encoder + class decoder."""

from __future__ import annotations

import torch
from torch import nn

from ..modeling.class_decoder import ClassDecoder
from ..modeling.point_prompt_encoder import PointPromptEncoder


class RegionHead(nn.Module):
    """forward(embeddings [1 or R, 256, h, w], points [R, K, 2] in the encoder frame) -> logits [R, C, K].

    One embedding serves every region when its batch is 1. The [R, C, K] layout is RoofSAM's (and what
    cross-entropy over every point takes with targets [R, K]). Training tunes `decoder`; `prompt_encoder`
    stays as SAM's.
    """

    def __init__(self, prompt_encoder: PointPromptEncoder, decoder: ClassDecoder) -> None:
        super().__init__()
        self.prompt_encoder = prompt_encoder
        self.decoder = decoder

    @property
    def n_classes(self) -> int:
        return self.decoder.n_classes

    def forward(self, embeddings: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        grid = tuple(self.prompt_encoder.image_embedding_size)
        if embeddings.ndim != 4 or tuple(embeddings.shape[-2:]) != grid or embeddings.shape[0] not in (1, len(points)):
            raise ValueError(f"embeddings must be [1 or {len(points)}, {self.prompt_encoder.embed_dim}, {grid[0]}, "
                             f"{grid[1]}] (the encoder's output), got {list(embeddings.shape)}")
        pe = self.prompt_encoder
        logits = self.decoder(embeddings, pe.dense_pe(), pe(points), pe.dense_no_mask())
        return logits.transpose(1, 2)
