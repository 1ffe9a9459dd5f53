"""What training and evaluation need from a dataset split: frames, class masks, class presence per frame."""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..files import atomic_write_text
from ..image_io import read_image

PRESENCE_CACHE_FORMAT = "fpseg-presence/1"


@dataclass(frozen=True)
class Frame:
    """One image of a split. `key` is its path relative to the split folder without the image suffix
    (e.g. 'aachen/aachen_000000_000019'); embeddings are stored under the same key."""

    key: str
    image: Path


def read_rgb(path: Path) -> np.ndarray:
    """An image file as H x W x 3 uint8 RGB (`fpseg_core.image_io.read_image`: 16-bit images scaled, not clipped)."""
    return read_image(path)


class SegmentationDataset:
    """A split of frames with binary masks for `class_names`. Subclasses implement the label access."""

    kind = "base"

    def __init__(self, root: Path, split: str, frames: list[Frame], class_names: list[str]) -> None:
        if not frames:
            raise FileNotFoundError(f"no images in split {split!r} of {root}")
        self.root = root
        self.split = split
        self.frames = frames
        self.class_names = list(class_names)

    def __len__(self) -> int:
        return len(self.frames)

    def read_image(self, index: int) -> np.ndarray:
        return read_rgb(self.frames[index].image)

    def class_mask(self, index: int, class_index: int) -> np.ndarray:
        """bool H x W: where frame `index` shows class `class_names[class_index]` (a category: any member)."""
        raise NotImplementedError

    def label_files(self, index: int) -> list[Path]:
        """The files a frame's labels are read from (their size and time stamp key the presence cache)."""
        raise NotImplementedError

    def present_values(self, index: int) -> list:
        """JSON-able label values present in a frame (label ids, class names), independent of class_names."""
        raise NotImplementedError

    def presence_from_values(self, values: list) -> np.ndarray:
        """bool [n_classes]: which of class_names the label values of one frame contain."""
        raise NotImplementedError

    def _signature(self, index: int) -> list[int]:
        signature = []
        for path in self.label_files(index):
            stat = path.stat() if path.exists() else None
            signature += [stat.st_size, stat.st_mtime_ns] if stat else [-1, -1]
        return signature

    def presence(self, cache_dir: Path | None = None, progress: bool = True) -> np.ndarray:
        """bool [n_frames, n_classes]: which frames contain which class. Scanning every label image takes a
        while on a full dataset; with `cache_dir` the scan is kept in presence_<kind>_<split>.json and only
        label files that changed since are read again."""
        cache_path = cache_dir / f"presence_{self.kind}_{self.split}.json" if cache_dir else None
        cached: dict = {}
        if cache_path is not None and cache_path.is_file():
            try:
                data = json.loads(cache_path.read_text())
                cached = data["frames"] if data.get("format") == PRESENCE_CACHE_FORMAT else {}
            except (json.JSONDecodeError, KeyError, TypeError):
                cached = {}
        signatures = [self._signature(i) for i in range(len(self))]
        todo = [i for i, f in enumerate(self.frames)
                if cached.get(f.key, {}).get("signature") != signatures[i]]
        if todo:
            with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
                scanned = list(tqdm(pool.map(self.present_values, todo), total=len(todo),
                                    disable=not progress, desc=f"scanning {self.split} labels", unit="img"))
            for i, values in zip(todo, scanned, strict=True):
                cached[self.frames[i].key] = {"signature": signatures[i], "values": values}
            if cache_path is not None:
                # each rank's own temporary file: ranks may write at once
                atomic_write_text(cache_path, json.dumps({"format": PRESENCE_CACHE_FORMAT, "frames": cached}))
        rows = [self.presence_from_values(cached[f.key]["values"]) for f in self.frames]
        return np.stack(rows).astype(bool) if rows else np.zeros((0, len(self.class_names)), dtype=bool)
