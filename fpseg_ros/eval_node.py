"""The `fpseg_eval` ROS 2 node: scores the fpseg node's labels against ground truth while a bag plays.

Subscribes to the fpseg node's ~/labels, ~/label_info and ~/stats and to the ground truth published by
`ros2 bag play` (a bag from `fpseg bag-from-cityscapes --with-gt`); pairs labels and ground truth by header
stamp and accumulates the Cityscapes confusion matrix in the ROS-free `StreamEvaluator` (the same code as
`fpseg eval-bag`). The report (results.json / .md / confusion.png, as `fpseg eval-labels` writes, with frame
counts and latency) is written on ~/write_report (std_srvs/Trigger), every `report_every` matched frames
(marked partial, so a killed run still leaves one) and, final, when the node shuts down; every file is
replaced atomically and the final write is shielded from the repeated SIGINT of `ros2 launch`.
Written against the rclpy API common to Humble and Jazzy.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from rclpy.exceptions import ParameterException
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image
from std_srvs.srv import Trigger
from vision_msgs.msg import LabelInfo

from fpseg_core.replay.conventions import GT_TOPIC, LABEL_INFO_TOPIC, LABELS_TOPIC, STATS_TOPIC
from fpseg_core.replay.evaluator import StreamEvaluator, StreamReport
from fpseg_core.replay.parameters import EVAL_PARAMETERS
from fpseg_ros.msg import SegmentationStats
from fpseg_ros.parameters import descriptor
from fpseg_ros.spin import run_node

NODE_NAME = "fpseg_eval"
LOG_THROTTLE_S = 5.0
# Reliable, so that no frame is lost between the nodes on the evaluator's side (a frame the fpseg node
# itself skips is counted as unmatched ground truth). Compatible with the fpseg node's and the player's
# reliable publishers.
STREAM_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=50, reliability=ReliabilityPolicy.RELIABLE)
LABEL_INFO_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE,
                            durability=DurabilityPolicy.TRANSIENT_LOCAL)


class EvalNode(Node):
    """Evaluates the fpseg node against /camera/gt_labels (see the module docstring)."""

    def __init__(self, **node_kwargs: Any) -> None:
        super().__init__(NODE_NAME, **node_kwargs)
        # rclpy refuses values of the wrong type or outside a declared range (ParameterException).
        values = {p.name: self.declare_parameter(p.name, p.default, descriptor(p)).value for p in EVAL_PARAMETERS}
        self.report_on_shutdown = bool(values["report_on_shutdown"])
        self._evaluator = StreamEvaluator(values["max_pending"])
        self._report = StreamReport(self._evaluator, Path(values["report_dir"]).expanduser(), values["title"],
                                    values["report_every"])

        self.create_subscription(Image, LABELS_TOPIC, self._on_labels, STREAM_QOS)
        self.create_subscription(Image, GT_TOPIC, self._on_ground_truth, STREAM_QOS)
        self.create_subscription(LabelInfo, LABEL_INFO_TOPIC, self._on_label_info, LABEL_INFO_QOS)
        self.create_subscription(SegmentationStats, STATS_TOPIC, self._evaluator.on_stats, STREAM_QOS)
        self.create_service(Trigger, "~/write_report", self._on_write_report)
        self.get_logger().info(
            f"scoring {self.resolve_topic_name(LABELS_TOPIC)} against {self.resolve_topic_name(GT_TOPIC)}; "
            f"report in {self._report.out_dir} on ~/write_report and at shutdown"
            + (f", partial every {self._report.every} matched frames" if self._report.every else "")
        )

    def _on_labels(self, msg: Image) -> None:
        self._warn_if_dropped(self._evaluator.on_labels(msg))
        self._write_partial_if_due()

    def _on_ground_truth(self, msg: Image) -> None:
        self._warn_if_dropped(self._evaluator.on_ground_truth(msg))
        self._write_partial_if_due()

    def _write_partial_if_due(self) -> None:
        try:
            summary = self._report.write_if_due()
        except OSError as exc:
            self.get_logger().error(f"cannot write the partial report to {self._report.out_dir}: {exc}",
                                    throttle_duration_sec=LOG_THROTTLE_S)
            return
        if summary is not None:
            self.get_logger().info(summary)

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
            response.success, response.message = False, f"cannot write the report to {self._report.out_dir}: {exc}"
        return response

    def write_report(self, final: bool) -> str:
        """Write the report (with `final`, frames still waiting count as unmatched); returns a summary."""
        summary = self._report.write(final=final)
        self.get_logger().info(summary)
        return summary

    def shut_down(self) -> None:
        """Write the final report (when report_on_shutdown) and destroy the node; call inside DeferredSignals."""
        try:
            if self.report_on_shutdown:
                self.write_report(final=True)
        except OSError as exc:  # e.g. an unwritable report_dir: say so, still shut down cleanly
            self.get_logger().error(f"could not write the final report: {exc}")
        self.destroy_node()


def main(args: list[str] | None = None) -> int:
    # The final report is written in shut_down, shielded from the repeated SIGINT of `ros2 launch`.
    return run_node(args, EvalNode, NODE_NAME, (ParameterException,), EvalNode.shut_down)


if __name__ == "__main__":
    sys.exit(main())
