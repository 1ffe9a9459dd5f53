"""Comparing label images of two computations that agree up to float rounding."""

from __future__ import annotations

import numpy as np
import torch


def assert_same_decisions(actual: np.ndarray | torch.Tensor, expected: np.ndarray | torch.Tensor,
                          logits: torch.Tensor, fusion: str, threshold: float = 0.0) -> None:
    """Labels equal, except where the reference logits [N, H, W] are a rounding error away from a different
    decision (two logits, or a logit and the threshold, within 1e-5 of each other); those stay below 0.1%."""
    differ = torch.as_tensor(np.asarray(actual) != np.asarray(expected))
    if not differ.any():
        return
    values = logits.float().cpu()[:, differ]  # [N, pixels that differ]
    near_threshold = (values - threshold).abs().amin(dim=0)
    if fusion == "argmax" and values.shape[0] > 1:
        top2 = values.topk(2, dim=0).values
        margin = torch.minimum(top2[0] - top2[1], near_threshold)
    else:
        margin = near_threshold
    scale = 1 + logits.abs().max()
    assert (margin < 1e-5 * scale).all(), f"{int(differ.sum())} labels differ, not all at ties"
    assert differ.float().mean() < 1e-3, f"{int(differ.sum())} labels differ"
