"""The FPSeg network: a frozen SAM / MobileSAM image encoder, the prompt bank and the FPSeg mask decoder."""

from __future__ import annotations

import torch
from torch import nn

from .mask_decoder import FPSegMaskDecoder
from .prompt_encoder import FPSegPromptEncoder


class FPSegModel(nn.Module):
    """Top-level modules `image_encoder`, `prompt_encoder`, `mask_decoder` (the published state-dict keys).

    encode(normalised images [B, 3, S, S]) -> embeddings [B, 256, S/16, S/16];
    decode(embeddings, prompt tokens [N, P, 256]) -> low-resolution logits [B, N, S/4, S/4].
    """

    def __init__(
        self,
        image_encoder: nn.Module,
        prompt_encoder: FPSegPromptEncoder,
        mask_decoder: FPSegMaskDecoder,
        img_size: int = 1024,
    ) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.img_size = img_size

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.image_encoder(images)

    def decode(self, embeddings: torch.Tensor, prompt_tokens: torch.Tensor) -> torch.Tensor:
        return self.mask_decoder(
            embeddings,
            self.prompt_encoder.get_dense_pe(),
            self.prompt_encoder.dense_embedding(),
            prompt_tokens,
        )

    def forward(self, images: torch.Tensor, class_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Low-resolution logits [B, N, S/4, S/4] for the bank rows `class_ids` (all rows when None)."""
        prompts = self.prompt_encoder.prompt_embeddings
        if class_ids is not None:
            prompts = prompts[class_ids]
        return self.decode(self.encode(images), prompts)
