"""DeferredSignals: SIGINT / SIGTERM wait until the guarded block is done (in-process; see
test_stream_report.py for a real process interrupted twice while writing its report)."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator

import pytest

from fpseg_core.runtime.shutdown import DeferredSignals


@pytest.fixture(autouse=True)
def interactive_sigint() -> Iterator[None]:
    """SIGINT as in a terminal (raising KeyboardInterrupt), also where the tests run as a background job
    (which starts with SIGINT ignored)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.fixture()
def sigterm_recorder() -> Iterator[list[int]]:
    """A SIGTERM handler for the test's duration, so that a broken guard cannot kill the test run."""
    seen: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))
    try:
        yield seen
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_sigint_waits_for_the_block_and_is_redelivered_after_it() -> None:
    finished = False
    with pytest.raises(KeyboardInterrupt), DeferredSignals() as guard:
        signal.raise_signal(signal.SIGINT)
        signal.raise_signal(signal.SIGINT)
        finished = True  # without the guard, KeyboardInterrupt would have left the block already
    assert finished
    assert guard.received == [signal.SIGINT, signal.SIGINT]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_without_redelivery_the_signals_are_only_recorded(sigterm_recorder: list[int]) -> None:
    handler = signal.getsignal(signal.SIGTERM)
    with DeferredSignals(redeliver=False) as guard:
        signal.raise_signal(signal.SIGTERM)
        signal.raise_signal(signal.SIGINT)
    assert guard.received == [signal.SIGTERM, signal.SIGINT]
    assert sigterm_recorder == []  # the test's own handler never saw the deferred SIGTERM ...
    assert signal.getsignal(signal.SIGTERM) is handler  # ... and is back in place
    signal.raise_signal(signal.SIGTERM)
    assert sigterm_recorder == [signal.SIGTERM]


def test_redelivery_goes_to_the_previous_handler(sigterm_recorder: list[int]) -> None:
    with DeferredSignals():
        signal.raise_signal(signal.SIGTERM)
        assert sigterm_recorder == []
    assert sigterm_recorder == [signal.SIGTERM]


def test_an_ignored_signal_stays_ignored() -> None:
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with DeferredSignals() as guard:
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            signal.raise_signal(signal.SIGINT)
        assert guard.received == []
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


def test_outside_the_main_thread_the_guard_does_nothing() -> None:
    outcome: list[object] = []

    def guarded() -> None:
        try:
            with DeferredSignals() as guard:
                outcome.append(signal.getsignal(signal.SIGINT))
            outcome.append(guard.received)
        except BaseException as exc:  # reported to the test below
            outcome.append(exc)

    thread = threading.Thread(target=guarded)
    thread.start()
    thread.join()
    assert outcome == [signal.default_int_handler, []]


TEARDOWN_SCRIPT = """
import atexit, os, signal, sys
from fpseg_core.runtime.shutdown import DeferredSignals
signal.signal(signal.SIGINT, signal.default_int_handler)
# launch's forwarded SIGINT reaching the node while the interpreter is already tearing down
atexit.register(lambda: os.kill(os.getpid(), signal.SIGINT))
with DeferredSignals(redeliver=False, restore=sys.argv[1] == "restore"):
    os.kill(os.getpid(), signal.SIGINT)  # the first Ctrl-C, heard during the node's shutdown
sys.exit(0)
"""


@pytest.mark.parametrize(("mode", "interrupted"), [("restore", True), ("ignore", False)])
def test_a_final_guard_keeps_a_late_sigint_from_reaching_the_exiting_process(mode: str, interrupted: bool) -> None:
    """restore=False (the nodes' final shutdown): a SIGINT while the interpreter tears down is ignored and the
    exit status stays 0. In the control run the restored handler still takes it (a KeyboardInterrupt inside
    atexit here; once CPython has reset its handlers to the default action, as for the node in a real Jazzy
    graph, the same signal kills the process with -2)."""
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-c", TEARDOWN_SCRIPT, mode], capture_output=True, text=True,
                            timeout=60)
    assert ("KeyboardInterrupt" in result.stderr) is interrupted, result.stderr
    if not interrupted:
        assert result.returncode == 0 and result.stderr == ""


def test_redelivery_needs_the_handlers_restored() -> None:
    with pytest.raises(ValueError, match="restore=True"):
        DeferredSignals(redeliver=True, restore=False)
