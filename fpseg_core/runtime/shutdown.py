"""Keep SIGINT / SIGTERM from interrupting work that must finish, such as writing the final report (no rclpy).

Under `ros2 launch`, Ctrl-C reaches each node twice (once from the terminal's process group, once forwarded by
launch), and the second one used to raise KeyboardInterrupt in the middle of a node's shutdown: a report half
written, or the main thread leaving while the inference thread was still inside a publish call. Run such
work inside `DeferredSignals`:

    with DeferredSignals(redeliver=False):   # shutdown is already under way: the signals have been heard
        node.write_report(final=True)
        node.destroy_node()

While the block runs in the main thread, SIGINT and SIGTERM are only recorded (`received`); the previous
handlers are restored when it ends and, with `redeliver`, the first recorded signal is then raised again, so
the process reacts as if it had arrived just after the block.

A node's final shutdown uses `restore=False`: the process exits right after the block, and a signal that
arrives during interpreter teardown (launch's forwarded SIGINT often comes that late, seen in a real Jazzy
graph: the node then died with -2 instead of exiting 0) must not kill it, so the signals stay ignored
(SIG_IGN) after the block. SIGKILL, launch's last escalation, still ends a process that hangs there.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Sequence
from types import FrameType, TracebackType
from typing import Any

DEFERRED_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class DeferredSignals:
    """A context manager deferring `signals` (default SIGINT, SIGTERM) while its block runs.

    Use it only once an rclpy node has stopped spinning: rclpy handles SIGINT in C (it shuts the context down and
    wakes the executor), Python's `signal.getsignal` cannot see that handler, and restoring the previous Python
    handler leaves rclpy's removed, so Ctrl-C would no longer stop a spin.

    Python runs signal handlers in the main thread only, and only the main thread may install them: in any
    other thread the guard does nothing (such a thread is never interrupted by a signal anyway). Signals the
    process ignores (SIG_IGN, e.g. SIGINT in a background job) stay ignored. Not reentrant; nested guards
    work (an inner guard's redelivered signal is recorded by the outer one).
    """

    def __init__(self, redeliver: bool = True, signals: Sequence[int] = DEFERRED_SIGNALS, restore: bool = True
                 ) -> None:
        if redeliver and not restore:
            raise ValueError("a signal can only be redelivered to the restored handlers (restore=True)")
        self.redeliver = redeliver
        self.restore = restore
        self.received: list[int] = []
        self._signals = tuple(signals)
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> DeferredSignals:
        self.received.clear()
        if threading.current_thread() is threading.main_thread():
            for signum in self._signals:
                previous = signal.getsignal(signum)
                if previous is not signal.SIG_IGN:
                    # None: a handler installed outside Python; the default action is the closest restore.
                    self._previous[signum] = signal.SIG_DFL if previous is None else previous
                    signal.signal(signum, self._record)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous if self.restore else signal.SIG_IGN)
        self._previous.clear()
        if self.redeliver and self.received:
            signal.raise_signal(self.received[0])

    def _record(self, signum: int, _frame: FrameType | None) -> None:
        self.received.append(signum)
