"""Annotated regions for training and evaluating a region classifier.

Images: root/images/<split>/<name>.png|.jpg|.jpeg (sub-folders allowed): the layout of a custom dataset, so
`fpseg precompute --dataset custom --data ROOT --splits SPLIT` encodes them. Annotations, in image pixels
(x to the right, y down), in one of two forms:

1. one JSON file mapping each image (its path under root/images/<split>, with or without the suffix) to its
   regions: {"tile_001.png": [{"class": "flat", "polygon": [[x, y], [x, y], ...]}, ...], ...}
2. a folder of GeoJSON-like FeatureCollections, one per image, named after it (<key>.json or <key>.geojson):
   {"type": "FeatureCollection", "features": [{"type": "Feature", "properties": {"class": "flat"},
    "geometry": {"type": "Polygon", "coordinates": [[[x, y], ...]]}}]}
   Only a polygon's exterior ring is used (holes are ignored); each part of a MultiPolygon is a region.

One polygon is one sample. Classes are the sorted class names; a class with fewer than `min_samples` polygons
becomes "other". Regions with nothing inside their image are left out (with a warning).
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..data import open_dataset
from ..data.base import Frame
from .sampling import clip_polygon, polygon_area_centroid

OTHER = "other"  # RoofSAM's class of the rare classes
GEOJSON_SUFFIXES = (".json", ".geojson")


@dataclass(frozen=True)
class AnnotatedRegion:
    """One annotated polygon: the index of its frame, its N x 2 pixel coordinates and its class name."""

    frame: int
    polygon: np.ndarray
    label: str


@dataclass
class RegionDataset:
    """The frames of a split, their sizes (height, width) and their annotated regions."""

    split: str
    frames: list[Frame]
    sizes: list[tuple[int, int]]
    regions: list[AnnotatedRegion]

    def by_frame(self, indices: list[int]) -> dict[int, list[int]]:
        """The region indices among `indices`, grouped by frame (frames in order)."""
        groups: dict[int, list[int]] = {}
        for i in sorted(indices, key=lambda i: self.regions[i].frame):
            groups.setdefault(self.regions[i].frame, []).append(i)
        return groups


def _polygon(value: Any, where: str) -> np.ndarray:
    try:
        polygon = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        polygon = np.zeros((0,))
    if polygon.ndim != 2 or polygon.shape[1] != 2 or len(polygon) < 3:
        raise ValueError(f"{where}: a polygon must be a list of at least 3 [x, y] pixel coordinates")
    return polygon


def _label(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{where}: each region needs a \"class\" name (a non-empty string)")
    return value


def _mapping_regions(entries: Any, where: str) -> list[tuple[np.ndarray, str]]:
    if not isinstance(entries, list):
        raise ValueError(f"{where}: expected a list of {{\"class\": name, \"polygon\": [[x, y], ...]}}")
    regions = []
    for n, entry in enumerate(entries):
        spot = f"{where}, region {n}"
        if not isinstance(entry, dict):
            raise ValueError(f"{spot}: expected {{\"class\": name, \"polygon\": [[x, y], ...]}}")
        regions.append((_polygon(entry.get("polygon"), spot), _label(entry.get("class"), spot)))
    return regions


def _feature_regions(collection: Any, where: str) -> list[tuple[np.ndarray, str]]:
    if not isinstance(collection, dict) or collection.get("type") != "FeatureCollection":
        raise ValueError(f"{where}: expected a GeoJSON FeatureCollection ({{\"type\": \"FeatureCollection\", "
                         "\"features\": [...]}})")
    regions = []
    for n, feature in enumerate(collection.get("features") or []):
        spot = f"{where}, feature {n}"
        if not isinstance(feature, dict) or not isinstance(feature.get("geometry"), dict):
            raise ValueError(f"{spot}: expected a Feature with a geometry and properties.class")
        geometry = feature["geometry"]
        label = _label((feature.get("properties") or {}).get("class"), spot)
        kind, coordinates = geometry.get("type"), geometry.get("coordinates") or []
        if kind not in ("Polygon", "MultiPolygon"):
            raise ValueError(f"{spot}: geometry type {kind!r}; only Polygon and MultiPolygon are regions")
        parts = [coordinates] if kind == "Polygon" else coordinates
        regions += [(_polygon(part[0] if part else None, spot), label) for part in parts]
    return regions


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is not valid JSON ({exc})") from None


def read_annotations(path: str | Path, frames: list[Frame]) -> dict[str, list[tuple[np.ndarray, str]]]:
    """frame key -> [(polygon, class name)] from an annotation file or folder (see the module docstring)."""
    path = Path(path)
    keys = {f.key for f in frames}
    if path.is_dir():
        files = {p.relative_to(path).with_suffix("").as_posix(): p
                 for p in sorted(path.rglob("*")) if p.suffix.lower() in GEOJSON_SUFFIXES}
        annotated = {key: _feature_regions(_read_json(file), str(file)) for key, file in files.items()}
    elif path.is_file():
        data = _read_json(path)
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a mapping of image paths to lists of regions")
        annotated = {name if name in keys else Path(name).with_suffix("").as_posix():
                     _mapping_regions(entries, f"{path}, image {name!r}") for name, entries in data.items()}
    else:
        raise FileNotFoundError(f"annotations {path} do not exist; give a JSON file or a folder of GeoJSON files")
    unknown = sorted(set(annotated) - keys)
    if unknown:
        raise ValueError(f"{path} annotates {len(unknown)} image(s) that are not in the split (e.g. {unknown[0]!r}); "
                         "name images by their path under root/images/<split>")
    return annotated


def _image_size(frame: Frame) -> tuple[int, int]:
    with Image.open(frame.image) as image:
        return image.height, image.width


def open_region_dataset(root: str | Path, split: str, annotations: str | Path) -> RegionDataset:
    """The split's images and their annotated regions (regions with nothing inside their image left out)."""
    frames = open_dataset("custom", root, split, require_labels=False).frames
    annotated = read_annotations(annotations, frames)
    sizes = [_image_size(f) for f in frames]
    regions, dropped = [], 0
    for index, frame in enumerate(frames):
        height, width = sizes[index]
        for polygon, label in annotated.get(frame.key, []):
            if polygon_area_centroid(clip_polygon(polygon, width, height))[0] > 0:
                regions.append(AnnotatedRegion(index, polygon, label))
            else:
                dropped += 1
    if dropped:
        print(f"warning: {dropped} region(s) of {annotations} have nothing inside their image; left out",
              file=sys.stderr)
    if not regions:
        raise ValueError(f"{annotations} holds no region of the images of split {split!r} in {root}")
    return RegionDataset(split, frames, sizes, regions)


def class_names_for(labels: list[str], min_samples: int) -> tuple[list[str], dict[str, str]]:
    """(sorted class names, label -> class name): labels with fewer than `min_samples` regions become "other"."""
    counts = Counter(labels)
    mapping = {label: label if n >= min_samples else OTHER for label, n in counts.items()}
    return sorted(set(mapping.values())), mapping


def split_regions(n_regions: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(training, validation) region indices: a permutation seeded by `seed`, the last val_fraction validates."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must lie in [0, 1), got {val_fraction}")
    order = np.random.default_rng(seed).permutation(n_regions)
    n_val = round(n_regions * val_fraction)
    return sorted(order[: n_regions - n_val].tolist()), sorted(order[n_regions - n_val:].tolist())
