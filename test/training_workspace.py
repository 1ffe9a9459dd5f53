"""Shared set-up of the training tests: a synthetic Cityscapes set, tiny checkpoints, precomputed embeddings."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import torch
from synthetic_data import make_synthetic_cityscapes

from fpseg_core import build_fpseg, save_checkpoint, tiny_config
from fpseg_core.cli.main import main

CLASSES = ["road", "sky", "car", "person"]
IMG_SIZE = 64
# Fast, clearly-learning settings for a few steps of prompt tuning on the synthetic set.
QUICK_TRAIN = ["--prompt-size", "4", "--batch-size", "8", "--lr", "0.05", "--log-every", "1", "--num-workers", "0",
               "--val-samples-per-class", "6", "--no-progress"]


def read_log(path: Path) -> list[dict[str, str]]:
    """The rows of a training log (train_log.csv, val_log.csv), as strings by column."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def fpseg(*args: object) -> int:
    """Run the `fpseg` CLI in this process."""
    return main([str(a) for a in args])


def tiny_checkpoint(path: Path, encoder: str = "mobilesam", seed: int = 0) -> Path:
    torch.manual_seed(seed)
    config = tiny_config(encoder, n_classes=len(CLASSES), prompt_size=4, img_size=IMG_SIZE)
    return save_checkpoint(build_fpseg(config), config, CLASSES, path)


@dataclass
class Workspace:
    root: Path
    data: Path
    checkpoint: Path
    embeddings: Path


def make_workspace(root: Path) -> Workspace:
    """Synthetic Cityscapes (6 train / 6 val images), a tiny MobileSAM checkpoint and its embeddings."""
    data = make_synthetic_cityscapes(root / "cityscapes", n_images=3, size=(64, 32), seed=0)
    checkpoint = tiny_checkpoint(root / "tiny.pth")
    embeddings = root / "embeddings"
    assert fpseg("precompute", "--data", data, "--checkpoint", checkpoint, "--out", embeddings,
                 "--num-workers", "0", "--no-progress") == 0
    return Workspace(root, data, checkpoint, embeddings)
