"""What a runtime or a precision costs in accuracy: one pipeline against a reference, on the same images.

`PrecisionComparison(reference, candidate)` runs two `FPSeg` pipelines with the same weights and bank (the
reference typically torch or ONNX Runtime at fp32, the candidate OpenVINO at bf16 / int8) on each image given
to `add` and accumulates:

- embedding: relative L2 error ||e_c - e_r|| / ||e_r|| and cosine similarity of the encoders' outputs;
- low-resolution logits: relative L2 error and mean absolute error (in logit units) of the decoders' outputs;
- labels: the fraction of pixels whose label (fused from the logits at input size as `fuse` does) is the
  same, the worst image's fraction, and each class's IoU of the candidate's mask against the reference's
  (pixels summed over all images, as mIoU is);
- labels where the reference is sure: the same agreement on the pixels whose reference margin exceeds a
  delta, with the fraction of pixels that keeps, for each of `deltas` and of the `CURVE_DELTAS` grid.
  The margin is how far the reference's logits are from another decision. argmax: the winning score minus the
  runner-up, "none" scoring `threshold`. priority: the distance to `threshold` of the nearest logit among the
  classes that decide (those up to the winner; all of them where none wins).

`report()` is a JSON-ready dict (its keys described in `SCHEMA`, and itself under "schema"); `plot` draws the
agreement against the delta and the worst image's disagreements.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..constants import Fusion
from ..fusion import fuse
from ..predictor import FPSeg
from ..preprocess import ColorOrder
from ..visualize import colorize, palette

CURVE_DELTAS = tuple(round(0.05 * i, 2) for i in range(41))  # 0 to 2 logits
DEFAULT_DELTAS = (0.1, 0.5, 1.0)
SCHEMA = {
    "images": "images compared",
    "classes": "class names compared, in order",
    "fusion": "how labels were fused (argmax / priority), the same for both",
    "threshold": "logit above which a class is present",
    "embedding": "encoder outputs: rel_l2 = ||candidate - reference|| / ||reference|| per image (mean, max), "
                 "cosine similarity per image (mean, min)",
    "low_res_logits": "decoder outputs [N, S/4, S/4]: rel_l2 per image (mean, max), abs_error_mean in logits",
    "labels": "agreement: fraction of all pixels with the same label; agreement_min_image and worst_image: the "
              "worst image's; class_iou: per class, IoU of the candidate's mask against the reference's over all "
              "images (null where neither has the class); class_iou_mean over the non-null ones",
    "confident": "per requested delta (logits): pixel_fraction, the pixels whose reference decision margin is "
                 "above delta, and agreement on them (null where none is). The decision margin: argmax: the "
                 "winning score minus the runner-up, 'none' scoring threshold; priority: the distance to threshold "
                 "of the nearest deciding logit",
    "curve": "the same on the CURVE_DELTAS grid (0 to 2 logits)",
}


def decision_margin(logits: torch.Tensor, fusion: Fusion, threshold: float) -> torch.Tensor:
    """logits [N, H, W] -> [H, W]: how far each pixel's logits are from a different fused label (>= 0)."""
    if fusion == "argmax":
        none = torch.full_like(logits[:1], threshold)
        top = torch.cat([none, logits]).topk(2, dim=0).values
        return top[0] - top[1]
    above = logits > threshold
    n = logits.shape[0]
    winner = torch.where(above.any(0), above.to(torch.uint8).argmax(0), n - 1)
    deciding = torch.arange(n, device=logits.device).view(n, 1, 1) <= winner
    distance = torch.where(deciding, (logits - threshold).abs(), math.inf)
    return distance.min(0).values


class PrecisionComparison:
    """Accumulates how `candidate`'s outputs differ from `reference`'s (see the module docstring).

    Both pipelines must hold the same bank (names and prompt tokens) and use the same fusion and threshold;
    `class_ids` are the bank rows compared (default: all). `deltas` (logits) are reported on their own.
    """

    def __init__(self, reference: FPSeg, candidate: FPSeg, class_ids: Sequence[int] | None = None,
                 deltas: Sequence[float] = DEFAULT_DELTAS) -> None:
        if reference.bank.names != candidate.bank.names or not torch.equal(reference.bank.embeddings,
                                                                            candidate.bank.embeddings):
            raise ValueError("the reference and the candidate hold different prompt banks; compare one bank on two "
                             "runtimes")
        if reference.fingerprint != candidate.fingerprint or reference.img_size != candidate.img_size:
            raise ValueError("the reference and the candidate hold different networks (decoder fingerprint or image "
                             "size); load the same checkpoint into both")
        if reference.input_mode != candidate.input_mode:
            raise ValueError(f"the reference squashes or letterboxes differently ({reference.input_mode}) from the "
                             f"candidate ({candidate.input_mode}); give both the same input_mode")
        if (reference.fusion, reference.threshold) != (candidate.fusion, candidate.threshold):
            raise ValueError("the reference and the candidate fuse labels differently (fusion / threshold)")
        if class_ids is not None and len(set(class_ids)) != len(class_ids):
            raise ValueError(f"a class is compared twice in {list(class_ids)}")
        if any(not math.isfinite(d) or d < 0 for d in deltas):
            raise ValueError(f"deltas are finite logit margins >= 0, got {list(deltas)}")
        self.reference, self.candidate = reference, candidate
        self.class_ids = list(range(len(reference.bank))) if class_ids is None else list(class_ids)
        self.deltas = sorted(set(deltas))
        self._grid = torch.tensor(sorted(set(CURVE_DELTAS) | set(self.deltas)), dtype=torch.float64)
        self._above = torch.zeros(len(self._grid), dtype=torch.int64)  # pixels with margin > each delta
        self._agree_above = torch.zeros(len(self._grid), dtype=torch.int64)
        self._intersection = torch.zeros(len(self.class_ids), dtype=torch.int64)
        self._union = torch.zeros(len(self.class_ids), dtype=torch.int64)
        self._per_image: dict[str, list[float]] = {key: [] for key in (
            "embedding_rel_l2", "embedding_cosine", "logits_rel_l2", "logits_abs_error", "agreement")}
        self._pixels = self._agree = 0
        self.worst: tuple[str, np.ndarray, np.ndarray] | None = None  # (name, reference labels, candidate labels)

    @property
    def images(self) -> int:
        return len(self._per_image["agreement"])

    def add(self, name: str, image: np.ndarray, color_order: ColorOrder = "rgb") -> float:
        """Run both pipelines on `image` (H x W x 3 uint8) and accumulate; returns its label agreement."""
        ref = self.reference.network_outputs(image, self.class_ids, color_order)
        cand = self.candidate.network_outputs(image, self.class_ids, color_order)
        device = ref.logits.device  # the candidate may run elsewhere (a GPU reference, a CPU runtime)
        cand_embedding, cand_low_res, cand_logits = (t.to(device) for t in (cand.embedding, cand.low_res,
                                                                              cand.logits))
        stats = self._per_image
        stats["embedding_rel_l2"].append(_relative_l2(cand_embedding, ref.embedding))
        stats["embedding_cosine"].append(float(torch.nn.functional.cosine_similarity(
            cand_embedding.flatten().double(), ref.embedding.flatten().double(), dim=0)))
        stats["logits_rel_l2"].append(_relative_l2(cand_low_res, ref.low_res))
        stats["logits_abs_error"].append(float((cand_low_res - ref.low_res).abs().mean()))
        fusion, threshold = self.reference.fusion, self.reference.threshold
        ref_labels = fuse(ref.logits, self.class_ids, fusion, threshold)
        cand_labels = fuse(cand_logits, self.class_ids, fusion, threshold)
        equal = (ref_labels == cand_labels).flatten().cpu()
        margin = decision_margin(ref.logits, fusion, threshold).flatten().cpu().double()
        # bucket i holds margins in (grid[i-1], grid[i]]: margin > grid[k] exactly where the bucket is > k
        buckets = torch.bucketize(margin, self._grid)
        counts = torch.bincount(buckets, minlength=len(self._grid) + 1)
        agreeing = torch.bincount(buckets[equal], minlength=len(self._grid) + 1)
        self._above += counts.flip(0).cumsum(0).flip(0)[1:]
        self._agree_above += agreeing.flip(0).cumsum(0).flip(0)[1:]
        for i, bank_id in enumerate(self.class_ids):
            ref_mask, cand_mask = ref_labels == bank_id + 1, cand_labels == bank_id + 1
            self._intersection[i] += int((ref_mask & cand_mask).sum())
            self._union[i] += int((ref_mask | cand_mask).sum())
        agreement = float(equal.double().mean())
        self._pixels += equal.numel()
        self._agree += int(equal.sum())
        if self.worst is None or agreement < min(stats["agreement"]):
            self.worst = (name, ref_labels.cpu().numpy(), cand_labels.cpu().numpy())
        stats["agreement"].append(agreement)
        return agreement

    def _confident(self, deltas: Sequence[float]) -> list[dict[str, float | None]]:
        rows = []
        for delta in deltas:
            k = int(torch.searchsorted(self._grid, torch.tensor(delta, dtype=torch.float64)))
            above, agree = int(self._above[k]), int(self._agree_above[k])
            rows.append({"delta": float(delta), "pixel_fraction": above / self._pixels,
                         "agreement": agree / above if above else None})
        return rows

    def report(self) -> dict[str, Any]:
        """The accumulated figures (keys in SCHEMA); ValueError before any image was added."""
        if not self.images:
            raise ValueError("no image was compared")
        stats = self._per_image
        names = [self.reference.bank.names[i] for i in self.class_ids]
        ious = {name: (int(inter) / int(union) if union else None)
                for name, inter, union in zip(names, self._intersection, self._union, strict=True)}
        present = [v for v in ious.values() if v is not None]
        return {
            "images": self.images,
            "classes": names,
            "fusion": self.reference.fusion,
            "threshold": self.reference.threshold,
            "embedding": {"rel_l2_mean": _mean(stats["embedding_rel_l2"]),
                          "rel_l2_max": max(stats["embedding_rel_l2"]),
                          "cosine_mean": _mean(stats["embedding_cosine"]),
                          "cosine_min": min(stats["embedding_cosine"])},
            "low_res_logits": {"rel_l2_mean": _mean(stats["logits_rel_l2"]), "rel_l2_max": max(stats["logits_rel_l2"]),
                               "abs_error_mean": _mean(stats["logits_abs_error"])},
            "labels": {"agreement": self._agree / self._pixels, "agreement_min_image": min(stats["agreement"]),
                       "worst_image": self.worst[0], "class_iou": ious,
                       "class_iou_mean": _mean(present) if present else None},
            "confident": self._confident(self.deltas),
            "curve": self._confident(CURVE_DELTAS),
            "schema": SCHEMA,
        }


def _relative_l2(candidate: torch.Tensor, reference: torch.Tensor) -> float:
    difference = (candidate.double() - reference.double()).norm()
    return float(difference / reference.double().norm().clamp_min(torch.finfo(torch.float64).tiny))


def _mean(values: Sequence[float]) -> float:
    return float(np.mean(values))


def plot(report: dict[str, Any], worst: tuple[str, np.ndarray, np.ndarray] | None, path: str | Path,
         title: str, bank_names: Sequence[str]) -> None:
    """PNG: label agreement and pixel fraction against the margin delta; the worst image's reference labels
    (in the colours of `bank_names`, the bank's classes) with the pixels the candidate labels differently in
    red."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..files import atomic_path

    figure, axes = plt.subplots(1, 2 if worst else 1, figsize=(12 if worst else 6, 4.5), squeeze=False)
    curve = [row for row in report["curve"] if row["agreement"] is not None]
    ax = axes[0][0]
    ax.plot([r["delta"] for r in curve], [100 * r["agreement"] for r in curve], marker=".", label="labels equal")
    ax.plot([r["delta"] for r in curve], [100 * r["pixel_fraction"] for r in curve], linestyle="--",
            label="pixels with margin > delta")
    ax.set_xlabel("delta (logits): reference margin > delta")
    ax.set_ylabel("%")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if worst:
        name, ref_labels, cand_labels = worst
        shown = colorize(ref_labels, palette(bank_names)).astype(np.float32)
        shown = 0.5 * shown + 0.5 * shown.mean(axis=-1, keepdims=True)  # dimmed, so red stands out
        shown[ref_labels != cand_labels] = (255, 0, 0)
        axes[0][1].imshow(shown.astype(np.uint8))
        axes[0][1].set_title(f"worst image {name}: {100 * (ref_labels == cand_labels).mean():.2f} % equal "
                             "(red: labelled differently)", fontsize=9)
        axes[0][1].axis("off")
    figure.tight_layout()
    with atomic_path(Path(path)) as tmp:
        figure.savefig(tmp, format="png", dpi=110)
    plt.close(figure)

