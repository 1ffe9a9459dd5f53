"""Segmentation metrics: Cityscapes pixel-level mIoU exactly as cityscapesScripts computes it, and the
class-wise binary IoU the FPSeg paper reports; reports as JSON, Markdown and a confusion-matrix PNG."""

from __future__ import annotations

import fnmatch
import json
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from ..cityscapes_labels import CATEGORIES, CLASS_BY_NAME, CLASSES, IGNORE_TRAIN_ID, TRAIN_ID_NAMES
from ..constants import MAX_CLASSES
from ..data.cityscapes_dataset import frame_stem, list_label_files
from ..files import atomic_path, atomic_write, atomic_write_text, check_output

# The files of a report (`write_report`).
RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"
CONFUSION_PNG = "confusion.png"
REPORT_FILES = (RESULTS_JSON, RESULTS_MD, CONFUSION_PNG)

# Label ids 0..6 of cityscapesScripts' labels.py (all "void", ignored in evaluation); 7..33 are CLASSES.
VOID_LABEL_NAMES = ("unlabeled", "ego vehicle", "rectification border", "out of roi", "static", "dynamic",
                    "ground")
N_LABEL_IDS = len(VOID_LABEL_NAMES) + len(CLASSES)  # label ids 0..33: cityscapesScripts' confusion matrix
# Evaluated label ids (ignoreInEval False) in trainId order.
EVAL_LABEL_IDS: tuple[int, ...] = tuple(CLASS_BY_NAME[name].label_id for name in TRAIN_ID_NAMES)

_TRAIN_ID_LUT = np.full(256, IGNORE_TRAIN_ID, dtype=np.uint8)
for _cls in CLASSES:
    _TRAIN_ID_LUT[_cls.label_id] = _cls.train_id


def label_ids_to_train_ids(label_ids: np.ndarray) -> np.ndarray:
    """Cityscapes labelId image (uint8) -> trainId image (uint8, 0..18, 255 = ignored)."""
    label_ids = np.asarray(label_ids)
    if label_ids.dtype != np.uint8:
        if label_ids.size and (label_ids.min() < 0 or label_ids.max() > 255):
            raise ValueError("labelId images hold values 0..255 (Cityscapes uses 0..33)")
        label_ids = label_ids.astype(np.uint8)
    return _TRAIN_ID_LUT[label_ids]


def bank_labels_to_label_ids(labels: np.ndarray, bank_names: Sequence[str]) -> np.ndarray:
    """FPSeg label image (0 = none, i + 1 = bank_names[i]) -> Cityscapes labelId image (uint8).

    Value 0 becomes labelId 0 ("unlabeled"); value i + 1 becomes the labelId of bank_names[i] when that is a
    Cityscapes class name (e.g. "road" -> 7). Categories ("vehicle", "flat", ...) cover several labelIds and
    names that are not Cityscapes classes have none: both also become 0, i.e. count as "no prediction" in the
    Cityscapes evaluation. Evaluate with the 19 benchmark classes requested to avoid that.
    """
    if len(bank_names) > MAX_CLASSES:
        raise ValueError(f"label values stop at {MAX_CLASSES}: at most {MAX_CLASSES} bank entries, got "
                         f"{len(bank_names)}")
    lut = np.zeros(256, dtype=np.uint8)
    for i, name in enumerate(bank_names):
        cls = CLASS_BY_NAME.get(name)
        if cls is not None:
            lut[i + 1] = cls.label_id
    labels = np.asarray(labels)
    if labels.size and int(labels.max()) > len(bank_names):
        raise ValueError(
            f"label image holds value {int(labels.max())}, but the bank has only {len(bank_names)} entries "
            "(values 0..n_classes); pass the bank the labels were made with"
        )
    return lut[labels.astype(np.uint8)]


def _nan_to_none(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


def _mean_valid(values: Sequence[float]) -> float:
    valid = [v for v in values if not math.isnan(v)]
    return sum(valid) / len(valid) if valid else float("nan")


class CityscapesConfusion:
    """Confusion matrix over labelIds 0..33, accumulated as cityscapesScripts' evalPixelLevelSemanticLabeling.

    matrix[gt, pred] counts pixels. IoU of an evaluated class l: tp = matrix[l, l]; fn = row l minus tp (a
    pixel of l predicted as anything else, ignored labels included); fp = column l over the rows of the other
    evaluated labels only (predictions on ground truth that is ignored do not count). A class with
    tp + fp + fn = 0 has IoU NaN; mIoU is the mean over the 19 classes whose IoU is not NaN. Category IoUs
    are computed the same way with the member labels of a category taken together.
    """

    def __init__(self) -> None:
        self.matrix = np.zeros((N_LABEL_IDS, N_LABEL_IDS), dtype=np.int64)
        self.n_images = 0

    def update(self, pred_label_ids: np.ndarray, gt_label_ids: np.ndarray) -> None:
        """Add one image pair (H x W labelIds each; both must hold only ids 0..33)."""
        pred = np.asarray(pred_label_ids)
        gt = np.asarray(gt_label_ids)
        if pred.ndim != 2:
            raise ValueError(f"prediction must be a single-channel H x W labelId image, not {pred.shape}")
        if pred.shape != gt.shape:
            raise ValueError(f"prediction is {pred.shape[1]}x{pred.shape[0]} (WxH) but ground truth is "
                             f"{gt.shape[1]}x{gt.shape[0]}; predict at the ground-truth resolution")
        for what, image in (("prediction", pred), ("ground truth", gt)):
            if image.size and (int(image.min()) < 0 or int(image.max()) >= N_LABEL_IDS):
                raise ValueError(
                    f"{what} holds label id {int(image.max())}; Cityscapes labelIds are 0..{N_LABEL_IDS - 1} "
                    "(write labelIds, not trainIds or colours; map trainIds with cityscapesScripts' "
                    "trainId2label)"
                )
        encoded = gt.astype(np.int64).ravel() * N_LABEL_IDS + pred.astype(np.int64).ravel()
        counts = np.bincount(encoded, minlength=N_LABEL_IDS * N_LABEL_IDS)
        self.matrix += counts.reshape(N_LABEL_IDS, N_LABEL_IDS)
        self.n_images += 1

    def merge(self, other: CityscapesConfusion) -> CityscapesConfusion:
        """Add another accumulator's counts to this one (returns self)."""
        self.matrix += other.matrix
        self.n_images += other.n_images
        return self

    def _iou(self, label_ids: Sequence[int], excluded_fp_rows: set[int]) -> float:
        ids = list(label_ids)
        tp = int(self.matrix[np.ix_(ids, ids)].sum())
        fn = int(self.matrix[ids, :].sum()) - tp
        fp_rows = [r for r in EVAL_LABEL_IDS if r not in excluded_fp_rows]
        fp = int(self.matrix[np.ix_(fp_rows, ids)].sum())
        denominator = tp + fp + fn
        return tp / denominator if denominator else float("nan")

    def class_iou(self) -> dict[str, float]:
        """IoU of each of the 19 evaluated classes (trainId order); NaN where the class never occurs."""
        pairs = zip(TRAIN_ID_NAMES, EVAL_LABEL_IDS, strict=True)
        return {name: self._iou([label_id], {label_id}) for name, label_id in pairs}

    def category_iou(self) -> dict[str, float]:
        """IoU of each category with at least one evaluated member (cityscapesScripts' category scores)."""
        scores = {}
        for category in CATEGORIES:
            members = [c.label_id for c in CLASSES if c.category == category and c.label_id in EVAL_LABEL_IDS]
            if members:
                scores[category] = self._iou(members, set(members))
        return scores

    def result(self) -> dict[str, Any]:
        """JSON-ready summary: miou, class_iou (by name, None for NaN), category scores, counts, confusion."""
        class_iou = self.class_iou()
        category_iou = self.category_iou()
        eval_rows = list(EVAL_LABEL_IDS)
        evaluated = int(self.matrix[eval_rows, :].sum())
        correct = int(sum(self.matrix[lid, lid] for lid in eval_rows))
        return {
            "metric": "Cityscapes pixel-level labeling (as cityscapesScripts evalPixelLevelSemanticLabeling)",
            "miou": _nan_to_none(_mean_valid(list(class_iou.values()))),
            "class_iou": {k: _nan_to_none(v) for k, v in class_iou.items()},
            "category_miou": _nan_to_none(_mean_valid(list(category_iou.values()))),
            "category_iou": {k: _nan_to_none(v) for k, v in category_iou.items()},
            "pixel_accuracy": correct / evaluated if evaluated else None,
            "n_images": self.n_images,
            "n_pixels": int(self.matrix.sum()),
            "n_evaluated_pixels": evaluated,
            "confusion": {
                "labels": list(TRAIN_ID_NAMES),
                "rows": "ground truth",
                "columns": "prediction (last column: any label that is not evaluated, e.g. none)",
                "matrix": [
                    [*(int(self.matrix[g, p]) for p in eval_rows),
                     int(self.matrix[g, :].sum() - self.matrix[g, eval_rows].sum())]
                    for g in eval_rows
                ],
            },
            "confusion_label_ids": self.matrix.tolist(),
        }


class BinaryIoU:
    """Class-wise binary IoU as the FPSeg paper reports it: per class, intersection and union summed over all
    of its sampled examples, IoU = sum(intersection) / sum(union); the mean is over classes with a union."""

    def __init__(self, n_classes: int) -> None:
        self.intersection = np.zeros(n_classes, dtype=np.int64)
        self.union = np.zeros(n_classes, dtype=np.int64)
        self.n_samples = np.zeros(n_classes, dtype=np.int64)

    def update(self, pred: np.ndarray, target: np.ndarray, class_index: np.ndarray) -> None:
        """pred, target: bool [B, H, W]; class_index: int [B] (the class of each sample)."""
        pred = np.asarray(pred, dtype=bool)
        target = np.asarray(target, dtype=bool)
        axes = tuple(range(1, pred.ndim))
        np.add.at(self.intersection, class_index, (pred & target).sum(axis=axes))
        np.add.at(self.union, class_index, (pred | target).sum(axis=axes))
        np.add.at(self.n_samples, class_index, 1)

    def merge(self, other: BinaryIoU) -> BinaryIoU:
        self.intersection += other.intersection
        self.union += other.union
        self.n_samples += other.n_samples
        return self

    def ious(self) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.union > 0, self.intersection / np.maximum(self.union, 1), np.nan)

    def mean(self) -> float:
        return _mean_valid(self.ious().tolist())

    def result(self, class_names: Sequence[str]) -> dict[str, Any]:
        ious = self.ious()
        return {
            "metric": "class-wise binary IoU (FPSeg paper): per class sum(intersection) / sum(union)",
            "mean": _nan_to_none(self.mean()),
            "per_class": {name: _nan_to_none(float(v)) for name, v in zip(class_names, ious, strict=True)},
            "samples_per_class": {name: int(n) for name, n in zip(class_names, self.n_samples, strict=True)},
        }


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}"


def _markdown(result: dict[str, Any], title: str) -> str:
    lines = [f"# {title}", ""]
    if "class_iou" in result:
        lines += [f"Cityscapes 19-class mIoU: **{_fmt(result['miou'])}** (category mIoU "
                  f"{_fmt(result.get('category_miou'))}; {result.get('n_images', '?')} images)",
                  "", "| class | IoU (%) |", "|---|---:|"]
        lines += [f"| {name} | {_fmt(v)} |" for name, v in result["class_iou"].items()]
        lines.append("")
    binary = result.get("binary_iou")
    if binary:
        lines += [f"Class-wise binary IoU (paper metric): **{_fmt(binary['mean'])}**", "",
                  "| class | binary IoU (%) | samples |", "|---|---:|---:|"]
        lines += [f"| {name} | {_fmt(v)} | {binary['samples_per_class'].get(name, '')} |"
                  for name, v in binary["per_class"].items()]
        lines.append("")
    return "\n".join(lines)


def confusion_png(confusion: dict[str, Any], path: Path, title: str) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("note: matplotlib is not installed, no confusion.png (pip install 'fpseg_ros[plot]')",
              file=sys.stderr)
        return None
    matrix = np.asarray(confusion["matrix"], dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        normalised = matrix / matrix.sum(axis=1, keepdims=True)
    labels = list(confusion["labels"])
    columns = [*labels, "other"] if matrix.shape[1] == len(labels) + 1 else labels
    fig, ax = plt.subplots(figsize=(0.45 * len(columns) + 3, 0.45 * len(labels) + 2.5))
    image = ax.imshow(np.nan_to_num(normalised), cmap="viridis", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(len(columns)), columns, rotation=90)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("prediction")
    ax.set_ylabel("ground truth")
    ax.set_title(f"{title}\n(rows normalised)")
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return path


def write_report(result: dict[str, Any], out_dir: Path, title: str, extra_markdown: Sequence[str] = ()) -> list[Path]:
    """Write <out_dir>/results.json, results.md (Markdown tables, then the `extra_markdown` lines) and
    confusion.png; returns the paths.

    `result` is a `CityscapesConfusion.result()` dict, optionally with a "binary_iou" entry
    (`BinaryIoU.result`), or just {"binary_iou": ...}. confusion.png needs matplotlib and a "confusion" entry.
    """
    out_dir = Path(out_dir)
    json_path = atomic_write_text(out_dir / RESULTS_JSON,
                                  json.dumps({"title": title, **result}, indent=2, allow_nan=False) + "\n")
    markdown = _markdown(result, title) + ("\n".join(extra_markdown) + "\n" if extra_markdown else "")
    md_path = atomic_write_text(out_dir / RESULTS_MD, markdown)
    written = [json_path, md_path]
    if "confusion" in result:
        png = confusion_png(result["confusion"], out_dir / CONFUSION_PNG, title)
        if png is not None:
            written.append(png)
    return written


def check_report_folder(out_dir: Path, overwrite: bool = False) -> Path:
    """Refuse, before any work, a report folder that already holds a report (unless `overwrite`)."""
    for name in REPORT_FILES:
        check_output(Path(out_dir) / name, overwrite)
    return Path(out_dir)


def write_png(path: str | Path, image: np.ndarray) -> Path:
    """Write an H x W (label) or H x W x 3 (colour) uint8 image as a PNG, atomically."""
    return atomic_write(path, lambda tmp: Image.fromarray(image).save(tmp, format="PNG"))


def read_label_png(path: str | Path) -> np.ndarray:
    """A single-channel label PNG as an H x W integer array (palette images give their indices)."""
    with Image.open(path) as image:
        array = np.array(image)
    if array.ndim != 2:
        raise ValueError(f"{path} has {array.shape[2]} channels; label images must be single-channel "
                         "(labelIds as grey values, not colours)")
    return array


def find_predictions(pred_dir: Path, stems: Sequence[str]) -> dict[str, Path]:
    """For each '<city>_<seq>_<frame>' stem, the one PNG under pred_dir (recursively) named '<stem>*.png',
    the pattern cityscapesScripts' getPrediction uses; missing or ambiguous predictions raise ValueError."""
    files: list[tuple[str, Path]] = []
    for root, _dirs, names in os.walk(pred_dir):
        files += [(name, Path(root) / name) for name in names if name.endswith(".png")]
    found: dict[str, list[Path]] = {stem: [] for stem in stems}
    for name, path in files:
        stem = "_".join(name[: -len(".png")].split("_")[:3])
        if stem in found and fnmatch.fnmatch(name, f"{stem}*.png"):
            found[stem].append(path)
    missing = [s for s, paths in found.items() if not paths]
    if missing:
        raise ValueError(
            f"no prediction for {len(missing)} of {len(stems)} ground-truth images in {pred_dir} (e.g. "
            f"{', '.join(missing[:3])}); name each prediction '<city>_<seq>_<frame>*.png', e.g. "
            f"{missing[0]}_pred_labelIds.png, as cityscapesScripts expects"
        )
    ambiguous = [s for s, paths in found.items() if len(paths) > 1]
    if ambiguous:
        raise ValueError(
            f"several predictions match {ambiguous[0]} in {pred_dir}: "
            f"{', '.join(str(p) for p in found[ambiguous[0]])}; keep one file per image"
        )
    return {stem: paths[0] for stem, paths in found.items()}


def evaluate_label_dirs(gt_root: str | Path, pred_dir: str | Path, split: str = "val",
                        progress: bool = True) -> dict[str, Any]:
    """Score labelId prediction PNGs against Cityscapes ground truth: `CityscapesConfusion.result()`.

    gt_root: a Cityscapes root holding gtFine/<split>/<city>/*_gtFine_labelIds.png. pred_dir: a folder
    (searched recursively) with one '<city>_<seq>_<frame>*.png' labelId image per ground-truth image.
    """
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise FileNotFoundError(f"prediction folder {pred_dir} does not exist")
    gt_files = list_label_files(gt_root, split)
    predictions = find_predictions(pred_dir, [frame_stem(p.name) for p in gt_files])
    confusion = CityscapesConfusion()
    for gt_path in tqdm(gt_files, desc="eval-labels", unit="img", disable=not progress):
        pred_path = predictions[frame_stem(gt_path.name)]
        try:
            confusion.update(read_label_png(pred_path), read_label_png(gt_path))
        except ValueError as exc:
            raise ValueError(f"{pred_path} vs {gt_path}: {exc}") from None
    return confusion.result()
