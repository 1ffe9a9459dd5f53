"""Everything the fpseg node does, without ROS: active classes, prompt banks, per-frame work and stats.

The rclpy node (fpseg_ros/node.py) only turns parameters, messages and service calls into calls on
`SegmentationController` and publishes what it returns.
"""

from __future__ import annotations

import gc
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
from fpseg_core.predictor import FPSeg
from fpseg_core.preprocess import to_rgb
from fpseg_core.prompt_bank import PromptBank
from fpseg_core.regions import RegionClassifier
from fpseg_core.visualize import blend, colorize, palette
from fpseg_core.weights import resolve_checkpoint

from .budget import BudgetPlanner
from .health import Health, HealthLimits, HealthMonitor, HealthSnapshot
from .image_codec import DecodedImage, MalformedImageError, decode_compressed, decode_image, stamp_ns
from .latest_frame_worker import LatestFrameWorker
from .parameters import PARAMETER_BY_NAME, RUNTIME_PARAMETERS
from .regions import DEFAULT_CACHE_FRAMES, DEFAULT_POINTS, RegionQueries
from .stats import RollingStats

OVERLAY_ALPHA = 0.5
NONE_LABEL = "none"


class ClassSelectionError(FPSegError, ValueError):
    """A list of active classes that cannot be used; the message lists the available names."""


@dataclass(frozen=True)
class FrameStats:
    """One frame's report; field names and meaning are those of fpseg_ros/msg/SegmentationStats (less header)."""

    frame: int
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

    `header` is the input message's header, to be copied onto every output.
    """

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


@dataclass(frozen=True)
class PromptUpdate:
    """The answer to a prompt-bank load (fields of LoadPrompts.srv's response)."""

    success: bool
    message: str
    available: list[str] = field(default_factory=list)
    active: list[str] = field(default_factory=list)


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
    ) -> None:
        if not 1 <= max_classes <= MAX_CLASSES:
            raise ValueError(f"max_classes must be in [1, {MAX_CLASSES}], got {max_classes}")
        self._fpseg = fpseg
        self._max_classes = int(max_classes)
        self._decode = decode_compressed if compressed_input else decode_image
        self._clock_ns = clock_ns
        self._monotonic = monotonic
        self._state_lock = threading.Lock()
        self._model_lock = threading.Lock()
        self._stats = RollingStats(stats_window)
        self._planner = BudgetPlanner()
        self._health = HealthMonitor()
        self._limits = HealthLimits()
        self._palette = palette(fpseg.classes)
        self._active: tuple[str, ...] = ()
        self._skipped: list[str] = []
        self._options = _Options()
        self._frames = 0
        self._received = 0
        self._rejected = 0
        self._failed = 0
        self._dropped_before = 0  # frames dropped by inference threads that were stopped
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
                if isinstance(window, bool) or not isinstance(window, int) or window < 1:
                    raise ValueError(f"stats_window must be a positive integer, got {window!r}")
            if window is not None:
                self._stats.resize(window)
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
    def handle(self, msg: Any) -> FrameResult | Rejection:
        """Segment one Image (or CompressedImage) message. Never raises: bad input and failures are
        counted and returned as a Rejection whose reason is meant for the log."""
        try:
            received_ns = self._clock_ns()
            image = self._decode(msg)
            header = msg.header
            start_ns = stamp_ns(header) or received_ns  # unstamped images: latency from arrival
        except MalformedImageError as exc:
            self._rejected += 1
            return Rejection(f"dropped a malformed image message: {exc}", malformed=True)
        # A decoder bug (or a message that is no image at all) costs this frame only, like a backend failure.
        except Exception as exc:
            self._failed += 1
            return Rejection(f"decoding failed: {type(exc).__name__}: {exc}", malformed=False)
        try:
            return self._segment(image, header, start_ns)
        # Whatever a backend raises (e.g. CUDA out of memory) costs this frame only; the node keeps going.
        except Exception as exc:
            self._failed += 1
            return Rejection(f"segmentation failed: {type(exc).__name__}: {exc}", malformed=False)

    def _segment(self, image: DecodedImage, header: Any, start_ns: int) -> FrameResult:
        with self._model_lock:
            with self._state_lock:
                active, options, colours = list(self._active), self._options, self._palette
            plan = self._planner.plan(active)
            result = self._fpseg.segment(
                image.pixels, plan.kept, fusion=options.fusion,
                threshold=probability_to_logit(options.score_threshold), color_order=image.color_order,
                confidence=options.publish_confidence, keep_embedding=self._regions is not None,
            )
        if self._regions is not None:  # before the outputs go out: a client that saw them may ask at once
            # keyed by the frame's stamp (by its arrival time when unstamped: 0 means "latest" to a query)
            self._regions.remember(start_ns, result.embedding, result.geometry)
        self._planner.observe(result.timings_ms, len(plan.kept))
        self._skipped = plan.skipped
        overlay = None
        if options.publish_color:
            overlay = blend(to_rgb(image.pixels, image.color_order), colorize(result.labels, colours),
                            OVERLAY_ALPHA)
        latency_ms = (self._clock_ns() - start_ns) / 1e6
        self._frames += 1
        window = self._stats.add(latency_ms, self._monotonic())
        timings = result.timings_ms
        stats = FrameStats(
            frame=self._frames,
            classes=list(result.classes),
            skipped_classes=plan.skipped,
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
            dropped_frames=self.dropped_frames,
            rejected_frames=self._rejected,
            failed_frames=self._failed,
        )
        return FrameResult(header, result.labels, overlay, result.confidence, stats)

    # ---------------------------------------------------------------------------------- worker thread
    @property
    def dropped_frames(self) -> int:
        """Frames replaced by a newer one before the worker got to them (over every start)."""
        return self._dropped_before + (self._worker.dropped if self._worker is not None else 0)

    @property
    def rejected_frames(self) -> int:
        return self._rejected

    @property
    def failed_frames(self) -> int:
        return self._failed

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
            self._dropped_before += self._worker.dropped

        def work(msg: Any) -> None:
            outcome = self.handle(msg)
            if isinstance(outcome, Rejection):
                on_rejection(outcome)  # already counted (rejected or failed) by handle
                return
            try:
                on_result(outcome)
            except Exception:
                self._failed += 1
                raise

        self._health.reset()
        self._started_s, self._last_input_s = self._monotonic(), None
        self._worker = LatestFrameWorker(work, on_error, name="fpseg-inference")
        self._worker.start()

    def submit(self, msg: Any) -> bool:
        """Hand a frame to the inference thread; returns at once (a frame still waiting is dropped).

        False when the thread no longer takes frames: stopped, or dead (see `death_cause`)."""
        if self._worker is None:
            raise RuntimeError("call start() before submit()")
        self._received += 1
        self._last_input_s = self._monotonic()
        return self._worker.submit(msg)

    def stop(self, timeout: float | None = 10.0) -> bool:
        """Stop the inference thread after the frame in progress; True when it has ended. The model stays
        loaded and `start` may run a new thread."""
        return self._worker.stop(timeout) if self._worker is not None else True

    # ------------------------------------------------------------------------------------------ health
    def health(self) -> Health:
        """Level, message and key-values for /diagnostics, from the counters since the last call."""
        summary = self._stats.summary()
        with self._state_lock:
            active, limits, fingerprint = list(self._active), self._limits, self._fpseg.bank.decoder_fingerprint
        snapshot = HealthSnapshot(
            received_frames=self._received,
            segmented_frames=self._frames,
            dropped_frames=self.dropped_frames,
            rejected_frames=self._rejected,
            failed_frames=self._failed,
            running_since_s=self._started_s,
            last_input_s=self._last_input_s,
            latency_mean_ms=summary.latency_mean_ms,
            latency_p95_ms=summary.latency_p95_ms,
            skipped_classes=list(self._skipped),
            budget_ms=self._planner.budget_ms,
            backend=self.backend_name,
            device=self.device,
            active_classes=active,
            bank_fingerprint=fingerprint or self._fpseg.fingerprint,
        )
        health = self._health.assess(snapshot, limits, self._monotonic())
        values = [("encoder passes", str(self.encoder_passes))]
        if self._regions is not None:
            values += [("region classes", ", ".join(self._regions.class_names)),
                       ("region frames cached", str(len(self._regions.cached_stamps)))]
        return evolve(health, values=[*health.values, *values])
