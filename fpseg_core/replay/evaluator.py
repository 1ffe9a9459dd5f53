"""Score a stream of the node's label images against ground truth: pairing, id mapping, confusion, latency.

One `StreamEvaluator` backs the ROS evaluator node (`fpseg_eval`), `fpseg eval-bag` and
`fpseg eval-bag --recorded`, so all three report the same numbers the same way. Its `on_*` methods take
messages (rclpy or rosbags ones: fields are read by name) and decode images with the node's own codec.

Memory bound, whatever the length of the stream: the pairer holds at most `max_pending` frames per stream and
as many wait for label info; the confusion matrix has a fixed size; at most MAX_KEPT_ERRORS reasons are
kept; `LatencyStats` keeps at most RESERVOIR_SAMPLES doubles per stage (see its docstring for what that
changes in the percentiles of very long streams).
"""

from __future__ import annotations

import math
import random
from array import array
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fpseg_core.runtime.image_codec import MalformedImageError, decode_image, stamp_ns

from ..evaluation.metrics import CityscapesConfusion, bank_labels_to_label_ids, write_report
from .pairing import DEFAULT_MAX_PENDING, StampPairer, bank_names_from_class_map

PERCENTILES = (50, 90, 99)
MAX_KEPT_ERRORS = 5
RESERVOIR_SAMPLES = 65_536  # latency samples kept per stage for the percentiles (8 bytes each)
# fpseg_ros/msg/SegmentationStats fields summarised in the report (also the fields of the node's FrameStats).
STATS_FIELDS = ("latency_ms", "inference_ms", "preprocess_ms", "encoder_ms", "decoder_ms", "postprocess_ms")


def stats_timings(stats: Any) -> dict[str, float]:
    """Stage timings of a SegmentationStats message (or the node's FrameStats), keyed without '_ms'."""
    return {name.removesuffix("_ms"): float(getattr(stats, name)) for name in STATS_FIELDS}


class _StageSamples:
    """One stage's latencies: exact count, sum, min and max over every sample, and a bounded uniform sample of
    them (Algorithm R reservoir, `capacity` doubles) for the percentiles."""

    def __init__(self, capacity: int, rng: random.Random) -> None:
        self.capacity = capacity
        self.count = 0
        self.total = 0.0
        self.low = math.inf
        self.high = -math.inf
        self.reservoir = array("d")
        self._rng = rng

    def add(self, value: float) -> None:
        self.count += 1
        self.total += value
        self.low = min(self.low, value)
        self.high = max(self.high, value)
        if len(self.reservoir) < self.capacity:
            self.reservoir.append(value)
            return
        slot = self._rng.randrange(self.count)  # each of the `count` samples stays with probability capacity/count
        if slot < self.capacity:
            self.reservoir[slot] = value

    def summary(self) -> dict[str, float]:
        samples = np.frombuffer(self.reservoir, dtype=np.float64)
        return {"count": self.count, "mean": self.total / self.count,
                **{f"p{q}": float(np.percentile(samples, q)) for q in PERCENTILES},
                "min": self.low, "max": self.high, "percentile_samples": int(samples.size)}


class LatencyStats:
    """Per-stage latency samples (ms) -> count, mean, p50 / p90 / p99, min and max per stage.

    Memory bound: at most `reservoir` doubles per stage (RESERVOIR_SAMPLES, 512 KiB per stage by default),
    whatever the number of frames. count, mean, min and max are exact over every sample (the mean is a
    running sum / count). The percentiles are exact while a stage has at most `reservoir` samples (about an
    hour of a 17 Hz stream); after that they are those of a uniform random sample of `reservoir` of them
    (reservoir sampling, seeded, so a run is reproducible), within about a percentile rank of the exact
    value. `percentile_samples` in the summary says how many samples they were computed on. Non-finite
    values (a stage the backend did not time) are skipped.
    """

    def __init__(self, reservoir: int = RESERVOIR_SAMPLES, seed: int = 0) -> None:
        if reservoir < 1:
            raise ValueError(f"the latency reservoir must hold at least 1 sample, got {reservoir}")
        self._capacity = reservoir
        self._rng = random.Random(seed)
        self._stages: dict[str, _StageSamples] = {}

    @property
    def reservoir(self) -> int:
        """The most samples kept per stage."""
        return self._capacity

    def kept_samples(self) -> dict[str, int]:
        """Samples held per stage (at most `reservoir` each)."""
        return {stage: len(samples.reservoir) for stage, samples in self._stages.items()}

    def add(self, timings_ms: Mapping[str, float]) -> None:
        for stage, value in timings_ms.items():
            if math.isfinite(value):
                if stage not in self._stages:
                    self._stages[stage] = _StageSamples(self._capacity, self._rng)
                self._stages[stage].add(float(value))

    def summary(self) -> dict[str, dict[str, float]]:
        return {stage: samples.summary() for stage, samples in self._stages.items()}


def _mono8(msg: Any) -> np.ndarray:
    encoding = getattr(msg, "encoding", None)
    if encoding != "mono8":  # checked first: no colour conversion for an image that is refused anyway
        raise MalformedImageError(f"encoding must be mono8, got {encoding!r}")
    return decode_image(msg).pixels


class StreamEvaluator:
    """Pairs label images (node values: 0 = none, v = class_id v of the label info) with labelId ground truth
    by stamp, maps them to Cityscapes labelIds and accumulates a `CityscapesConfusion`.

    Pairs that arrive before any label info wait (at most `max_pending`; older ones are counted as
    `dropped_without_label_info`). A pair that cannot be scored (label value missing from the label info,
    size mismatch) is counted as `invalid`, a message that cannot be used (undecodable, or an image the
    segmentation failed on) as `rejected`; the first reasons are kept for the report and evaluation goes on.
    """

    def __init__(self, max_pending: int = DEFAULT_MAX_PENDING) -> None:
        self.pairer: StampPairer[np.ndarray, np.ndarray] = StampPairer(max_pending)
        self.confusion = CityscapesConfusion()
        self.latency = LatencyStats()
        self.bank_names: list[str] | None = None
        self.invalid = 0
        self.rejected = 0
        self.dropped_without_label_info = 0
        self.errors: list[str] = []
        self._waiting: deque[tuple[int, np.ndarray, np.ndarray]] = deque()

    def set_class_map(self, class_map: Iterable[tuple[int, str]]) -> None:
        """Label info of the node (vision_msgs/LabelInfo class_map as (class_id, class_name) pairs)."""
        self.set_bank_names(bank_names_from_class_map(class_map))

    def set_bank_names(self, bank_names: Sequence[str]) -> None:
        """Names by label value: bank_names[v - 1] is the class of value v (FPSeg.classes of the model)."""
        self.bank_names = list(bank_names)
        while self._waiting:
            self._score(*self._waiting.popleft())

    def add_labels(self, stamp: int, labels: np.ndarray) -> None:
        self._on_pair(self.pairer.add_prediction(stamp, labels))

    def add_ground_truth(self, stamp: int, label_ids: np.ndarray) -> None:
        self._on_pair(self.pairer.add_ground_truth(stamp, label_ids))

    def add_latency(self, timings_ms: Mapping[str, float]) -> None:
        self.latency.add(timings_ms)

    def on_label_info(self, msg: Any) -> None:
        """vision_msgs/LabelInfo of the node."""
        self.set_class_map((int(c.class_id), str(c.class_name)) for c in msg.class_map)

    def on_labels(self, msg: Any) -> str | None:
        """The node's mono8 label image; returns why it was dropped, if it was (for the log)."""
        try:
            self.add_labels(stamp_ns(msg.header), _mono8(msg))
        except (MalformedImageError, AttributeError) as exc:
            return self.reject(f"label image: {exc}")
        return None

    def on_ground_truth(self, msg: Any) -> str | None:
        """A mono8 Cityscapes labelId image; returns why it was dropped, if it was (for the log)."""
        try:
            self.add_ground_truth(stamp_ns(msg.header), _mono8(msg))
        except (MalformedImageError, AttributeError) as exc:
            return self.reject(f"ground-truth image: {exc}")
        return None

    def on_stats(self, msg: Any) -> None:
        """fpseg_ros/SegmentationStats of the node."""
        self.add_latency(stats_timings(msg))

    def reject(self, reason: str) -> str:
        """Count a message that could not be used; returns `reason` (kept for the report if among the first)."""
        self.rejected += 1
        self._keep_error(reason)
        return reason

    def _keep_error(self, reason: str) -> None:
        if len(self.errors) < MAX_KEPT_ERRORS:
            self.errors.append(reason)

    def _on_pair(self, pair: tuple[int, np.ndarray, np.ndarray] | None) -> None:
        if pair is None:
            return
        if self.bank_names is None:
            self._waiting.append(pair)
            if len(self._waiting) > self.pairer.max_pending:
                self._waiting.popleft()
                self.dropped_without_label_info += 1
            return
        self._score(*pair)

    def _score(self, stamp: int, labels: np.ndarray, gt_label_ids: np.ndarray) -> None:
        assert self.bank_names is not None
        try:
            self.confusion.update(bank_labels_to_label_ids(labels, self.bank_names), gt_label_ids)
        except ValueError as exc:
            self.invalid += 1
            self._keep_error(f"frame stamped {stamp} ns: {exc}")

    @property
    def matched(self) -> int:
        """Label images paired with their ground truth so far."""
        return self.pairer.counts.matched

    def result(self, final: bool = False) -> dict[str, Any]:
        """`CityscapesConfusion.result()` plus frame counts, latency and "partial" (not `final`). With `final`
        (end of the stream), frames still waiting for their partner or for label info are counted as
        unmatched / dropped."""
        if final:
            self.pairer.finish()
            self.dropped_without_label_info += len(self._waiting)
            self._waiting.clear()
        frames = {
            **self.pairer.counts.as_dict(),
            "scored": self.confusion.n_images,
            "invalid": self.invalid,
            "rejected_messages": self.rejected,
            "dropped_without_label_info": self.dropped_without_label_info,
            "pending_predictions": self.pairer.pending_predictions,
            "pending_ground_truth": self.pairer.pending_ground_truth,
            "waiting_for_label_info": len(self._waiting),
        }
        return {"partial": not final, **self.confusion.result(), "frames": frames,
                "frame_errors": list(self.errors), "latency_ms": self.latency.summary()}


def write_stream_report(result: dict[str, Any], out_dir: str | Path, title: str) -> list[Path]:
    """`write_report` of eval-labels (results.json / .md / confusion.png), with whether the report is partial,
    frame counts and latency tables added to results.md (each file written once, atomically)."""
    if result.get("partial"):
        status = "**Partial report**: written while frames were still arriving; the final one replaces it."
    else:
        status = "Final report: the whole stream."
    lines = ["", status, "", "## Frames", "", "| count | frames |", "|---|---:|"]
    lines += [f"| {name.replace('_', ' ')} | {value} |" for name, value in result["frames"].items()]
    errors = result.get("frame_errors", [])
    if errors:
        lines += ["", f"First {len(errors)} reasons for dropped or invalid frames:", ""]
        lines += [f"- {error}" for error in errors]
    latency = result.get("latency_ms") or {}
    if latency:
        header = ["stage", "count", "mean", *(f"p{q}" for q in PERCENTILES), "max"]
        lines += ["", "## Latency (ms)", "", "| " + " | ".join(header) + " |",
                  "|---|" + "---:|" * (len(header) - 1)]
        lines += [f"| {stage} | {s['count']} | {s['mean']:.2f} | "
                  + " | ".join(f"{s[f'p{q}']:.2f}" for q in PERCENTILES) + f" | {s['max']:.2f} |"
                  for stage, s in latency.items()]
    return write_report(result, Path(out_dir), title, lines)


def report_summary(result: dict[str, Any], paths: Sequence[Path]) -> str:
    """One log line for a written stream report: mIoU, scored and unmatched frames, the files."""
    frames = result["frames"]
    miou = "n/a" if result["miou"] is None else f"{100 * result['miou']:.2f}"
    kind = "partial report" if result.get("partial") else "final report"
    return (f"{kind}: mIoU {miou} over {frames['scored']} frames; unmatched ground truth "
            f"{frames['unmatched_ground_truth']}, labels {frames['unmatched_predictions']}; wrote "
            + ", ".join(str(p) for p in paths))


class StreamReport:
    """Where a `StreamEvaluator`'s report goes and when: on request, every `every` matched frames while the
    stream runs (marked partial, so a run that is killed still leaves a valid report; 0 = never), and once
    at the end (final)."""

    def __init__(self, evaluator: StreamEvaluator, out_dir: str | Path, title: str, every: int = 0) -> None:
        if every < 0:
            raise ValueError(f"the report interval must be 0 (off) or a positive number of frames, got {every}")
        self.evaluator = evaluator
        self.out_dir = Path(out_dir)
        self.title = title
        self.every = every
        self._next_due = every

    def write(self, final: bool = False) -> str:
        """Write the report now (`final`: the stream has ended, see `StreamEvaluator.result`); returns the
        summary line (`report_summary`). OSError when the folder or a file cannot be written."""
        result = self.evaluator.result(final=final)
        return report_summary(result, write_stream_report(result, self.out_dir, self.title))

    def write_if_due(self) -> str | None:
        """Write a partial report when `every` more frames have been matched since the last one; returns its
        summary, or None when none was due."""
        matched = self.evaluator.matched
        if not self.every or matched < self._next_due:
            return None
        self._next_due = (matched // self.every + 1) * self.every
        return self.write(final=False)
