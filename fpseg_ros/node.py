"""The `fpseg` ROS 2 node: images in; label image, colour overlay, confidence, stats and label map out.

A managed (lifecycle) node: configure loads the model, activate subscribes and starts the inference thread,
deactivate stops both (the model stays loaded), cleanup frees the model, shutdown stops everything. With
`autostart` (default) it configures and activates itself at start-up.

With `region_checkpoint` it also classifies regions on the segmented frames' embeddings (no second encoder
pass): polygons through ~/classify_regions, and detections in on `detections`, out with a class on ~/detections.

Thin by design: parameters come from the table in parameters.py, and all work (class switching, prompt
loading, decoding, inference on a worker thread, latency budget, statistics, health) is done by the ROS-free
SegmentationController. Written against the rclpy API common to Humble and Jazzy.
"""

from __future__ import annotations

import sys
import time
import traceback
from functools import partial
from typing import Any

from diagnostic_msgs.msg import DiagnosticStatus
from diagnostic_updater import DiagnosticStatusWrapper, Updater
from rcl_interfaces.msg import SetParametersResult
from rclpy.clock import Clock, ClockType
from rclpy.exceptions import ParameterException
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.publisher import Publisher
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.qos_overriding_options import QoSOverridingOptions
from rclpy.subscription import Subscription
from sensor_msgs.msg import CompressedImage, Image
from vision_msgs.msg import Detection2DArray, LabelInfo, ObjectHypothesis, ObjectHypothesisWithPose, VisionClass

from fpseg_core.errors import FPSegError
from fpseg_core.runtime.controller import (
    FrameResult,
    PromptUpdate,
    Rejection,
    SegmentationController,
    free_device_memory,
    load_pipeline,
)
from fpseg_core.runtime.health import Level, lifecycle_health
from fpseg_core.runtime.heap_probe import HEAP_PROFILE_ENV, HeapProbe
from fpseg_core.runtime.image_codec import fill_image, stamp_ns
from fpseg_core.runtime.parameters import (
    PARAMETER_BY_NAME,
    PARAMETERS,
    RUNTIME_PARAMETERS,
    ParameterSpec,
    camera_names,
)
from fpseg_core.runtime.regions import NS_PER_S, RegionReply, load_region_classifier
from fpseg_ros.msg import SegmentationStats
from fpseg_ros.parameters import descriptor
from fpseg_ros.spin import NodeFailedError, run_node
from fpseg_ros.srv import ClassifyRegions, LoadPrompts

NODE_NAME = "fpseg"
DIAGNOSTIC_TASK = "segmentation"  # published as "fpseg: segmentation" ("/<namespace>/fpseg: ..." in a namespace)
DIAGNOSTIC_FQN_PARAMETER = "diagnostic_updater.use_fqn"  # diagnostic_updater's own parameter
DIAGNOSTIC_LEVELS = {Level.OK: DiagnosticStatus.OK, Level.WARN: DiagnosticStatus.WARN,
                     Level.ERROR: DiagnosticStatus.ERROR}
LOG_THROTTLE_S = 5.0
STOP_TIMEOUT_S = 30.0
WATCHDOG_PERIOD_S = 1.0  # how often the node checks that its inference thread is still alive
HEAP_TIMER_S = 5.0  # how often a heap probe (FPSEG_HEAP_PROFILE) is asked whether a sample is due
# Default QoS of each kind of topic, as keyword arguments of QoSProfile. A fresh profile is built for every
# publisher and subscription: rclpy writes a topic's QoS overrides into the profile object it is given, so a
# shared object would carry one topic's override over to the next.
QOS_DEFAULTS: dict[str, dict[str, Any]] = {
    # Sensor data (best effort, volatile) with depth 1: only the newest camera frame matters.
    "input": {"depth": 1, "reliability": ReliabilityPolicy.BEST_EFFORT, "durability": DurabilityPolicy.VOLATILE},
    "image_output": {"depth": 1},
    "stats": {"depth": 10},
    # Detections (in and out): reliable, a few messages deep; every box matters, not only the newest.
    "detections": {"depth": 10},
    # Latched: a late subscriber still gets the current label map.
    "label_info": {"depth": 1, "reliability": ReliabilityPolicy.RELIABLE,
                   "durability": DurabilityPolicy.TRANSIENT_LOCAL},
}
# Every topic takes the standard QoS overrides (qos_overrides.<topic>.<publisher|subscription>.<policy>).
QOS_OVERRIDES = QoSOverridingOptions.with_default_policies()


def qos(kind: str) -> QoSProfile:
    """A new QoS profile of one kind of topic (see QOS_DEFAULTS)."""
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, **QOS_DEFAULTS[kind])


IMAGE_OUTPUTS = ("labels", "color", "confidence", "stats")  # per camera


def _topic(camera: str, name: str) -> str:
    """A per-camera topic: `name` for the single camera (''), `camera`/`name` with `cameras`."""
    return f"{camera}/{name}" if camera else name


class FPSegNode(LifecycleNode):
    """Subscribes to `image` (or `image/compressed`) while active; publishes ~/labels, ~/color, ~/confidence,
    ~/stats, ~/label_info and /diagnostics; serves ~/load_prompts and ~/classify_regions. With `cameras`, the
    same per camera: <camera>/image in, ~/<camera>/labels etc. out (one ~/label_info). With region_checkpoint,
    also subscribes to `detections` and publishes ~/detections. See README, "Running on a robot"."""

    def __init__(self, **node_kwargs: Any) -> None:
        super().__init__(NODE_NAME, **node_kwargs)
        for spec in PARAMETERS:
            self._declare(spec)
        self._cameras = camera_names(self.get_parameter("cameras").value) or ("",)
        self._controller: SegmentationController | None = None
        self._outputs: dict[tuple[str, str], Publisher] = {}  # (camera, output) -> publisher
        self._inputs: list[Subscription] = []  # ours; rclpy's Node keeps its own _subscriptions
        self._state = "unconfigured"
        self._configure_failure = ""
        self._worker_died = False
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.create_service(LoadPrompts, "~/load_prompts", self._on_load_prompts)
        self.create_service(ClassifyRegions, "~/classify_regions", self._on_classify_regions)
        if self.get_namespace() != "/" and not self.has_parameter(DIAGNOSTIC_FQN_PARAMETER):
            # Two fpseg nodes (e.g. one per robot or camera namespace) would both report "fpseg: segmentation";
            # diagnostic_updater >= 3.2 then names the status "/<namespace>/fpseg: segmentation" (older ones
            # ignore the parameter). A launch-time value (-p diagnostic_updater.use_fqn:=false) still wins.
            self.declare_parameter(DIAGNOSTIC_FQN_PARAMETER, True)
        self._diagnostics = Updater(self)
        self._diagnostics.setHardwareID("none")
        self._diagnostics.add(DIAGNOSTIC_TASK, self._diagnose)
        # Steady clock: the check must run whether or not a (simulated) /clock is ticking.
        steady = Clock(clock_type=ClockType.STEADY_TIME)
        self._watchdog = self.create_timer(WATCHDOG_PERIOD_S, self._check_worker, clock=steady)
        # Soak runs only: the Python heap's growth by line, written to $FPSEG_HEAP_PROFILE (see heap_probe.py).
        self._heap = HeapProbe.from_environment()
        if self._heap is not None:
            self._heap.start(time.monotonic())
            self.create_timer(HEAP_TIMER_S, lambda: self._heap.maybe_sample(time.monotonic()), clock=steady)
            self.get_logger().warning(f"{HEAP_PROFILE_ENV} is set: tracing the Python heap into {self._heap.path} "
                                      f"every {self._heap.interval_s:.0f} s (slower; for soak runs only)")
        if self.get_parameter("autostart").value and self.trigger_configure() == TransitionCallbackReturn.SUCCESS:
            self.trigger_activate()

    def _declare(self, spec: ParameterSpec) -> None:
        """Declare one parameter of the table; a launch-time value that is not one of its choices stops start-up.
        `classes` (default None) stays unset unless given: configure then takes the whole bank."""
        value = self.declare_parameter(spec.name, spec.default, descriptor(spec)).value
        reason = spec.check_choice(value)
        if reason:
            raise ValueError(reason)

    # --------------------------------------------------------------------------------- lifecycle
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Load the checkpoint, bank and backend; create the publishers. A failure leaves the node unconfigured."""
        try:
            self._controller = self._create_controller()
            self._create_outputs()
        # Whatever stops the model from loading (bad file, missing GPU, a bad QoS override, ...) is reported; the
        # process lives on. (rclpy itself would turn an exception here into ERROR without logging it.)
        except Exception as exc:
            self._configure_failure = str(exc) if isinstance(exc, FPSegError) else f"{type(exc).__name__}: {exc}"
            self.get_logger().error(f"configure failed, staying unconfigured: {self._configure_failure}")
            self._release()
            return TransitionCallbackReturn.FAILURE
        self._configure_failure = ""
        if self.get_parameter("classes").value is None:  # default: every class of the bank
            # Its callback publishes ~/label_info.
            self.set_parameters([Parameter("classes", Parameter.Type.STRING_ARRAY, self._controller.active)])
        else:
            self._publish_label_info()
        self._diagnostics.setHardwareID(self._controller.device)
        self._state = "inactive"
        regions = self._controller.regions
        self.get_logger().info(
            f"configured: backend {self._controller.backend_name} on {self._controller.device}; "
            f"bank: {', '.join(self._controller.available)}; active: {', '.join(self._controller.active)}; "
            f"region classes: {', '.join(regions.class_names) if regions is not None else 'off'}"
        )
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Start the inference thread, then subscribe to the images (and, with regions, to the detections)."""
        self._controller.start(self._publish, self._report, self._on_publish_error)
        compressed = self.get_parameter("compressed_input").value
        self._inputs = [self.create_subscription(
            CompressedImage if compressed else Image, _topic(camera, "image/compressed" if compressed else "image"),
            partial(self._controller.submit, camera=camera), qos("input"), qos_overriding_options=QOS_OVERRIDES,
        ) for camera in self._cameras]
        if self._controller.regions is not None:
            self._inputs.append(self.create_subscription(
                Detection2DArray, "detections", self._on_detections, qos("detections"),
                qos_overriding_options=QOS_OVERRIDES,
            ))
        self._state = "active"
        self.get_logger().info(f"active: reading {', '.join(s.topic_name for s in self._inputs)}")
        return TransitionCallbackReturn.SUCCESS

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Unsubscribe and stop the inference thread after the frame in progress; the model stays loaded."""
        self._stop()
        self._state = "inactive"
        self.get_logger().info("inactive: not segmenting (the model stays loaded)")
        return TransitionCallbackReturn.SUCCESS

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Destroy the publishers and free the model."""
        self._release()
        self._state = "unconfigured"
        self.get_logger().info("unconfigured: model released")
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        """From any state: stop segmenting and free the model."""
        self._stop()
        self._release()
        self._state = "finalized"
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        """A transition callback raised: release everything and go back to unconfigured."""
        self._stop()
        self._release()
        self._state = "unconfigured"
        self.get_logger().error(f"a lifecycle transition from {state.label} failed; the node is unconfigured")
        return TransitionCallbackReturn.SUCCESS

    def _create_outputs(self) -> None:
        """The output publishers, each with its own QoS profile and the standard overrides; kept in `_outputs`
        as they are made, so that `_release` also destroys those made before a failure."""
        kinds = {"labels": (Image, "image_output"), "color": (Image, "image_output"),
                 "confidence": (Image, "image_output"), "stats": (SegmentationStats, "stats")}
        topics = {(camera, name): kinds[name] for camera in self._cameras for name in IMAGE_OUTPUTS}
        topics["", "label_info"] = (LabelInfo, "label_info")
        if self._controller.regions is not None:
            topics["", "detections"] = (Detection2DArray, "detections")
        for (camera, name), (msg_type, kind) in topics.items():
            self._outputs[camera, name] = self.create_publisher(msg_type, f"~/{_topic(camera, name)}", qos(kind),
                                                                qos_overriding_options=QOS_OVERRIDES)

    def _create_controller(self) -> SegmentationController:
        values = {spec.name: self.get_parameter(spec.name).value for spec in PARAMETERS}
        pipeline = load_pipeline(
            values["checkpoint"], values["prompts"], values["backend"], values["engine_dir"], values["device"],
            values["input_mode"],
        )
        regions = load_region_classifier(values["checkpoint"], values["region_checkpoint"],
                                         values["region_class_names"], pipeline)
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
            publish_confidence=values["publish_confidence"],
            latency_budget_ms=values["latency_budget_ms"],
            expected_input_hz=values["expected_input_hz"],
            latency_warn_ms=values["latency_warn_ms"],
            region_classifier=regions,
            region_points=values["region_points"],
            region_cache_frames=values["region_cache_frames"],
            cameras=[camera for camera in self._cameras if camera],
        )

    def _stop(self) -> None:
        for subscription in self._inputs:
            self.destroy_subscription(subscription)
        self._inputs = []
        if self._controller is not None and not self._controller.stop(STOP_TIMEOUT_S):
            self.get_logger().error(f"the inference thread did not stop within {STOP_TIMEOUT_S:.0f} s")

    def _release(self) -> None:
        for publisher in self._outputs.values():
            self.destroy_publisher(publisher)
        self._outputs = {}
        self._controller = None
        free_device_memory()

    # ------------------------------------------------------------------------------------ callbacks
    def _on_set_parameters(self, parameters: list[Parameter]) -> SetParametersResult:
        changes = {p.name: p.value for p in parameters if p.name in RUNTIME_PARAMETERS}
        if not changes:
            return SetParametersResult(successful=True)
        if self._controller is None:
            # Unconfigured: kept for configure, which checks them against the bank (rclpy checked type and range).
            reasons = [r for name, value in changes.items() if (r := PARAMETER_BY_NAME[name].check_choice(value))]
            return SetParametersResult(successful=not reasons, reason="; ".join(reasons))
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
        if self._controller is None:
            update = PromptUpdate(False, f"{self.get_fully_qualified_name()} is {self._state}: no model is loaded; "
                                         "configure it first (ros2 lifecycle set <node> configure)")
        else:
            update = self._load_prompts(self._controller, request)
        response.success = update.success
        response.message = update.message
        response.available = update.available
        response.active = update.active
        return response

    def _load_prompts(self, controller: SegmentationController, request: LoadPrompts.Request) -> PromptUpdate:
        try:
            update = controller.load_prompts(request.path, list(request.classes), request.replace, request.activate)
            if update.success:
                self.get_logger().info(update.message)
                # Keep the parameter in step with the active classes; its callback re-validates them and
                # republishes ~/label_info for the new bank.
                (result,) = self.set_parameters([Parameter("classes", Parameter.Type.STRING_ARRAY, update.active)])
                if not result.successful:  # the bank is loaded; only the parameter could not follow
                    self.get_logger().warning(f"the classes parameter could not follow the loaded bank: "
                                              f"{result.reason}")
            else:
                self.get_logger().warning(f"load_prompts refused: {update.message}")
            return update
        except Exception as exc:
            message = f"{request.path}: load_prompts failed: {type(exc).__name__}: {exc}"
            self.get_logger().error(message)
            return PromptUpdate(False, message, controller.available, controller.active)

    def _on_classify_regions(self, request: ClassifyRegions.Request, response: ClassifyRegions.Response
                             ) -> ClassifyRegions.Response:
        # Never raises (RegionQueries.answer does not), like ~/load_prompts.
        if self._controller is None:
            reply = RegionReply(False, f"{self.get_fully_qualified_name()} is {self._state}: no model is loaded; "
                                       "configure it first (ros2 lifecycle set <node> configure)")
        elif self._controller.regions is None:
            reply = RegionReply(False, "region classification is off: launch the node with "
                                       "region_checkpoint:=<RoofSAM decoder file>")
        else:  # the request carries its stamp as a header does
            reply = self._controller.regions.answer(stamp_ns(request), request.polygons, request.points_per_region)
        response.success = reply.success
        response.message = reply.message
        response.class_names = reply.class_names
        response.confidences = reply.confidences
        response.stamp.sec, response.stamp.nanosec = divmod(reply.stamp_ns, NS_PER_S)
        return response

    def _on_detections(self, msg: Detection2DArray) -> None:
        """Append the region classifier's class (class_id) and vote fraction (score) to each detection and
        republish the array on ~/detections; an array that cannot be classified is logged, not republished."""
        try:
            labels = self._controller.regions.detections(stamp_ns(msg.header), msg.detections)
        # An exception would end rclpy.spin and with it the node.
        except Exception as exc:
            reason = str(exc) if isinstance(exc, FPSegError) else f"{type(exc).__name__}: {exc}"
            self.get_logger().warning(f"detections not classified: {reason}", throttle_duration_sec=LOG_THROTTLE_S)
            return
        for detection, (class_name, score) in zip(msg.detections, labels, strict=True):
            detection.results.append(
                ObjectHypothesisWithPose(hypothesis=ObjectHypothesis(class_id=class_name, score=score)))
        self._outputs["", "detections"].publish(msg)

    def _diagnose(self, stat: DiagnosticStatusWrapper) -> DiagnosticStatusWrapper:
        """The diagnostic_updater task: the controller's health while active, the lifecycle state otherwise."""
        controller = self._controller
        if self._state == "active" and controller is not None:
            health = controller.health()
        else:
            health = lifecycle_health(self._state, self._configure_failure)
        stat.summary(DIAGNOSTIC_LEVELS[health.level], health.message)
        for key, value in health.values:
            stat.add(key, value)
        return stat

    def _check_worker(self) -> None:
        """Watchdog: if the inference thread died, say why and end the spin so that main() exits non-zero
        (by raising: shutting the context down from inside a callback deadlocks Humble's executor)."""
        cause = self._controller.death_cause if self._controller is not None else None
        if cause is None:
            return
        self._worker_died = True
        self._watchdog.cancel()
        details = "".join(traceback.format_exception(type(cause), cause, cause.__traceback__)).rstrip()
        self.get_logger().fatal(f"the inference thread died ({cause!r}); no frame can be segmented any more, "
                                f"exiting with status 1 so that respawn / systemd restarts the node:\n{details}")
        raise NodeFailedError(f"the inference thread died: {cause!r}")

    # ------------------------------------------------------------- outputs (called on the worker thread)
    def _publish(self, result: FrameResult) -> None:
        camera = result.camera
        self._outputs[camera, "labels"].publish(fill_image(Image(header=result.header), result.labels, "mono8"))
        if result.overlay is not None:
            self._outputs[camera, "color"].publish(fill_image(Image(header=result.header), result.overlay, "rgb8"))
        if result.confidence is not None:
            self._outputs[camera, "confidence"].publish(
                fill_image(Image(header=result.header), result.confidence, "mono8"))
        self._outputs[camera, "stats"].publish(SegmentationStats(header=result.header, **result.stats.fields()))

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
        return self._worker_died

    def _publish_label_info(self) -> None:
        msg = LabelInfo()
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.class_map = [VisionClass(class_id=value, class_name=name)
                         for value, name in self._controller.label_map().items()]
        msg.threshold = float(self._controller.score_threshold)
        self._outputs["", "label_info"].publish(msg)

    def destroy_node(self) -> None:
        """Stop the inference thread (after the frame in progress), free the model, destroy the ROS entities."""
        self._stop()
        self._release()
        if self._heap is not None:
            self._heap.close(time.monotonic())
        super().destroy_node()


def main(args: list[str] | None = None) -> int:
    # Bad parameters (rclpy refuses a wrong type or an out-of-range value with a ParameterException, which is
    # not a ValueError; a value that is not one of a parameter's choices is a ValueError) stop start-up in one
    # line with exit 1. A model that cannot be loaded leaves the node unconfigured instead (logged, /diagnostics
    # ERROR). A dead inference thread shuts the node down with exit 1, for respawn / systemd to restart it.
    return run_node(args, FPSegNode, NODE_NAME, (ParameterException, ValueError),
                    FPSegNode.destroy_node, lambda node: 1 if node.worker_died else 0)


if __name__ == "__main__":
    sys.exit(main())
