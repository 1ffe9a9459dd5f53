"""Rolling latency / throughput window: the figures ~/stats reports."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fpseg_core.runtime.stats import RollingStats


def test_window_figures_match_numpy_over_the_last_n_frames() -> None:
    rng = np.random.default_rng(0)
    latencies = rng.gamma(2.0, 20.0, 250)
    stats = RollingStats(window=100)
    for i, latency in enumerate(latencies):
        summary = stats.add(latency, done_at_s=0.05 * i)
    recent = latencies[-100:]
    assert summary.frames == 100
    assert summary.latency_mean_ms == pytest.approx(recent.mean())
    assert summary.latency_p50_ms == pytest.approx(np.percentile(recent, 50))
    assert summary.latency_p95_ms == pytest.approx(np.percentile(recent, 95))
    assert summary.latency_max_ms == pytest.approx(recent.max())
    assert summary.throughput_hz == pytest.approx(20.0)


def test_an_old_spike_leaves_the_window() -> None:
    stats = RollingStats(window=3)
    stats.add(500.0, 0.0)
    for i in range(1, 4):
        summary = stats.add(10.0, float(i))
    assert summary.latency_max_ms == 10.0
    assert summary.latency_p95_ms == 10.0


def test_p95_reflects_a_slow_tail() -> None:
    stats = RollingStats(window=100)
    for i in range(100):
        summary = stats.add(100.0 if i % 10 == 0 else 10.0, float(i))
    assert summary.latency_p50_ms == 10.0
    assert summary.latency_p95_ms == 100.0
    assert summary.latency_mean_ms == pytest.approx(19.0)


def test_throughput_counts_intervals_between_completions() -> None:
    stats = RollingStats(window=10)
    for t in (0.0, 0.5, 1.0, 2.0):  # 3 intervals in 2 s
        summary = stats.add(1.0, t)
    assert summary.throughput_hz == pytest.approx(1.5)


def test_empty_and_single_frame_windows() -> None:
    stats = RollingStats(window=5)
    empty = stats.summary()
    assert empty.frames == 0 and math.isnan(empty.latency_mean_ms) and empty.throughput_hz == 0.0
    one = stats.add(42.0, 1.0)
    assert (one.frames, one.latency_mean_ms, one.latency_max_ms, one.throughput_hz) == (1, 42.0, 42.0, 0.0)


def test_resize_keeps_the_newest_samples() -> None:
    stats = RollingStats(window=10)
    for i in range(10):
        stats.add(float(i), float(i))
    stats.resize(3)
    summary = stats.summary()
    assert (summary.frames, summary.latency_mean_ms, stats.window) == (3, 8.0, 3)
    stats.resize(50)
    assert stats.add(100.0, 10.0).frames == 4


@pytest.mark.parametrize("window", [0, -3])
def test_window_must_hold_a_frame(window: int) -> None:
    with pytest.raises(ValueError, match="at least 1 frame"):
        RollingStats(window)
