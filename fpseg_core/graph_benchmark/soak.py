"""A long (soak) run: does the node's memory creep, and does its latency hold?

The soak driver calls `SoakRecorder.sample(t_s, rss_bytes, latency_p95_ms, dropped, rejected, failed)` at a
fixed interval: seconds since the run started, the node's resident set size (bytes), the p95 end-to-end
latency over the last interval (ms; None when nothing arrived), and the node's cumulative counts of dropped,
rejected and failed frames at t_s. Memory: one tuple per sample in a plain list, bounded by duration /
interval (an hour at 5 s: 720 samples, a few tens of KB); nothing else grows.

A growing RSS after warm-up is not by itself a leak (allocators keep freed memory, caches fill), so two
numbers answer the question: the least-squares slope of RSS over time after warm-up, and the RSS *floor*
per window (the minimum over each `window_s`): a floor that keeps rising is memory that is never given back.

Keys of `to_dict()`:

- `warmup_s`, `window_s`: seconds excluded from the fit, and the floor window (seconds).
- `samples`: [{t_s, rss_mib, latency_p95_ms, dropped, rejected, failed}] as recorded (RSS in MiB).
- `rss_trend`: {slope_mib_per_min, intercept_mib, samples} of the fit RSS_MiB = intercept + slope * t_min
  over the samples with t_s >= warmup_s (t_min = t_s / 60, minutes since the start); None with fewer than
  two such samples.
- `rss_floor`: [{window_start_s, rss_floor_mib}] per window (windows start at 0, every window_s seconds;
  only windows holding samples).
- `rss_floor_creep_mib`: the last post-warm-up window's floor minus the first one's (MiB; None with fewer
  than two post-warm-up windows).
- `latency_p95_ms_max`: the worst interval p95 (ms; None when none was recorded).
- `dropped`, `rejected`, `failed`: the last sample's cumulative counts (None without samples).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

from ._common import MIB, finite_or_none

DEFAULT_WARMUP_S = 300.0
DEFAULT_WINDOW_S = 300.0
SECONDS_PER_MINUTE = 60.0


class SoakSample(NamedTuple):
    """One soak sample (units: module docstring)."""

    t_s: float
    rss_bytes: int
    latency_p95_ms: float | None
    dropped: int
    rejected: int
    failed: int


class RssTrend(NamedTuple):
    """RSS_MiB ~ intercept_mib + slope_mib_per_min * (t_s / 60), fitted over `samples` samples."""

    slope_mib_per_min: float
    intercept_mib: float
    samples: int


class SoakRecorder:
    """Samples of a soak run and what they say about memory creep (see the module docstring)."""

    def __init__(self, warmup_s: float = DEFAULT_WARMUP_S, window_s: float = DEFAULT_WINDOW_S) -> None:
        if warmup_s < 0 or window_s <= 0:
            raise ValueError(f"need warmup_s >= 0 and window_s > 0, got {warmup_s} and {window_s}")
        self.warmup_s = float(warmup_s)
        self.window_s = float(window_s)
        self.samples: list[SoakSample] = []

    def sample(self, t_s: float, rss_bytes: int, latency_p95_ms: float | None, dropped: int, rejected: int,
               failed: int) -> None:
        """Record the state at `t_s` seconds since the start (times must increase)."""
        if self.samples and t_s <= self.samples[-1].t_s:
            raise ValueError(f"soak samples must come in time order: {t_s} s after {self.samples[-1].t_s} s")
        latency = finite_or_none(latency_p95_ms)
        self.samples.append(SoakSample(float(t_s), int(rss_bytes), latency, int(dropped), int(rejected),
                                       int(failed)))

    def rss_slope_mib_per_min(self, warmup_s: float | None = None) -> RssTrend | None:
        """Least-squares RSS trend (MiB per minute, intercept in MiB at t=0) over samples after `warmup_s`
        seconds (default: the recorder's); None with fewer than two of them at distinct times."""
        warmup = self.warmup_s if warmup_s is None else float(warmup_s)
        kept = [s for s in self.samples if s.t_s >= warmup]
        if len(kept) < 2:
            return None
        minutes = np.array([s.t_s for s in kept]) / SECONDS_PER_MINUTE
        rss_mib = np.array([s.rss_bytes for s in kept], dtype=np.float64) / MIB
        slope, intercept = np.polyfit(minutes, rss_mib, 1)
        if not (math.isfinite(slope) and math.isfinite(intercept)):
            return None
        return RssTrend(float(slope), float(intercept), len(kept))

    def rss_floor_per_window(self, window_s: float | None = None) -> list[tuple[float, float]]:
        """[(window_start_s, minimum RSS in MiB)] over consecutive windows of `window_s` seconds from t=0."""
        window = self.window_s if window_s is None else float(window_s)
        floors: dict[int, float] = {}
        for s in self.samples:
            index = int(s.t_s // window)
            floors[index] = min(floors.get(index, math.inf), s.rss_bytes / MIB)
        return [(index * window, floor) for index, floor in sorted(floors.items())]

    def to_dict(self) -> dict[str, Any]:
        """A plain, NaN-free JSON-ready dict (keys: module docstring)."""
        trend = self.rss_slope_mib_per_min()
        floors = self.rss_floor_per_window()
        settled = [floor for start, floor in floors if start >= self.warmup_s]
        p95s = [s.latency_p95_ms for s in self.samples if s.latency_p95_ms is not None]
        last = self.samples[-1] if self.samples else None
        return {
            "warmup_s": self.warmup_s, "window_s": self.window_s,
            "samples": [{"t_s": s.t_s, "rss_mib": s.rss_bytes / MIB, "latency_p95_ms": s.latency_p95_ms,
                         "dropped": s.dropped, "rejected": s.rejected, "failed": s.failed} for s in self.samples],
            "rss_trend": trend._asdict() if trend else None,
            "rss_floor": [{"window_start_s": start, "rss_floor_mib": floor} for start, floor in floors],
            "rss_floor_creep_mib": settled[-1] - settled[0] if len(settled) >= 2 else None,
            "latency_p95_ms_max": max(p95s) if p95s else None,
            **{key: getattr(last, key) if last else None for key in ("dropped", "rejected", "failed")},
        }
