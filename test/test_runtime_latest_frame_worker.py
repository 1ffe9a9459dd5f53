"""Newest-frame hand-off: a producer faster than the consumer never queues, drops are counted, stop joins."""

from __future__ import annotations

import threading
import time

import pytest

from fpseg_core.runtime.latest_frame_worker import LatestFrameWorker

WAIT_S = 20.0  # generous upper bound for a thread to react; the tests never depend on it being short


def _wait_until(condition, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.001)


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
    worker = LatestFrameWorker(handler)
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

    worker = LatestFrameWorker(slow)
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

    worker = LatestFrameWorker(handler, on_error=errors.append)
    worker.start()
    worker.submit(1)
    _wait_until(lambda: worker.processed == 1)
    worker.submit(2)
    assert done.wait(WAIT_S)
    assert worker.stop(WAIT_S)
    assert [str(e) for e in errors] == ["CUDA out of memory"]


def test_stop_waits_for_the_frame_in_progress_and_leaves_no_thread() -> None:
    handler = GatedHandler()
    worker = LatestFrameWorker(handler, name="fpseg-test-worker")
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
    idle = LatestFrameWorker(lambda item: None)
    idle.start()
    assert idle.stop(WAIT_S) and not idle.alive
    assert LatestFrameWorker(lambda item: None).stop(0.1)


@pytest.mark.parametrize("frames", [1, 5])
def test_idle_consumer_processes_every_frame(frames: int) -> None:
    seen: list[int] = []
    worker = LatestFrameWorker(seen.append)
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

    worker = LatestFrameWorker(handler, name="fpseg-dying-worker")
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

    worker = LatestFrameWorker(handler, on_error=on_error)
    worker.start()
    for frame in range(3):
        assert worker.submit(frame)
        _wait_until(lambda n=frame: worker.processed == n + 1)
    assert worker.alive and worker.death_cause is None and seen == [0, 1, 2]
    assert worker.stop(WAIT_S)
    assert not worker.alive and worker.death_cause is None  # stopped, not dead
