"""RoofSAM's class decoder: SAM's mask decoder whose point tokens are read out as class logits."""

from __future__ import annotations

import torch
from torch import nn

from .mask_decoder import MLP, FPSegMaskDecoder
from .transformer import TwoWayTransformer

N_MULTIMASK_OUTPUTS = 3  # SAM's multimask outputs: 3 + 1 mask tokens
IOU_HEAD_DEPTH = 3
CLASS_HEAD_DEPTH = 3


class ClassDecoder(nn.Module):
    """SAM's `MaskDecoder` key layout (`transformer.*`, `iou_token`, `mask_tokens` (4), `output_upscaling.*`,
    `output_hypernetworks_mlps.{0..3}.*`, `iou_prediction_head.*`) plus `class_pred_mlp.layers.{0,1,2}`
    (transformer_dim -> transformer_dim -> transformer_dim -> n_classes, ReLU between).

    Only the transformer, the output tokens and `class_pred_mlp` compute the logits; the upscaling, the
    hypernetwork MLPs and the IoU head are kept so that SAM's and RoofSAM's decoder files load as they are.

    forward(image_embedding [1 or B, C, h, w], image_pe [1, C, h, w], sparse [B, K + 1, C] (K points and the
    padding token), dense [1, C, h, w]) -> logits [B, K, n_classes]. Tokens are [IoU token, 4 mask tokens]
    followed by the sparse tokens; the outputs at positions 5 .. 5 + K - 1 (the K points) are classified.
    """

    def __init__(self, n_classes: int, transformer_dim: int = 256, transformer: TwoWayTransformer | None = None
                 ) -> None:
        super().__init__()
        # the parts SAM's mask decoder shares with FPSeg's: the transformer and the output upscaling
        shared = FPSegMaskDecoder(transformer_dim, transformer)
        self.transformer_dim = transformer_dim
        self.transformer = shared.transformer
        self.iou_token = nn.Embedding(1, transformer_dim)
        self.num_mask_tokens = N_MULTIMASK_OUTPUTS + 1
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, transformer_dim)
        self.output_upscaling = shared.output_upscaling
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(transformer_dim, transformer_dim, transformer_dim // 8, 3) for _ in range(self.num_mask_tokens)
        )
        self.iou_prediction_head = MLP(transformer_dim, transformer_dim, self.num_mask_tokens, IOU_HEAD_DEPTH)
        self.class_pred_mlp = MLP(transformer_dim, transformer_dim, n_classes, CLASS_HEAD_DEPTH)

    @property
    def n_output_tokens(self) -> int:
        """Tokens before the sparse prompt tokens: the IoU token and the mask tokens."""
        return 1 + self.num_mask_tokens

    @property
    def n_classes(self) -> int:
        return self.class_pred_mlp.layers[-1].out_features

    def layout_only_modules(self) -> list[nn.Module]:
        """The parts kept only for SAM's key layout: `forward` does not use them (training freezes them)."""
        return [self.output_upscaling, self.output_hypernetworks_mlps, self.iou_prediction_head]

    def forward(
        self,
        image_embedding: torch.Tensor,
        image_pe: torch.Tensor,
        sparse: torch.Tensor,
        dense: torch.Tensor,
    ) -> torch.Tensor:
        b, n_points = sparse.shape[0], sparse.shape[1] - 1
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        tokens = torch.cat([output_tokens.unsqueeze(0).expand(b, -1, -1), sparse], dim=1)
        src = (image_embedding + dense).expand(b, -1, -1, -1)
        hs, _ = self.transformer(src, image_pe.expand(b, -1, -1, -1), tokens)
        start = self.n_output_tokens
        return self.class_pred_mlp(hs[:, start : start + n_points, :])
