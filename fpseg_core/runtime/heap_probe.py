"""Python-heap growth of a long run, by source line (tracemalloc), for soak tests of the node (no rclpy import).

A `HeapProbe` starts tracemalloc, takes a baseline snapshot once the process has warmed up, and at each
sample records the traced total and the source lines whose allocations grew most since the baseline
(file:line, bytes and blocks gained). `report()` is JSON-ready and `write()` replaces the output file
atomically, so a run that is killed still leaves the last complete report.

The node exposes it without a parameter: `HeapProbe.from_environment()` returns a probe when HEAP_PROFILE_ENV
(FPSEG_HEAP_PROFILE) names an output path, sampling every HEAP_PROFILE_INTERVAL_ENV seconds
(FPSEG_HEAP_PROFILE_INTERVAL_S, default DEFAULT_INTERVAL_S), and None otherwise. A caller drives it from a
timer: `start()`, then `maybe_sample(now_s)` as often as it likes, then `close()`.

Overhead, for soak runs only: tracemalloc hooks every Python allocation, which slows allocation-heavy Python
code (typically 1.5x to 3x, more with more frames per traceback) and stores a traceback of `frames` frames for
each live block (DEFAULT_FRAMES = 8: enough for `key_type="traceback"` to show who called the growing line,
at a few tens of bytes per live block more than 1 frame). Taking a snapshot walks every live block (tens of
milliseconds to a second on a loaded process). Tensor and numpy buffers allocated by C libraries outside
Python's allocator domain are not traced; RSS covers those.

Memory bound: the probe keeps the baseline snapshot, the top-N growth of the last sample only, and at most
`max_samples` (time, traced bytes) totals; older totals are dropped (and counted).
"""

from __future__ import annotations

import gc
import json
import math
import os
import time
import tracemalloc
from collections import deque
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fpseg_core.files import atomic_write_text

HEAP_PROFILE_ENV = "FPSEG_HEAP_PROFILE"  # output path of the JSON report; unset or empty = no probe
HEAP_PROFILE_INTERVAL_ENV = "FPSEG_HEAP_PROFILE_INTERVAL_S"  # seconds between samples (and writes)
DEFAULT_INTERVAL_S = 30.0
DEFAULT_FRAMES = 8  # frames stored per traced allocation
DEFAULT_TOP = 20  # lines kept in the last sample's growth table
DEFAULT_MAX_SAMPLES = 1000  # totals kept in the time series (8 h at the default interval)
KEY_TYPES = ("lineno", "traceback")
# Allocations of the profiler itself and of the import machinery are left out of the statistics.
_IGNORED = (tracemalloc.__file__, __file__, "<frozen importlib._bootstrap>", "<frozen importlib._bootstrap_external>",
            "<unknown>")


@dataclass(frozen=True)
class LineGrowth:
    """How one source line's (or traceback's) live allocations changed since the baseline."""

    location: str  # "file:line" (key_type lineno) or the frames, innermost first, joined by " <- "
    size_diff_bytes: int
    count_diff: int
    size_bytes: int
    count: int


@dataclass(frozen=True)
class HeapSample:
    """Traced Python heap at one instant (monotonic seconds).

    `growth_bytes` is the change since the baseline of the blocks the statistics cover (the profiler's own and
    the import machinery's left out); `traced_bytes` / `peak_bytes` are tracemalloc's raw totals, which also
    count the probe's baseline snapshot.
    """

    at_s: float
    growth_bytes: int
    traced_bytes: int
    peak_bytes: int


def _interval(environ: Mapping[str, str]) -> float:
    text = environ.get(HEAP_PROFILE_INTERVAL_ENV, "").strip()
    if not text:
        return DEFAULT_INTERVAL_S
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{HEAP_PROFILE_INTERVAL_ENV} must be a number of seconds > 0, got {text!r}")
    return value


class HeapProbe:
    """tracemalloc baseline + periodic samples of the Python heap's growth by line; see the module docstring.

    `path` is where `write()` (and `maybe_sample` / `close`) put the report; None = report() only. The first
    `maybe_sample` at least `warmup_s` (default: `interval_s`) after `start` takes the baseline, later ones
    sample every `interval_s`. With `collect`, each snapshot is preceded by gc.collect(), so garbage that is
    only waiting for the cycle collector does not look like growth. Not thread-safe: drive it from one
    thread (a timer callback).
    """

    def __init__(self, path: str | Path | None = None, interval_s: float = DEFAULT_INTERVAL_S,
                 frames: int = DEFAULT_FRAMES, top: int = DEFAULT_TOP, max_samples: int = DEFAULT_MAX_SAMPLES,
                 warmup_s: float | None = None, key_type: str = "lineno", collect: bool = True) -> None:
        if not interval_s > 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s}")
        if frames < 1 or top < 1 or max_samples < 1:
            raise ValueError(f"frames, top and max_samples must be >= 1, got {frames}, {top}, {max_samples}")
        if key_type not in KEY_TYPES:
            raise ValueError(f"key_type must be one of {', '.join(KEY_TYPES)}, got {key_type!r}")
        self.path = Path(path).expanduser() if path is not None else None
        self.interval_s = float(interval_s)
        self.warmup_s = self.interval_s if warmup_s is None else float(warmup_s)
        self.frames = frames
        self.top = top
        self.key_type = key_type
        self.collect = collect
        self._samples: deque[HeapSample] = deque(maxlen=max_samples)
        self._samples_dropped = 0
        self._growth: list[LineGrowth] = []
        self._baseline: tracemalloc.Snapshot | None = None
        self._baseline_sample: HeapSample | None = None
        self._started_s: float | None = None
        self._last_s = -math.inf
        self._owns_tracing = False

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] = os.environ, **options: Any) -> HeapProbe | None:
        """A probe writing to $FPSEG_HEAP_PROFILE every $FPSEG_HEAP_PROFILE_INTERVAL_S seconds; None when the
        path is unset or empty. ValueError for an interval that is not a positive number."""
        path = environ.get(HEAP_PROFILE_ENV, "").strip()
        if not path:
            return None
        return cls(path, interval_s=_interval(environ), **options)

    # ------------------------------------------------------------------------------------------ driving
    @property
    def tracing(self) -> bool:
        return self._started_s is not None

    @property
    def has_baseline(self) -> bool:
        return self._baseline is not None

    def start(self, now_s: float | None = None) -> None:
        """Start tracing (unless something else already traces: then its frame setting stays)."""
        if self._started_s is not None:
            return
        if not tracemalloc.is_tracing():
            tracemalloc.start(self.frames)
            self._owns_tracing = True
        self._started_s = time.monotonic() if now_s is None else now_s

    def set_baseline(self, now_s: float | None = None) -> None:
        """Take the snapshot later samples are compared with (call it once the run has warmed up)."""
        self.start(now_s)
        self._baseline = self._snapshot()
        self._baseline_sample = self._total(now_s, 0)
        self._growth = []
        self._last_s = self._baseline_sample.at_s

    def sample(self, now_s: float | None = None) -> HeapSample:
        """Record the traced total and the top growth since the baseline (taken now if there is none yet)."""
        if self._baseline is None:
            self.set_baseline(now_s)
        assert self._baseline is not None
        statistics = self._snapshot().compare_to(self._baseline, self.key_type)
        statistics.sort(key=lambda stat: stat.size_diff, reverse=True)
        self._growth = [LineGrowth(self._location(stat.traceback), stat.size_diff, stat.count_diff, stat.size,
                                   stat.count) for stat in statistics[:self.top]]
        total = self._total(now_s, sum(stat.size_diff for stat in statistics))
        if len(self._samples) == self._samples.maxlen:
            self._samples_dropped += 1
        self._samples.append(total)
        self._last_s = total.at_s
        return total

    def maybe_sample(self, now_s: float) -> bool:
        """From a timer: take the baseline once warmed up, then sample and write every `interval_s`; True when
        it did something."""
        self.start(now_s)
        assert self._started_s is not None
        if self._baseline is None:
            if now_s - self._started_s < self.warmup_s:
                return False
            self.set_baseline(now_s)
        elif now_s - self._last_s >= self.interval_s:
            self.sample(now_s)
        else:
            return False
        if self.path is not None:
            self.write()
        return True

    def close(self, now_s: float | None = None, final_sample: bool = True) -> dict[str, Any]:
        """A last sample (with `final_sample`, when a baseline exists) and write, then stop tracing if this probe
        started it; returns the final report."""
        if self._started_s is None:
            return self.report()
        if final_sample and self._baseline is not None:
            self.sample(now_s)
        report = self.report()
        if self.path is not None:
            self.write()
        if self._owns_tracing:
            tracemalloc.stop()
            self._owns_tracing = False
        self._started_s, self._baseline = None, None
        return report

    # ------------------------------------------------------------------------------------------ results
    def growth(self) -> list[LineGrowth]:
        """The last sample's top growth, largest first."""
        return list(self._growth)

    def report(self) -> dict[str, Any]:
        """JSON-ready: settings, baseline, the totals series and the last sample's top growth by line."""
        baseline = self._baseline_sample
        latest = self._samples[-1] if self._samples else None
        growth_bytes = latest.growth_bytes if latest and baseline else None
        span_s = latest.at_s - baseline.at_s if latest and baseline else None
        return {
            "tracemalloc_frames": self.frames,
            "key_type": self.key_type,
            "interval_s": self.interval_s,
            "warmup_s": self.warmup_s,
            "baseline": asdict(baseline) if baseline else None,
            "latest": asdict(latest) if latest else None,
            "growth_bytes": growth_bytes,
            "growth_bytes_per_s": growth_bytes / span_s if growth_bytes is not None and span_s else None,
            "samples": [asdict(sample) for sample in self._samples],
            "samples_dropped": self._samples_dropped,
            "top_growth": [asdict(line) for line in self._growth],
        }

    def write(self, path: str | Path | None = None) -> Path:
        """Write `report()` as JSON to `path` (default: the probe's), atomically; returns the path."""
        target = Path(path).expanduser() if path is not None else self.path
        if target is None:
            raise ValueError("no output path: pass one, or create the probe with a path")
        return atomic_write_text(target, json.dumps(self.report(), indent=2) + "\n")

    # ---------------------------------------------------------------------------------------- internals
    def _snapshot(self) -> tracemalloc.Snapshot:
        if self.collect:
            gc.collect()
        return tracemalloc.take_snapshot().filter_traces(
            [tracemalloc.Filter(False, pattern) for pattern in _IGNORED])

    def _total(self, now_s: float | None, growth_bytes: int) -> HeapSample:
        current, peak = tracemalloc.get_traced_memory()
        return HeapSample(time.monotonic() if now_s is None else now_s, growth_bytes, current, peak)

    def _location(self, traceback: tracemalloc.Traceback) -> str:
        frames = list(traceback)[::-1]  # a Traceback runs oldest first; the report shows the innermost first
        return " <- ".join(f"{frame.filename}:{frame.lineno}" for frame in frames)
