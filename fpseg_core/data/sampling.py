"""Class-wise binary samples as FPSeg draws them, and a torch Dataset of (embedding, class, target mask).

For class c, an image containing c is picked with probability max(share of images containing c,
1 - p_neg_max), otherwise an image without c; the target is c's binary mask (a category: the union of its
classes) resized with nearest neighbour to the encoder input size.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..preprocess import InputMode, preprocess
from .base import SegmentationDataset
from .embeddings import EmbeddingStore

P_NEG_MAX = 0.2


def positive_probabilities(presence: np.ndarray, p_neg_max: float = P_NEG_MAX) -> np.ndarray:
    """[n_classes]: probability that a sample of each class shows the class."""
    if not 0.0 <= p_neg_max <= 1.0:
        raise ValueError(f"p_neg_max must lie in [0, 1], got {p_neg_max}")
    share = presence.mean(axis=0) if len(presence) else np.zeros(presence.shape[1])
    return np.maximum(share, 1.0 - p_neg_max)


def draw_pairs(presence: np.ndarray, n_per_class: int, p_neg_max: float, rng: np.random.Generator,
               class_indices: list[int] | None = None) -> np.ndarray:
    """int64 [n_per_class * n_classes, 2] of (frame index, class index), classes interleaved.

    presence: bool [n_frames, n_classes]. A class no frame contains only gets negatives, a class every frame
    contains only positives. `class_indices` restricts sampling to some classes (default: all).
    """
    classes = list(range(presence.shape[1])) if class_indices is None else list(class_indices)
    p_positive = positive_probabilities(presence, p_neg_max)
    pairs = np.empty((n_per_class, len(classes), 2), dtype=np.int64)
    for column, c in enumerate(classes):
        positives = np.flatnonzero(presence[:, c])
        negatives = np.flatnonzero(~presence[:, c])
        want_positive = rng.random(n_per_class) < p_positive[c]
        if len(positives) == 0:
            want_positive[:] = False
        if len(negatives) == 0:
            want_positive[:] = True
        frames = np.empty(n_per_class, dtype=np.int64)
        frames[want_positive] = rng.choice(positives, int(want_positive.sum()))
        frames[~want_positive] = rng.choice(negatives, int((~want_positive).sum()))
        pairs[:, column, 0] = frames
        pairs[:, column, 1] = c
    return pairs.reshape(-1, 2)


def resize_mask(mask: np.ndarray, size: int) -> torch.Tensor:
    """bool H x W -> float32 [size, size] of 0 / 1, nearest neighbour (the target of the BCE loss)."""
    tensor = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.uint8))[None, None].float()
    return F.interpolate(tensor, (size, size), mode="nearest")[0, 0]


class ClassWiseSamples(Dataset):
    """Items {"embedding": [256, h, w], "class_index": int, "target": [S, S] 0/1} for given (frame, class)
    pairs of a dataset whose embeddings are precomputed."""

    def __init__(self, dataset: SegmentationDataset, store: EmbeddingStore, pairs: np.ndarray,
                 target_size: int) -> None:
        if store.header.input_mode != "squash":
            raise ValueError(
                f"{store.root} holds {store.header.input_mode} embeddings; class-wise samples squash the masks "
                "as FPSeg does, so precompute with --input-mode squash"
            )
        self.dataset = dataset
        self.store = store
        self.pairs = pairs
        self.target_size = target_size

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        frame, class_index = (int(v) for v in self.pairs[index])
        key = self.dataset.frames[frame].key
        return {
            "embedding": self.store.read(self.dataset.split, key),
            "class_index": torch.tensor(class_index),
            "target": resize_mask(self.dataset.class_mask(frame, class_index), self.target_size),
        }


class ImageTensors(Dataset):
    """Items (position, normalised image [3, S, S]) for some frames of a dataset, preprocessed as FPSeg
    does for its encoder (squash to S x S by default)."""

    def __init__(self, dataset: SegmentationDataset, indices: list[int], img_size: int,
                 input_mode: InputMode = "squash") -> None:
        self.dataset = dataset
        self.indices = indices
        self.img_size = img_size
        self.input_mode: InputMode = input_mode

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> tuple[int, torch.Tensor]:
        image = self.dataset.read_image(self.indices[position])
        tensor, _ = preprocess(image, self.img_size, self.input_mode)
        return position, tensor[0]
