"""Points inside regions, as RoofSAM samples them, and their place in the encoder's input frame.

Regions are polygons (N x 2 (x, y) pixel coordinates), boxes (x0, y0, x1, y1) or boolean H x W masks of the
image. Polygons and boxes are first clipped to the image (0 <= x <= W, 0 <= y <= H). K > 1: polygons by
uniform rejection sampling inside the clipped polygon's bounding box until K points fall inside it, boxes
uniformly inside, masks K of their True pixels (pixel indices (column, row)). K = 1: the centroid (of the
clipped polygon, of the box, of the True pixels). A region with nothing inside the image (zero area after
clipping, no True pixel) gives None.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..preprocess import Geometry

Region = np.ndarray | Sequence[float]
MAX_CANDIDATES = 100_000  # rejection-sampling draws per region before taking the points found so far
MIN_BATCH = 256


def region_kind(region: Region) -> str:
    """'mask' (2-D bool array), 'box' (4 numbers) or 'polygon' (N x 2 numbers); ValueError otherwise."""
    array = np.asarray(region)
    if array.dtype == bool and array.ndim == 2:
        return "mask"
    if array.shape == (4,) and array.dtype.kind in "iuf":
        return "box"
    if array.ndim == 2 and array.shape[1] == 2 and array.dtype.kind in "iuf":
        return "polygon"
    raise ValueError(f"a region must be a polygon (N x 2 pixel coordinates), a box (x0, y0, x1, y1) or a bool "
                     f"H x W mask, got an array of shape {array.shape} and dtype {array.dtype}")


def clip_polygon(polygon: np.ndarray, width: float, height: float) -> np.ndarray:
    """The polygon cut to the rectangle [0, width] x [0, height] (Sutherland-Hodgman): M x 2, M may be 0."""
    points = np.asarray(polygon, dtype=np.float64)
    for axis, limit, keep_below in ((0, 0.0, False), (0, width, True), (1, 0.0, False), (1, height, True)):
        if len(points) == 0:
            break
        inside = points[:, axis] <= limit if keep_below else points[:, axis] >= limit
        out = []
        for i in range(len(points)):
            current, previous = points[i], points[i - 1]
            if inside[i] != inside[i - 1]:
                t = (limit - previous[axis]) / (current[axis] - previous[axis])
                out.append(previous + t * (current - previous))
            if inside[i]:
                out.append(current)
        points = np.array(out).reshape(-1, 2)
    return points


def polygon_area_centroid(polygon: np.ndarray) -> tuple[float, np.ndarray]:
    """(area, centroid) of a simple polygon (shoelace formula); a zero-area polygon has area 0."""
    x, y = polygon[:, 0], polygon[:, 1]
    x_next, y_next = np.roll(x, -1), np.roll(y, -1)
    cross = x * y_next - x_next * y
    area = cross.sum() / 2.0
    if abs(area) < 1e-12:
        return 0.0, polygon.mean(axis=0)
    centroid = np.array([((x + x_next) * cross).sum(), ((y + y_next) * cross).sum()]) / (6.0 * area)
    return abs(area), centroid


def inside_polygon(points: np.ndarray, polygon: np.ndarray) -> np.ndarray:
    """bool [M]: which points lie inside the polygon (even-odd rule; concave polygons included)."""
    x, y = points[:, 0:1], points[:, 1:2]
    x0, y0 = polygon[:, 0], polygon[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    crosses = (y0 > y) != (y1 > y)
    with np.errstate(divide="ignore", invalid="ignore"):
        x_cross = x0 + (y - y0) * (x1 - x0) / (y1 - y0)
    return (crosses & (x < x_cross)).sum(axis=1) % 2 == 1


def _sample_polygon(polygon: np.ndarray, k: int, rng: np.random.Generator, width: int, height: int
                    ) -> np.ndarray | None:
    clipped = clip_polygon(polygon, width, height)
    if len(clipped) < 3:
        return None
    area, centroid = polygon_area_centroid(clipped)
    if area <= 0.0:
        return None
    if k == 1:
        return centroid[None]
    low, high = clipped.min(axis=0), clipped.max(axis=0)
    found: list[np.ndarray] = []
    n_found = drawn = 0
    batch = max(MIN_BATCH, 4 * k)
    while n_found < k and drawn < MAX_CANDIDATES:
        candidates = rng.uniform(low, high, size=(batch, 2))
        drawn += batch
        accepted = candidates[inside_polygon(candidates, clipped)]
        found.append(accepted)
        n_found += len(accepted)
    points = np.concatenate(found)
    return np.resize(points, (k, 2)) if len(points) else None  # a sliver: the points found, repeated


def _sample_box(box: np.ndarray, k: int, rng: np.random.Generator, width: int, height: int) -> np.ndarray | None:
    x0, y0, x1, y1 = box.astype(np.float64)
    low = np.array([max(min(x0, x1), 0.0), max(min(y0, y1), 0.0)])
    high = np.array([min(max(x0, x1), width), min(max(y0, y1), height)])
    if np.any(high <= low):
        return None
    if k == 1:
        return ((low + high) / 2)[None]
    return rng.uniform(low, high, size=(k, 2))


def _sample_mask(mask: np.ndarray, k: int, rng: np.random.Generator, width: int, height: int) -> np.ndarray | None:
    if mask.shape != (height, width):
        raise ValueError(f"a region mask must have the image's size {height} x {width} (H x W), got "
                         f"{mask.shape[0]} x {mask.shape[1]}")
    rows, cols = np.nonzero(mask)
    if len(rows) == 0:
        return None
    pixels = np.stack([cols, rows], axis=1).astype(np.float64)
    if k == 1:
        return pixels.mean(axis=0)[None]
    return pixels[rng.choice(len(pixels), size=k, replace=len(pixels) < k)]


SAMPLERS = {"polygon": _sample_polygon, "box": _sample_box, "mask": _sample_mask}


def sample_points(region: Region, k: int, rng: np.random.Generator, width: int, height: int) -> np.ndarray | None:
    """[k, 2] float64 (x, y) image pixels inside `region` (see the module docstring), or None when the region
    has nothing inside the width x height image."""
    if k < 1:
        raise ValueError(f"points per region must be at least 1, got {k}")
    kind = region_kind(region)
    return SAMPLERS[kind](np.asarray(region), k, rng, width, height)


def to_encoder_frame(points: np.ndarray, geometry: Geometry) -> np.ndarray:
    """Image pixels [..., 2] -> the encoder input frame (squash or letterbox, as the image was resized)."""
    scale = np.array([geometry.resized_width / geometry.width, geometry.resized_height / geometry.height])
    return points * scale
