"""The Cityscapes folder layout (as cityscapesScripts defines it) and class-wise binary views of its labels.

root/leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png
root/gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from ..cityscapes_labels import BANK33, TRAIN_ID_NAMES, label_ids
from .base import Frame, SegmentationDataset

IMAGE_DIR = "leftImg8bit"
LABEL_DIR = "gtFine"
IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_SUFFIX = "_gtFine_labelIds.png"
# Named class lists accepted wherever class names are: the published 33-entry bank, the 19 benchmark classes.
CLASS_SETS: dict[str, tuple[str, ...]] = {"bank33": BANK33, "train19": TRAIN_ID_NAMES}


def frame_stem(filename: str) -> str:
    """'<city>_<seq>_<frame>' of a Cityscapes file name such as aachen_000000_000019_gtFine_labelIds.png."""
    parts = Path(filename).name.split("_")
    if len(parts) < 4 or not (parts[1].isdigit() and parts[2].isdigit()):
        raise ValueError(
            f"{filename!r} is not a Cityscapes file name ('<city>_<seq>_<frame>_<type>.png', e.g. "
            "aachen_000000_000019_leftImg8bit.png)"
        )
    return "_".join(parts[:3])


def split_folder(root: str | Path, kind: str, split: str) -> Path:
    """root/<kind>/<split>, or a FileNotFoundError naming the splits that do exist."""
    root = Path(root)
    folder = root / kind / split
    if not folder.is_dir():
        if not (root / kind).is_dir():
            raise FileNotFoundError(
                f"{root} has no {kind}/ folder; expected the Cityscapes layout {root}/{kind}/<split>/<city>/ "
                "(download leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip and unpack both there)"
            )
        present = sorted(p.name for p in (root / kind).iterdir() if p.is_dir())
        raise FileNotFoundError(
            f"split {split!r} not found: {folder} does not exist "
            f"(splits present: {', '.join(present) or 'none'})"
        )
    return folder


def list_label_files(root: str | Path, split: str) -> list[Path]:
    """All gtFine/<split>/<city>/*_gtFine_labelIds.png, sorted."""
    folder = split_folder(root, LABEL_DIR, split)
    files = sorted(folder.glob(f"*/*{LABEL_SUFFIX}"))
    if not files:
        raise FileNotFoundError(f"no *{LABEL_SUFFIX} files in {folder}/<city>/")
    return files


def read_label_ids(path: Path) -> np.ndarray:
    """A labelIds PNG as H x W uint8, or FileNotFoundError naming the file."""
    if not path.is_file():
        raise FileNotFoundError(
            f"label file {path} is missing; every image of a labelled split needs its *{LABEL_SUFFIX} "
            "(unpack gtFine_trainvaltest.zip, or generate labelIds with cityscapesScripts' createLabelImgs)"
        )
    with Image.open(path) as image:
        return np.asarray(image, dtype=np.uint8)


def resolve_class_names(names: Sequence[str] | str | None, default: Sequence[str] = BANK33) -> list[str]:
    """Class names from a list, a named set ('bank33', 'train19') or None (the default)."""
    if names is None:
        return list(default)
    if isinstance(names, str):
        if names in CLASS_SETS:
            return list(CLASS_SETS[names])
        names = [names]
    expanded: list[str] = []
    for name in names:
        expanded += CLASS_SETS.get(name, (name,))
    return expanded


class CityscapesDataset(SegmentationDataset):
    """One Cityscapes split. Views: labelIds, trainIds (19 classes) and binary masks for bank entries
    (a category is the union of its classes' label ids)."""

    kind = "cityscapes"

    def __init__(self, root: str | Path, split: str, class_names: Sequence[str] | str | None = None,
                 require_labels: bool = True) -> None:
        root = Path(root)
        names = resolve_class_names(class_names)
        self._label_sets = []
        for name in names:
            try:
                self._label_sets.append(np.array(sorted(label_ids(name)), dtype=np.uint8))
            except KeyError:
                raise KeyError(
                    f"{name!r} is not a Cityscapes class or category; choose from {', '.join(BANK33)} "
                    "(or use a custom dataset of image + mask folders for other classes)"
                ) from None
        image_folder = split_folder(root, IMAGE_DIR, split)
        frames = [
            Frame(f"{p.parent.name}/{p.name[: -len(IMAGE_SUFFIX)]}", p)
            for p in sorted(image_folder.glob(f"*/*{IMAGE_SUFFIX}"))
        ]
        if not frames:
            raise FileNotFoundError(f"no *{IMAGE_SUFFIX} images in {image_folder}/<city>/")
        super().__init__(root, split, frames, names)
        if require_labels:
            split_folder(root, LABEL_DIR, split)
            missing = [p for p in map(self.label_path, range(len(frames))) if not p.is_file()]
            if missing:
                raise FileNotFoundError(
                    f"{len(missing)} image(s) of split {split!r} have no label file, e.g. {missing[0]}; "
                    f"every image needs its *{LABEL_SUFFIX} (the test split has no public labels)"
                )

    def label_path(self, index: int) -> Path:
        key = self.frames[index].key
        return self.root / LABEL_DIR / self.split / f"{key}{LABEL_SUFFIX}"

    def read_label_ids(self, index: int) -> np.ndarray:
        return read_label_ids(self.label_path(index))

    def class_mask(self, index: int, class_index: int) -> np.ndarray:
        return np.isin(self.read_label_ids(index), self._label_sets[class_index])

    def label_files(self, index: int) -> list[Path]:
        return [self.label_path(index)]

    def present_values(self, index: int) -> list[int]:
        return np.flatnonzero(np.bincount(self.read_label_ids(index).ravel(), minlength=256)).tolist()

    def presence_from_values(self, values: list) -> np.ndarray:
        present = np.asarray(values, dtype=np.int64)
        return np.array([np.isin(ids, present).any() for ids in self._label_sets], dtype=bool)
