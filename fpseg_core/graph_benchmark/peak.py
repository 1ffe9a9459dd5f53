"""The highest input rate a configuration sustains: geometric bisection on the frame loss of short trials.

`find_peak_rate(measure, low_hz, high_hz)` runs `measure(rate_hz) -> loss_fraction` (one trial at that input
rate; a NaN loss counts as failing) first at `low_hz`, then at `high_hz`, then `steps` times at the geometric
mean of the highest passing and the lowest failing rate so far. A trial passes when its loss fraction is at
most `max_loss`. The peak is the highest passing rate; the true threshold lies between it and
`first_failing_rate_hz`, whose ratio is (high_hz / low_hz) ** (1 / 2 ** steps) (`resolution_ratio`).

Keys of `PeakSearch.to_dict()`:

- `peak_rate_hz`: the highest rate that passed (Hz); None when even `low_hz` failed.
- `first_failing_rate_hz`: the lowest rate that failed (Hz); None when `high_hz` passed.
- `limited_by_search_range`: True when `high_hz` passed (the peak may be higher: widen the range).
- `resolution_ratio`: first_failing_rate_hz / peak_rate_hz (None unless both exist).
- `max_loss`: the pass threshold on the loss fraction (0..1); `low_hz`, `high_hz`: the range searched (Hz).
- `trials`: [{rate_hz, loss_fraction, passed}] in the order run (loss None where measure returned NaN).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

from ._common import finite_or_none

DEFAULT_MAX_LOSS = 0.05
DEFAULT_STEPS = 6


@dataclasses.dataclass(frozen=True)
class Trial:
    """One trial: input rate (Hz), the loss fraction measured (0..1) and whether it passed."""

    rate_hz: float
    loss_fraction: float
    passed: bool


@dataclasses.dataclass(frozen=True)
class PeakSearch:
    """The outcome of `find_peak_rate` (keys and units: module docstring)."""

    peak_rate_hz: float | None
    first_failing_rate_hz: float | None
    limited_by_search_range: bool
    max_loss: float
    low_hz: float
    high_hz: float
    trials: tuple[Trial, ...]

    @property
    def resolution_ratio(self) -> float | None:
        if self.peak_rate_hz is None or self.first_failing_rate_hz is None:
            return None
        return self.first_failing_rate_hz / self.peak_rate_hz

    def to_dict(self) -> dict[str, Any]:
        """A plain, NaN-free JSON-ready dict."""
        data = dataclasses.asdict(self)
        data["trials"] = [{**dataclasses.asdict(t), "loss_fraction": finite_or_none(t.loss_fraction)}
                          for t in self.trials]
        data["resolution_ratio"] = self.resolution_ratio
        return data


def find_peak_rate(measure: Callable[[float], float], low_hz: float, high_hz: float,
                   max_loss: float = DEFAULT_MAX_LOSS, steps: int = DEFAULT_STEPS) -> PeakSearch:
    """The highest input rate (Hz) in [low_hz, high_hz] whose trial loses at most `max_loss` of the frames.

    Runs at most 2 + `steps` trials (2 when low fails or high passes); see the module docstring.
    """
    if not 0 < low_hz < high_hz:
        raise ValueError(f"need 0 < low_hz < high_hz, got {low_hz} and {high_hz}")
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    trials: list[Trial] = []

    def run(rate_hz: float) -> bool:
        loss = float(measure(rate_hz))
        passed = loss <= max_loss  # False for NaN
        trials.append(Trial(rate_hz=rate_hz, loss_fraction=loss, passed=passed))
        return passed

    def result(peak: float | None, failing: float | None) -> PeakSearch:
        return PeakSearch(peak_rate_hz=peak, first_failing_rate_hz=failing,
                          limited_by_search_range=failing is None, max_loss=float(max_loss),
                          low_hz=float(low_hz), high_hz=float(high_hz), trials=tuple(trials))

    if not run(float(low_hz)):
        return result(None, float(low_hz))
    if run(float(high_hz)):
        return result(float(high_hz), None)
    passing, failing = float(low_hz), float(high_hz)
    for _ in range(steps):
        middle = math.sqrt(passing * failing)
        if run(middle):
            passing = middle
        else:
            failing = middle
    return result(passing, failing)
