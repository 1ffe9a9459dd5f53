"""A custom dataset of images and one binary mask per class, for training prompts of new classes.

root/images/<split>/<name>.png|.jpg|.jpeg           (sub-folders allowed)
root/masks/<split>/<class name>/<name>.png          (non-zero = the class; a missing mask = class absent)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from .base import Frame, SegmentationDataset

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")


def find_images(folder: Path) -> list[Path]:
    """The image files (IMAGE_EXTENSIONS, any case) under `folder` and its sub-folders, sorted."""
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)


class MaskFolderDataset(SegmentationDataset):
    """Images with per-class binary masks; class names are the mask folder names unless given."""

    kind = "custom"

    def __init__(self, root: str | Path, split: str, class_names: Sequence[str] | None = None,
                 require_labels: bool = True) -> None:
        root = Path(root)
        image_folder = root / "images" / split
        mask_folder = root / "masks" / split
        for folder in (image_folder, mask_folder) if require_labels else (image_folder,):
            if not folder.is_dir():
                raise FileNotFoundError(
                    f"{folder} does not exist; a custom dataset needs root/images/<split>/<name>.png|jpg and "
                    "root/masks/<split>/<class name>/<name>.png"
                )
        available = sorted(p.name for p in mask_folder.glob("*") if p.is_dir())
        names = list(class_names) if class_names else available
        unknown = [n for n in names if n not in available]
        if require_labels and (unknown or not names):
            raise KeyError(
                f"no mask folder for class(es) {', '.join(map(repr, unknown)) or '(none given)'} in "
                f"{mask_folder}; classes present: {', '.join(available) or 'none'}"
            )
        frames = [Frame(p.relative_to(image_folder).with_suffix("").as_posix(), p) for p in find_images(image_folder)]
        super().__init__(root, split, frames, names)
        self._mask_folder = mask_folder
        self._available = available

    def mask_path(self, index: int, class_name: str) -> Path:
        return self._mask_folder / class_name / f"{self.frames[index].key}.png"

    def class_mask(self, index: int, class_index: int) -> np.ndarray:
        return self._read_mask(index, self.class_names[class_index])

    def _read_mask(self, index: int, class_name: str) -> np.ndarray:
        path = self.mask_path(index, class_name)
        if not path.is_file():
            with Image.open(self.frames[index].image) as image:
                return np.zeros((image.height, image.width), dtype=bool)
        with Image.open(path) as mask:
            array = np.asarray(mask.convert("L"))
        return array > 0

    # Presence is scanned for every mask folder, so the cache stays valid when another class list is chosen.
    def label_files(self, index: int) -> list[Path]:
        return [self.mask_path(index, name) for name in self._available]

    def present_values(self, index: int) -> list[str]:
        return [name for name in self._available if self._read_mask(index, name).any()]

    def presence_from_values(self, values: list) -> np.ndarray:
        return np.array([name in values for name in self.class_names], dtype=bool)
