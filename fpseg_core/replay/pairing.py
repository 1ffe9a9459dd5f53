"""Pair the node's label images with ground truth by header stamp, and read the node's label ids.

ROS-free: the evaluator node, `fpseg eval-bag` and `fpseg eval-bag --recorded` all feed these.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any, Generic, TypeVar

from ..constants import MAX_CLASSES

Prediction = TypeVar("Prediction")
GroundTruth = TypeVar("GroundTruth")
Pair = tuple[int, Prediction, GroundTruth]

DEFAULT_MAX_PENDING = 100


@dataclass
class PairingCounts:
    """Frames paired so far and frames that will never be (evicted from a full buffer, or left at the end)."""

    matched: int = 0
    unmatched_predictions: int = 0
    unmatched_ground_truth: int = 0
    duplicate_predictions: int = 0
    duplicate_ground_truth: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class StampPairer(Generic[Prediction, GroundTruth]):
    """Matches predictions and ground-truth frames with equal header stamps (nanoseconds).

    Either stream may run ahead of the other; items wait in one buffer per stream of at most `max_pending`
    entries. When a buffer is full its oldest stamp is evicted and counted unmatched, so a node that drops
    frames (or ground truth that never comes) is counted, never silently ignored, and memory stays bounded.
    A second item with a stamp already waiting on the same stream is counted as a duplicate and dropped.
    """

    def __init__(self, max_pending: int = DEFAULT_MAX_PENDING) -> None:
        if max_pending < 1:
            raise ValueError(f"max_pending must be at least 1, got {max_pending}")
        self.max_pending = max_pending
        self.counts = PairingCounts()
        self._predictions: OrderedDict[int, Prediction] = OrderedDict()
        self._ground_truth: OrderedDict[int, GroundTruth] = OrderedDict()

    @property
    def pending_predictions(self) -> int:
        return len(self._predictions)

    @property
    def pending_ground_truth(self) -> int:
        return len(self._ground_truth)

    def add_prediction(self, stamp: int, prediction: Prediction) -> Pair | None:
        """(stamp, prediction, ground truth) when the ground truth of `stamp` is waiting, else None."""
        if stamp in self._predictions:
            self.counts.duplicate_predictions += 1
            return None
        ground_truth = self._ground_truth.pop(stamp, None)
        if ground_truth is None:
            self._wait(self._predictions, stamp, prediction, "unmatched_predictions")
            return None
        self.counts.matched += 1
        return stamp, prediction, ground_truth

    def add_ground_truth(self, stamp: int, ground_truth: GroundTruth) -> Pair | None:
        """(stamp, prediction, ground truth) when the prediction of `stamp` is waiting, else None."""
        if stamp in self._ground_truth:
            self.counts.duplicate_ground_truth += 1
            return None
        prediction = self._predictions.pop(stamp, None)
        if prediction is None:
            self._wait(self._ground_truth, stamp, ground_truth, "unmatched_ground_truth")
            return None
        self.counts.matched += 1
        return stamp, prediction, ground_truth

    def finish(self) -> PairingCounts:
        """Count everything still waiting as unmatched (end of the stream) and return the counts."""
        self.counts.unmatched_predictions += len(self._predictions)
        self.counts.unmatched_ground_truth += len(self._ground_truth)
        self._predictions.clear()
        self._ground_truth.clear()
        return self.counts

    def _wait(self, buffer: OrderedDict[int, Any], stamp: int, item: Any, evicted_counter: str) -> None:
        buffer[stamp] = item
        if len(buffer) > self.max_pending:
            del buffer[min(buffer)]
            setattr(self.counts, evicted_counter, getattr(self.counts, evicted_counter) + 1)


def bank_names_from_class_map(class_map: Iterable[tuple[int, str]]) -> list[str]:
    """vision_msgs/LabelInfo class_map [(class_id, class_name)] -> names with names[v - 1] for label value v.

    The node's label value v is 1 + bank index and class_id 0 is "none", so id 0 is skipped. Ids the map does
    not list get the empty name, which no Cityscapes class has (those pixels count as "no prediction").
    """
    names: dict[int, str] = {}
    for class_id, name in class_map:
        if class_id < 0 or class_id > MAX_CLASSES:
            raise ValueError(f"class_id {class_id} ({name!r}) is outside the label range 0..{MAX_CLASSES} (255 is "
                             "vision_msgs' 'unlabeled')")
        if class_id in names and names[class_id] != name:
            raise ValueError(f"class_id {class_id} is listed twice, as {names[class_id]!r} and {name!r}")
        if class_id:
            names[class_id] = name
    return [names.get(value, "") for value in range(1, max(names, default=0) + 1)]
