"""What one camera's stream did in a graph benchmark run: frames sent, outputs received, latency, loss, jitter.

The publisher calls `CameraMeasurement.sent(stamp_ns, sent_ns)` for each frame it published and the
subscriber calls `received(stamp_ns, received_ns)` when the node's output for the frame with that header
stamp arrives (the output carries its input's header stamp). Stamps, send and receive times are nanoseconds
on one clock of the benchmark process, so latency = received_ns - stamp_ns is end to end: publishing,
transport, queueing and segmenting.

Keys of `CameraSummary.to_dict()` (a value that is undefined, e.g. a latency when nothing arrived, is None;
the dict holds no NaN):

- `requested_rate_hz`: the input rate the run asked the publisher for (frames per second).
- `duration_s`: the measured run's length (seconds) that the rates below divide by.
- `achieved_input_rate_hz`: frames_sent / duration_s: whether the publisher kept up with the request.
- `delivered_rate_hz`: frames_received / duration_s: outputs per second the node delivered in time.
- `frames_sent`: frames published (calls of `sent`).
- `frames_received`: sent frames whose first output arrived within `lost_after_s` of sending.
- `frames_lost`: frames_sent - frames_received: no output, or one later than `lost_after_s` (frames still
  waiting when `summary` is called count as lost, so call it once the last output had its time).
- `loss_fraction`: frames_lost / frames_sent (0..1; None when nothing was sent).
- `frames_duplicate`: outputs for a stamp already received (not counted again anywhere else).
- `frames_late`: outputs that arrived after their frame was counted lost (not in frames_received).
- `frames_unknown`: outputs with a stamp never sent (or one forgotten: older than twice the horizon).
- `latency_ms`: {min, mean, p50, p95, max} of received_ns - stamp_ns over the frames received
  (milliseconds; percentiles by linear interpolation, numpy's default).
- `latency_samples`: how many latencies the percentiles are computed from.
- `latency_percentiles_exact`: True while every latency is kept (frames_received <= max_latency_samples);
  after that p50 / p95 come from a uniform reservoir sample of max_latency_samples latencies, while min,
  mean and max stay exact (running values).
- `jitter_ms`: population standard deviation of the intervals between consecutive received outputs, in the
  order they arrived (milliseconds; None with fewer than two intervals).
- `jitter_max_ms`: max |interval - mean interval| over those intervals (milliseconds).
- `lost_after_s`: the loss horizon (seconds).

Memory is bounded by construction: frames waiting for their output sit in an insertion-ordered dict pruned
on every call (a frame sent more than `lost_after_s` before the newest time seen is counted lost and
removed), so it holds at most rate x lost_after_s entries; received and lost stamps are remembered for one
more horizon (to tell duplicates and late outputs from unknown ones) under the same rule. Latencies go into
a float64 numpy array of at most `max_latency_samples` values (default 1,000,000 = 8 MB, more than
4.5 hours at 60 Hz); interval statistics are running values (Welford), O(1).
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import numpy as np

from ._common import NS_PER_MS, NS_PER_S, finite_or_none

DEFAULT_LOST_AFTER_S = 2.0  # seconds an output may take before its frame counts as lost
DEFAULT_MAX_LATENCY_SAMPLES = 1_000_000  # latencies kept exactly; beyond, a reservoir of this size
INITIAL_CAPACITY = 1024
LATENCY_KEYS = ("min", "mean", "p50", "p95", "max")
RESERVOIR_SEED = 0


def latency_stats(values_ms: np.ndarray | list[float]) -> dict[str, float | None]:
    """{min, mean, p50, p95, max} of `values_ms` (milliseconds), each None when there are no values."""
    values = np.asarray(values_ms, dtype=np.float64)
    if values.size == 0:
        return dict.fromkeys(LATENCY_KEYS)
    p50, p95 = np.percentile(values, [50.0, 95.0])
    return {"min": finite_or_none(values.min()), "mean": finite_or_none(values.mean()),
            "p50": finite_or_none(p50), "p95": finite_or_none(p95), "max": finite_or_none(values.max())}


@dataclasses.dataclass(frozen=True)
class CameraSummary:
    """One camera's run, summarised (keys and units: the module docstring)."""

    requested_rate_hz: float
    duration_s: float
    achieved_input_rate_hz: float
    delivered_rate_hz: float
    frames_sent: int
    frames_received: int
    frames_lost: int
    loss_fraction: float | None
    frames_duplicate: int
    frames_late: int
    frames_unknown: int
    latency_ms: Mapping[str, float | None]
    latency_samples: int
    latency_percentiles_exact: bool
    jitter_ms: float | None
    jitter_max_ms: float | None
    lost_after_s: float

    def to_dict(self) -> dict[str, Any]:
        """The summary as a plain, NaN-free JSON-ready dict."""
        data = dataclasses.asdict(self)
        data["latency_ms"] = dict(self.latency_ms)
        return data


class _Reservoir:
    """Float64 values: all of them up to `capacity`, then a uniform sample of `capacity` (algorithm R).

    Also keeps the exact count, sum, min and max of every value offered.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"max_latency_samples must be at least 1, got {capacity}")
        self.capacity = int(capacity)
        self._values = np.empty(min(INITIAL_CAPACITY, self.capacity), dtype=np.float64)
        self._kept = 0
        self.count = 0
        self.total = 0.0
        self.minimum = float("inf")
        self.maximum = float("-inf")
        self._rng = np.random.default_rng(RESERVOIR_SEED)

    def add(self, value: float) -> None:
        self.count += 1
        self.total += value
        self.minimum = min(self.minimum, value)
        self.maximum = max(self.maximum, value)
        if self._kept < self.capacity:
            if self._kept == self._values.size:
                grown = np.empty(min(2 * self._values.size, self.capacity), dtype=np.float64)
                grown[:self._kept] = self._values[:self._kept]
                self._values = grown
            self._values[self._kept] = value
            self._kept += 1
            return
        slot = int(self._rng.integers(0, self.count))
        if slot < self.capacity:
            self._values[slot] = value

    @property
    def values(self) -> np.ndarray:
        return self._values[:self._kept]

    @property
    def exact(self) -> bool:
        return self.count == self._kept

    def stats(self) -> dict[str, float | None]:
        stats = latency_stats(self.values)
        if self.count:  # exact running values, whatever the reservoir holds
            stats.update(min=self.minimum, mean=self.total / self.count, max=self.maximum)
        return stats


class _Intervals:
    """Running mean / population variance (Welford) and extremes of the gaps between successive times (ns)."""

    def __init__(self) -> None:
        self._last_ns: int | None = None
        self.count = 0
        self._mean = 0.0
        self._m2 = 0.0
        self._min = float("inf")
        self._max = float("-inf")

    def add(self, time_ns: int) -> None:
        if self._last_ns is not None:
            gap = float(time_ns - self._last_ns)
            self.count += 1
            delta = gap - self._mean
            self._mean += delta / self.count
            self._m2 += delta * (gap - self._mean)
            self._min = min(self._min, gap)
            self._max = max(self._max, gap)
        self._last_ns = time_ns

    def jitter_ms(self) -> tuple[float | None, float | None]:
        """(standard deviation, max |gap - mean gap|) in milliseconds; None with fewer than two gaps."""
        if self.count < 2:
            return None, None
        std = (max(self._m2, 0.0) / self.count) ** 0.5
        worst = max(self._max - self._mean, self._mean - self._min)
        return finite_or_none(std / NS_PER_MS), finite_or_none(worst / NS_PER_MS)


class CameraMeasurement:
    """Records one camera's frames and the node's outputs for them (not thread-safe: call from one thread,
    or guard it with a lock, e.g. the executor's).

    `requested_rate_hz`: the input rate asked for (frames per second). `lost_after_s`: seconds after sending
    when a frame without an output counts as lost. `max_latency_samples`: latencies kept for the percentiles
    (see the module docstring for the memory bound).
    """

    def __init__(self, requested_rate_hz: float, lost_after_s: float = DEFAULT_LOST_AFTER_S,
                 max_latency_samples: int = DEFAULT_MAX_LATENCY_SAMPLES) -> None:
        if lost_after_s <= 0:
            raise ValueError(f"lost_after_s must be positive, got {lost_after_s}")
        self.requested_rate_hz = float(requested_rate_hz)
        self.lost_after_s = float(lost_after_s)
        self._horizon_ns = int(self.lost_after_s * NS_PER_S)
        self._pending: OrderedDict[int, int] = OrderedDict()  # stamp -> sent_ns, oldest first
        self._received: OrderedDict[int, int] = OrderedDict()  # stamp -> received_ns, for duplicates
        self._lost: OrderedDict[int, int] = OrderedDict()  # stamp -> time counted lost, for late outputs
        self._now_ns: int | None = None
        self._latencies = _Reservoir(max_latency_samples)
        self._intervals = _Intervals()
        self.frames_sent = 0
        self.frames_received = 0
        self.frames_lost = 0
        self.frames_duplicate = 0
        self.frames_late = 0
        self.frames_unknown = 0

    @property
    def pending(self) -> int:
        """Frames sent whose output has not arrived yet and that are not yet counted lost."""
        return len(self._pending)

    @property
    def remembered(self) -> int:
        """Stamps held in all bookkeeping dicts together (bounded: see the module docstring)."""
        return len(self._pending) + len(self._received) + len(self._lost)

    def sent(self, stamp_ns: int, sent_ns: int) -> None:
        """A frame with header stamp `stamp_ns` was published at `sent_ns` (nanoseconds, benchmark clock).

        A stamp sent again while its first copy still waits counts as a new frame (the first copy as lost).
        """
        self._advance(sent_ns)
        if stamp_ns in self._pending:
            self._count_lost(stamp_ns, self._pending.pop(stamp_ns))
        self._pending[stamp_ns] = sent_ns
        self.frames_sent += 1

    def received(self, stamp_ns: int, received_ns: int) -> None:
        """The node's output for the frame stamped `stamp_ns` arrived at `received_ns` (nanoseconds)."""
        self._advance(received_ns)
        if stamp_ns in self._pending:
            del self._pending[stamp_ns]
            self._received[stamp_ns] = received_ns
            self.frames_received += 1
            self._latencies.add((received_ns - stamp_ns) / NS_PER_MS)
            self._intervals.add(received_ns)
        elif stamp_ns in self._received:
            self.frames_duplicate += 1
        elif stamp_ns in self._lost:
            del self._lost[stamp_ns]
            self._received[stamp_ns] = received_ns  # a second late copy then counts as a duplicate
            self.frames_late += 1
        else:
            self.frames_unknown += 1

    def summary(self, duration_s: float) -> CameraSummary:
        """The run so far over `duration_s` seconds of measurement; frames still waiting count as lost."""
        if not duration_s > 0:
            raise ValueError(f"duration_s must be positive, got {duration_s}")
        still_waiting = len(self._pending)
        lost = self.frames_lost + still_waiting
        jitter, jitter_max = self._intervals.jitter_ms()
        return CameraSummary(
            requested_rate_hz=self.requested_rate_hz, duration_s=float(duration_s),
            achieved_input_rate_hz=self.frames_sent / duration_s,
            delivered_rate_hz=self.frames_received / duration_s,
            frames_sent=self.frames_sent, frames_received=self.frames_received, frames_lost=lost,
            loss_fraction=lost / self.frames_sent if self.frames_sent else None,
            frames_duplicate=self.frames_duplicate, frames_late=self.frames_late,
            frames_unknown=self.frames_unknown, latency_ms=self._latencies.stats(),
            latency_samples=int(self._latencies.values.size),
            latency_percentiles_exact=self._latencies.exact, jitter_ms=jitter, jitter_max_ms=jitter_max,
            lost_after_s=self.lost_after_s)

    def _count_lost(self, stamp_ns: int, at_ns: int) -> None:
        self.frames_lost += 1
        self._lost[stamp_ns] = at_ns
        self._lost.move_to_end(stamp_ns)

    def _advance(self, now_ns: int) -> None:
        """Move the clock to `now_ns` (never back) and prune: frames older than the horizon are lost."""
        if self._now_ns is None or now_ns > self._now_ns:
            self._now_ns = now_ns
        lost_before = self._now_ns - self._horizon_ns
        while self._pending:
            stamp, sent_ns = next(iter(self._pending.items()))
            if sent_ns >= lost_before:
                break
            del self._pending[stamp]
            self._count_lost(stamp, self._now_ns)
        forget_before = lost_before  # received / lost stamps are kept one more horizon
        for remembered in (self._received, self._lost):
            while remembered and next(iter(remembered.values())) < forget_before:
                remembered.popitem(last=False)
