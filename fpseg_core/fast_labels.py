"""Label images from low-resolution logits without materialising N full-resolution logit maps.

The published post-processing upsamples every class's 256 x 256 logits bilinearly to S x S, crops the
padding and upsamples again to H x W, then thresholds and fuses. Both stages are linear and act on rows and
columns separately, so each full-resolution value is `(R_y @ L @ R_x^T)[y, x]` with per-axis matrices
R_y [H, h] and R_x [W, w] built here by running the very same two interpolations on an identity matrix.
Each row of R has at most a few non-zeros, in a narrow band of columns, so both products are done as
batched small dense products over bands of output rows / columns (never a dense H x h or W x w product):
first R_y on the low-resolution columns, then R_x for a slab of output rows at a time, fused right away into
uint8 labels. No [N, H, W] tensor exists; working memory is a slab of rows_per_step x N x W floats.

Exact shortcuts:
- a class whose low-resolution logits are all <= threshold can be left out: bilinear values are convex
  combinations, so it is never above the threshold at full resolution and can never be labelled (argmax:
  where it would have the highest logit, no class is above the threshold and the label is 0 anyway).
  For a threshold other than 0 a margin of a few float ulps covers rounding of the combination weights.

Results equal the published computation up to float rounding of the logits (label images differ only where
two logits tie to within ~1e-6 relative, or a logit is within that of the threshold).

On request the same pass also gives a confidence image: per pixel round(255 * sigmoid(logit of the class that
won)), 0 where no class is present (`confidence`), gathered from the slab's values before they are dropped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F

from .constants import FUSIONS, MAX_CLASSES, Fusion, require_choice
from .preprocess import Geometry

# Relative slack for the class-skipping test when the threshold is not 0 (two interpolation stages whose
# weights sum to 1 within a few float32 ulps).
_SKIP_SLACK = 64 * torch.finfo(torch.float32).eps
CONFIDENCE_SCALE = 255  # confidence images: uint8 value = round(CONFIDENCE_SCALE * probability)


@dataclass(frozen=True)
class BandedAxis:
    """One axis of the upsampling operator, cut into bands of `band` output positions.

    weights: [n_bands, band, support]; starts: [n_bands] first low-resolution index of each band's support,
    so output position b * band + i = sum_j weights[b, i, j] * low_res[starts[b] + j]. The last band is
    padded with zero rows up to `band`.
    """

    weights: torch.Tensor
    starts: torch.Tensor
    size: int

    @property
    def band(self) -> int:
        return self.weights.shape[1]

    @property
    def support(self) -> int:
        return self.weights.shape[2]

    def gather_index(self) -> torch.Tensor:
        """[n_bands, support] low-resolution index of every (band, support position)."""
        return self.starts[:, None] + torch.arange(self.support, device=self.starts.device)


def upsampling_matrix(low: int, img_size: int, kept: int, out: int) -> torch.Tensor:
    """[out, low]: the published two-stage bilinear upsampling along one axis (low -> img_size, keep the
    first `kept`, -> out), obtained by applying exactly those interpolations to the identity."""
    eye = torch.eye(low, dtype=torch.float64)[None, None]
    stage1 = F.interpolate(eye, (img_size, low), mode="bilinear", align_corners=False)[:, :, :kept]
    return F.interpolate(stage1, (out, low), mode="bilinear", align_corners=False)[0, 0]


@lru_cache(maxsize=32)
def banded_axis(low: int, img_size: int, kept: int, out: int, band: int, device: str = "cpu") -> BandedAxis:
    """`upsampling_matrix` cut into bands of `band` rows, each keeping only its columns' non-zero span
    (cached per geometry and device)."""
    matrix = upsampling_matrix(low, img_size, kept, out)
    n_bands = -(-out // band)
    matrix = F.pad(matrix, (0, 0, 0, n_bands * band - out)).view(n_bands, band, low)
    nonzero = matrix.abs().sum(dim=1) > 0  # [n_bands, low]
    cols = torch.arange(low)
    first = torch.where(nonzero, cols, low).amin(dim=1)
    last = torch.where(nonzero, cols, -1).amax(dim=1)
    support = int((last - first).max()) + 1
    starts = first.clamp(max=low - support)
    index = starts[:, None] + torch.arange(support)
    weights = torch.gather(matrix, 2, index[:, None, :].expand(-1, band, -1))
    return BandedAxis(weights.to(device, torch.float32), starts.to(device), out)


class FastLabeler:
    """Low-resolution logits [N, h, w] -> uint8 label image [H, W], as `fuse(postprocess_logits(...))`.

    Rows first: the row operator turns [h, N, w] into [H, N, w] (small, low-resolution columns). Then, for
    `rows_per_step` output rows at a time, the column operator gives the full-resolution values laid out
    [column band, rows, N, band width], the classes are fused along N and only the uint8 labels are kept
    (and, with `with_confidence`, the winner's probability as uint8). Working memory: about
    rows_per_step x N x W floats.
    """

    def __init__(self, band_rows: int = 32, band_cols: int = 64, rows_per_step: int = 64) -> None:
        self.band_rows = band_rows
        self.band_cols = band_cols
        self.rows_per_step = rows_per_step

    def __call__(
        self,
        low_res: torch.Tensor,
        geometry: Geometry,
        bank_ids: Sequence[int],
        fusion: Fusion = "argmax",
        threshold: float = 0.0,
    ) -> torch.Tensor:
        return self._label(low_res, geometry, bank_ids, fusion, threshold, confidence=False)[0]

    def with_confidence(
        self,
        low_res: torch.Tensor,
        geometry: Geometry,
        bank_ids: Sequence[int],
        fusion: Fusion = "argmax",
        threshold: float = 0.0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Labels as `__call__`, and uint8 [H, W] round(255 * sigmoid(winning logit)), 0 where the label is 0."""
        labels, confidence = self._label(low_res, geometry, bank_ids, fusion, threshold, confidence=True)
        assert confidence is not None
        return labels, confidence

    def _label(
        self,
        low_res: torch.Tensor,
        geometry: Geometry,
        bank_ids: Sequence[int],
        fusion: Fusion,
        threshold: float,
        confidence: bool,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        require_choice("fusion", fusion, FUSIONS)
        if low_res.ndim != 3 or low_res.shape[0] != len(bank_ids):
            raise ValueError(f"expected logits [{len(bank_ids)}, h, w], got {list(low_res.shape)}")
        if max(bank_ids) >= MAX_CLASSES:
            raise ValueError(f"label values stop at {MAX_CLASSES}: bank indices must be below {MAX_CLASSES}")
        device = low_res.device
        low_res = low_res.float()
        ids = torch.as_tensor(list(bank_ids), dtype=torch.int64, device=device)
        keep = self._classes_that_can_win(low_res, threshold)
        if not bool(keep.all()):
            low_res, ids = low_res[keep], ids[keep]
        if ids.numel() == 0:
            nothing = torch.zeros(geometry.height, geometry.width, dtype=torch.uint8, device=device)
            return nothing, nothing.clone() if confidence else None
        n, h, w = low_res.shape
        rows = banded_axis(h, geometry.img_size, geometry.resized_height, geometry.height, self.band_rows,
                           str(device))
        cols = banded_axis(w, geometry.img_size, geometry.resized_width, geometry.width, self.band_cols,
                           str(device))
        # [H, N, w]: the row operator, one small matrix product per band of output rows.
        by_row = low_res.permute(1, 0, 2)[rows.gather_index()].reshape(-1, rows.support, n * w)
        by_row = torch.bmm(rows.weights, by_row).view(-1, n, w)[: geometry.height]
        # label value per fused index: index i < N is requested class i, index N is "none".
        lookup = torch.cat([ids + 1, ids.new_zeros(1)]).to(torch.uint8)
        rank = torch.arange(n, 0, -1, dtype=torch.uint8, device=device).view(1, 1, n, 1)
        column_index = cols.gather_index()
        n_col_bands = cols.weights.shape[0]
        labels = torch.empty(geometry.height, n_col_bands * cols.band, dtype=torch.uint8, device=device)
        scores = torch.empty_like(labels) if confidence else None
        for top in range(0, geometry.height, self.rows_per_step):
            part = by_row[top : top + self.rows_per_step]  # [r, N, w]
            r = part.shape[0]
            source = part[:, :, column_index].permute(2, 0, 1, 3).reshape(n_col_bands, r * n, cols.support)
            values = torch.bmm(source, cols.weights.transpose(1, 2)).view(n_col_bands, r, n, cols.band)
            index = self._fuse_index(values, fusion, threshold, rank)  # [bands, r, band width]
            labels[top : top + r] = lookup[index].permute(1, 0, 2).reshape(r, -1)
            if scores is not None:
                scores[top : top + r] = self._confidence(values, index).permute(1, 0, 2).reshape(r, -1)
        width = geometry.width
        return labels[:, :width], scores[:, :width] if scores is not None else None

    @staticmethod
    def _confidence(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """values [..., N, x], winning index [..., x] (N = none) -> uint8 [..., x] confidence, 0 for none."""
        n = values.shape[-2]
        winner = values.gather(-2, index.clamp(max=n - 1).unsqueeze(-2)).squeeze(-2)
        return torch.where(index < n, logit_to_confidence(winner), 0).to(torch.uint8)

    @staticmethod
    def _fuse_index(values: torch.Tensor, fusion: Fusion, threshold: float, rank: torch.Tensor) -> torch.Tensor:
        """values [..., N, x] -> winning class index [..., x], N where no class is chosen.

        The same rule as `fuse` (ties go to the first class), using only max-reductions, which vectorise
        far better on CPUs than an arg-max: among the classes that qualify, the first is the one of highest
        rank N - i.
        """
        if fusion == "argmax":
            best = values.amax(dim=-2, keepdim=True)
            qualifies = (values == best) & (best > threshold)
        else:
            qualifies = values > threshold
        n = values.shape[-2]
        return n - (qualifies.to(torch.uint8) * rank).amax(dim=-2).long()

    @staticmethod
    def _classes_that_can_win(low_res: torch.Tensor, threshold: float) -> torch.Tensor:
        peak = low_res.flatten(1).amax(dim=1)
        slack = 0.0 if threshold == 0.0 else _SKIP_SLACK * max(abs(threshold), 1.0)
        return peak > threshold - slack


def logit_to_confidence(logits: torch.Tensor) -> torch.Tensor:
    """round(CONFIDENCE_SCALE * sigmoid(logits)) as uint8: the confidence image's encoding of a class probability."""
    return (torch.sigmoid(logits.float()) * CONFIDENCE_SCALE).round().to(torch.uint8)
