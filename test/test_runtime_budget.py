"""The latency budget planner on made-up stage timings: estimates, prefix choice, hysteresis."""

from __future__ import annotations

import random

import pytest

from fpseg_core.runtime.budget import HYSTERESIS, BudgetPlanner, CostEstimate

CLASSES = ["person", "car", "road", "sky", "bus"]


def _timings(fixed_ms: float, per_class_ms: float, n: int) -> dict[str, float]:
    """Stage timings of a frame costing fixed_ms (split over pre/encoder/post) + n * per_class_ms."""
    return {"preprocess": 0.1 * fixed_ms, "encoder": 0.8 * fixed_ms, "postprocess": 0.1 * fixed_ms,
            "decoder": n * per_class_ms, "total": fixed_ms + n * per_class_ms}


def _run(planner: BudgetPlanner, fixed_ms: float, per_class_ms: float, frames: int = 1) -> list[str]:
    """Plan and 'segment' `frames` frames at the given true costs; returns the last frame's kept classes."""
    kept: list[str] = []
    for _ in range(frames):
        kept = planner.plan(CLASSES).kept
        planner.observe(_timings(fixed_ms, per_class_ms, len(kept)), len(kept))
    return kept


def test_estimates_converge_to_the_true_costs() -> None:
    planner = BudgetPlanner()
    rng = random.Random(0)
    for _ in range(200):
        n = rng.randint(1, 5)
        noise = rng.uniform(0.9, 1.1)
        planner.observe(_timings(40.0 * noise, 8.0 * noise, n), n)
    estimate = planner.estimate
    assert estimate is not None
    assert estimate.fixed_ms == pytest.approx(40.0, rel=0.1)
    assert estimate.per_class_ms == pytest.approx(8.0, rel=0.1)


def test_the_first_frame_sets_the_estimate_and_frames_without_decoder_are_ignored() -> None:
    planner = BudgetPlanner()
    planner.observe({"preprocess": 1.0, "encoder": 2.0}, 3)  # no decoder time
    planner.observe(_timings(10.0, 2.0, 3), 0)
    assert planner.estimate is None
    planner.observe(_timings(10.0, 2.0, 3), 3)
    assert planner.estimate == CostEstimate(pytest.approx(10.0), pytest.approx(2.0))


def test_without_budget_or_estimate_every_class_is_kept() -> None:
    planner = BudgetPlanner()
    planner.observe(_timings(100.0, 50.0, 5), 5)
    assert planner.plan(CLASSES).kept == CLASSES  # no budget
    planner = BudgetPlanner(budget_ms=1.0)
    assert planner.plan(CLASSES).kept == CLASSES  # no estimate yet: the first frame measures


@pytest.mark.parametrize(("budget_ms", "expected"), [
    (1000.0, 5), (60.0, 5), (59.9, 4), (45.0, 3), (40.0, 2), (30.0, 1), (1.0, 1),  # fixed 20 + 8 per class
])
def test_the_longest_prefix_that_fits_is_kept(budget_ms: float, expected: int) -> None:
    planner = BudgetPlanner(budget_ms=budget_ms)
    planner.observe(_timings(20.0, 8.0, 5), 5)
    plan = planner.plan(CLASSES)
    assert plan.kept == CLASSES[:expected]
    assert plan.skipped == CLASSES[expected:]


def test_skipped_classes_return_only_with_hysteresis() -> None:
    # fixed 20, 8 per class: 3 classes cost 44. Budget 45: 3 fit, but a 4th only below 45 * (1 - HYSTERESIS).
    planner = BudgetPlanner(budget_ms=45.0, smoothing=1.0)
    assert _run(planner, 20.0, 8.0, frames=2) == CLASSES[:3]
    assert _run(planner, 20.0, 10.0, frames=2) == CLASSES[:2]  # slower: 3 classes (50 ms) no longer fit
    # Back to 8 ms a class: 3 classes fit the budget (44 <= 45) but not with the margin (44 > 40.5): stay at 2.
    assert _run(planner, 20.0, 8.0, frames=5) == CLASSES[:2]
    # Clearly faster: 3 classes (39.5 ms) fit with the margin and come back on the next frame.
    assert 45.0 * (1 - HYSTERESIS) >= 20.0 + 3 * 6.5
    assert _run(planner, 20.0, 6.5, frames=2) == CLASSES[:3]


def test_jitter_around_the_budget_does_not_flap() -> None:
    planner = BudgetPlanner(budget_ms=45.0)  # default smoothing
    rng = random.Random(1)
    _run(planner, 20.0, 8.0, frames=20)
    sizes = {len(_run(planner, 20.0, 8.0 * rng.uniform(0.97, 1.03))) for _ in range(200)}
    assert len(sizes) == 1


def test_at_least_one_class_is_kept_and_budget_off_restores_all() -> None:
    planner = BudgetPlanner(budget_ms=0.5, smoothing=1.0)
    assert _run(planner, 20.0, 8.0, frames=2) == CLASSES[:1]
    planner.budget_ms = 0.0
    assert planner.plan(CLASSES).kept == CLASSES


def test_a_shorter_active_list_is_planned_within_its_length() -> None:
    planner = BudgetPlanner(budget_ms=45.0, smoothing=1.0)
    _run(planner, 20.0, 8.0, frames=2)
    assert planner.plan(["sky", "bus"]).kept == ["sky", "bus"]


@pytest.mark.parametrize("value", [-1.0, "10", True, float("nan")])
def test_a_bad_budget_is_refused(value: object) -> None:
    planner = BudgetPlanner(budget_ms=5.0)
    with pytest.raises(ValueError, match="latency_budget_ms must be a number >= 0"):
        planner.budget_ms = value  # type: ignore[assignment]
    assert planner.budget_ms == 5.0
