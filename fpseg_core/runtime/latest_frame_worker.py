"""Newest-frame hand-off from a producer (the ROS executor) to one supervised worker thread (no rclpy import)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")
_EMPTY = object()

logger = logging.getLogger(__name__)


class LatestFrameWorker(Generic[T]):
    """A worker thread that always processes the newest submitted item and never queues.

    `submit` (any thread) puts the item in a one-element slot and returns at once; an item still waiting
    there is replaced and counted in `dropped`, so under overload stale frames are skipped and latency
    stays bounded by one processing time. The thread calls `handler(item)` for each item it takes.

    Supervision: an Exception from the handler goes to `on_error` (an Exception from `on_error` itself is
    logged) and the thread carries on with the next item. Anything else that ends the thread (a
    BaseException such as SystemExit escaping the handler) is recorded in `death_cause` and logged; from
    then on `alive` is False and `submit` refuses items, so a dead worker never silently swallows frames.
    """

    def __init__(
        self,
        handler: Callable[[T], None],
        on_error: Callable[[BaseException], None] | None = None,
        name: str = "fpseg-worker",
    ) -> None:
        self._handler = handler
        self._on_error = on_error or (lambda exc: logger.error("frame handler failed", exc_info=exc))
        self._condition = threading.Condition()
        self._pending: object = _EMPTY
        self._closed = False
        self._dropped = 0
        self._processed = 0
        self._death_cause: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    @property
    def dropped(self) -> int:
        """Items replaced by a newer one before the worker took them."""
        return self._dropped

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

    def submit(self, item: T) -> bool:
        """Hand over `item`, replacing (and counting) a pending one; False once the worker is stopped or dead."""
        with self._condition:
            if self._closed:
                return False
            if self._pending is not _EMPTY:
                self._dropped += 1
            self._pending = item
            self._condition.notify()
            return True

    def stop(self, timeout: float | None = None) -> bool:
        """Refuse new items, discard a pending one, wait for the item in progress; True if the thread ended."""
        self._close()
        if self._thread.ident is not None:
            self._thread.join(timeout)
        return not self._thread.is_alive()

    def _close(self) -> None:
        with self._condition:
            self._closed = True
            self._pending = _EMPTY
            self._condition.notify()

    def _run(self) -> None:
        try:
            while (item := self._take()) is not _EMPTY:
                self._process(item)  # type: ignore[arg-type]
        # Only a BaseException gets here (_process catches every Exception): record it, the owner decides.
        except BaseException as exc:
            self._death_cause = exc
            logger.critical("worker thread %s died", self._thread.name, exc_info=exc)
        finally:
            self._close()

    def _take(self) -> object:
        """The next item, waiting for one; _EMPTY once the worker is closed."""
        with self._condition:
            while self._pending is _EMPTY and not self._closed:
                self._condition.wait()
            if self._closed:
                return _EMPTY
            item, self._pending = self._pending, _EMPTY
            return item

    def _process(self, item: T) -> None:
        try:
            self._handler(item)
        except Exception as exc:
            try:
                self._on_error(exc)
            except Exception:
                logger.exception("the error callback of worker %s failed on %r", self._thread.name, exc)
        finally:
            self._processed += 1
