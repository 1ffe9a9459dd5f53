"""Colour label images and blend them over the camera image."""

from __future__ import annotations

import colorsys
import hashlib
from collections.abc import Sequence

import numpy as np

from . import cityscapes_labels
from .constants import MAX_CLASSES

NONE_COLOR = (0, 0, 0)


def class_color(name: str) -> tuple[int, int, int]:
    """Cityscapes colour for Cityscapes names, otherwise a bright colour derived from the name's hash."""
    try:
        return cityscapes_labels.color(name)
    except KeyError:
        pass
    hue = int.from_bytes(hashlib.sha1(name.encode()).digest()[:4], "big") / 2**32
    r, g, b = colorsys.hsv_to_rgb(hue, 0.75, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


def palette(class_names: Sequence[str]) -> np.ndarray:
    """[256, 3] uint8 lookup table: row 0 for 'none', row 1 + i for bank class i, the rest black."""
    table = np.zeros((256, 3), dtype=np.uint8)
    table[0] = NONE_COLOR
    for i, name in enumerate(class_names[:MAX_CLASSES]):
        table[i + 1] = class_color(name)
    return table


def colorize(labels: np.ndarray, palette_table: np.ndarray) -> np.ndarray:
    """H x W uint8 labels -> H x W x 3 uint8 colours."""
    return palette_table[labels]


def blend(image: np.ndarray, colour: np.ndarray, alpha: float = 0.5, mask: np.ndarray | None = None) -> np.ndarray:
    """Overlay `colour` (H x W x 3) on `image` (H x W x 3 uint8) with opacity `alpha` where `mask` is set
    (default: where the colour is not black, i.e. where a class was found)."""
    if image.shape != colour.shape:
        raise ValueError(f"image {image.shape} and colour {colour.shape} differ in shape")
    if mask is None:
        mask = colour.any(axis=-1)
    mixed = image.astype(np.float32) * (1 - alpha) + colour.astype(np.float32) * alpha
    out = image.copy()
    out[mask] = np.round(mixed[mask]).astype(np.uint8)
    return out
