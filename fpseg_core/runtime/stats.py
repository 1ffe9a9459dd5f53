"""Rolling latency / throughput statistics over the last N segmented frames (no rclpy import).

Memory bound: a `RollingStats` holds two deques of at most `window` floats each, and `window` is at most
MAX_WINDOW (the upper end of the node's stats_window range), so it never holds more than 2 x MAX_WINDOW
samples, whatever the number of frames.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from dataclasses import dataclass

import numpy as np

from .parameters import PARAMETER_BY_NAME

MAX_WINDOW: int = PARAMETER_BY_NAME["stats_window"].integer_range[1]  # frames; the most a window may hold


@dataclass(frozen=True)
class WindowSummary:
    """Latency statistics (milliseconds) and throughput (frames per second) over `frames` recent frames."""

    frames: int
    latency_mean_ms: float
    latency_p50_ms: float
    latency_p95_ms: float
    latency_max_ms: float
    throughput_hz: float


class RollingStats:
    """End-to-end latencies and completion times of the last `window` frames.

    Throughput is (frames in the window - 1) / (time between the first and last completion), so it
    measures what the node actually delivers, including waits for input. Thread-safe.
    """

    def __init__(self, window: int) -> None:
        self._lock = threading.Lock()
        self._latencies_ms: deque[float] = deque()
        self._done_at_s: deque[float] = deque()
        self._window = 0
        self.resize(window)

    @property
    def window(self) -> int:
        return self._window

    def resize(self, window: int) -> None:
        """Change the window length (1 to MAX_WINDOW frames), keeping the newest samples."""
        if not 1 <= window <= MAX_WINDOW:
            raise ValueError(f"the stats window must hold at least 1 frame and at most {MAX_WINDOW}, got {window}")
        with self._lock:
            self._window = int(window)
            self._latencies_ms = deque(self._latencies_ms, maxlen=self._window)
            self._done_at_s = deque(self._done_at_s, maxlen=self._window)

    def add(self, latency_ms: float, done_at_s: float) -> WindowSummary:
        """Record one frame (latency, monotonic completion time in seconds) and summarise the window."""
        with self._lock:
            self._latencies_ms.append(float(latency_ms))
            self._done_at_s.append(float(done_at_s))
            return self._summary()

    def summary(self) -> WindowSummary:
        with self._lock:
            return self._summary()

    def _summary(self) -> WindowSummary:
        n = len(self._latencies_ms)
        if n == 0:
            return WindowSummary(0, math.nan, math.nan, math.nan, math.nan, 0.0)
        latencies = np.fromiter(self._latencies_ms, dtype=np.float64, count=n)
        p50, p95 = np.percentile(latencies, [50, 95])
        span = self._done_at_s[-1] - self._done_at_s[0]
        throughput = (n - 1) / span if n > 1 and span > 0 else 0.0
        return WindowSummary(n, float(latencies.mean()), float(p50), float(p95), float(latencies.max()),
                             float(throughput))
