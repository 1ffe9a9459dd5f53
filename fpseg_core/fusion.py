"""Turn per-class logits into one label image: value 1 + bank index, 0 for none of the requested classes."""

from __future__ import annotations

import torch

from .constants import FUSIONS, MAX_CLASSES, Fusion, require_choice

__all__ = ["FUSIONS", "Fusion", "fuse"]


def fuse(
    logits: torch.Tensor, bank_ids: list[int] | torch.Tensor, fusion: Fusion = "argmax", threshold: float = 0.0
) -> torch.Tensor:
    """logits [..., N, H, W] of the requested classes (in request order) -> uint8 labels [..., H, W].

    `bank_ids[i]` is the bank index of requested class i. argmax: the class with the highest logit, if that
    logit is above `threshold`. priority: the first requested class whose logit is above `threshold`.
    """
    require_choice("fusion", fusion, FUSIONS)
    values = torch.as_tensor(bank_ids, device=logits.device, dtype=torch.int64) + 1
    if values.numel() != logits.shape[-3]:
        raise ValueError(f"{values.numel()} bank ids for {logits.shape[-3]} logit maps")
    if int(values.max()) > MAX_CLASSES:
        raise ValueError(f"label values stop at {MAX_CLASSES} (255 is vision_msgs' 'unlabeled'): bank indices must "
                         f"be below {MAX_CLASSES}")
    if fusion == "argmax":
        best, winner = logits.max(dim=-3)
        present = best > threshold
    else:
        above = logits > threshold
        winner = above.to(torch.uint8).argmax(dim=-3)
        present = above.any(dim=-3)
    return torch.where(present, values[winner], 0).to(torch.uint8)
