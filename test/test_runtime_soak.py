"""Soak: thousands of frames through the ROS-free controller with the Python heap measured (issue 19).

The controller runs a tiny random model on small images, with one malformed frame in ten, the overlay and
confidence outputs on, class changes now and then and /diagnostics assessed as the node does. tracemalloc
compares the heap after a warm-up with the heap after N more frames; the growth per frame must stay under
MAX_GROWTH_PER_FRAME. The same measurement on a run with an injected per-frame leak of LEAK_BYTES must flag
it, so the claim "this test fails on a leak of a few KB per frame" is itself tested. The bounded collections
of the runtime and the evaluator, and HeapProbe (the node's opt-in profiler), are checked here too.
"""

from __future__ import annotations

import inspect
import json
import threading
import time
import tracemalloc
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import TINY_CLASSES
from ros_fakes import image_message, random_pixels
from test_runtime_health import BASE

from fpseg_core import FPSeg, tiny_config
from fpseg_core.preprocess import Geometry
from fpseg_core.replay.evaluator import MAX_KEPT_ERRORS, LatencyStats, StreamEvaluator
from fpseg_core.runtime.controller import FrameResult, Rejection, SegmentationController
from fpseg_core.runtime.health import MAX_SAMPLES, HealthLimits, HealthMonitor
from fpseg_core.runtime.heap_probe import (
    DEFAULT_INTERVAL_S,
    HEAP_PROFILE_ENV,
    HEAP_PROFILE_INTERVAL_ENV,
    HeapProbe,
    LineGrowth,
)
from fpseg_core.runtime.regions import CachedFrame, EmbeddingCache
from fpseg_core.runtime.stats import MAX_WINDOW, RollingStats

HEIGHT, WIDTH = 32, 48  # small frames: the soak measures the per-frame bookkeeping, not the model
IMG_SIZE = 32  # the smallest input size the tiny MobileSAM config takes (a 2 x 2 embedding)
WARMUP_FRAMES = 200  # untraced, before the baseline: lazy caches and allocator pools settle
# Traced, before the baseline: more than the stats window (100) and the other per-frame rings turn over.
SETTLE_FRAMES = 150
SOAK_FRAMES = 1200  # measured frames through handle() (1550 in all with the warm-up)
THREADED_WARMUP, THREADED_FRAMES = 50, 300  # through start() / submit(), the node's threaded path
LEAK_WARMUP, LEAK_FRAMES = 20, 200
LEAK_BYTES = 4096  # the injected leak: 4 KB kept per published frame
MALFORMED_EVERY = 10  # frame i with i % 10 == 9 is malformed
CLASS_CHANGE_EVERY = 97  # a class switch (and fusion flip) now and then, off the malformed rhythm
HEALTH_EVERY = 17  # /diagnostics asks about once a second, the camera sends ~17 Hz
# Measured on the 2-core dev VM (late-half slope, see HeapVerdict): 15-16 B/frame through handle(), 65-80 B/frame
# through the worker thread (its 150-frame half still sees the levelling-off growth at torch's tensor-creation
# lines: +50 KB in the first 500 traced frames, +5 KB per 500 by 2000). 256 B/frame is 3x above the worst of
# that and 15x below the injected leak (4096 B per published frame = ~3.7 KB/frame with one frame in ten
# malformed and not published; measured 3.8 KB/frame): a leak of 1 KB per frame or more fails the soak.
MAX_GROWTH_PER_FRAME = 256
CLASS_CYCLE = (["road", "car"], ["sky"], ["person", "road", "sky"], TINY_CLASSES)
WAIT_S = 60.0
QUIESCE_S = 0.2


# ------------------------------------------------------------------------------------- the helper
@dataclass(frozen=True)
class HeapVerdict:
    """Python-heap growth over `frames` measured frames, over their second half (`late_growth_bytes`), and the
    lines that grew most since the baseline.

    The growth per frame is the late half's slope: a leak grows the heap linearly and shows in full there,
    while bounded one-off growth (CPython's free lists and the like reaching their high-water mark, tens of
    KB that level off) mostly lands in the first half and is not charged per frame.
    """

    frames: int
    growth_bytes: int
    late_frames: int
    late_growth_bytes: int
    top: list[LineGrowth]

    @property
    def per_frame_bytes(self) -> float:
        return self.late_growth_bytes / self.late_frames

    def leaks(self, bound: float = MAX_GROWTH_PER_FRAME) -> bool:
        """The heap grew by more than `bound` bytes per frame."""
        return self.per_frame_bytes > bound

    def describe(self, lines: int = 5) -> str:
        top = "; ".join(f"{g.location} {g.size_diff_bytes:+d} B ({g.count_diff:+d} blocks)" for g in self.top[:lines])
        return (f"{self.per_frame_bytes:.1f} B/frame ({self.late_growth_bytes} B over the last {self.late_frames} "
                f"frames, {self.growth_bytes} B over all {self.frames}); top growth: {top}")


def measure_heap_growth(step: Callable[[int], None], warmup: int, frames: int, settle: int = SETTLE_FRAMES,
                        quiesce: Callable[[], None] = lambda: None) -> HeapVerdict:
    """Call `step(i)` for `warmup` frames untraced and `settle` traced, take a baseline, call it for `frames`
    more (sampling the heap halfway and at the end), and compare the heap with the baseline.

    Only blocks allocated while tracing are seen, so a bounded buffer whose old (untraced) entries are
    replaced by new (traced) ones would look like growth up to its size: the traced `settle` frames turn such
    buffers over before the baseline. The untraced warm-up runs at full speed; one frame per traceback keeps
    tracing cheap. `quiesce()` runs before each heap sample (e.g. to let a worker thread finish a frame).
    """
    for i in range(warmup):
        step(i)
    probe = HeapProbe(frames=1, top=10)
    probe.start()
    try:
        for i in range(warmup, warmup + settle):
            step(i)
        probe.set_baseline()
        first, late = warmup + settle, frames - frames // 2
        for i in range(first, first + frames - late):
            step(i)
        quiesce()
        halfway = probe.sample()
        for i in range(first + frames - late, first + frames):
            step(i)
        quiesce()
        end = probe.sample()
        return HeapVerdict(frames, end.growth_bytes, late, end.growth_bytes - halfway.growth_bytes, probe.growth())
    finally:
        probe.close(final_sample=False)


# ----------------------------------------------------------------------------------- the frames
@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """One intra-op thread: on 2 shared cores a second one makes the tiny model ~10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def soak_model() -> FPSeg:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # random weights
        return FPSeg.random(tiny_config("mobilesam", n_classes=len(TINY_CLASSES), prompt_size=4,
                                        img_size=IMG_SIZE), TINY_CLASSES, seed=3)


def _wrong_length(pixels: np.ndarray) -> SimpleNamespace:
    msg = image_message(pixels, "rgb8")
    msg.data = msg.data[:-7]
    return msg


def _unknown_encoding(pixels: np.ndarray) -> SimpleNamespace:
    msg = image_message(pixels, "rgb8")
    msg.encoding = "rgb13"
    return msg


@pytest.fixture(scope="module")
def messages() -> list[SimpleNamespace]:
    """MALFORMED_EVERY frames, the last malformed (wrong data length / unknown encoding), cycled by `_message`."""
    good = [image_message(random_pixels(HEIGHT, WIDTH, 3, seed=i), "rgb8", sec=1 + i)
            for i in range(MALFORMED_EVERY - 1)]
    bad = [_wrong_length(random_pixels(HEIGHT, WIDTH, 3)), _unknown_encoding(random_pixels(HEIGHT, WIDTH, 3))]
    return [*good, *bad]


def _message(messages: list[SimpleNamespace], i: int) -> SimpleNamespace:
    """Frame i: a good message, or a malformed one when i % MALFORMED_EVERY is the last slot."""
    if i % MALFORMED_EVERY == MALFORMED_EVERY - 1:
        return messages[MALFORMED_EVERY - 1 + (i // MALFORMED_EVERY) % 2]
    return messages[i % MALFORMED_EVERY]


def _housekeeping(controller: SegmentationController, i: int) -> None:
    """What the node does besides frames: parameter changes and /diagnostics."""
    if i % CLASS_CHANGE_EVERY == 0:
        turn = i // CLASS_CHANGE_EVERY
        controller.update({"classes": CLASS_CYCLE[turn % len(CLASS_CYCLE)],
                           "fusion": ("argmax", "priority")[turn % 2]})
    if i % HEALTH_EVERY == 0:
        controller.health()


def _controller(model: FPSeg) -> SegmentationController:
    return SegmentationController(model, score_threshold=0.01, publish_color=True, publish_confidence=True,
                                  expected_input_hz=17.0)


def _drop(_result: FrameResult) -> None:
    """Publish nothing: the node's publishers copy the arrays out and let go."""


def _sync_step(controller: SegmentationController, messages: list[SimpleNamespace],
               publish: Callable[[FrameResult], None] = _drop) -> Callable[[int], None]:
    def step(i: int) -> None:
        _housekeeping(controller, i)
        outcome = controller.handle(_message(messages, i))
        malformed = i % MALFORMED_EVERY == MALFORMED_EVERY - 1
        assert isinstance(outcome, Rejection if malformed else FrameResult), outcome
        if isinstance(outcome, FrameResult):
            assert outcome.overlay is not None and outcome.confidence is not None
            publish(outcome)

    return step


class LeakyPublisher:
    """A publish callback that keeps LEAK_BYTES per frame: the leak the soak must catch."""

    def __init__(self) -> None:
        self.kept: list[bytes] = []

    def __call__(self, _result: FrameResult) -> None:
        self.kept.append(bytes(LEAK_BYTES))

    @classmethod
    def leaking_line(cls) -> str:
        """file:line of the allocation that leaks."""
        lines, first = inspect.getsourcelines(cls.__call__)
        offset = next(n for n, line in enumerate(lines) if "bytes(LEAK_BYTES)" in line)
        return f"{inspect.getsourcefile(cls)}:{first + offset}"


# ------------------------------------------------------------------------------------- the soak
def test_heap_growth_per_frame_is_bounded_through_handle(soak_model: FPSeg, messages: list[SimpleNamespace]
                                                         ) -> None:
    controller = _controller(soak_model)
    verdict = measure_heap_growth(_sync_step(controller, messages), WARMUP_FRAMES, SOAK_FRAMES)
    print(f"handle(): {verdict.describe()}")
    assert not verdict.leaks(), verdict.describe()
    total = WARMUP_FRAMES + SETTLE_FRAMES + SOAK_FRAMES
    assert controller.rejected_frames == total // MALFORMED_EVERY
    assert controller.failed_frames == 0
    assert controller.segmented_frames == total - controller.rejected_frames


def _let_the_worker_return() -> None:
    """The worker signals from inside its callbacks: give it a moment to return and drop the frame's arrays
    (about 10 KB), so the samples do not depend on whether a frame was still in flight."""
    time.sleep(QUIESCE_S)


def test_heap_growth_per_frame_is_bounded_through_the_worker_thread(
    soak_model: FPSeg, messages: list[SimpleNamespace]
) -> None:
    controller = _controller(soak_model)
    done = threading.Semaphore(0)
    outcomes = {"results": 0, "rejections": 0}

    def on_result(_result: FrameResult) -> None:
        outcomes["results"] += 1
        done.release()

    def on_rejection(rejection: Rejection) -> None:
        assert rejection.malformed, rejection.reason
        outcomes["rejections"] += 1
        done.release()

    def step(i: int) -> None:
        _housekeeping(controller, i)
        assert controller.submit(_message(messages, i))
        assert done.acquire(timeout=WAIT_S), "the worker did not finish a frame"

    controller.start(on_result, on_rejection)
    try:
        verdict = measure_heap_growth(step, THREADED_WARMUP, THREADED_FRAMES, quiesce=_let_the_worker_return)
    finally:
        assert controller.stop()
    print(f"start()/submit(): {verdict.describe()}")
    assert not verdict.leaks(), verdict.describe()
    total = THREADED_WARMUP + SETTLE_FRAMES + THREADED_FRAMES
    assert outcomes == {"results": total - total // MALFORMED_EVERY, "rejections": total // MALFORMED_EVERY}
    assert controller.dropped_frames == 0  # one frame at a time: nothing replaced


def test_the_measurement_flags_a_few_kb_per_frame_leak_and_names_its_line(
    soak_model: FPSeg, messages: list[SimpleNamespace]
) -> None:
    publish = LeakyPublisher()
    verdict = measure_heap_growth(_sync_step(_controller(soak_model), messages, publish), LEAK_WARMUP, LEAK_FRAMES,
                                  settle=LEAK_WARMUP)
    print(f"with a {LEAK_BYTES} B leak: {verdict.describe()}")
    published = LEAK_FRAMES - LEAK_FRAMES // MALFORMED_EVERY
    assert verdict.leaks(), verdict.describe()
    assert verdict.growth_bytes >= published * LEAK_BYTES
    assert verdict.per_frame_bytes >= 0.8 * LEAK_BYTES
    assert verdict.top[0].location == LeakyPublisher.leaking_line()
    assert verdict.top[0].count_diff >= published  # the bytes objects (and the list's growing item array)


# ----------------------------------------------------------------------------------- the probe
def test_heap_probe_from_the_environment(tmp_path: Path) -> None:
    assert HeapProbe.from_environment({}) is None
    assert HeapProbe.from_environment({HEAP_PROFILE_ENV: "  "}) is None
    probe = HeapProbe.from_environment({HEAP_PROFILE_ENV: str(tmp_path / "heap.json")})
    assert probe is not None and probe.path == tmp_path / "heap.json" and probe.interval_s == DEFAULT_INTERVAL_S
    probe = HeapProbe.from_environment({HEAP_PROFILE_ENV: "~/heap.json", HEAP_PROFILE_INTERVAL_ENV: "2.5"})
    assert probe is not None and probe.interval_s == 2.5 and probe.path == Path("~/heap.json").expanduser()
    for bad in ("0", "-1", "soon", "nan"):
        with pytest.raises(ValueError, match=HEAP_PROFILE_INTERVAL_ENV):
            HeapProbe.from_environment({HEAP_PROFILE_ENV: "heap.json", HEAP_PROFILE_INTERVAL_ENV: bad})


def test_heap_probe_on_a_timer_writes_a_json_report_naming_the_leak(tmp_path: Path) -> None:
    was_tracing = tracemalloc.is_tracing()
    path = tmp_path / "heap.json"
    probe = HeapProbe.from_environment({HEAP_PROFILE_ENV: str(path), HEAP_PROFILE_INTERVAL_ENV: "10"})
    assert probe is not None
    publish = LeakyPublisher()
    probe.start(now_s=0.0)
    assert not probe.maybe_sample(5.0) and not path.exists()  # still warming up
    assert probe.maybe_sample(10.0) and probe.has_baseline and path.exists()  # the baseline, written
    for _ in range(200):
        publish(None)  # type: ignore[arg-type]
    assert not probe.maybe_sample(15.0)
    assert probe.maybe_sample(20.0)
    report = json.loads(path.read_text())
    assert report["tracemalloc_frames"] == 8 and report["interval_s"] == 10.0
    assert report["growth_bytes"] >= 200 * LEAK_BYTES
    assert report["top_growth"][0]["location"] == LeakyPublisher.leaking_line()
    assert report["top_growth"][0]["count_diff"] >= 200
    assert [sample["at_s"] for sample in report["samples"]] == [20.0]
    final = probe.close(now_s=30.0)
    assert json.loads(path.read_text()) == final and len(final["samples"]) == 2
    assert tracemalloc.is_tracing() == was_tracing
    assert not list(tmp_path.glob(".*.tmp"))  # written atomically, no temporary left


def test_heap_probe_keeps_a_bounded_report() -> None:
    probe = HeapProbe(top=3, max_samples=5, frames=1, collect=False)
    probe.set_baseline(now_s=0.0)
    try:
        kept = []
        for second in range(1, 51):
            kept.append([bytes(64) for _ in range(10)])
            probe.sample(now_s=float(second))
        report = probe.report()
        assert [s["at_s"] for s in report["samples"]] == [46.0, 47.0, 48.0, 49.0, 50.0]
        assert report["samples_dropped"] == 45
        assert len(report["top_growth"]) == 3
        json.dumps(report)
    finally:
        probe.close(final_sample=False)


# --------------------------------------------------------------------------- bounded collections
def test_rolling_stats_holds_at_most_its_window() -> None:
    stats = RollingStats(window=50)
    for i in range(500):
        summary = stats.add(float(i), float(i))
    assert summary.frames == 50 and summary.latency_max_ms == 499.0
    stats.resize(MAX_WINDOW)
    with pytest.raises(ValueError, match=f"at most {MAX_WINDOW}"):
        stats.resize(MAX_WINDOW + 1)
    assert stats.window == MAX_WINDOW and stats.summary().frames == 50


def test_an_oversized_stats_window_changes_nothing(soak_model: FPSeg) -> None:
    controller = _controller(soak_model)
    with pytest.raises(ValueError, match=rf"stats_window must be an integer in \[1, {MAX_WINDOW}\]"):
        controller.update({"classes": ["sky"], "stats_window": MAX_WINDOW + 1})
    assert controller.active == TINY_CLASSES


def test_latency_stats_keep_a_bounded_reservoir_and_exact_count_mean_min_max() -> None:
    rng = np.random.default_rng(4)
    values = rng.gamma(2.0, 10.0, 10_000)
    stats = LatencyStats(reservoir=1000)
    for value in values:
        stats.add({"encoder": value, "decoder": float("nan")})
    assert stats.kept_samples() == {"encoder": 1000}
    summary = stats.summary()["encoder"]
    assert summary["count"] == 10_000 and summary["percentile_samples"] == 1000
    assert summary["mean"] == pytest.approx(values.mean(), rel=1e-12)
    assert summary["min"] == values.min() and summary["max"] == values.max()
    for q in (50, 90, 99):  # a uniform sample of 1000: within a few percentile ranks of the exact value
        rank = (values < summary[f"p{q}"]).mean() * 100
        assert abs(rank - q) < 4, (q, rank)


def test_latency_percentiles_stay_exact_within_the_reservoir() -> None:
    values = np.random.default_rng(5).gamma(2.0, 10.0, 500)
    stats = LatencyStats(reservoir=500)
    for value in values:
        stats.add({"latency": value})
    summary = stats.summary()["latency"]
    for q in (50, 90, 99):
        assert summary[f"p{q}"] == np.percentile(values, q)


def test_health_monitor_keeps_at_most_max_samples() -> None:
    monitor = HealthMonitor(rate_window_s=1e9)  # nothing ages out: only the length bound holds
    for i in range(3 * MAX_SAMPLES):
        monitor.assess(replace(BASE, received_frames=i, segmented_frames=i), HealthLimits(), float(i))
    assert monitor.kept_samples == MAX_SAMPLES


def test_region_cache_keeps_its_frames() -> None:
    cache = EmbeddingCache(frames=4)
    geometry = Geometry.for_image(HEIGHT, WIDTH, IMG_SIZE, "squash")
    for stamp in range(1, 41):
        cache.add(CachedFrame(stamp, torch.zeros(1, 1, 1, 1), geometry))
        cache.add(CachedFrame(stamp, torch.zeros(1, 1, 1, 1), geometry))  # same stamp: replaced, not added
    assert cache.stamps == [37, 38, 39, 40]


def test_stream_evaluator_pending_frames_are_bounded() -> None:
    evaluator = StreamEvaluator(max_pending=10)
    for stamp in range(100):
        evaluator.add_labels(stamp, np.zeros((2, 2), np.uint8))  # no ground truth ever comes
        evaluator.add_ground_truth(1000 + stamp, np.zeros((2, 2), np.uint8))
        evaluator.reject(f"message {stamp}")
    assert evaluator.pairer.pending_predictions == 10 and evaluator.pairer.pending_ground_truth == 10
    assert len(evaluator.errors) == MAX_KEPT_ERRORS
