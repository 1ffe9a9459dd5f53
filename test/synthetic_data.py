"""A tiny synthetic dataset in the Cityscapes folder layout, for tests, demos and smoke runs.

`make_synthetic_cityscapes` is a stable helper (other test suites build bags and evaluation runs from it):
its name, signature and file layout are part of the project's test API.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from fpseg_core.cityscapes_labels import CLASS_BY_NAME, color
from fpseg_core.data.cityscapes_dataset import IMAGE_DIR, IMAGE_SUFFIX, LABEL_DIR, LABEL_SUFFIX

PIXEL_NOISE = 12


def _box(rng: np.random.Generator, height: int, width: int, top: float, bottom: float,
         min_w: float, max_w: float) -> tuple[slice, slice]:
    """A random rectangle whose rows lie in [top, bottom) (fractions of the height)."""
    box_w = max(2, int(width * rng.uniform(min_w, max_w)))
    y0 = int(height * rng.uniform(top, (top + bottom) / 2))
    y1 = max(y0 + 2, int(height * rng.uniform((top + bottom) / 2, bottom)))
    x0 = int(rng.integers(0, max(1, width - box_w)))
    return slice(y0, min(y1, height)), slice(x0, x0 + box_w)


def synthetic_label_ids(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """One street-like labelId image: sky / building / vegetation / sidewalk / road bands, some cars and
    people (in some images only) and an "ego vehicle" strip at the bottom (labelId 1, ignored)."""
    ids = {name: cls.label_id for name, cls in CLASS_BY_NAME.items()}
    labels = np.zeros((height, width), dtype=np.uint8)
    horizon = rng.uniform(0.35, 0.5)
    labels[: int(height * horizon)] = ids["sky"] if rng.random() < 0.85 else ids["building"]
    labels[int(height * horizon): int(height * 0.62)] = ids["sidewalk"]
    labels[int(height * 0.62):] = ids["road"]
    for _ in range(int(rng.integers(1, 3))):
        labels[_box(rng, height, width, 0.05, horizon + 0.1, 0.15, 0.35)] = ids["building"]
    if rng.random() < 0.6:
        labels[_box(rng, height, width, 0.15, horizon + 0.15, 0.1, 0.25)] = ids["vegetation"]
    for _ in range(int(rng.integers(0, 3))):
        labels[_box(rng, height, width, 0.55, 0.9, 0.12, 0.25)] = ids["car"]
    for _ in range(int(rng.integers(0, 3))):
        labels[_box(rng, height, width, 0.4, 0.85, 0.03, 0.06)] = ids["person"]
    labels[height - max(1, height // 16):] = 1  # ego vehicle
    return labels


def render_image(rng: np.random.Generator, label_ids: np.ndarray) -> np.ndarray:
    """An RGB image whose pixels are their class's Cityscapes colour plus noise (so classes are learnable)."""
    lut = np.zeros((256, 3), dtype=np.int16)
    lut[1] = (40, 40, 40)
    for name, cls in CLASS_BY_NAME.items():
        lut[cls.label_id] = color(name)
    noise = rng.integers(-PIXEL_NOISE, PIXEL_NOISE + 1, size=(*label_ids.shape, 3))
    return np.clip(lut[label_ids] + noise, 0, 255).astype(np.uint8)


def make_synthetic_cityscapes(
    root: str | Path,
    splits: Sequence[str] = ("train", "val"),
    cities: Sequence[str] = ("aachen", "bremen"),
    n_images: int = 3,
    size: tuple[int, int] = (128, 64),
    seed: int = 0,
) -> Path:
    """Write a small Cityscapes-format dataset and return `root`.

    For every split and city, `n_images` frames (frame numbers 0, 1, ..., sequence 000000):
    - root/leftImg8bit/<split>/<city>/<city>_000000_0000NN_leftImg8bit.png (RGB, `size` = (width, height))
    - root/gtFine/<split>/<city>/<city>_000000_0000NN_gtFine_labelIds.png (uint8 labelIds)
    Scenes hold road, sidewalk, sky, building and (in some images) vegetation, car and person, plus ignored
    pixels (labelId 1), painted in their Cityscapes colours with noise. Same arguments, same files.
    City names must not contain '_' (Cityscapes file names are '<city>_<seq>_<frame>_<type>.png').
    """
    root = Path(root)
    width, height = size
    rng = np.random.default_rng(seed)
    for split in splits:
        for city in cities:
            if "_" in city:
                raise ValueError(f"city name {city!r} must not contain '_'")
            image_dir = root / IMAGE_DIR / split / city
            label_dir = root / LABEL_DIR / split / city
            image_dir.mkdir(parents=True, exist_ok=True)
            label_dir.mkdir(parents=True, exist_ok=True)
            for frame in range(n_images):
                stem = f"{city}_000000_{frame:06d}"
                label_ids = synthetic_label_ids(rng, height, width)
                Image.fromarray(render_image(rng, label_ids)).save(image_dir / f"{stem}{IMAGE_SUFFIX}")
                Image.fromarray(label_ids).save(label_dir / f"{stem}{LABEL_SUFFIX}")
    return root
