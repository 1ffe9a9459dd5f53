"""Newest-frame hand-off: a producer faster than the consumer never queues, drops are counted, stop joins;
with several sources (cameras): newest item per source, round-robin, batches of the sources waiting."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from fpseg_core.runtime.latest_frame_worker import SINGLE_SOURCE, LatestFrameWorker, SourceSlots

WAIT_S = 20.0  # generous upper bound for a thread to react; the tests never depend on it being short


def _wait_until(condition, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.001)


def each(handler: Callable[[int], None]) -> Callable[[list[tuple[str, int]]], None]:
    """A batch handler calling `handler` on each item; with one source every batch has exactly one."""

    def run(batch: list[tuple[str, int]]) -> None:
        assert len(batch) == 1 and batch[0][0] == SINGLE_SOURCE
        handler(batch[0][1])

    return run


class GatedHandler:
    """Records items; blocks on each until released, so tests control exactly when the consumer is busy."""

    def __init__(self) -> None:
        self.seen: list[int] = []
        self.started = threading.Semaphore(0)
        self.release = threading.Semaphore(0)

    def __call__(self, item: int) -> None:
        self.seen.append(item)
        self.started.release()
        assert self.release.acquire(timeout=WAIT_S)


def test_busy_consumer_gets_only_the_newest_frame_and_drops_are_counted() -> None:
    handler = GatedHandler()
    worker = LatestFrameWorker(each(handler))
    worker.start()
    try:
        assert worker.submit(1)
        assert handler.started.acquire(timeout=WAIT_S)  # the worker is now busy with frame 1
        for frame in range(2, 11):  # returns immediately although the consumer is blocked
            assert worker.submit(frame)
        assert worker.dropped == 8  # 2..9 were replaced before the worker could take them
        handler.release.release()
        assert handler.started.acquire(timeout=WAIT_S)
        assert handler.seen == [1, 10]
        handler.release.release()
        _wait_until(lambda: worker.processed == 2)
    finally:
        handler.release.release()
        assert worker.stop(WAIT_S)


def test_fast_producer_slow_consumer_keeps_order_and_accounts_for_every_frame() -> None:
    seen: list[int] = []

    def slow(item: int) -> None:
        seen.append(item)
        time.sleep(0.005)

    worker = LatestFrameWorker(each(slow))
    worker.start()
    frames = 300
    for frame in range(frames):
        worker.submit(frame)
        time.sleep(0.0002)
    _wait_until(lambda: worker.processed + worker.dropped == frames)
    assert worker.stop(WAIT_S)
    assert seen == sorted(set(seen))  # never an older frame after a newer one
    assert seen[-1] == frames - 1  # the newest frame is never lost
    assert worker.dropped > 0 and len(seen) == worker.processed


def test_handler_exception_is_reported_and_the_worker_goes_on() -> None:
    errors: list[BaseException] = []
    done = threading.Event()

    def handler(item: int) -> None:
        if item == 1:
            raise RuntimeError("CUDA out of memory")
        done.set()

    worker = LatestFrameWorker(each(handler), on_error=errors.append)
    worker.start()
    worker.submit(1)
    _wait_until(lambda: worker.processed == 1)
    worker.submit(2)
    assert done.wait(WAIT_S)
    assert worker.stop(WAIT_S)
    assert [str(e) for e in errors] == ["CUDA out of memory"]


def test_stop_waits_for_the_frame_in_progress_and_leaves_no_thread() -> None:
    handler = GatedHandler()
    worker = LatestFrameWorker(each(handler), name="fpseg-test-worker")
    worker.start()
    worker.submit(1)
    assert handler.started.acquire(timeout=WAIT_S)
    worker.submit(2)  # pending: discarded by stop
    stopper = threading.Thread(target=worker.stop, args=(WAIT_S,))
    stopper.start()
    time.sleep(0.05)
    assert stopper.is_alive() and worker.alive  # still waiting for frame 1
    handler.release.release()
    stopper.join(WAIT_S)
    assert not worker.alive
    assert handler.seen == [1]
    assert not worker.submit(3)
    assert "fpseg-test-worker" not in {t.name for t in threading.enumerate()}


def test_stop_of_an_idle_or_unstarted_worker() -> None:
    idle = LatestFrameWorker(each(lambda item: None))
    idle.start()
    assert idle.stop(WAIT_S) and not idle.alive
    assert LatestFrameWorker(each(lambda item: None)).stop(0.1)


@pytest.mark.parametrize("frames", [1, 5])
def test_idle_consumer_processes_every_frame(frames: int) -> None:
    seen: list[int] = []
    worker = LatestFrameWorker(each(seen.append))
    worker.start()
    for frame in range(frames):
        worker.submit(frame)
        _wait_until(lambda n=frame: worker.processed == n + 1)
    assert worker.stop(WAIT_S)
    assert seen == list(range(frames)) and worker.dropped == 0


class Fatal(BaseException):
    """Not an Exception: nothing in the worker may swallow it, so it ends the thread."""


@pytest.mark.parametrize("death", [Fatal("worker bug"), SystemExit(3), KeyboardInterrupt()])
def test_a_dying_thread_is_detected_and_refuses_frames(death: BaseException) -> None:
    seen: list[int] = []

    def handler(item: int) -> None:
        seen.append(item)
        if item == 2:
            raise death

    worker = LatestFrameWorker(each(handler), name="fpseg-dying-worker")
    worker.start()
    assert worker.submit(1)
    _wait_until(lambda: worker.processed == 1)
    assert worker.alive and worker.death_cause is None
    assert worker.submit(2)
    _wait_until(lambda: not worker.alive)
    assert worker.death_cause is death
    assert not worker.submit(3)  # never accepted into a dead worker, never counted as dropped
    assert worker.dropped == 0 and seen == [1, 2]
    assert worker.stop(WAIT_S) and worker.death_cause is death


def test_a_failing_error_callback_does_not_end_the_thread() -> None:
    seen: list[int] = []

    def handler(item: int) -> None:
        seen.append(item)
        raise RuntimeError(f"frame {item} failed")

    def on_error(exc: BaseException) -> None:
        raise OSError("the log is gone")

    worker = LatestFrameWorker(each(handler), on_error=on_error)
    worker.start()
    for frame in range(3):
        assert worker.submit(frame)
        _wait_until(lambda n=frame: worker.processed == n + 1)
    assert worker.alive and worker.death_cause is None and seen == [0, 1, 2]
    assert worker.stop(WAIT_S)
    assert not worker.alive and worker.death_cause is None  # stopped, not dead


# ------------------------------------------------------------------------------ several sources (cameras)
def test_slots_keep_the_newest_item_per_source_and_count_drops_per_source() -> None:
    slots: SourceSlots[int] = SourceSlots(["front", "rear"])
    for frame in range(5):
        slots.put("front", frame)
    slots.put("rear", 100)
    assert slots.dropped == {"front": 4, "rear": 0}
    assert slots.take(2) == [("front", 4), ("rear", 100)]
    assert slots.waiting == 0 and slots.take(2) == []
    with pytest.raises(KeyError, match=r"unknown source 'left'.*'front', 'rear'"):
        slots.put("left", 1)


def test_slots_take_round_robin_so_that_no_source_starves() -> None:
    slots: SourceSlots[int] = SourceSlots(["a", "b", "c"])
    served: list[str] = []
    for step in range(30):  # every source has a frame waiting at every take; one item per take
        for source in slots.sources:
            slots.put(source, step)
        served += [source for source, _ in slots.take(1)]
    assert served == ["a", "b", "c"] * 10
    # a source that only now has a frame is served next, before one that was served and has a frame again
    slots.clear()
    slots.put("a", 1)
    assert slots.take(1) == [("a", 1)]
    slots.put("a", 2)
    slots.put("c", 3)
    assert slots.take(1) == [("c", 3)]  # after "a" comes "b" (empty), then "c"
    assert slots.take(1) == [("a", 2)]


def test_slots_refuse_no_or_repeated_sources() -> None:
    with pytest.raises(ValueError, match="at least one source"):
        SourceSlots([])
    with pytest.raises(ValueError, match="unique"):
        SourceSlots(["front", "front"])


def test_waiting_sources_are_handed_over_as_one_batch_and_a_silent_source_stalls_nothing() -> None:
    batches: list[list[tuple[str, int]]] = []
    started, release = threading.Semaphore(0), threading.Semaphore(0)

    def handler(batch: list[tuple[str, int]]) -> None:
        batches.append(batch)
        started.release()
        assert release.acquire(timeout=WAIT_S)

    worker = LatestFrameWorker(handler, sources=("front", "rear", "left"), max_batch=3)
    worker.start()
    try:
        assert worker.submit(1, "front")
        assert started.acquire(timeout=WAIT_S)  # busy with [front 1]
        worker.submit(2, "front")
        worker.submit(3, "front")
        worker.submit(10, "rear")  # "left" sends nothing
        release.release()
        assert started.acquire(timeout=WAIT_S)
        assert batches == [[("front", 1)], [("rear", 10), ("front", 3)]]  # rear first: front was served last
        assert worker.dropped_by_source == {"front": 1, "rear": 0, "left": 0}
        for frame in range(3):  # front alone goes on at its own pace while rear and left are silent
            release.release()
            if frame:
                assert started.acquire(timeout=WAIT_S)
            worker.submit(20 + frame, "front")
        release.release()
        _wait_until(lambda: worker.processed == 6)
        assert [b for b in batches[2:]] == [[("front", 20)], [("front", 21)], [("front", 22)]]
    finally:
        release.release()
        assert worker.stop(WAIT_S)


def test_max_batch_limits_the_batch_and_the_rest_waits_its_turn() -> None:
    batches: list[list[str]] = []
    gate = threading.Event()

    def handler(batch: list[tuple[str, int]]) -> None:
        assert gate.wait(WAIT_S)
        batches.append([source for source, _ in batch])

    worker = LatestFrameWorker(handler, sources=("a", "b", "c"), max_batch=2)
    worker.start()
    for source in "abc":
        worker.submit(0, source)
    gate.set()
    _wait_until(lambda: worker.processed == 3)
    assert worker.stop(WAIT_S)
    assert sorted(source for batch in batches for source in batch) == ["a", "b", "c"] and max(map(len, batches)) <= 2
    with pytest.raises(ValueError, match="max_batch"):
        LatestFrameWorker(handler, max_batch=0)
