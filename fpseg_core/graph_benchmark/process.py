"""CPU and memory of the processes under test (the node(s) and their children), sampled in a background thread.

`ProcessSampler(pids).start()` ... `.stop()`; then `.samples` is a list of (t_s, cpu_percent, rss_bytes):
seconds since `start`, CPU use summed over the processes and all their children (percent of one core, so 200
means two cores busy; psutil's `cpu_percent` since the previous sample, primed by `start`), and resident set
size summed over the same processes (bytes; shared pages count once per process).

Keys of `summary()` (None where no sample was taken):

- `cpu_percent_mean`, `cpu_percent_max`: over the samples (percent of one core).
- `rss_mib_mean`, `rss_mib_max`, `rss_mib_last`: over the samples (MiB).
- `samples`: number of samples; `interval_s`: the requested sampling interval (seconds).
- `pids`: the processes asked for; `exited`: [{pid, t_s}] for each of them that ended during the run
  (sampling goes on over what remains and stops when nothing does); `notes`: what went wrong, in words.

Memory: one tuple per sample, so duration / interval_s entries (an hour at 1 s: 3,600).
"""

from __future__ import annotations

import threading
import time
from typing import Any

import psutil

from ._common import MIB

Sample = tuple[float, float, int]


class ProcessSampler:
    """Samples CPU % and RSS of `pids` and their children every `interval_s` seconds (see module docstring)."""

    def __init__(self, pids: list[int], interval_s: float = 1.0) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s must be positive, got {interval_s}")
        self.pids = [int(p) for p in pids]
        self.interval_s = float(interval_s)
        self._lock = threading.Lock()
        self._samples: list[Sample] = []
        self._exited: list[dict[str, Any]] = []
        self._notes: list[str] = []
        self._roots: dict[int, psutil.Process] = {}
        self._known: dict[int, psutil.Process] = {}  # every process measured, primed for cpu_percent
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._t0 = 0.0

    def start(self) -> None:
        """Prime the CPU counters and start sampling in a daemon thread."""
        if self._thread is not None:
            raise RuntimeError("this ProcessSampler was already started")
        self._t0 = time.monotonic()
        for pid in self.pids:
            try:
                self._roots[pid] = psutil.Process(pid)
            except psutil.Error as exc:
                self._record_exit(pid, f"process {pid} could not be watched: {exc}")
        self._measure()  # primes: the first cpu_percent of a process is meaningless
        self._thread = threading.Thread(target=self._run, name="ProcessSampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop sampling and wait for the thread (at most about one interval)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    @property
    def samples(self) -> list[Sample]:
        """A copy of the samples so far: (t_s, cpu_percent, rss_bytes)."""
        with self._lock:
            return list(self._samples)

    def summary(self) -> dict[str, Any]:
        """Mean / max CPU % and RSS over the samples, and which processes ended (keys: module docstring)."""
        samples = self.samples
        with self._lock:
            exited, notes = list(self._exited), list(self._notes)
        summary: dict[str, Any] = {"samples": len(samples), "interval_s": self.interval_s, "pids": self.pids,
                                   "exited": exited, "notes": notes}
        if not samples:
            return {**summary, **dict.fromkeys(("cpu_percent_mean", "cpu_percent_max", "rss_mib_mean",
                                                "rss_mib_max", "rss_mib_last"))}
        cpu = [s[1] for s in samples]
        rss = [s[2] / MIB for s in samples]
        return {**summary, "cpu_percent_mean": sum(cpu) / len(cpu), "cpu_percent_max": max(cpu),
                "rss_mib_mean": sum(rss) / len(rss), "rss_mib_max": max(rss), "rss_mib_last": rss[-1]}

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            measured = self._measure()
            if measured is None:
                with self._lock:
                    self._notes.append(f"no process left to sample at t={self._elapsed():.1f} s; sampling stopped")
                return
            with self._lock:
                self._samples.append((self._elapsed(), *measured))

    def _elapsed(self) -> float:
        return time.monotonic() - self._t0

    def _measure(self) -> tuple[float, int] | None:
        """(CPU % summed, RSS summed) over the living roots and their children; None when none lives."""
        living: dict[int, psutil.Process] = {}
        for pid, root in list(self._roots.items()):
            try:
                if not root.is_running() or root.status() == psutil.STATUS_ZOMBIE:
                    raise psutil.NoSuchProcess(pid)
                living[pid] = root
                for child in root.children(recursive=True):
                    living.setdefault(child.pid, child)
            except psutil.Error:
                del self._roots[pid]
                self._record_exit(pid, None)
        if not self._roots:
            return None
        cpu, rss = 0.0, 0
        for pid, process in living.items():
            known = self._known.get(pid)
            if known is None or known != process:  # new (or a reused pid): prime it, it counts from now on
                self._known[pid] = known = process
            try:
                with known.oneshot():
                    cpu_now = known.cpu_percent(interval=None)
                    rss_now = known.memory_info().rss
            except psutil.Error:  # ended between listing and reading: it no longer counts
                self._known.pop(pid, None)
                continue
            cpu += cpu_now
            rss += rss_now
        for pid in set(self._known) - set(living):
            del self._known[pid]
        return cpu, rss

    def _record_exit(self, pid: int, note: str | None) -> None:
        with self._lock:
            self._exited.append({"pid": pid, "t_s": round(self._elapsed(), 3)})
            self._notes.append(note or f"process {pid} exited at t={self._elapsed():.1f} s; "
                                       "the samples after that cover the processes that remain")
