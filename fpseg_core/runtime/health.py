"""The node's health for /diagnostics: a snapshot of the controller's counters + a clock -> level, message and
key-values (no rclpy import; the node copies the result into a diagnostic_updater DiagnosticStatusWrapper).

Rates are measured over the last RATE_WINDOW_S seconds of assessments (the updater calls `assess` about once a
second), so a stalled camera shows as 0 Hz within a window, not as the average since start-up.

Memory bound: a `HealthMonitor` keeps at most MAX_SAMPLES small samples (a deque with that maxlen; the window
is also cut by time), one per `assess` call, never one per frame.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from enum import IntEnum

RATE_WINDOW_S = 5.0  # input / output rates and recent failure counts cover this long
MIN_RATE_SPAN_S = 2.0  # the input rate is compared with expected_input_hz once it covers this long
RATE_TOLERANCE = 0.2  # input slower than (1 - RATE_TOLERANCE) * expected_input_hz is a warning
STALL_PERIODS = 5.0  # no image for this many expected periods (at least MIN_STALL_S) = input stalled
MIN_STALL_S = 1.0
# Bound on the samples kept (one per diagnostics update, normally 1 Hz): the window is also cut by time.
MAX_SAMPLES = 1000


class Level(IntEnum):
    """diagnostic_msgs/DiagnosticStatus levels."""

    OK = 0
    WARN = 1
    ERROR = 2


@dataclass(frozen=True)
class HealthLimits:
    """What the node is checked against; 0 = not checked."""

    expected_input_hz: float = 0.0
    latency_warn_ms: float = 0.0


@dataclass(frozen=True)
class HealthSnapshot:
    """The controller's state at one instant (monotonic seconds for the times)."""

    received_frames: int
    segmented_frames: int
    dropped_frames: int
    rejected_frames: int
    failed_frames: int
    running_since_s: float
    last_input_s: float | None
    latency_mean_ms: float
    latency_p95_ms: float
    skipped_classes: list[str]
    budget_ms: float
    backend: str
    device: str
    active_classes: list[str]
    bank_fingerprint: str


@dataclass(frozen=True)
class Health:
    level: Level
    message: str
    values: list[tuple[str, str]]


@dataclass(frozen=True)
class _Sample:
    at_s: float
    received: int
    segmented: int
    rejected: int
    failed: int


def _number(value: float, digits: int = 1) -> str:
    return f"{value:.{digits}f}" if math.isfinite(value) else "n/a"


def lifecycle_health(state: str, failure: str = "") -> Health:
    """Health while the node does not segment: `state` is its lifecycle state label, `failure` why the last
    configure failed (ERROR), if it did."""
    if failure:
        return Health(Level.ERROR, f"configure failed: {failure}", [("lifecycle state", state)])
    if state == "inactive":
        return Health(Level.OK, "inactive: model loaded, not segmenting (activate to resume)",
                      [("lifecycle state", state)])
    return Health(Level.WARN, f"{state}: no model loaded, not segmenting", [("lifecycle state", state)])


class HealthMonitor:
    """Turns successive snapshots into a Health (keeps the last RATE_WINDOW_S of them for rates)."""

    def __init__(self, rate_window_s: float = RATE_WINDOW_S) -> None:
        self._window_s = rate_window_s
        self._samples: deque[_Sample] = deque(maxlen=MAX_SAMPLES)

    @property
    def kept_samples(self) -> int:
        """Samples held for the rate window (at most MAX_SAMPLES)."""
        return len(self._samples)

    def reset(self) -> None:
        """Forget the history (the inference thread was restarted)."""
        self._samples.clear()

    def assess(self, snapshot: HealthSnapshot, limits: HealthLimits, now_s: float) -> Health:
        sample = _Sample(now_s, snapshot.received_frames, snapshot.segmented_frames, snapshot.rejected_frames,
                         snapshot.failed_frames)
        self._samples.append(sample)
        while len(self._samples) > 2 and now_s - self._samples[1].at_s >= self._window_s:
            self._samples.popleft()
        oldest = self._samples[0]
        span = now_s - oldest.at_s
        input_hz = (sample.received - oldest.received) / span if span > 0 else math.nan
        output_hz = (sample.segmented - oldest.segmented) / span if span > 0 else math.nan
        failed = sample.failed - oldest.failed
        rejected = sample.rejected - oldest.rejected
        segmented = sample.segmented - oldest.segmented

        problems: list[tuple[Level, str]] = []
        if failed and not segmented:
            problems.append((Level.ERROR, f"frames failing: {failed} failed and none segmented in {span:.0f} s"))
        elif failed:
            problems.append((Level.WARN, f"{failed} of {failed + segmented} frames failed in {span:.0f} s"))
        if rejected:
            problems.append((Level.WARN, f"{rejected} malformed images dropped in {span:.0f} s"))
        expected = limits.expected_input_hz
        if expected > 0:
            idle_s = now_s - (snapshot.last_input_s if snapshot.last_input_s is not None
                              else snapshot.running_since_s)
            if idle_s > max(STALL_PERIODS / expected, MIN_STALL_S):
                problems.append((Level.WARN, f"input stalled: no image for {idle_s:.1f} s "
                                             f"(expected {expected:g} Hz)"))
            elif span >= MIN_RATE_SPAN_S and input_hz < (1.0 - RATE_TOLERANCE) * expected:
                problems.append((Level.WARN, f"input at {input_hz:.1f} Hz, expected {expected:g} Hz"))
        if limits.latency_warn_ms > 0 and snapshot.latency_p95_ms > limits.latency_warn_ms:
            problems.append((Level.WARN, f"latency over budget: p95 {snapshot.latency_p95_ms:.1f} ms > "
                                         f"latency_warn_ms {limits.latency_warn_ms:g}"))
        if snapshot.skipped_classes:
            problems.append((Level.WARN, f"latency_budget_ms {snapshot.budget_ms:g}: skipping "
                                         f"{', '.join(snapshot.skipped_classes)}"))

        level = max((lvl for lvl, _ in problems), default=Level.OK)
        if problems:
            message = "; ".join(text for _, text in problems)
        else:
            message = f"segmenting {len(snapshot.active_classes)} classes at {_number(output_hz)} Hz"
        values = [
            ("lifecycle state", "active"),
            ("input rate (Hz)", _number(input_hz)),
            ("expected input rate (Hz)", _number(expected) if expected > 0 else "not checked"),
            ("output rate (Hz)", _number(output_hz)),
            ("latency mean (ms)", _number(snapshot.latency_mean_ms)),
            ("latency p95 (ms)", _number(snapshot.latency_p95_ms)),
            ("latency warn (ms)", _number(limits.latency_warn_ms) if limits.latency_warn_ms > 0 else "not checked"),
            ("latency budget (ms)", _number(snapshot.budget_ms) if snapshot.budget_ms > 0 else "off"),
            ("skipped classes", ", ".join(snapshot.skipped_classes)),
            ("dropped frames", str(snapshot.dropped_frames)),
            ("rejected frames", str(snapshot.rejected_frames)),
            ("failed frames", str(snapshot.failed_frames)),
            ("backend", snapshot.backend),
            ("device", snapshot.device),
            ("active classes", ", ".join(snapshot.active_classes)),
            ("bank fingerprint", snapshot.bank_fingerprint),
        ]
        return Health(level, message, values)
