"""The paper's validation: class-wise binary IoU over sampled (image, class) examples, from embeddings."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset

from ..data.sampling import ClassWiseSamples
from ..jobs.distributed import DistContext
from .metrics import BinaryIoU

# (embeddings [B, 256, h, w], class indices [B]) -> low-resolution logits [B, 4h, 4w]
PairDecoder = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def upsample_logits(low_res: torch.Tensor, size: int) -> torch.Tensor:
    """[B, h, w] -> [B, size, size], bilinear (align_corners False) as FPSeg's post-processing."""
    return F.interpolate(low_res.unsqueeze(1), (size, size), mode="bilinear", align_corners=False)[:, 0]


@torch.no_grad()
def evaluate_binary_iou(decode: PairDecoder, samples: ClassWiseSamples, n_classes: int, batch_size: int,
                        ctx: DistContext, num_workers: int = 0) -> BinaryIoU:
    """Binary IoU of each class over `samples` (a class is present where its logit > 0 at the target size).

    Under torchrun each process scores every world_size-th sample and the counts are summed.
    """
    mine = Subset(samples, list(range(ctx.rank, len(samples), ctx.world_size)))
    metric = BinaryIoU(n_classes)
    for batch in DataLoader(mine, batch_size=batch_size, num_workers=num_workers):
        logits = decode(batch["embedding"].to(ctx.device), batch["class_index"].to(ctx.device))
        pred = upsample_logits(logits, samples.target_size) > 0
        metric.update(pred.cpu().numpy(), batch["target"].numpy() > 0.5, batch["class_index"].numpy())
    metric.intersection = ctx.sum(metric.intersection)
    metric.union = ctx.sum(metric.union)
    metric.n_samples = ctx.sum(metric.n_samples)
    return metric
