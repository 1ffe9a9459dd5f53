"""`fpseg eval-regions`: region-level accuracy, macro F1 (RoofSAM's metric), per-class F1 and the confusion
matrix of a region classifier on annotated images; results.json, results.md and confusion.png."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from ..data.embeddings import EmbeddingStore
from ..evaluation.metrics import CONFUSION_PNG, RESULTS_JSON, RESULTS_MD, confusion_png
from ..files import atomic_write_text
from ..jobs.distributed import DistContext, init_distributed
from .classifier import RegionClassifier
from .config import SUBSETS, RegionEvalConfig
from .dataset import OTHER, RegionDataset, open_region_dataset, split_regions
from .loader import decoder_class_names, load_decoder, read_sam_state
from .store import embedded_classifier, region_store


class RegionConfusion:
    """matrix[truth, prediction] counts regions over n classes."""

    def __init__(self, n_classes: int) -> None:
        self.matrix = np.zeros((n_classes, n_classes), dtype=np.int64)

    def update(self, truth: Sequence[int], predicted: Sequence[int]) -> None:
        np.add.at(self.matrix, (np.asarray(truth, dtype=np.int64), np.asarray(predicted, dtype=np.int64)), 1)

    def f1(self) -> np.ndarray:
        """Per-class F1 = 2 tp / (2 tp + fp + fn); NaN for a class neither present nor predicted."""
        tp = np.diag(self.matrix).astype(np.float64)
        denominator = self.matrix.sum(axis=0) + self.matrix.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(denominator > 0, 2 * tp / np.maximum(denominator, 1), np.nan)

    def macro_f1(self) -> float:
        """Mean F1 over the classes present or predicted (as scikit-learn's macro average); NaN without regions."""
        f1 = self.f1()
        return float(np.nanmean(f1)) if np.isfinite(f1).any() else float("nan")

    def result(self, class_names: Sequence[str]) -> dict[str, Any]:
        total = int(self.matrix.sum())
        f1 = self.f1()
        macro = self.macro_f1()
        return {
            "metric": "region classification (RoofSAM): majority vote of the points of each region",
            "n_regions": total,
            "accuracy": float(np.trace(self.matrix) / total) if total else None,
            "macro_f1": None if np.isnan(macro) else macro,
            "per_class_f1": {n: None if np.isnan(v) else float(v) for n, v in zip(class_names, f1, strict=True)},
            "support": {n: int(v) for n, v in zip(class_names, self.matrix.sum(axis=1), strict=True)},
            "confusion": {"labels": list(class_names), "rows": "ground truth", "columns": "prediction",
                          "matrix": self.matrix.tolist()},
        }


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}"


def _markdown(result: dict[str, Any], title: str) -> str:
    lines = [f"# {title}", "", f"Macro F1: **{_fmt(result['macro_f1'])}**, accuracy {_fmt(result['accuracy'])} "
             f"({result['n_regions']} regions)", "", "| class | F1 (%) | regions |", "|---|---:|---:|"]
    lines += [f"| {name} | {_fmt(f1)} | {result['support'][name]} |" for name, f1 in result["per_class_f1"].items()]
    return "\n".join([*lines, ""])


def write_region_report(result: dict[str, Any], out_dir: Path, title: str) -> list[Path]:
    """<out_dir>/results.json, results.md and (with matplotlib) confusion.png, each written atomically."""
    written = [atomic_write_text(out_dir / RESULTS_JSON, json.dumps({"title": title, **result}, indent=2) + "\n"),
               atomic_write_text(out_dir / RESULTS_MD, _markdown(result, title))]
    png = confusion_png(result["confusion"], out_dir / CONFUSION_PNG, title)
    return written + ([png] if png is not None else [])


def score_regions(classifier: RegionClassifier, store: EmbeddingStore, dataset: RegionDataset, indices: list[int],
                  targets: np.ndarray, points_per_region: int, seed: int, ctx: DistContext,
                  progress: bool = False) -> RegionConfusion:
    """Classify the regions `indices` (this process's share of their images) on their embeddings and count
    them against `targets` (class index per region of the dataset); summed over all processes."""
    confusion = RegionConfusion(len(classifier.class_names))
    groups = list(dataset.by_frame(indices).items())[ctx.rank::ctx.world_size]
    for frame, members in tqdm(groups, desc="classifying regions", unit="img", disable=not progress):
        height, width = dataset.sizes[frame]
        embedding = store.read(dataset.split, dataset.frames[frame].key)[None]
        results = classifier.classify(regions=[dataset.regions[i].polygon for i in members],
                                      points_per_region=points_per_region, seed=seed, embedding=embedding,
                                      geometry=classifier.geometry(height, width))
        confusion.update(targets[members], [classifier.class_names.index(r.class_name) for r in results])
    confusion.matrix = ctx.sum(confusion.matrix)
    return confusion


def region_targets(dataset: RegionDataset, class_names: Sequence[str]) -> np.ndarray:
    """int64 [n_regions]: each region's class index; classes the decoder lacks count as "other" if it has it."""
    unknown = sorted({r.label for r in dataset.regions} - set(class_names))
    if unknown and OTHER not in class_names:
        raise ValueError(f"regions of class(es) {', '.join(unknown)} are annotated, but the decoder's classes are "
                         f"{', '.join(class_names)}; pass matching --class-names or annotations")
    index = {name: i for i, name in enumerate(class_names)}
    return np.array([index.get(r.label, index.get(OTHER, -1)) for r in dataset.regions], dtype=np.int64)


def evaluate_regions(config: RegionEvalConfig) -> dict[str, Any]:
    """Score the decoder on the regions of `config.subset` and write the report to config.out."""
    if config.subset not in SUBSETS:
        raise ValueError(f"subset must be one of {', '.join(SUBSETS)}, got {config.subset!r}")
    for key in ("checkpoint", "decoder", "annotations"):
        if not getattr(config, key):
            raise ValueError(f"no {key} given (--{key})")
    out = Path(config.out)
    dataset = open_region_dataset(config.data, config.split, config.annotations)
    store = region_store(config, out)
    ctx = init_distributed(config.device)
    decoder = load_decoder(config.decoder)
    names = decoder_class_names(config.decoder, decoder.n_classes, config.class_names)
    classifier = embedded_classifier(read_sam_state(config.checkpoint), Path(config.checkpoint), store, dataset,
                                     decoder, names, str(ctx.device))
    train, val = split_regions(len(dataset.regions), config.val_fraction, config.seed)
    indices = {"all": list(range(len(dataset.regions))), "train": train, "val": val}[config.subset]
    confusion = score_regions(classifier, store, dataset, indices, region_targets(dataset, names),
                              config.points_per_region, config.seed, ctx, config.progress and ctx.is_main)
    result = confusion.result(names)
    if ctx.is_main:
        write_region_report(result, out, f"{Path(config.decoder).name} on {config.split} ({config.subset} regions)")
    return result
