"""Newest-frame hand-off from producers (the ROS executor, one or several cameras) to one supervised worker
thread (no rclpy import)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
_EMPTY = object()
SINGLE_SOURCE = ""  # the source name of a node with one camera (parameter `cameras` empty)

logger = logging.getLogger(__name__)


class SourceSlots(Generic[T]):
    """The newest waiting item of each source (camera), taken in round-robin order. Not thread-safe.

    `put` replaces a source's waiting item (counted in `dropped[source]`); `take(limit)` returns up to `limit`
    waiting items, one per source, starting with the source after the one served last, so a source that
    always has a frame waiting cannot starve the others. Memory: one slot per source, by construction.
    """

    def __init__(self, sources: Sequence[str]) -> None:
        if not sources:
            raise ValueError("at least one source is needed")
        if len(set(sources)) != len(sources):
            raise ValueError(f"source names must be unique, got {list(sources)}")
        self.sources = tuple(sources)
        self._slots: dict[str, object] = dict.fromkeys(self.sources, _EMPTY)
        self.dropped: dict[str, int] = dict.fromkeys(self.sources, 0)
        self._next = 0  # index of the source served first at the next take

    @property
    def waiting(self) -> int:
        """Sources with an item waiting."""
        return sum(item is not _EMPTY for item in self._slots.values())

    def put(self, source: str, item: T) -> None:
        """Make `item` the source's waiting item; KeyError for a source that is not one of `sources`."""
        if source not in self._slots:
            raise KeyError(f"unknown source {source!r}; sources: {', '.join(map(repr, self.sources))}")
        if self._slots[source] is not _EMPTY:
            self.dropped[source] += 1
        self._slots[source] = item

    def take(self, limit: int) -> list[tuple[str, T]]:
        """Up to `limit` waiting items as (source, item), in round-robin order; their slots are emptied."""
        taken: list[tuple[str, T]] = []
        count, first = len(self.sources), self._next
        for step in range(count):
            if len(taken) >= limit:
                break
            index = (first + step) % count
            source = self.sources[index]
            item = self._slots[source]
            if item is not _EMPTY:
                taken.append((source, item))  # type: ignore[arg-type]
                self._slots[source] = _EMPTY
                self._next = (index + 1) % count
        return taken

    def clear(self) -> None:
        """Discard every waiting item (not counted as dropped)."""
        self._slots = dict.fromkeys(self.sources, _EMPTY)


class LatestFrameWorker(Generic[T]):
    """A worker thread that always processes the newest submitted item of each source and never queues.

    `submit` (any thread) puts the item in its source's one-element slot and returns at once; an item still
    waiting there is replaced and counted in `dropped_by_source`, so under overload stale frames are skipped
    and latency stays bounded by one processing time. The thread takes the waiting items of up to `max_batch`
    sources at a time (round-robin, see `SourceSlots`) and calls `handler(batch)` with them as a list of
    (source, item); with one source, every batch has one item.

    Supervision: an Exception from the handler goes to `on_error` (an Exception from `on_error` itself is
    logged) and the thread carries on with the next batch. Anything else that ends the thread (a
    BaseException such as SystemExit escaping the handler) is recorded in `death_cause` and logged; from
    then on `alive` is False and `submit` refuses items, so a dead worker never silently swallows frames.
    """

    def __init__(
        self,
        handler: Callable[[list[tuple[str, T]]], None],
        on_error: Callable[[BaseException], None] | None = None,
        name: str = "fpseg-worker",
        sources: Sequence[str] = (SINGLE_SOURCE,),
        max_batch: int = 1,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self._handler = handler
        self._on_error = on_error or (lambda exc: logger.error("frame handler failed", exc_info=exc))
        self._condition = threading.Condition()
        self._slots: SourceSlots[T] = SourceSlots(sources)
        self._max_batch = max_batch
        self._closed = False
        self._processed = 0
        self._death_cause: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    @property
    def sources(self) -> tuple[str, ...]:
        return self._slots.sources

    @property
    def dropped(self) -> int:
        """Items replaced by a newer one of the same source before the worker took them (all sources)."""
        return sum(self._slots.dropped.values())

    @property
    def dropped_by_source(self) -> dict[str, int]:
        """`dropped`, per source."""
        with self._condition:
            return dict(self._slots.dropped)

    def dropped_of(self, source: str) -> int:
        """`dropped` for one source (a plain read: no copy, no lock; the per-frame stats use it)."""
        return self._slots.dropped[source]

    @property
    def processed(self) -> int:
        """Items the handler has finished (successfully or not)."""
        return self._processed

    @property
    def alive(self) -> bool:
        """The thread is running (started, neither stopped nor dead)."""
        return self._thread.is_alive()

    @property
    def death_cause(self) -> BaseException | None:
        """What ended the thread when it died instead of being stopped; None while it runs or after `stop`."""
        return self._death_cause

    def start(self) -> None:
        self._thread.start()

    def submit(self, item: T, source: str = SINGLE_SOURCE) -> bool:
        """Hand over `item` of `source`, replacing (and counting) one still waiting; False once the worker is
        stopped or dead. KeyError for a source the worker was not made for."""
        with self._condition:
            if self._closed:
                return False
            self._slots.put(source, item)
            self._condition.notify()
            return True

    def stop(self, timeout: float | None = None) -> bool:
        """Refuse new items, discard waiting ones, wait for the batch in progress; True if the thread ended."""
        self._close()
        if self._thread.ident is not None:
            self._thread.join(timeout)
        return not self._thread.is_alive()

    def _close(self) -> None:
        with self._condition:
            self._closed = True
            self._slots.clear()
            self._condition.notify()

    def _run(self) -> None:
        try:
            while batch := self._take():
                self._process(batch)
        # Only a BaseException gets here (_process catches every Exception): record it, the owner decides.
        except BaseException as exc:
            self._death_cause = exc
            logger.critical("worker thread %s died", self._thread.name, exc_info=exc)
        finally:
            self._close()

    def _take(self) -> list[tuple[str, T]]:
        """The next batch, waiting for one; empty once the worker is closed."""
        with self._condition:
            while not self._slots.waiting and not self._closed:
                self._condition.wait()
            if self._closed:
                return []
            return self._slots.take(self._max_batch)

    def _process(self, batch: list[tuple[str, T]]) -> None:
        try:
            self._handler(batch)
        except Exception as exc:
            try:
                self._on_error(exc)
            except Exception:
                logger.exception("the error callback of worker %s failed on %r", self._thread.name, exc)
        finally:
            self._processed += len(batch)
