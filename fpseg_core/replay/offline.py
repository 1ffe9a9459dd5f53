"""`fpseg eval-bag`: evaluate on a bag without ROS, through the node's own per-frame pipeline.

`evaluate_bag` feeds each /camera/image_raw message to the segmentation node's ROS-free
`SegmentationController` (same decoding, class selection, threshold and fusion as the running node) and
scores its labels against /camera/gt_labels with the `StreamEvaluator` the evaluator node uses, so results
with and without ROS can be compared. `evaluate_recorded_bag` scores what a running node published, from a
bag recorded with `ros2 bag record`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fpseg_core.runtime.controller import FrameResult, SegmentationController

from ..predictor import FPSeg
from ..runtime.image_codec import stamp_ns
from .bag_reader import BagReader
from .conventions import GT_TOPIC, IMAGE_TOPIC, LABEL_INFO_TOPIC, LABELS_TOPIC, STATS_TOPIC
from .evaluator import StreamEvaluator
from .pairing import DEFAULT_MAX_PENDING

GT_HINT = "Convert the bag with `fpseg bag-from-cityscapes ... --with-gt`"


class ReplayClock:
    """The node's clock as seen by a frame read from a bag: the frame arrives at its own header stamp and
    time then runs on the wall clock, so the controller's latency_ms is the time from reading the message
    to its labels being ready (on the robot it also includes transport and queueing)."""

    def __init__(self) -> None:
        self._offset_ns = time.time_ns() - time.perf_counter_ns()

    def frame_arrived(self, stamp: int) -> None:
        self._offset_ns = stamp - time.perf_counter_ns()

    def __call__(self) -> int:
        return self._offset_ns + time.perf_counter_ns()


def evaluate_bag(
    bag: str | Path,
    fpseg: FPSeg,
    classes: Sequence[str] | None = None,
    fusion: str = "argmax",
    score_threshold: float = 0.5,
    image_topic: str = IMAGE_TOPIC,
    gt_topic: str = GT_TOPIC,
    max_pending: int = DEFAULT_MAX_PENDING,
    progress: bool = True,
) -> dict[str, Any]:
    """Segment every image of `bag` as the node would and score it: `StreamEvaluator.result(final=True)`.

    `classes` (default: the whole bank), `fusion` and `score_threshold` (a probability, 0.5 = logit > 0)
    are the node's run-time parameters of the same names.
    """
    clock = ReplayClock()
    controller = SegmentationController(fpseg, classes=classes, fusion=fusion, score_threshold=score_threshold,
                                        clock_ns=clock)
    evaluator = StreamEvaluator(max_pending)
    evaluator.set_class_map(controller.label_map().items())
    with BagReader(bag) as reader:
        reader.require([image_topic, gt_topic], hint=GT_HINT)
        for topic, _, msg in reader.messages([image_topic, gt_topic], progress=progress):
            if topic == gt_topic:
                evaluator.on_ground_truth(msg)
                continue
            try:
                clock.frame_arrived(stamp_ns(msg.header))
            except AttributeError as exc:
                evaluator.reject(f"image without a valid header stamp: {exc}")
                continue
            outcome = controller.handle(msg)
            if isinstance(outcome, FrameResult):
                evaluator.add_labels(stamp_ns(outcome.header), outcome.labels)
                evaluator.on_stats(outcome.stats)
            else:
                evaluator.reject(outcome.reason)
    return evaluator.result(final=True)


def evaluate_recorded_bag(
    bag: str | Path,
    labels_topic: str = LABELS_TOPIC,
    label_info_topic: str = LABEL_INFO_TOPIC,
    stats_topic: str = STATS_TOPIC,
    gt_topic: str = GT_TOPIC,
    max_pending: int = DEFAULT_MAX_PENDING,
    progress: bool = True,
) -> dict[str, Any]:
    """Score the node's recorded ~/labels against the recorded ground truth (latency from ~/stats when the
    bag has it): `StreamEvaluator.result(final=True)`."""
    evaluator = StreamEvaluator(max_pending)
    handlers = {labels_topic: evaluator.on_labels, label_info_topic: evaluator.on_label_info,
                gt_topic: evaluator.on_ground_truth, stats_topic: evaluator.on_stats}
    with BagReader(bag) as reader:
        reader.require([labels_topic, label_info_topic, gt_topic], hint=(
            f"Record the node's outputs with the ground truth: ros2 bag record {labels_topic} "
            f"{label_info_topic} {stats_topic} {gt_topic}"))
        topics = [topic for topic in handlers if topic in reader.topics]
        for topic, _, msg in reader.messages(topics, progress=progress):
            handlers[topic](msg)
    return evaluator.result(final=True)
