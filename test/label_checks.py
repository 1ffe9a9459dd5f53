"""Comparing label images of two computations that agree up to float rounding."""

from __future__ import annotations

import numpy as np
import torch

from fpseg_core.evaluation.precision import decision_margin


def assert_same_decisions(actual: np.ndarray | torch.Tensor, expected: np.ndarray | torch.Tensor,
                          logits: torch.Tensor, fusion: str, threshold: float = 0.0) -> None:
    """Labels equal, except where the reference logits [N, H, W] are a rounding error away from a different
    decision (`decision_margin` within 1e-5 of the largest logit); those stay below 0.1%."""
    differ = torch.as_tensor(np.asarray(actual) != np.asarray(expected))
    if not differ.any():
        return
    logits = logits.float().cpu()
    margin = decision_margin(logits, fusion, threshold)[differ]
    scale = 1 + logits.abs().max()
    assert (margin < 1e-5 * scale).all(), f"{int(differ.sum())} labels differ, not all at ties"
    assert differ.float().mean() < 1e-3, f"{int(differ.sum())} labels differ"
