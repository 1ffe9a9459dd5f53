"""The `fpseg` ROS 2 node: images in; label image, colour overlay, stats and label map out.

Thin by design: parameters come from the table in parameters.py, and all work (class switching, prompt
loading, decoding, inference on a worker thread, statistics) is done by the ROS-free
SegmentationController. Written against the rclpy API common to Humble and Jazzy.
"""

from __future__ import annotations

import sys
import traceback
from typing import Any

import rclpy
from rcl_interfaces.msg import SetParametersResult
from rclpy.clock import Clock, ClockType
from rclpy.exceptions import ParameterException
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image
from vision_msgs.msg import LabelInfo, VisionClass

from fpseg_core.errors import FPSegError
from fpseg_core.runtime.controller import (
    FrameResult,
    PromptUpdate,
    Rejection,
    SegmentationController,
    load_pipeline,
)
from fpseg_core.runtime.image_codec import fill_image
from fpseg_core.runtime.parameters import PARAMETERS, RUNTIME_PARAMETERS, ParameterSpec
from fpseg_ros.msg import SegmentationStats
from fpseg_ros.parameters import descriptor
from fpseg_ros.spin import run_node
from fpseg_ros.srv import LoadPrompts

NODE_NAME = "fpseg"
LOG_THROTTLE_S = 5.0
STOP_TIMEOUT_S = 30.0
WATCHDOG_PERIOD_S = 1.0  # how often the node checks that its inference thread is still alive
# Sensor-data QoS (best effort, volatile) with depth 1: only the newest camera frame matters.
INPUT_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.BEST_EFFORT,
                       durability=DurabilityPolicy.VOLATILE)
IMAGE_OUTPUT_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1)
STATS_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10)
# Latched: a late subscriber still gets the current label map.
LABEL_INFO_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE,
                            durability=DurabilityPolicy.TRANSIENT_LOCAL)


class FPSegNode(Node):
    """Subscribes to `image` (or `image/compressed`); publishes ~/labels, ~/color, ~/stats, ~/label_info;
    serves ~/load_prompts. See README, "Running on a robot"."""

    def __init__(self, **node_kwargs: Any) -> None:
        super().__init__(NODE_NAME, **node_kwargs)
        try:
            self._controller = self._create_controller()
        except BaseException:
            super().destroy_node()
            raise
        self.add_on_set_parameters_callback(self._on_set_parameters)

        self._labels_pub = self.create_publisher(Image, "~/labels", IMAGE_OUTPUT_QOS)
        self._color_pub = self.create_publisher(Image, "~/color", IMAGE_OUTPUT_QOS)
        self._stats_pub = self.create_publisher(SegmentationStats, "~/stats", STATS_QOS)
        self._label_info_pub = self.create_publisher(LabelInfo, "~/label_info", LABEL_INFO_QOS)
        self._publish_label_info()
        self.create_service(LoadPrompts, "~/load_prompts", self._on_load_prompts)

        self._controller.start(self._publish, self._report, self._on_publish_error)
        compressed = self.get_parameter("compressed_input").value
        self._subscription = self.create_subscription(
            CompressedImage if compressed else Image, "image/compressed" if compressed else "image",
            self._controller.submit, INPUT_QOS,
        )
        # Steady clock: the check must run whether or not a (simulated) /clock is ticking.
        self._watchdog = self.create_timer(WATCHDOG_PERIOD_S, self._check_worker,
                                           clock=Clock(clock_type=ClockType.STEADY_TIME))
        self.get_logger().info(
            f"segmenting {self._subscription.topic_name} with backend {self._controller.backend_name}; "
            f"bank: {', '.join(self._controller.available)}; active: {', '.join(self._controller.active)}"
        )

    def _declare(self, spec: ParameterSpec, default: Any) -> Any:
        value = self.declare_parameter(spec.name, default, descriptor(spec)).value
        reason = spec.check_choice(value)
        if reason:
            raise ValueError(reason)
        return value

    def _create_controller(self) -> SegmentationController:
        values = {spec.name: self._declare(spec, spec.default) for spec in PARAMETERS if spec.default is not None}
        pipeline = load_pipeline(
            values["checkpoint"], values["prompts"], values["backend"], values["engine_dir"], values["device"],
            values["input_mode"],
        )
        startup_defaults = {"classes": pipeline.classes}
        values.update({spec.name: self._declare(spec, startup_defaults[spec.name])
                       for spec in PARAMETERS if spec.default is None})
        return SegmentationController(
            pipeline,
            classes=values["classes"],
            fusion=values["fusion"],
            score_threshold=values["score_threshold"],
            publish_color=values["publish_color"],
            stats_window=values["stats_window"],
            max_classes=values["max_classes"],
            compressed_input=values["compressed_input"],
            clock_ns=lambda: self.get_clock().now().nanoseconds,
        )

    # ------------------------------------------------------------------------------------ callbacks
    def _on_set_parameters(self, parameters: list[Parameter]) -> SetParametersResult:
        changes = {p.name: p.value for p in parameters if p.name in RUNTIME_PARAMETERS}
        if not changes:
            return SetParametersResult(successful=True)
        try:
            self._controller.update(changes)
        except ValueError as exc:
            return SetParametersResult(successful=False, reason=str(exc))
        if {"classes", "score_threshold"} & changes.keys():
            self._publish_label_info()
        return SetParametersResult(successful=True)

    def _on_load_prompts(self, request: LoadPrompts.Request, response: LoadPrompts.Response
                         ) -> LoadPrompts.Response:
        # Never raises: an exception in a service callback would end rclpy.spin and with it the node.
        try:
            update = self._controller.load_prompts(request.path, list(request.classes), request.replace,
                                                   request.activate)
            if update.success:
                self.get_logger().info(update.message)
                # Keep the parameter in step with the active classes; its callback re-validates them and
                # republishes ~/label_info for the new bank.
                self.set_parameters([Parameter("classes", Parameter.Type.STRING_ARRAY, update.active)])
            else:
                self.get_logger().warning(f"load_prompts refused: {update.message}")
        except Exception as exc:
            message = f"{request.path}: load_prompts failed: {type(exc).__name__}: {exc}"
            self.get_logger().error(message)
            update = PromptUpdate(False, message, self._controller.available, self._controller.active)
        response.success = update.success
        response.message = update.message
        response.available = update.available
        response.active = update.active
        return response

    def _check_worker(self) -> None:
        """Watchdog: if the inference thread died, say why and shut down so that main() exits non-zero."""
        cause = self._controller.death_cause
        if cause is None:
            return
        self._watchdog.cancel()
        details = "".join(traceback.format_exception(type(cause), cause, cause.__traceback__)).rstrip()
        self.get_logger().fatal(f"the inference thread died ({cause!r}); no frame can be segmented any more, "
                                f"exiting with status 1 so that respawn / systemd restarts the node:\n{details}")
        rclpy.try_shutdown(context=self.context)

    # ------------------------------------------------------------- outputs (called on the worker thread)
    def _publish(self, result: FrameResult) -> None:
        self._labels_pub.publish(fill_image(Image(header=result.header), result.labels, "mono8"))
        if result.overlay is not None:
            self._color_pub.publish(fill_image(Image(header=result.header), result.overlay, "rgb8"))
        self._stats_pub.publish(SegmentationStats(header=result.header, **result.stats.fields()))

    def _report(self, rejection: Rejection) -> None:
        if rejection.malformed:
            self.get_logger().warning(rejection.reason, throttle_duration_sec=LOG_THROTTLE_S)
        else:
            self.get_logger().error(rejection.reason, throttle_duration_sec=LOG_THROTTLE_S)

    def _on_publish_error(self, exc: BaseException) -> None:
        """A publish or report callback raised (the frame is counted in failed_frames; the thread goes on)."""
        if not self.context.ok():  # Ctrl-C shut the context down while a result was being published
            return
        self.get_logger().error(f"publishing a result failed: {exc!r}", throttle_duration_sec=LOG_THROTTLE_S)

    @property
    def worker_died(self) -> bool:
        """The inference thread died (the process must exit non-zero)."""
        return self._controller.death_cause is not None

    def _publish_label_info(self) -> None:
        msg = LabelInfo()
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.class_map = [VisionClass(class_id=value, class_name=name)
                         for value, name in self._controller.label_map().items()]
        msg.threshold = float(self._controller.score_threshold)
        self._label_info_pub.publish(msg)

    def destroy_node(self) -> None:
        """Stop the inference thread (after the frame in progress), then destroy the ROS entities."""
        if not self._controller.stop(STOP_TIMEOUT_S):
            self.get_logger().error(f"the inference thread did not stop within {STOP_TIMEOUT_S:.0f} s")
        super().destroy_node()


def main(args: list[str] | None = None) -> int:
    # Bad parameters (rclpy refuses a wrong type or an out-of-range value with a ParameterException, which is
    # not a ValueError), unreadable files, a backend that cannot run here: say why, in one line, and exit 1;
    # so does a dead inference thread (the watchdog shuts the node down), for respawn / systemd to restart it.
    return run_node(args, FPSegNode, NODE_NAME,
                    (ParameterException, FPSegError, ValueError, OSError, ImportError, RuntimeError),
                    FPSegNode.destroy_node, lambda node: 1 if node.worker_died else 0)


if __name__ == "__main__":
    sys.exit(main())
