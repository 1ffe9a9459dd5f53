"""Region classification on the frames the node segments, without ROS: the embedding cache and the queries
behind the node's ~/classify_regions service and its detections -> ~/detections path.

With a region classifier (RoofSAM: K points sampled in a region, SAM's prompt encoder, a class decoder, a
majority vote) the controller keeps the image embedding and Geometry of the last `region_cache_frames`
segmented frames, keyed by their header stamp. A query runs only the classifier's decoder on a cached
embedding: one encoder pass serves the label image and every region query on that frame.

Which frame a query uses:
- `classify` (the service): the frame with exactly the given stamp; 0 = the latest segmented frame. A stamp
  that is not cached is an error that lists the cached stamps.
- `detections` (the topic): the frame with the detection message's stamp when it is cached (a detector that
  copies the image header, as vision_msgs detectors do), else the newest cached frame not newer than it; a
  message older than every cached frame is an error.

Memory bound: the cache is a deque with maxlen `region_cache_frames` (at most CACHE_FRAMES_RANGE[1], 100), so
it holds at most that many embeddings (about 4 MiB each for SAM / MobileSAM) whatever the number of frames;
a frame with the stamp of a cached one replaces it rather than adding one.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from fpseg_core.errors import FPSegError
from fpseg_core.predictor import FPSeg
from fpseg_core.preprocess import Geometry
from fpseg_core.regions import RegionClassifier, RegionResult
from fpseg_core.regions.loader import decoder_class_names, load_decoder, read_sam_state, sam_point_prompt_encoder
from fpseg_core.regions.network import RegionHead
from fpseg_core.weights import resolve_checkpoint

from .parameters import PARAMETER_BY_NAME

LATEST = 0  # the stamp that asks for the latest segmented frame
NS_PER_S = 1_000_000_000
DEFAULT_POINTS: int = PARAMETER_BY_NAME["region_points"].default
DEFAULT_CACHE_FRAMES: int = PARAMETER_BY_NAME["region_cache_frames"].default
POINTS_RANGE = PARAMETER_BY_NAME["region_points"].integer_range
CACHE_FRAMES_RANGE = PARAMETER_BY_NAME["region_cache_frames"].integer_range


class RegionQueryError(FPSegError, ValueError):
    """A region query that cannot be answered (frame not cached, point count out of range); says why."""


class RegionSetupError(FPSegError):
    """The region classifier cannot be loaded as configured (at configure time)."""


def format_stamp(stamp_ns: int) -> str:
    """A stamp as seconds.nanoseconds, the way `ros2 topic echo` shows sec / nanosec."""
    return f"{stamp_ns // NS_PER_S}.{stamp_ns % NS_PER_S:09d}"


def _in_range(name: str, value: Any, bounds: tuple[int, int]) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not bounds[0] <= value <= bounds[1]:
        raise ValueError(f"{name} must be an integer in [{bounds[0]}, {bounds[1]}], got {value!r}")
    return value


def load_region_classifier(
    checkpoint: str, region_checkpoint: str, class_names: Sequence[str] | None, pipeline: FPSeg
) -> RegionClassifier | None:
    """The node's region classifier from its launch-time parameters; None when `region_checkpoint` is empty
    (region classification off).

    It has no image encoder of its own: it classifies on `pipeline`'s embeddings (its img_size, input mode and
    device). Its point prompt encoder comes from `checkpoint` (path or cached weights name), which must be an
    official SAM / MobileSAM file; `class_names` None = the names stored beside the decoder file.
    """
    if not region_checkpoint:
        return None
    decoder_path = Path(region_checkpoint).expanduser()
    sam = resolve_checkpoint(checkpoint).checkpoint
    try:
        state = read_sam_state(sam)
        decoder = load_decoder(decoder_path)
        names = decoder_class_names(decoder_path, decoder.n_classes, class_names)
        head = RegionHead(sam_point_prompt_encoder(state, sam, pipeline.img_size), decoder)
    except (FPSegError, OSError, ValueError) as exc:
        raise RegionSetupError(f"cannot load the region classifier (region_checkpoint {decoder_path}, prompt "
                               f"encoder from checkpoint {sam}, which must be an official SAM / MobileSAM "
                               f"file): {exc}") from exc
    return RegionClassifier(None, head, names, pipeline.img_size, pipeline.input_mode, pipeline.device)


def polygon_vertices(polygon: Any) -> np.ndarray:
    """A geometry_msgs/Polygon (points with x, y in image pixels; z ignored) or an N x 2 sequence ->
    N x 2 float64 array of (x, y)."""
    points = getattr(polygon, "points", None)
    if points is not None:
        return np.array([(p.x, p.y) for p in points], dtype=np.float64).reshape(-1, 2)
    return np.asarray(polygon, dtype=np.float64).reshape(-1, 2)


def detection_box(detection: Any) -> tuple[float, float, float, float]:
    """A vision_msgs/Detection2D's bbox (center.position.x / y, size_x / size_y, in pixels) as the box
    (x0, y0, x1, y1) the classifier takes (it clips regions to the image)."""
    box = detection.bbox
    cx, cy = float(box.center.position.x), float(box.center.position.y)
    half_w, half_h = float(box.size_x) / 2, float(box.size_y) / 2
    return cx - half_w, cy - half_h, cx + half_w, cy + half_h


@dataclass(frozen=True)
class CachedFrame:
    """One segmented frame's encoder output: header stamp, embedding [1, 256, h, w] (model device), Geometry."""

    stamp_ns: int
    embedding: torch.Tensor
    geometry: Geometry


class EmbeddingCache:
    """The last `frames` segmented frames' embeddings, oldest first; written on the inference thread and read
    by the queries (a lock guards it). A frame with the stamp of a cached one replaces it."""

    def __init__(self, frames: int = DEFAULT_CACHE_FRAMES) -> None:
        self._frames: deque[CachedFrame] = deque(maxlen=_in_range("region_cache_frames", frames,
                                                                  CACHE_FRAMES_RANGE))
        self._lock = threading.Lock()

    def add(self, frame: CachedFrame) -> None:
        with self._lock:
            for old in [f for f in self._frames if f.stamp_ns == frame.stamp_ns]:
                self._frames.remove(old)
            self._frames.append(frame)

    @property
    def stamps(self) -> list[int]:
        """The cached stamps, oldest first (the last is the latest frame)."""
        with self._lock:
            return [frame.stamp_ns for frame in self._frames]

    def exact(self, stamp_ns: int) -> CachedFrame:
        """The frame stamped `stamp_ns` (LATEST: the latest segmented one)."""
        with self._lock:
            frames = list(self._frames)
        if not frames:
            raise RegionQueryError("no frame has been segmented yet (is the node active and are images arriving?)")
        if stamp_ns == LATEST:
            return frames[-1]
        for frame in frames:
            if frame.stamp_ns == stamp_ns:
                return frame
        raise RegionQueryError(f"no cached frame is stamped {format_stamp(stamp_ns)}; cached (the last "
                               f"{self._frames.maxlen} segmented, region_cache_frames): {self._listed(frames)}")

    def not_newer(self, stamp_ns: int) -> CachedFrame:
        """The frame stamped `stamp_ns` if cached, else the newest cached frame stamped before it."""
        with self._lock:
            frames = list(self._frames)
        older = [frame for frame in frames if frame.stamp_ns <= stamp_ns]
        if not older:
            raise RegionQueryError(f"no cached frame is stamped at or before {format_stamp(stamp_ns)}; cached: "
                                   f"{self._listed(frames) if frames else 'none yet'}")
        return max(older, key=lambda frame: frame.stamp_ns)

    @staticmethod
    def _listed(frames: list[CachedFrame]) -> str:
        return ", ".join(format_stamp(frame.stamp_ns) for frame in frames)


class RegionAnswer(NamedTuple):
    """The classifier's result per region, and the stamp of the frame they were classified on."""

    results: list[RegionResult]
    stamp_ns: int


@dataclass(frozen=True)
class RegionReply:
    """The answer of ~/classify_regions (the fields of ClassifyRegions.srv's response; `stamp_ns` is `stamp`)."""

    success: bool
    message: str
    class_names: list[str] = field(default_factory=list)
    confidences: list[float] = field(default_factory=list)
    stamp_ns: int = 0


class RegionQueries:
    """Classifies regions (polygons, detection boxes) on cached frames with one region classifier.

    Classification calls are serialised (the classifier is not assumed thread-safe) and run under
    torch.inference_mode; they never touch the FPSeg pipeline, so they cost no encoder pass.
    """

    def __init__(self, classifier: RegionClassifier, cache_frames: int = DEFAULT_CACHE_FRAMES,
                 points_per_region: int = DEFAULT_POINTS) -> None:
        self._classifier = classifier
        self._cache = EmbeddingCache(cache_frames)
        self._default_points = _in_range("region_points", points_per_region, POINTS_RANGE)
        self._lock = threading.Lock()

    @property
    def class_names(self) -> list[str]:
        return list(self._classifier.class_names)

    @property
    def cached_stamps(self) -> list[int]:
        """Stamps of the cached frames, oldest first."""
        return self._cache.stamps

    def remember(self, stamp_ns: int, embedding: torch.Tensor, geometry: Geometry) -> None:
        """Keep a segmented frame's embedding (called by the controller on the inference thread)."""
        self._cache.add(CachedFrame(stamp_ns, embedding, geometry))

    def classify(self, stamp_ns: int, polygons: Sequence[Any], points_per_region: int = 0) -> RegionAnswer:
        """Classify `polygons` (geometry_msgs/Polygon-like or N x 2 (x, y) pixel arrays) on the frame stamped
        exactly `stamp_ns` (LATEST = 0: the latest); `points_per_region` 0 = the configured default.
        RegionQueryError when the frame is not cached or the point count is out of range."""
        points = self._points(points_per_region)
        frame = self._cache.exact(stamp_ns)
        return RegionAnswer(self._run(frame, [polygon_vertices(p) for p in polygons], points), frame.stamp_ns)

    def detections(self, stamp_ns: int, detections: Sequence[Any]) -> list[tuple[str, float]]:
        """(class name, vote fraction) for each vision_msgs/Detection2D-like box, classified on the frame of
        `stamp_ns` (the exact frame, else the newest cached one before it); RegionQueryError if there is none."""
        if not detections:
            return []
        frame = self._cache.not_newer(stamp_ns)
        boxes = [np.array(detection_box(detection)) for detection in detections]
        return [(r.class_name, float(r.confidence)) for r in self._run(frame, boxes, self._default_points)]

    def answer(self, stamp_ns: int, polygons: Sequence[Any], points_per_region: int = 0) -> RegionReply:
        """`classify` as the service's reply. Never raises: a query that fails answers success false and why."""
        try:
            results, used = self.classify(stamp_ns, polygons, points_per_region)
        # The service must answer whatever went wrong (a bad polygon, the classifier failing on the device).
        except Exception as exc:
            reason = str(exc) if isinstance(exc, (FPSegError, ValueError)) else f"{type(exc).__name__}: {exc}"
            return RegionReply(False, f"classify_regions failed: {' '.join(reason.splitlines())}")
        return RegionReply(True, f"classified {len(results)} region(s) on the frame stamped {format_stamp(used)}",
                           [r.class_name for r in results], [float(r.confidence) for r in results], used)

    def _points(self, requested: int) -> int:
        if requested == 0:
            return self._default_points
        try:
            return _in_range("points_per_region", requested, POINTS_RANGE)
        except ValueError as exc:
            raise RegionQueryError(f"{exc} (0 = region_points, {self._default_points})") from None

    def _run(self, frame: CachedFrame, regions: list[Any], points: int) -> list[RegionResult]:
        if not regions:
            return []
        with self._lock:  # classify runs under torch.inference_mode
            return self._classifier.classify(regions=regions, points_per_region=points,
                                             embedding=frame.embedding, geometry=frame.geometry)
