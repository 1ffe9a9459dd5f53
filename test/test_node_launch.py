"""The fpseg node in a real ROS 2 graph (launch_testing), started through launch/segment.launch.py with a tiny
random model: images in; labels, overlay, stats and label map out; `classes` set at run time (valid and
invalid); ~/load_prompts with a good, a corrupt and a mismatched bank; clean exit on shutdown.

Needs a built and sourced workspace (ROS 2 Humble or Jazzy):
    colcon build --packages-select fpseg_ros && source install/setup.bash
    colcon test --packages-select fpseg_ros      # or: launch_test src/fpseg_ros/test/test_node_launch.py
Under plain pytest without ROS it is skipped.
"""

from __future__ import annotations

import array
import tempfile
import time
import unittest
from pathlib import Path

import pytest

rclpy = pytest.importorskip("rclpy", reason="needs a ROS 2 install (source /opt/ros/<distro>/setup.bash)")
pytest.importorskip("launch_testing", reason="needs ROS 2 launch_testing")

import launch  # noqa: E402
import launch_testing  # noqa: E402
import launch_testing.actions  # noqa: E402
import launch_testing.asserts  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from launch.actions import IncludeLaunchDescription  # noqa: E402
from launch.launch_description_sources import PythonLaunchDescriptionSource  # noqa: E402
from launch.substitutions import PathJoinSubstitution  # noqa: E402
from launch_ros.substitutions import FindPackageShare  # noqa: E402
from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue  # noqa: E402
from rcl_interfaces.srv import GetParameters, SetParameters  # noqa: E402
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from vision_msgs.msg import LabelInfo  # noqa: E402

from fpseg_core import PromptBank, build_fpseg, decoder_fingerprint, save_checkpoint, tiny_config  # noqa: E402
from fpseg_ros.msg import SegmentationStats  # noqa: E402
from fpseg_ros.srv import LoadPrompts  # noqa: E402

NAMESPACE = "fpseg_launch_test"
NODE = f"/{NAMESPACE}/fpseg"
IMAGE_TOPIC = f"/{NAMESPACE}/camera/image"
CLASSES = ["road", "car", "person", "sky"]
TIMEOUT_S = 120.0  # the node imports torch and loads the model before it answers
WORKDIR = Path(tempfile.mkdtemp(prefix="fpseg_launch_test_"))


def _write_fixtures() -> dict[str, Path]:
    """A tiny project checkpoint, prompt banks (good / corrupt / other decoder) and a params file."""
    torch.manual_seed(0)
    config = tiny_config("mobilesam", n_classes=len(CLASSES), prompt_size=4, img_size=128)
    model = build_fpseg(config)
    fingerprint = decoder_fingerprint(model.state_dict())
    tokens = torch.randn(1, 4, 256, generator=torch.Generator().manual_seed(1))
    files = {
        "checkpoint": save_checkpoint(model, config, CLASSES, WORKDIR / "tiny.pth"),
        "bank": PromptBank(["bicycle"], tokens, "mobilesam", fingerprint, "launch test").save(
            WORKDIR / "bicycle.safetensors"),
        "other_decoder": PromptBank(["bus"], tokens, "mobilesam", "0123456789abcdef", "other").save(
            WORKDIR / "other_decoder.safetensors"),
        "corrupt": WORKDIR / "corrupt.safetensors",
        "params": WORKDIR / "params.yaml",
    }
    files["corrupt"].write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json" + bytes(100))
    parameters = {"backend": "torch", "device": "cpu", "publish_color": True, "score_threshold": 0.01,
                  "stats_window": 10, "max_classes": 3}
    files["params"].write_text(yaml.safe_dump({"/**": {"ros__parameters": parameters}}))
    return files


FILES = _write_fixtures()


def generate_test_description():
    segment = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(PathJoinSubstitution([FindPackageShare("fpseg_ros"), "launch",
                                                            "segment.launch.py"])),
        launch_arguments={
            "image": IMAGE_TOPIC,
            "params_file": str(FILES["params"]),
            "checkpoint": str(FILES["checkpoint"]),
            "classes": "road,person",
            "namespace": NAMESPACE,
        }.items(),
    )
    return launch.LaunchDescription([segment, launch_testing.actions.ReadyToTest()])


def _string_array(values: list[str]) -> ParameterValue:
    return ParameterValue(type=ParameterType.PARAMETER_STRING_ARRAY, string_array_value=values)


class TestFPSegNode(unittest.TestCase):
    @classmethod
    def setUpClass(cls) -> None:
        rclpy.init()
        cls.node = rclpy.create_node("fpseg_launch_tester")
        cls.labels: list[Image] = []
        cls.colors: list[Image] = []
        cls.stats: list[SegmentationStats] = []
        cls.label_infos: list[LabelInfo] = []
        reliable = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10)
        cls.node.create_subscription(Image, f"{NODE}/labels", cls.labels.append, reliable)
        cls.node.create_subscription(Image, f"{NODE}/color", cls.colors.append, reliable)
        cls.node.create_subscription(SegmentationStats, f"{NODE}/stats", cls.stats.append, reliable)
        cls.image_pub = cls.node.create_publisher(Image, IMAGE_TOPIC, reliable)
        cls.frame = np.random.default_rng(11).integers(0, 256, (24, 32, 3), dtype=np.uint8)

    @classmethod
    def tearDownClass(cls) -> None:
        cls.node.destroy_node()
        rclpy.shutdown()

    # ------------------------------------------------------------------------------------- helpers
    def _spin_until(self, condition, timeout: float = TIMEOUT_S, step=None) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                self.fail(f"timed out after {timeout:.0f} s")
            if step is not None:
                step()
            rclpy.spin_once(self.node, timeout_sec=0.1)

    def _image(self, frame_id: str = "test_camera") -> Image:
        msg = Image()
        msg.header.stamp = self.node.get_clock().now().to_msg()
        msg.header.frame_id = frame_id
        msg.height, msg.width = self.frame.shape[:2]
        msg.encoding = "rgb8"
        msg.step = msg.width * 3
        msg.data = array.array("B", self.frame.tobytes())
        return msg

    def _segment_one(self) -> tuple[Image, Image, SegmentationStats]:
        """Publish frames (the node may drop some) until labels and stats for one of them arrive."""
        sent: dict[tuple[int, int], Image] = {}
        last_publish = [0.0]

        def stamp(msg) -> tuple[int, int]:
            return msg.header.stamp.sec, msg.header.stamp.nanosec

        def publish() -> None:
            if time.monotonic() - last_publish[0] > 0.5:
                image = self._image()
                sent[stamp(image)] = image
                self.image_pub.publish(image)
                last_publish[0] = time.monotonic()

        def answered() -> bool:
            labelled = {stamp(m) for m in self.labels} & {stamp(m) for m in self.stats} & set(sent)
            return bool(labelled)

        self.labels.clear()
        self.stats.clear()
        self._spin_until(answered, step=publish)
        key = next(k for k in sent if k in {stamp(m) for m in self.labels} & {stamp(m) for m in self.stats})
        labels = next(m for m in self.labels if stamp(m) == key)
        stats = next(m for m in self.stats if stamp(m) == key)
        return sent[key], labels, stats

    def _call(self, service_type, name: str, request):
        client = self.node.create_client(service_type, name)
        try:
            self.assertTrue(client.wait_for_service(timeout_sec=TIMEOUT_S), f"{name} not available")
            future = client.call_async(request)
            self._spin_until(future.done, timeout=60.0)
            return future.result()
        finally:
            self.node.destroy_client(client)

    def _set(self, name: str, value: ParameterValue):
        request = SetParameters.Request(parameters=[Parameter(name=name, value=value)])
        return self._call(SetParameters, f"{NODE}/set_parameters", request).results[0]

    def _active_parameter(self) -> list[str]:
        response = self._call(GetParameters, f"{NODE}/get_parameters", GetParameters.Request(names=["classes"]))
        return list(response.values[0].string_array_value)

    def _load(self, path: Path, **fields) -> LoadPrompts.Response:
        return self._call(LoadPrompts, f"{NODE}/load_prompts", LoadPrompts.Request(path=str(path), **fields))

    def _label_map(self, expected_size: int) -> dict[int, str]:
        """The latched label map, read by a subscriber that joins late (transient-local QoS)."""
        received: list[LabelInfo] = []
        latched = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        subscription = self.node.create_subscription(LabelInfo, f"{NODE}/label_info", received.append, latched)
        try:
            self._spin_until(lambda: any(len(m.class_map) == expected_size for m in received), timeout=30.0)
        finally:
            self.node.destroy_subscription(subscription)
        latest = [m for m in received if len(m.class_map) == expected_size][-1]
        return {c.class_id: c.class_name for c in latest.class_map}

    def _assert_labels_within(self, classes: list[str], available: list[str]) -> SegmentationStats:
        _, labels, stats = self._segment_one()
        values = set(np.frombuffer(bytes(labels.data), np.uint8).tolist())
        allowed = {0} | {available.index(name) + 1 for name in classes}
        self.assertLessEqual(values, allowed)
        self.assertEqual(list(stats.classes), classes)
        return stats

    # --------------------------------------------------------------------------------------- tests
    def test_a_labels_overlay_and_stats_follow_the_input(self) -> None:
        image, labels, stats = self._segment_one()
        self.assertEqual((labels.height, labels.width, labels.encoding), (24, 32, "mono8"))
        self.assertEqual(labels.step, 32)
        self.assertEqual(labels.header.frame_id, "test_camera")
        self.assertEqual(labels.header.stamp, image.header.stamp)
        values = np.frombuffer(bytes(labels.data), np.uint8)
        self.assertLessEqual(set(values.tolist()), {0, 1, 3})  # road = 1, person = 3
        self.assertTrue(values.any(), "a low score_threshold on this model labels some pixels")

        self._spin_until(lambda: any(c.header.stamp == image.header.stamp for c in self.colors), timeout=30.0)
        color = next(c for c in self.colors if c.header.stamp == image.header.stamp)
        self.assertEqual((color.height, color.width, color.encoding, color.step), (24, 32, "rgb8", 96))

        self.assertEqual(stats.header.frame_id, "test_camera")
        self.assertGreaterEqual(stats.frame, 1)
        self.assertEqual(list(stats.classes), ["road", "person"])
        self.assertEqual(stats.backend, "torch")
        self.assertGreater(stats.inference_ms, 0.0)
        self.assertGreaterEqual(stats.latency_ms, stats.inference_ms - 1.0)  # stamp -> publish includes inference
        self.assertGreaterEqual(stats.window, 1)
        self.assertLessEqual(stats.latency_p50_ms, stats.latency_max_ms + 1e-3)
        self.assertLessEqual(stats.latency_p95_ms, stats.latency_max_ms + 1e-3)

    def test_b_valid_classes_apply_to_the_next_frame(self) -> None:
        result = self._set("classes", _string_array(["sky", "car"]))
        self.assertTrue(result.successful, result.reason)
        self._assert_labels_within(["sky", "car"], CLASSES)
        self.assertEqual(self._active_parameter(), ["sky", "car"])

    def test_c_invalid_classes_are_refused_with_the_available_names(self) -> None:
        self.assertTrue(self._set("classes", _string_array(["person"])).successful)
        for value, expected in [
            (_string_array(["person", "unicorn"]), "unknown class(es) 'unicorn'"),
            (_string_array([]), "classes is empty"),
            (ParameterValue(type=ParameterType.PARAMETER_STRING, string_value="road"), "must be a list"),
        ]:
            result = self._set("classes", value)
            self.assertFalse(result.successful)
            self.assertIn(expected, result.reason)
            self.assertIn("road, car, person, sky", result.reason)
        repeated = self._set("classes", _string_array(["road", "road"]))
        self.assertFalse(repeated.successful)
        self.assertIn("listed twice: road", repeated.reason)
        too_many = self._set("classes", _string_array(CLASSES))
        self.assertFalse(too_many.successful)
        self.assertIn("4 classes requested, at most 3 may be active (max_classes)", too_many.reason)
        read_only = self._set("checkpoint", ParameterValue(type=ParameterType.PARAMETER_STRING, string_value="x"))
        self.assertFalse(read_only.successful)
        self.assertEqual(self._active_parameter(), ["person"])
        self._assert_labels_within(["person"], CLASSES)

    def test_d_bad_prompt_banks_are_refused_and_nothing_changes(self) -> None:
        self.assertTrue(self._set("classes", _string_array(["road", "car"])).successful)
        for path, expected in [
            (FILES["corrupt"], "not a readable safetensors prompt bank"),
            (FILES["other_decoder"], "was tuned for decoder 0123456789abcdef"),
            (WORKDIR / "missing.safetensors", "does not exist"),
        ]:
            response = self._load(path, activate=True)
            self.assertFalse(response.success)
            self.assertIn(expected, response.message)
            self.assertEqual(list(response.available), CLASSES)
            self.assertEqual(list(response.active), ["road", "car"])
        self.assertEqual(self._label_map(len(CLASSES) + 1), {0: "none", 1: "road", 2: "car", 3: "person",
                                                                4: "sky"})
        self._assert_labels_within(["road", "car"], CLASSES)

    def test_e_a_new_class_is_loaded_and_activated_without_restart(self) -> None:
        self.assertTrue(self._set("classes", _string_array(["road"])).successful)
        frames_before = self._segment_one()[2].frame
        response = self._load(FILES["bank"], activate=True)
        self.assertTrue(response.success, response.message)
        self.assertEqual(list(response.available), [*CLASSES, "bicycle"])
        self.assertEqual(list(response.active), ["road", "bicycle"])
        self.assertEqual(self._active_parameter(), ["road", "bicycle"])
        self.assertEqual(self._label_map(len(CLASSES) + 2)[5], "bicycle")
        stats = self._assert_labels_within(["road", "bicycle"], [*CLASSES, "bicycle"])
        self.assertGreater(stats.frame, frames_before)  # same process: the frame counter went on


@launch_testing.post_shutdown_test()
class TestShutdown(unittest.TestCase):
    def test_node_exits_cleanly_on_shutdown(self, proc_info) -> None:
        launch_testing.asserts.assertExitCodes(proc_info)
