"""Datasets for training and evaluation: Cityscapes, custom image + mask folders, precomputed embeddings."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .base import Frame, SegmentationDataset
from .cityscapes_dataset import CityscapesDataset
from .custom import MaskFolderDataset

DATASET_KINDS = ("cityscapes", "custom")


def open_dataset(kind: str, root: str | Path, split: str, class_names: Sequence[str] | str | None = None,
                 require_labels: bool = True) -> SegmentationDataset:
    """A Cityscapes split or a custom image + mask folder split (see the two classes for the layouts)."""
    if not root:
        raise ValueError("no dataset root given (--data ROOT)")
    if kind == "cityscapes":
        return CityscapesDataset(root, split, class_names, require_labels=require_labels)
    if kind == "custom":
        names = [class_names] if isinstance(class_names, str) else class_names
        return MaskFolderDataset(root, split, names, require_labels=require_labels)
    raise ValueError(f"unknown dataset kind {kind!r}; choose one of {', '.join(DATASET_KINDS)}")


__all__ = ["DATASET_KINDS", "CityscapesDataset", "Frame", "MaskFolderDataset", "SegmentationDataset",
           "open_dataset"]
