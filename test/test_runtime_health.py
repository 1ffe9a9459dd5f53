"""/diagnostics levels and messages from controller snapshots on a fake clock, and the controller's own report."""

from __future__ import annotations

from dataclasses import replace

import pytest
from ros_fakes import image_message, random_pixels

from fpseg_core import FPSeg
from fpseg_core.runtime.controller import FrameResult, SegmentationController
from fpseg_core.runtime.health import (
    RATE_WINDOW_S,
    HealthLimits,
    HealthMonitor,
    HealthSnapshot,
    Level,
    lifecycle_health,
)

BASE = HealthSnapshot(
    received_frames=0, segmented_frames=0, dropped_frames=0, rejected_frames=0, failed_frames=0,
    running_since_s=0.0, last_input_s=None, latency_mean_ms=40.0, latency_p95_ms=50.0, skipped_classes=[],
    budget_ms=0.0, backend="torch", device="cpu", active_classes=["road", "person"], bank_fingerprint="0123abcd",
)
TEN_HZ = HealthLimits(expected_input_hz=10.0)


def _stream(monitor: HealthMonitor, limits: HealthLimits, seconds: int, input_hz: float, output_hz: float,
            start: HealthSnapshot = BASE, t0: float = 0.0, **changes):
    """Assess once a second while frames arrive and are segmented at the given rates; returns the last
    snapshot, time and health."""
    snapshot, health, now = start, None, t0
    for second in range(1, seconds + 1):
        now = t0 + second
        snapshot = replace(snapshot, received_frames=start.received_frames + round(input_hz * second),
                           segmented_frames=start.segmented_frames + round(output_hz * second),
                           last_input_s=now if input_hz else snapshot.last_input_s, **changes)
        health = monitor.assess(snapshot, limits, now)
    return snapshot, now, health


def test_a_steady_stream_is_ok_with_its_rates_and_fields() -> None:
    _, _, health = _stream(HealthMonitor(), TEN_HZ, 10, 10.0, 10.0)
    assert health.level == Level.OK
    assert health.message == "segmenting 2 classes at 10.0 Hz"
    values = dict(health.values)
    assert values["input rate (Hz)"] == "10.0"
    assert values["output rate (Hz)"] == "10.0"
    assert values["expected input rate (Hz)"] == "10.0"
    assert values["latency mean (ms)"] == "40.0"
    assert values["latency p95 (ms)"] == "50.0"
    assert (values["backend"], values["device"], values["bank fingerprint"]) == ("torch", "cpu", "0123abcd")
    assert values["active classes"] == "road, person"
    for key in ("dropped frames", "rejected frames", "failed frames", "latency budget (ms)", "skipped classes"):
        assert key in values


def test_stalled_input_warns_and_recovers() -> None:
    monitor = HealthMonitor()
    snapshot, now, _ = _stream(monitor, TEN_HZ, 5, 10.0, 10.0)
    health = monitor.assess(snapshot, TEN_HZ, now + 0.4)  # 0.4 s without an image: still fine at 10 Hz
    assert health.level == Level.OK
    health = monitor.assess(snapshot, TEN_HZ, now + 3.0)
    assert health.level == Level.WARN
    assert "input stalled: no image for 3.0 s (expected 10 Hz)" in health.message
    _, _, health = _stream(monitor, TEN_HZ, int(RATE_WINDOW_S) + 1, 10.0, 10.0, start=snapshot, t0=now + 3.0)
    assert health.level == Level.OK


def test_no_image_at_all_since_start_is_a_stall() -> None:
    health = HealthMonitor().assess(replace(BASE, running_since_s=100.0), TEN_HZ, 105.0)
    assert health.level == Level.WARN
    assert "input stalled: no image for 5.0 s" in health.message


def test_slow_input_warns_and_zero_expected_rate_is_not_checked() -> None:
    _, _, health = _stream(HealthMonitor(), TEN_HZ, 6, 5.0, 5.0)
    assert health.level == Level.WARN
    assert "input at 5.0 Hz, expected 10 Hz" in health.message
    unchecked = HealthLimits(expected_input_hz=0.0)
    _, _, health = _stream(HealthMonitor(), unchecked, 6, 5.0, 5.0)
    assert health.level == Level.OK
    assert dict(health.values)["expected input rate (Hz)"] == "not checked"


def test_latency_over_the_warning_level_warns() -> None:
    limits = HealthLimits(latency_warn_ms=45.0)
    _, _, health = _stream(HealthMonitor(), limits, 3, 10.0, 10.0)
    assert health.level == Level.WARN
    assert "latency over budget: p95 50.0 ms > latency_warn_ms 45" in health.message
    _, _, health = _stream(HealthMonitor(), replace(limits, latency_warn_ms=60.0), 3, 10.0, 10.0)
    assert health.level == Level.OK


def test_skipped_classes_warn() -> None:
    _, _, health = _stream(HealthMonitor(), HealthLimits(), 3, 10.0, 10.0, skipped_classes=["sky"], budget_ms=30.0)
    assert health.level == Level.WARN
    assert "latency_budget_ms 30: skipping sky" in health.message


def test_failing_frames_are_an_error_and_some_failures_a_warning() -> None:
    monitor = HealthMonitor()
    snapshot, now, _ = _stream(monitor, HealthLimits(), 3, 10.0, 10.0)
    failing = replace(snapshot, received_frames=snapshot.received_frames + 10, failed_frames=10, last_input_s=now + 1)
    health = monitor.assess(failing, HealthLimits(), now + 1)
    assert health.level == Level.WARN  # the window still holds segmented frames
    monitor = HealthMonitor()
    monitor.assess(BASE, HealthLimits(), 0.0)
    health = monitor.assess(replace(BASE, received_frames=10, failed_frames=10, last_input_s=1.0), HealthLimits(), 1.0)
    assert health.level == Level.ERROR
    assert "frames failing: 10 failed and none segmented" in health.message


def test_several_problems_are_all_named_at_the_highest_level() -> None:
    monitor = HealthMonitor()
    monitor.assess(BASE, HealthLimits(), 0.0)
    bad = replace(BASE, received_frames=3, failed_frames=3, rejected_frames=2, skipped_classes=["sky"], budget_ms=5.0)
    health = monitor.assess(bad, HealthLimits(), 1.0)
    assert health.level == Level.ERROR
    assert health.message.count("; ") == 2


@pytest.mark.parametrize(("state", "failure", "level", "text"), [
    ("inactive", "", Level.OK, "inactive: model loaded, not segmenting"),
    ("unconfigured", "", Level.WARN, "unconfigured: no model loaded"),
    ("unconfigured", "checkpoint.pth does not exist", Level.ERROR, "configure failed: checkpoint.pth does not exist"),
])
def test_lifecycle_states_other_than_active(state: str, failure: str, level: Level, text: str) -> None:
    health = lifecycle_health(state, failure)
    assert health.level == level
    assert text in health.message
    assert dict(health.values)["lifecycle state"] == state


def test_the_controller_reports_its_counters(tiny_model: FPSeg) -> None:
    clock = [0.0]
    controller = SegmentationController(tiny_model, classes=["road", "car"], score_threshold=0.01,
                                        expected_input_hz=2.0, monotonic=lambda: clock[0])
    results: list[FrameResult] = []
    controller.start(results.append, lambda rejection: pytest.fail(rejection.reason))
    try:
        assert controller.health().level == Level.OK  # just started
        clock[0] = 1.0
        controller.submit(image_message(random_pixels(24, 32, 3, seed=2), "rgb8"))
        clock[0] = 10.0  # nothing for 9 s at an expected 2 Hz
        health = controller.health()
    finally:
        assert controller.stop(60.0)
    assert health.level == Level.WARN
    assert "input stalled: no image for 9.0 s (expected 2 Hz)" in health.message
    values = dict(health.values)
    assert values["backend"] == "torch"
    assert values["device"] == "cpu"
    assert values["active classes"] == "road, car"
    assert values["bank fingerprint"] == tiny_model.bank.decoder_fingerprint
