"""Latency budget: how many of the active classes (a prefix of the priority list) fit a per-frame time budget.

The node's processing time is modelled as fixed + n * per_class: `fixed` is pre-processing + encoder +
post-processing, `per_class` the decoder time divided by the classes it decoded. Both are exponentially
weighted means of the node's own stage timings. When the whole active list is predicted over the budget, only
the longest prefix that fits is segmented (always at least the first class). Hysteresis: a class that was left
out comes back only once it fits with `hysteresis` (a fraction of the budget) to spare, so the kept list does
not flap while the timings jitter around the budget. No rclpy or torch import.

Memory bound: a `BudgetPlanner` keeps constant state (one CostEstimate, the last kept count and the budget);
observing a frame folds it into the estimate and keeps nothing of it.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

SMOOTHING = 0.2  # weight of the newest frame in the cost estimates
HYSTERESIS = 0.1  # a skipped class returns once the longer list fits in (1 - HYSTERESIS) * budget


@dataclass(frozen=True)
class CostEstimate:
    """Predicted processing time of one frame: fixed_ms + n_classes * per_class_ms."""

    fixed_ms: float
    per_class_ms: float

    def cost_ms(self, n_classes: int) -> float:
        return self.fixed_ms + n_classes * self.per_class_ms

    def classes_within(self, budget_ms: float, most: int) -> int:
        """The most classes, up to `most`, whose predicted cost is within `budget_ms` (0 when none is)."""
        if self.cost_ms(most) <= budget_ms:
            return most
        if self.per_class_ms <= 0.0:
            return 0  # even the fixed cost is over the budget
        return min(most, max(0, math.floor((budget_ms - self.fixed_ms) / self.per_class_ms)))


@dataclass(frozen=True)
class BudgetPlan:
    """The classes to segment this frame (a prefix of the active list) and those left out."""

    kept: list[str]
    skipped: list[str]


class BudgetPlanner:
    """Online cost estimates and the prefix of the priority list that fits `budget_ms` (0 = no budget).

    Thread-safe: `plan` and `observe` run on the inference thread, `budget_ms` is set from parameter changes.
    """

    def __init__(self, budget_ms: float = 0.0, smoothing: float = SMOOTHING, hysteresis: float = HYSTERESIS) -> None:
        if not 0.0 < smoothing <= 1.0:
            raise ValueError(f"smoothing must be in (0, 1], got {smoothing}")
        if not 0.0 <= hysteresis < 1.0:
            raise ValueError(f"hysteresis must be in [0, 1), got {hysteresis}")
        self._lock = threading.Lock()
        self._smoothing = smoothing
        self._hysteresis = hysteresis
        self._estimate: CostEstimate | None = None
        self._kept: int | None = None  # classes kept at the last plan; None: no budget in force yet
        self._budget_ms = 0.0
        self.budget_ms = budget_ms

    @property
    def budget_ms(self) -> float:
        return self._budget_ms

    @budget_ms.setter
    def budget_ms(self, value: float) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0.0:
            raise ValueError(f"latency_budget_ms must be a number >= 0 (0 = no budget), got {value!r}")
        with self._lock:
            self._budget_ms = float(value)

    @property
    def estimate(self) -> CostEstimate | None:
        """The current cost model; None before the first observed frame."""
        return self._estimate

    def observe(self, timings_ms: Mapping[str, float], n_classes: int) -> None:
        """Fold one frame's stage timings (preprocess, encoder, decoder, postprocess) for `n_classes` decoded
        classes into the estimates; frames without a decoder time (or with no class) are ignored."""
        decoder = timings_ms.get("decoder", math.nan)
        if n_classes < 1 or not math.isfinite(decoder):
            return
        fixed = sum(timings_ms.get(stage, 0.0) for stage in ("preprocess", "encoder", "postprocess"))
        sample = CostEstimate(fixed, decoder / n_classes)
        with self._lock:
            old, a = self._estimate, self._smoothing
            self._estimate = sample if old is None else CostEstimate(
                old.fixed_ms + a * (sample.fixed_ms - old.fixed_ms),
                old.per_class_ms + a * (sample.per_class_ms - old.per_class_ms),
            )

    def plan(self, active: Sequence[str]) -> BudgetPlan:
        """The longest prefix of `active` predicted within the budget (at least one class); all of it when there
        is no budget or no estimate yet. A prefix shorter than the last one grows only with hysteresis."""
        with self._lock:
            budget, estimate = self._budget_ms, self._estimate
            if budget <= 0.0 or estimate is None or not active:
                self._kept = None
                return BudgetPlan(list(active), [])
            kept = len(active) if self._kept is None else min(self._kept, len(active))
            fits = estimate.classes_within(budget, len(active))
            if kept > fits:
                kept = fits
            else:
                kept = max(kept, estimate.classes_within(budget * (1.0 - self._hysteresis), len(active)))
            kept = max(1, kept)
            self._kept = kept
            return BudgetPlan(list(active[:kept]), list(active[kept:]))
