"""Everything the fpseg node does, without ROS: active classes, prompt banks, per-frame work and stats.

The rclpy node (fpseg_ros/node.py) only turns parameters, messages and service calls into calls on
`SegmentationController` and publishes what it returns.
"""

from __future__ import annotations

import gc
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from dataclasses import fields as dataclass_fields
from dataclasses import replace as evolve
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fpseg_core.constants import MAX_CLASSES
from fpseg_core.errors import FPSegError, PromptBankError
from fpseg_core.predictor import FPSeg, Segmentation
from fpseg_core.preprocess import to_rgb
from fpseg_core.prompt_bank import PromptBank
from fpseg_core.regions import RegionClassifier
from fpseg_core.visualize import blend, colorize, palette
from fpseg_core.weights import resolve_checkpoint

from .budget import BudgetPlanner
from .health import Health, HealthLimits, HealthMonitor, HealthSnapshot
from .image_codec import DecodedImage, MalformedImageError, decode_compressed, decode_image, stamp_ns
from .latest_frame_worker import SINGLE_SOURCE, LatestFrameWorker
from .parameters import PARAMETER_BY_NAME, RUNTIME_PARAMETERS
from .regions import DEFAULT_CACHE_FRAMES, DEFAULT_POINTS, RegionQueries
from .stats import RollingStats

OVERLAY_ALPHA = 0.5
logger = logging.getLogger(__name__)
NONE_LABEL = "none"


class ClassSelectionError(FPSegError, ValueError):
    """A list of active classes that cannot be used; the message lists the available names."""


@dataclass(frozen=True)
class FrameStats:
    """One frame's report; field names and meaning are those of fpseg_ros/msg/SegmentationStats (less header)."""

    camera: str
    frame: int
    batch_size: int
    classes: list[str]
    skipped_classes: list[str]
    backend: str
    preprocess_ms: float
    encoder_ms: float
    decoder_ms: float
    postprocess_ms: float
    inference_ms: float
    budget_ms: float
    latency_ms: float
    window: int
    latency_mean_ms: float
    latency_p50_ms: float
    latency_p95_ms: float
    latency_max_ms: float
    throughput_hz: float
    dropped_frames: int
    rejected_frames: int
    failed_frames: int

    def fields(self) -> dict[str, Any]:
        """The message fields by name (shallow: runs once per frame)."""
        return {f.name: getattr(self, f.name) for f in dataclass_fields(self)}


@dataclass(frozen=True)
class FrameResult:
    """What the node publishes for one image: labels (H x W uint8), optional rgb8 overlay, optional mono8
    confidence (H x W uint8, round(255 * probability of the winning class), 0 = none), stats.

    `camera` is the input's camera ('' in a single-camera node); `header` is the input message's header, to be
    copied onto every output.
    """

    camera: str
    header: Any
    labels: np.ndarray
    overlay: np.ndarray | None
    confidence: np.ndarray | None
    stats: FrameStats


@dataclass(frozen=True)
class Rejection:
    """A frame that produced no output: `malformed` input (counted in rejected_frames) or a failed run."""

    reason: str
    malformed: bool
    camera: str = SINGLE_SOURCE


@dataclass(frozen=True)
class PromptUpdate:
    """The answer to a prompt-bank load (fields of LoadPrompts.srv's response)."""

    success: bool
    message: str
    available: list[str] = field(default_factory=list)
    active: list[str] = field(default_factory=list)


class _Camera:
    """One camera's counters and latency window (the node's totals are their sums)."""

    def __init__(self, stats_window: int) -> None:
        self.stats = RollingStats(stats_window)
        self.received = 0
        self.segmented = 0
        self.rejected = 0
        self.failed = 0
        self.dropped_before = 0  # frames dropped by inference threads that were stopped


@dataclass(frozen=True)
class _Decoded:
    camera: str
    image: DecodedImage
    header: Any
    start_ns: int


@dataclass(frozen=True)
class _Options:
    fusion: str = "argmax"
    score_threshold: float = 0.5
    publish_color: bool = False
    publish_confidence: bool = False


def load_pipeline(
    checkpoint: str,
    prompts: str = "",
    backend: str = "auto",
    engine_dir: str = "",
    device: str = "auto",
    input_mode: str = "squash",
) -> FPSeg:
    """The FPSeg pipeline the node runs, from its launch-time parameters (paths may start with '~').

    `checkpoint` is a path or the name of cached weights ('fpseg-mobilesam', see fpseg_core.weights): a name is
    read from the cache, never downloaded, and without `prompts` its cached named bank is used.

    `device` auto and `backend` auto are resolved by FPSeg and logged at INFO with the reason; a GPU that is
    not there, or an `engine_dir` that is missing or made for another model, is an error here, at start.
    """
    if not checkpoint:
        raise FPSegError("parameter 'checkpoint' is empty; launch with checkpoint:=/path/to/model.pth (or "
                         "checkpoint:=fpseg-mobilesam after `fpseg weights fetch fpseg-mobilesam`)")
    resolved = resolve_checkpoint(checkpoint)
    return FPSeg.from_checkpoint(
        resolved.checkpoint,
        prompts=Path(prompts).expanduser() if prompts else resolved.prompts,
        device=device,
        input_mode=input_mode,
        backend=backend,
        engine_dir=Path(engine_dir).expanduser() if engine_dir else None,
    )


def probability_to_logit(probability: float) -> float:
    return math.log(probability / (1.0 - probability))


def _message(exc: BaseException) -> str:
    return str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)


def _checked_number(name: str, value: Any) -> float:
    """`value` as a float when it is a number in the parameter's range; ValueError naming the range otherwise."""
    low, high = PARAMETER_BY_NAME[name].float_range
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise ValueError(f"{name} must be a number in [{low}, {high}], got {value!r}")
    return float(value)


def _checked_flag(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {value!r}")
    return value


def _of(camera: str) -> str:
    """' of camera <name>' for log lines of a multi-camera node; nothing with one camera."""
    return f" of camera {camera}" if camera else ""


def free_device_memory() -> None:
    """Return the memory of released pipelines: collect them, then empty torch's CUDA cache (if CUDA is used)."""
    gc.collect()
    if torch.cuda.is_initialized():
        torch.cuda.empty_cache()


class SegmentationController:
    """Owns the FPSeg pipeline, its prompt bank, the active classes and the output options.

    Thread safety: `_state_lock` guards the active classes, options and palette (held only for a few
    instructions, so parameter changes never wait for inference); `_model_lock` is held for a whole
    inference and for a bank swap, so a frame never sees half of a new bank. Class lists are validated
    against the bank under `_state_lock` and bank swaps hold both locks.

    Life cycle: `start` runs the inference thread, `stop` ends it (the model stays loaded), and `start` may
    be called again; the node's lifecycle transitions map onto these. `health` summarises the counters for
    /diagnostics; `latency_budget_ms` keeps each frame to the prefix of the active classes that fits.

    Cameras: with `cameras` (names, e.g. ["front", "rear"]) frames are submitted per camera; the newest frame of
    each is kept, cameras are served round-robin, and the frames of every camera waiting are encoded together
    (one batch where the backend encodes batches, see `FPSeg.segment_batch`). Counters, latency windows and
    stats are per camera; `health` sums them. Without `cameras` there is one, named '' (SINGLE_SOURCE).

    With a `region_classifier`, each segmented frame's image embedding is kept (the last
    `region_cache_frames`, by header stamp) and `regions` answers region queries on them without another
    encoder pass; without one, no embedding is kept.
    """

    def __init__(
        self,
        fpseg: FPSeg,
        classes: Sequence[str] | None = None,
        fusion: str = "argmax",
        score_threshold: float = 0.5,
        publish_color: bool = False,
        stats_window: int = 100,
        max_classes: int = MAX_CLASSES,
        compressed_input: bool = False,
        clock_ns: Callable[[], int] = time.time_ns,
        publish_confidence: bool = False,
        latency_budget_ms: float = 0.0,
        expected_input_hz: float = 0.0,
        latency_warn_ms: float = 0.0,
        monotonic: Callable[[], float] = time.monotonic,
        region_classifier: RegionClassifier | None = None,
        region_points: int = DEFAULT_POINTS,
        region_cache_frames: int = DEFAULT_CACHE_FRAMES,
        cameras: Sequence[str] = (),
    ) -> None:
        if not 1 <= max_classes <= MAX_CLASSES:
            raise ValueError(f"max_classes must be in [1, {MAX_CLASSES}], got {max_classes}")
        names = tuple(cameras) or (SINGLE_SOURCE,)
        if len(set(names)) != len(names) or (cameras and not all(names)):
            raise ValueError(f"cameras must be distinct non-empty names, got {list(cameras)}")
        self._fpseg = fpseg
        self._max_classes = int(max_classes)
        self._decode = decode_compressed if compressed_input else decode_image
        self._clock_ns = clock_ns
        self._monotonic = monotonic
        self._state_lock = threading.Lock()
        self._model_lock = threading.Lock()
        self._cameras = {name: _Camera(stats_window) for name in names}
        self._planner = BudgetPlanner()
        self._health = HealthMonitor()
        self._limits = HealthLimits()
        self._palette = palette(fpseg.classes)
        self._active: tuple[str, ...] = ()
        self._skipped: list[str] = []
        self._options = _Options()
        self._last_input_s: float | None = None
        self._started_s = monotonic()
        self._worker: LatestFrameWorker | None = None
        self._regions = (RegionQueries(region_classifier, region_cache_frames, region_points)
                         if region_classifier is not None else None)
        self.update({
            "classes": list(fpseg.classes) if classes is None else classes,
            "fusion": fusion,
            "score_threshold": score_threshold,
            "publish_color": publish_color,
            "publish_confidence": publish_confidence,
            "latency_budget_ms": latency_budget_ms,
            "expected_input_hz": expected_input_hz,
            "latency_warn_ms": latency_warn_ms,
        })

    # ----------------------------------------------------------------------------------------- state
    @property
    def available(self) -> list[str]:
        """Every class of the prompt bank; label value i + 1 is available[i]."""
        with self._state_lock:
            return list(self._fpseg.classes)

    @property
    def active(self) -> list[str]:
        with self._state_lock:
            return list(self._active)

    @property
    def backend_name(self) -> str:
        return self._fpseg.backend_name

    @property
    def device(self) -> str:
        return str(self._fpseg.device)

    @property
    def score_threshold(self) -> float:
        return self._options.score_threshold

    @property
    def cameras(self) -> list[str]:
        """The camera names frames are submitted under (one, '', without the `cameras` argument)."""
        return list(self._cameras)

    @property
    def max_classes(self) -> int:
        return self._max_classes

    @property
    def regions(self) -> RegionQueries | None:
        """Region queries on the cached frames; None without a region classifier."""
        return self._regions

    @property
    def encoder_passes(self) -> int:
        """Images the pipeline has encoded (one per segmented frame; region queries add none)."""
        return self._fpseg.encoder_passes

    def label_map(self) -> dict[int, str]:
        """Label value -> class name for the whole bank, with 0 = 'none'."""
        with self._state_lock:
            return {0: NONE_LABEL, **{i + 1: name for i, name in enumerate(self._fpseg.classes)}}

    def validate_classes(self, names: Any, bank: PromptBank | None = None) -> tuple[str, ...]:
        """Check a requested active-class list against the bank; returns it as a tuple of names."""
        bank = bank or self._fpseg.bank
        available = ", ".join(bank.names)
        if isinstance(names, str) or not isinstance(names, (list, tuple)):
            raise ClassSelectionError(
                f"classes must be a list of class names, e.g. [road, person], got {names!r}; available: {available}"
            )
        if not names:
            raise ClassSelectionError(f"classes is empty; choose at least one of: {available}")
        if not all(isinstance(name, str) for name in names):
            raise ClassSelectionError(f"classes must be strings, got {list(names)!r}; available: {available}")
        unknown = [name for name in names if name not in bank.names]
        if unknown:
            raise ClassSelectionError(
                f"unknown class(es) {', '.join(map(repr, unknown))}; available: {available}"
            )
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ClassSelectionError(f"class(es) listed twice: {', '.join(repeated)}")
        if len(names) > self._max_classes:
            raise ClassSelectionError(
                f"{len(names)} classes requested, at most {self._max_classes} may be active (max_classes); "
                f"available: {available}"
            )
        return tuple(names)

    def update(self, changes: Mapping[str, Any]) -> None:
        """Apply run-time settings (the RUNTIME_PARAMETERS: classes, fusion, score_threshold, publish_color,
        publish_confidence, latency_budget_ms, expected_input_hz, latency_warn_ms, stats_window) at once.

        Every value is checked first; on any problem nothing changes and ValueError says why.
        """
        unknown = sorted(set(changes) - set(RUNTIME_PARAMETERS))
        if unknown:
            raise ValueError(f"not a run-time setting: {', '.join(unknown)}")
        with self._state_lock:
            active = self.validate_classes(changes["classes"]) if "classes" in changes else self._active
            options, limits, budget, window = self._options, self._limits, self._planner.budget_ms, None
            if "fusion" in changes:
                reason = PARAMETER_BY_NAME["fusion"].check_choice(changes["fusion"])
                if reason:
                    raise ValueError(reason)
                options = evolve(options, fusion=changes["fusion"])
            if "score_threshold" in changes:
                options = evolve(options, score_threshold=_checked_number("score_threshold",
                                                                            changes["score_threshold"]))
            for flag in ("publish_color", "publish_confidence"):
                if flag in changes:
                    options = evolve(options, **{flag: _checked_flag(flag, changes[flag])})
            for limit in ("expected_input_hz", "latency_warn_ms"):
                if limit in changes:
                    limits = evolve(limits, **{limit: _checked_number(limit, changes[limit])})
            if "latency_budget_ms" in changes:
                budget = _checked_number("latency_budget_ms", changes["latency_budget_ms"])
            if "stats_window" in changes:
                window = changes["stats_window"]
                low, high = PARAMETER_BY_NAME["stats_window"].integer_range
                if isinstance(window, bool) or not isinstance(window, int) or not low <= window <= high:
                    raise ValueError(f"stats_window must be an integer in [{low}, {high}], got {window!r}")
            if window is not None:
                for camera in self._cameras.values():
                    camera.stats.resize(window)
            self._planner.budget_ms = budget
            self._active, self._options, self._limits = active, options, limits

    # --------------------------------------------------------------------------------- prompt banks
    def load_prompts(
        self, path: str, classes: Sequence[str] = (), replace: bool = False, activate: bool = False
    ) -> PromptUpdate:
        """Load a prompt bank file: merge it into the bank (same name = overwrite) or replace the bank.

        `classes` takes only those names from the file; `activate` appends the loaded classes to the active
        list. The file is fully checked (format, dtype, shape, finite values, names, prompt size, decoder
        fingerprint, resulting class count) before the running bank is touched; the new bank keeps the
        running bank's dtype and device. Never raises: on any failure the bank and active classes stay as
        they were and the answer says why. Active classes missing from a replacing bank are deactivated.
        """
        try:
            loaded = self._read_prompts(path, classes)
            with self._model_lock, self._state_lock:
                current = self._fpseg.bank
                bank, active = self._next_bank(current, loaded, replace, activate)
                dropped = self._swap_bank(current, bank, active)
        # The service must answer whatever went wrong; the state is only changed by a swap that succeeded.
        except Exception as exc:
            return self._refused(path, exc)
        verb = "replaced the bank with" if replace else "merged"
        message = f"{verb} {len(loaded)} class(es) from {path}: {', '.join(loaded.names)}"
        if not loaded.decoder_fingerprint:
            message += "; unchecked: the file records no decoder fingerprint, nothing says it fits this decoder"
        if dropped:
            message += f"; deactivated (not in the new bank): {', '.join(dropped)}"
        return PromptUpdate(True, message, list(bank.names), list(active))

    def _read_prompts(self, path: str, classes: Sequence[str]) -> PromptBank:
        """Step 1: the file's bank (only `classes` of it, when given), validated and checked against the
        model's decoder."""
        if isinstance(classes, str) or not isinstance(classes, (list, tuple)) or not all(
            isinstance(name, str) for name in classes
        ):
            raise ClassSelectionError(f"classes must be a list of class names, e.g. [road, person], got {classes!r}")
        loaded = PromptBank.load(Path(path).expanduser())
        if classes:
            loaded = loaded.subset(list(classes))
        loaded.check_fits(self._fpseg.fingerprint)
        return loaded

    def _next_bank(
        self, current: PromptBank, loaded: PromptBank, replace: bool, activate: bool
    ) -> tuple[PromptBank, tuple[str, ...]]:
        """Step 2 (both locks held): the bank and active classes the load would give; nothing changes yet."""
        if loaded.prompt_size != current.prompt_size:
            raise PromptBankError(
                f"prompt size {loaded.prompt_size} does not match the running bank's "
                f"{current.prompt_size} (the deployed model takes one prompt size)"
            )
        bank = loaded.like(current) if replace else current.merge(loaded)
        if len(bank) > MAX_CLASSES:
            raise PromptBankError(f"the bank would hold {len(bank)} classes, at most {MAX_CLASSES} fit uint8 labels")
        kept = [name for name in self._active if name in bank.names]
        added = [name for name in loaded.names if activate and name not in kept]
        return bank, self.validate_classes(kept + added, bank)

    def _swap_bank(self, current: PromptBank, bank: PromptBank, active: tuple[str, ...]) -> list[str]:
        """Step 3 (both locks held): give the backend the new bank, then take its palette and active classes;
        returns the classes deactivated. A backend that fails while taking the tokens (e.g. out of GPU
        memory) gets the old bank back, so the node keeps running as before."""
        try:
            self._fpseg.set_bank(bank)
        except Exception as exc:
            self._fpseg.set_bank(current, force=True)
            raise PromptBankError(f"the backend could not take the bank ({exc})") from exc
        self._palette = palette(bank.names)
        dropped = [name for name in self._active if name not in active]
        self._active = active
        return dropped

    def _refused(self, path: object, exc: Exception) -> PromptUpdate:
        """The answer to a load that changed nothing: why (one line, naming the file) and the unchanged state."""
        expected = isinstance(exc, (FPSegError, KeyError, ValueError, OSError))
        reason = _message(exc) if expected else f"unexpected {type(exc).__name__}: {exc}"
        reason = " ".join(reason.splitlines())
        if str(path) not in reason:
            reason = f"{path}: {reason}"
        return PromptUpdate(False, reason, self.available, self.active)

    # --------------------------------------------------------------------------------------- frames
    def handle(self, msg: Any, camera: str = SINGLE_SOURCE) -> FrameResult | Rejection:
        """Segment one Image (or CompressedImage) message of `camera`. Never raises for the message: bad input
        and failures are counted and returned as a Rejection whose reason is meant for the log."""
        (outcome,) = self.handle_batch([(camera, msg)])
        return outcome

    def handle_batch(self, frames: Sequence[tuple[str, Any]]) -> list[FrameResult | Rejection]:
        """Segment one message of each of several cameras, (camera, message) pairs, encoded together; the
        outcomes in the same order. Each bad message is rejected on its own; a failed run fails the batch's
        decodable frames. Never raises for the messages (KeyError for a camera that is not one of `cameras`)."""
        outcomes: list[FrameResult | Rejection | None] = []
        decoded: list[tuple[int, _Decoded]] = []
        for camera, msg in frames:
            if camera not in self._cameras:
                raise KeyError(f"unknown camera {camera!r}; cameras: {', '.join(map(repr, self._cameras))}")
            frame = self._decode_frame(camera, msg)
            if isinstance(frame, _Decoded):
                decoded.append((len(outcomes), frame))
            outcomes.append(frame if isinstance(frame, Rejection) else None)
        if decoded:
            try:
                results = self._segment([frame for _, frame in decoded])
            # Whatever a backend raises (e.g. CUDA out of memory) costs these frames only; the node keeps going.
            except Exception as exc:
                results = [self._failure(frame.camera, f"segmentation failed: {type(exc).__name__}: {exc}")
                           for _, frame in decoded]
            for (index, _), result in zip(decoded, results, strict=True):
                outcomes[index] = result
        return outcomes  # type: ignore[return-value]

    def _decode_frame(self, camera: str, msg: Any) -> _Decoded | Rejection:
        try:
            received_ns = self._clock_ns()
            image = self._decode(msg)
            header = msg.header
            start_ns = stamp_ns(header) or received_ns  # unstamped images: latency from arrival
        except MalformedImageError as exc:
            self._cameras[camera].rejected += 1
            return Rejection(f"dropped a malformed image message{_of(camera)}: {exc}", malformed=True, camera=camera)
        # A decoder bug (or a message that is no image at all) costs this frame only, like a backend failure.
        except Exception as exc:
            return self._failure(camera, f"decoding failed{_of(camera)}: {type(exc).__name__}: {exc}")
        return _Decoded(camera, image, header, start_ns)

    def _failure(self, camera: str, reason: str) -> Rejection:
        self._cameras[camera].failed += 1
        return Rejection(reason, malformed=False, camera=camera)

    def _segment(self, frames: list[_Decoded]) -> list[FrameResult]:
        with self._model_lock:
            with self._state_lock:
                active, options, colours = list(self._active), self._options, self._palette
            plan = self._planner.plan(active)
            results = self._fpseg.segment_batch(
                [frame.image.pixels for frame in frames], [frame.image.color_order for frame in frames],
                plan.kept, fusion=options.fusion, threshold=probability_to_logit(options.score_threshold),
                confidence=options.publish_confidence, keep_embedding=self._regions is not None,
            )
        self._skipped = plan.skipped
        return [self._frame_result(frame, result, plan.skipped, options, colours)
                for frame, result in zip(frames, results, strict=True)]

    def _frame_result(self, frame: _Decoded, result: Segmentation, skipped: list[str], options: _Options,
                      colours: np.ndarray) -> FrameResult:
        if self._regions is not None:  # before the outputs go out: a client that saw them may ask at once
            # keyed by the frame's stamp (by its arrival time when unstamped: 0 means "latest" to a query)
            self._regions.remember(frame.start_ns, result.embedding, result.geometry)
        self._planner.observe(result.timings_ms, len(result.classes))
        image = frame.image
        overlay = None
        if options.publish_color:
            overlay = blend(to_rgb(image.pixels, image.color_order), colorize(result.labels, colours),
                            OVERLAY_ALPHA)
        latency_ms = (self._clock_ns() - frame.start_ns) / 1e6
        counters = self._cameras[frame.camera]
        counters.segmented += 1
        window = counters.stats.add(latency_ms, self._monotonic())
        timings = result.timings_ms
        stats = FrameStats(
            camera=frame.camera,
            frame=counters.segmented,
            batch_size=result.batch_size,
            classes=list(result.classes),
            skipped_classes=skipped,
            backend=self.backend_name,
            preprocess_ms=timings.get("preprocess", math.nan),
            encoder_ms=timings.get("encoder", math.nan),
            decoder_ms=timings.get("decoder", math.nan),
            postprocess_ms=timings.get("postprocess", math.nan),
            inference_ms=timings.get("total", math.nan),
            budget_ms=self._planner.budget_ms,
            latency_ms=latency_ms,
            window=window.frames,
            latency_mean_ms=window.latency_mean_ms,
            latency_p50_ms=window.latency_p50_ms,
            latency_p95_ms=window.latency_p95_ms,
            latency_max_ms=window.latency_max_ms,
            throughput_hz=window.throughput_hz,
            dropped_frames=counters.dropped_before + (self._worker.dropped_of(frame.camera) if self._worker else 0),
            rejected_frames=counters.rejected,
            failed_frames=counters.failed,
        )
        return FrameResult(frame.camera, frame.header, result.labels, overlay, result.confidence, stats)

    # ---------------------------------------------------------------------------------- worker thread
    @property
    def dropped_by_camera(self) -> dict[str, int]:
        """Frames of each camera replaced by a newer one before the worker got to them (over every start)."""
        running = self._worker.dropped_by_source if self._worker is not None else {}
        return {name: camera.dropped_before + running.get(name, 0) for name, camera in self._cameras.items()}

    @property
    def dropped_frames(self) -> int:
        """Frames replaced by a newer one of the same camera before the worker got to them (over every start)."""
        return sum(self.dropped_by_camera.values())

    @property
    def rejected_frames(self) -> int:
        return sum(camera.rejected for camera in self._cameras.values())

    @property
    def failed_frames(self) -> int:
        return sum(camera.failed for camera in self._cameras.values())

    @property
    def segmented_frames(self) -> int:
        return sum(camera.segmented for camera in self._cameras.values())

    @property
    def alive(self) -> bool:
        """The inference thread is running (started, neither stopped nor dead)."""
        return self._worker is not None and self._worker.alive

    @property
    def death_cause(self) -> BaseException | None:
        """What killed the inference thread, if it died instead of being stopped (the node must then exit)."""
        return self._worker.death_cause if self._worker is not None else None

    def start(
        self,
        on_result: Callable[[FrameResult], None],
        on_rejection: Callable[[Rejection], None],
        on_error: Callable[[BaseException], None] | None = None,
    ) -> None:
        """Start the supervised inference thread: each submitted frame's outcome goes to on_result /
        on_rejection (called on that thread). An exception from those callbacks goes to on_error and the
        thread goes on with the next frame; a result that could not be published counts in failed_frames.
        After `stop`, `start` runs a new thread (counters go on); it refuses while a thread is running."""
        if self._worker is not None and self._worker.alive:
            raise RuntimeError("the controller's worker is already started")
        if self._worker is not None:
            if self._worker.death_cause is not None:
                raise RuntimeError("the controller's worker died; create a new controller")
            for name, dropped in self._worker.dropped_by_source.items():
                self._cameras[name].dropped_before += dropped
        report = on_error or (lambda exc: logger.error("publishing a result failed", exc_info=exc))

        def work(batch: list[tuple[str, Any]]) -> None:
            for outcome in self.handle_batch(batch):
                if isinstance(outcome, Rejection):
                    on_rejection(outcome)  # already counted (rejected or failed) by handle_batch
                    continue
                try:
                    on_result(outcome)
                # Counted, reported, and the batch's other frames still go out.
                except Exception as exc:
                    self._cameras[outcome.camera].failed += 1
                    report(exc)

        self._health.reset()
        self._started_s, self._last_input_s = self._monotonic(), None
        self._worker = LatestFrameWorker(work, on_error, name="fpseg-inference", sources=tuple(self._cameras),
                                         max_batch=len(self._cameras))
        self._worker.start()

    def submit(self, msg: Any, camera: str = SINGLE_SOURCE) -> bool:
        """Hand a frame of `camera` to the inference thread; returns at once (a frame of the same camera still
        waiting is dropped). False when the thread no longer takes frames: stopped, or dead (see
        `death_cause`). KeyError for a camera that is not one of `cameras`."""
        if self._worker is None:
            raise RuntimeError("call start() before submit()")
        accepted = self._worker.submit(msg, camera)  # KeyError (nothing counted) for an unknown camera
        self._cameras[camera].received += 1
        self._last_input_s = self._monotonic()
        return accepted

    def stop(self, timeout: float | None = 10.0) -> bool:
        """Stop the inference thread after the frame in progress; True when it has ended. The model stays
        loaded and `start` may run a new thread."""
        return self._worker.stop(timeout) if self._worker is not None else True

    # ------------------------------------------------------------------------------------------ health
    def health(self) -> Health:
        """Level, message and key-values for /diagnostics, from the counters since the last call (summed over
        the cameras; latency: the frame-weighted mean of the cameras' windows and the worst camera's p95)."""
        windows = [camera.stats.summary() for camera in self._cameras.values()]
        filled = [window for window in windows if window.frames]
        with self._state_lock:
            active, limits, fingerprint = list(self._active), self._limits, self._fpseg.bank.decoder_fingerprint
        snapshot = HealthSnapshot(
            received_frames=sum(camera.received for camera in self._cameras.values()),
            segmented_frames=self.segmented_frames,
            dropped_frames=self.dropped_frames,
            rejected_frames=self.rejected_frames,
            failed_frames=self.failed_frames,
            running_since_s=self._started_s,
            last_input_s=self._last_input_s,
            latency_mean_ms=(sum(w.latency_mean_ms * w.frames for w in filled) / sum(w.frames for w in filled)
                             if filled else math.nan),
            latency_p95_ms=max((w.latency_p95_ms for w in filled), default=math.nan),
            skipped_classes=list(self._skipped),
            budget_ms=self._planner.budget_ms,
            backend=self.backend_name,
            device=self.device,
            active_classes=active,
            bank_fingerprint=fingerprint or self._fpseg.fingerprint,
        )
        health = self._health.assess(snapshot, limits, self._monotonic())
        values = [("encoder passes", str(self.encoder_passes))]
        if len(self._cameras) > 1:
            dropped = self.dropped_by_camera
            values += [(f"camera {name}", f"received {camera.received}, segmented {camera.segmented}, dropped "
                                          f"{dropped[name]}, rejected {camera.rejected}, failed {camera.failed}, "
                                          f"latency p95 {window.latency_p95_ms:.1f} ms")
                       for (name, camera), window in zip(self._cameras.items(), windows, strict=True)]
        if self._regions is not None:
            values += [("region classes", ", ".join(self._regions.class_names)),
                       ("region frames cached", str(len(self._regions.cached_stamps)))]
        return evolve(health, values=[*health.values, *values])
