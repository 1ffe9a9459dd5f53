"""FPSeg mask decoder: SAM's decoder with one output mask token and one hypernetwork MLP."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .common import LayerNorm2d
from .transformer import TwoWayTransformer


class MLP(nn.Module):
    """`num_layers` linear layers with ReLU between them: [..., input_dim] -> [..., output_dim]."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int) -> None:
        super().__init__()
        dims_in = [input_dim] + [hidden_dim] * (num_layers - 1)
        dims_out = [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims_in, dims_out, strict=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


class FPSegMaskDecoder(nn.Module):
    """Predicts one low-resolution mask-logit map per (image, class).

    forward(image_embeddings [B, C, h, w], image_pe [1, C, h, w], dense_embedding [1, C, 1, 1] or
    [1, C, h, w], prompt_tokens [N, P, C]) -> logits [B, N, 4h, 4w]. Tokens fed to the transformer are
    [mask token, the class's P prompt tokens]; the image batch and the class batch are flattened together.
    """

    def __init__(self, transformer_dim: int = 256, transformer: TwoWayTransformer | None = None) -> None:
        super().__init__()
        self.transformer_dim = transformer_dim
        self.transformer = transformer if transformer is not None else TwoWayTransformer(
            depth=2, embedding_dim=transformer_dim, mlp_dim=2048, num_heads=8
        )
        self.mask_tokens = nn.Embedding(1, transformer_dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(transformer_dim, transformer_dim // 4, kernel_size=2, stride=2),
            LayerNorm2d(transformer_dim // 4),
            nn.GELU(),
            nn.ConvTranspose2d(transformer_dim // 4, transformer_dim // 8, kernel_size=2, stride=2),
            nn.GELU(),
        )
        self.output_hypernetworks_mlps = nn.ModuleList(
            [MLP(transformer_dim, transformer_dim, transformer_dim // 8, 3)]
        )

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        dense_embedding: torch.Tensor,
        prompt_tokens: torch.Tensor,
    ) -> torch.Tensor:
        n_images, n_classes = image_embeddings.shape[0], prompt_tokens.shape[0]
        logits = self.forward_pairs(
            torch.repeat_interleave(image_embeddings, n_classes, dim=0),
            image_pe,
            dense_embedding,
            prompt_tokens.repeat(n_images, 1, 1),
        )
        return logits.reshape(n_images, n_classes, *logits.shape[-2:])

    def forward_pairs(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        dense_embedding: torch.Tensor,
        prompt_tokens: torch.Tensor,
    ) -> torch.Tensor:
        """One class per image (training on class-wise samples): image_embeddings [B, C, h, w] and the
        prompt tokens of each image's class [B, P, C] -> logits [B, 4h, 4w]."""
        b, c, h, w = image_embeddings.shape
        mask_token = self.mask_tokens.weight.unsqueeze(0).expand(b, -1, -1)
        tokens = torch.cat([mask_token, prompt_tokens], dim=1)
        hs, src = self.transformer(image_embeddings + dense_embedding, image_pe.expand(b, -1, -1, -1), tokens)
        upscaled = self.output_upscaling(src.transpose(1, 2).reshape(b, c, h, w))
        hyper_in = self.output_hypernetworks_mlps[0](hs[:, 0, :])
        _, c_up, h_up, w_up = upscaled.shape
        return (hyper_in.unsqueeze(1) @ upscaled.reshape(b, c_up, h_up * w_up)).reshape(b, h_up, w_up)
