"""The `main()` both nodes share: start, spin until Ctrl-C / shutdown, shut down shielded from signals."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import rclpy
from rclpy.executors import ExternalShutdownException
from rclpy.logging import get_logger
from rclpy.node import Node

from fpseg_core.runtime.shutdown import DeferredSignals

N = TypeVar("N", bound=Node)


class NodeFailedError(Exception):
    """Raised from a callback to end `rclpy.spin` when the node cannot go on (its inference thread died).

    The context must not be shut down from inside a callback: on Humble the global executor's shutdown then
    waits for the running callback, which is itself (ros2/rclpy#944, #1646). Raising ends the spin instead
    (the single-threaded executor re-raises callback exceptions) and `run_node` shuts down from the main
    thread.
    """


def run_node(
    args: list[str] | None,
    create: Callable[[], N],
    node_name: str,
    startup_errors: tuple[type[BaseException], ...],
    shut_down: Callable[[N], None],
    exit_code: Callable[[N], int] = lambda _node: 0,
) -> int:
    """rclpy.init, `create()` the node, spin it, then `shut_down(node)` and rclpy shutdown; returns the exit code.

    A `startup_errors` exception is logged FATAL in one line ("cannot start: ...") and gives exit code 1; Ctrl-C
    during start-up gives 0. Under `ros2 launch` Ctrl-C arrives twice (terminal and launch); the second SIGINT
    (or a SIGTERM) must not raise in the main thread while the node finishes its work (the frame in progress,
    the final report), so during shutdown signals are only recorded (DeferredSignals replaces rclpy's C-level
    handler for good, so it is entered only once spinning is over; after it the signals stay ignored until the
    process has exited). A callback raising `NodeFailedError` ends the spin the same way; `exit_code(node)` then
    says 1.
    """
    rclpy.init(args=args)
    try:
        node = create()
    except KeyboardInterrupt:
        rclpy.try_shutdown()
        return 0
    except startup_errors as exc:
        get_logger(node_name).fatal(f"cannot start: {exc}")
        rclpy.try_shutdown()
        return 1
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException, NodeFailedError):
        pass
    finally:
        # restore=False: the process exits next, and a SIGINT during interpreter teardown would kill it (-2).
        with DeferredSignals(redeliver=False, restore=False):
            shut_down(node)
            rclpy.try_shutdown()
    return exit_code(node)
