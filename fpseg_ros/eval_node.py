"""The `fpseg_eval` ROS 2 node: scores the fpseg node's labels against ground truth while a bag plays.

Subscribes to the fpseg node's ~/labels, ~/label_info and ~/stats and to the ground truth published by
`ros2 bag play` (a bag from `fpseg bag-from-cityscapes --with-gt`); pairs labels and ground truth by header
stamp and accumulates the Cityscapes confusion matrix in the ROS-free `StreamEvaluator` (the same code as
`fpseg eval-bag`). The report (results.json / .md / confusion.png, as `fpseg eval-labels` writes, with frame
counts and latency) is written on ~/write_report (std_srvs/Trigger) and when the node shuts down.
Written against the rclpy API common to Humble and Jazzy.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import rclpy
from rcl_interfaces.msg import IntegerRange, ParameterDescriptor
from rclpy.exceptions import ParameterException
from rclpy.executors import ExternalShutdownException
from rclpy.logging import get_logger
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image
from std_srvs.srv import Trigger
from vision_msgs.msg import LabelInfo

from fpseg_core.replay.conventions import GT_TOPIC, LABEL_INFO_TOPIC, LABELS_TOPIC, STATS_TOPIC
from fpseg_core.replay.evaluator import StreamEvaluator, write_stream_report
from fpseg_core.replay.pairing import DEFAULT_MAX_PENDING
from fpseg_ros.msg import SegmentationStats

NODE_NAME = "fpseg_eval"
LOG_THROTTLE_S = 5.0
MAX_PENDING_RANGE = (1, 10_000)
# Reliable, so that no frame is lost between the nodes on the evaluator's side (a frame the fpseg node
# itself skips is counted as unmatched ground truth). Compatible with the fpseg node's and the player's
# reliable publishers.
STREAM_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=50, reliability=ReliabilityPolicy.RELIABLE)
LABEL_INFO_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE,
                            durability=DurabilityPolicy.TRANSIENT_LOCAL)


@dataclass(frozen=True)
class EvalParameter:
    name: str
    default: Any
    description: str
    integer_range: tuple[int, int] | None = None

    def descriptor(self) -> ParameterDescriptor:
        descriptor = ParameterDescriptor(description=self.description, read_only=True)
        if self.integer_range:
            low, high = self.integer_range
            descriptor.integer_range = [IntegerRange(from_value=low, to_value=high, step=1)]
        return descriptor


PARAMETERS = (
    EvalParameter("report_dir", "fpseg_eval",
                  "Folder for results.json, results.md and confusion.png ('~' is expanded; relative to the "
                  "working directory). Read-only."),
    EvalParameter("title", "fpseg node on Cityscapes", "Title of the report. Read-only."),
    EvalParameter("max_pending", DEFAULT_MAX_PENDING,
                  "Frames that may wait for their partner (labels or ground truth); beyond that the oldest "
                  "is counted as unmatched. Read-only.", MAX_PENDING_RANGE),
    EvalParameter("report_on_shutdown", True, "Write the final report when the node shuts down. Read-only."),
)


class EvalNode(Node):
    """Evaluates the fpseg node against /camera/gt_labels (see the module docstring)."""

    def __init__(self, **node_kwargs: Any) -> None:
        super().__init__(NODE_NAME, **node_kwargs)
        # rclpy refuses values of the wrong type or outside a declared range (ParameterException).
        values = {p.name: self.declare_parameter(p.name, p.default, p.descriptor()).value for p in PARAMETERS}
        self._report_dir = Path(values["report_dir"]).expanduser()
        self._title = values["title"]
        self.report_on_shutdown = bool(values["report_on_shutdown"])
        self._evaluator = StreamEvaluator(values["max_pending"])

        self.create_subscription(Image, LABELS_TOPIC, self._on_labels, STREAM_QOS)
        self.create_subscription(Image, GT_TOPIC, self._on_ground_truth, STREAM_QOS)
        self.create_subscription(LabelInfo, LABEL_INFO_TOPIC, self._on_label_info, LABEL_INFO_QOS)
        self.create_subscription(SegmentationStats, STATS_TOPIC, self._evaluator.on_stats, STREAM_QOS)
        self.create_service(Trigger, "~/write_report", self._on_write_report)
        self.get_logger().info(
            f"scoring {self.resolve_topic_name(LABELS_TOPIC)} against {self.resolve_topic_name(GT_TOPIC)}; "
            f"report in {self._report_dir} on ~/write_report and at shutdown"
        )

    def _on_labels(self, msg: Image) -> None:
        self._warn_if_dropped(self._evaluator.on_labels(msg))

    def _on_ground_truth(self, msg: Image) -> None:
        self._warn_if_dropped(self._evaluator.on_ground_truth(msg))

    def _on_label_info(self, msg: LabelInfo) -> None:
        try:
            self._evaluator.on_label_info(msg)
        except ValueError as exc:
            self.get_logger().error(f"ignored a label info message: {exc}")
            return
        self.get_logger().info(f"label map: {len(msg.class_map)} values")

    def _warn_if_dropped(self, reason: str | None) -> None:
        if reason is not None:
            self.get_logger().warning(f"dropped a message: {reason}", throttle_duration_sec=LOG_THROTTLE_S)

    def _on_write_report(self, _request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        try:
            response.message = self.write_report(final=False)
            response.success = True
        except OSError as exc:
            response.success, response.message = False, f"cannot write the report to {self._report_dir}: {exc}"
        return response

    def write_report(self, final: bool) -> str:
        """Write the report (with `final`, frames still waiting count as unmatched); returns a summary."""
        result = self._evaluator.result(final=final)
        paths = write_stream_report(result, self._report_dir, self._title)
        frames = result["frames"]
        miou = "n/a" if result["miou"] is None else f"{100 * result['miou']:.2f}"
        summary = (f"mIoU {miou} over {frames['scored']} frames; unmatched ground truth "
                   f"{frames['unmatched_ground_truth']}, labels {frames['unmatched_predictions']}; wrote "
                   + ", ".join(str(p) for p in paths))
        self.get_logger().info(summary)
        return summary


def main(args: list[str] | None = None) -> int:
    rclpy.init(args=args)
    try:
        node = EvalNode()
    except (ParameterException, KeyboardInterrupt) as exc:
        if not isinstance(exc, KeyboardInterrupt):
            get_logger(NODE_NAME).fatal(f"cannot start: {exc}")
        rclpy.try_shutdown()
        return 0 if isinstance(exc, KeyboardInterrupt) else 1
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        try:
            if node.report_on_shutdown:
                node.write_report(final=True)
        except OSError as exc:  # e.g. an unwritable report_dir: say so, still shut down cleanly
            get_logger(NODE_NAME).error(f"could not write the final report: {exc}")
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
