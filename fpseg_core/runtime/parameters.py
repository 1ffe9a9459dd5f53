"""The node's parameters, declared from this one table (no rclpy or torch import: tests, docs and the node's
start-up read it cheaply)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from fpseg_core.constants import BACKENDS, FUSIONS, INPUT_MODES, MAX_CLASSES, choice_error
from fpseg_core.weights import REGISTRY

RESTART = "Read-only: set it at launch (restart the node to change it)."


@dataclass(frozen=True)
class ParameterSpec:
    """One node parameter: default, description and the constraints rclpy enforces or the node checks.

    `default=None` means the node fills it in at start-up (see the description).
    """

    name: str
    default: Any
    description: str
    read_only: bool = False
    choices: tuple[str, ...] = ()
    integer_range: tuple[int, int] | None = None
    float_range: tuple[float, float] | None = None
    dynamic_typing: bool = False

    @property
    def constraints(self) -> str:
        """Human-readable constraints, for the descriptor's additional_constraints field."""
        if self.choices:
            return "one of: " + ", ".join(self.choices)
        if self.integer_range:
            return f"integer in [{self.integer_range[0]}, {self.integer_range[1]}]"
        if self.float_range:
            return f"number in [{self.float_range[0]}, {self.float_range[1]}]"
        return ""

    def check_choice(self, value: Any) -> str | None:
        """Reason `value` is not one of the allowed choices, or None when it is (or there are none)."""
        return choice_error(self.name, value, self.choices) if self.choices else None


PARAMETERS: tuple[ParameterSpec, ...] = (
    ParameterSpec(
        "checkpoint", "",
        "SAM / MobileSAM / FPSeg / fpseg_ros checkpoint file (.pth or .pt; '~' is expanded), or the name of "
        f"cached weights ({', '.join(REGISTRY)}), read from $FPSEG_HOME "
        "(default ~/.cache/fpseg) after `fpseg weights fetch NAME`, never downloaded. Required. " + RESTART,
        read_only=True,
    ),
    ParameterSpec(
        "prompts", "",
        "Prompt bank (.safetensors) loaded at start-up; empty = the bank inside the checkpoint (a SAM or "
        "MobileSAM checkpoint has none, so it needs one). Load more at run time with ~/load_prompts. " + RESTART,
        read_only=True,
    ),
    ParameterSpec(
        "backend", "auto",
        "Inference backend. auto: tensorrt where engine_dir holds engines and a GPU is usable, else "
        "onnxruntime where it holds an ONNX export, openvino (int8) where it holds an `fpseg quantize` folder; "
        "torch only when engine_dir is empty. openvino (CPU: fp32, bf16, int8) runs an export when asked for. "
        "An engine_dir that is missing or does not match the model is an error, never a silent fallback. "
        + RESTART,
        read_only=True, choices=BACKENDS,
    ),
    ParameterSpec(
        "engine_dir", "",
        "Folder written by `fpseg export-onnx` (onnxruntime) or `fpseg build-engine` (tensorrt), '~' "
        "expanded; empty: none, so auto runs torch. " + RESTART,
        read_only=True,
    ),
    ParameterSpec(
        "device", "auto",
        "Torch device: auto (cuda when available, else cpu), cpu, cuda or cuda:N. " + RESTART,
        read_only=True,
    ),
    ParameterSpec(
        "input_mode", "squash",
        "How the image reaches the square encoder input: squash (whole image resized, as FPSeg's prompts "
        "were tuned) or letterbox (SAM's longest-side resize + padding). " + RESTART,
        read_only=True, choices=INPUT_MODES,
    ),
    ParameterSpec(
        "compressed_input", False,
        "Subscribe to image/compressed (sensor_msgs/CompressedImage, JPEG or PNG) instead of image. " + RESTART,
        read_only=True,
    ),
    ParameterSpec(
        "max_classes", MAX_CLASSES,
        f"Most classes that may be active at once, at most {MAX_CLASSES} (uint8 labels; 255 is vision_msgs' "
        "'unlabeled'). Set it to the "
        "class count a TensorRT engine was built for to keep every frame to one decoder pass. " + RESTART,
        read_only=True, integer_range=(1, MAX_CLASSES),
    ),
    ParameterSpec(
        "autostart", True,
        "Configure and activate the lifecycle node at start-up (the node then runs as soon as it is launched); "
        "false: it waits unconfigured for a lifecycle manager (ros2 lifecycle set /fpseg configure, then "
        "activate). " + RESTART,
        read_only=True,
    ),
    ParameterSpec(
        "cameras", None,
        "Cameras served by this one node (one model, one bank), e.g. [front, rear]: it subscribes to "
        "<camera>/image (<camera>/image/compressed with compressed_input) and publishes ~/<camera>/labels, "
        "~/<camera>/color, ~/<camera>/confidence and ~/<camera>/stats; the newest frame of each camera is kept, "
        "cameras are served round-robin and the frames waiting are encoded as one batch where the backend can. "
        "Default (unset or empty): one camera, `image` in, ~/labels etc. out. " + RESTART,
        read_only=True, dynamic_typing=True,  # unset by default (an empty list has no type in ROS parameters)
    ),
    ParameterSpec(
        "region_checkpoint", "",
        "RoofSAM class decoder (.pt, e.g. a published decoder_*.pt; '~' is expanded) that classifies regions "
        "(~/classify_regions; detections in, ~/detections out) from the image embedding of the frames the node "
        "segments, without a second encoder pass. Its prompt encoder comes from `checkpoint`, which must then be "
        "an official SAM / MobileSAM file holding the prompt_encoder.* point weights (an FPSeg checkpoint has "
        "none: give the official file with `prompts`). Empty: region classification off. " + RESTART,
        read_only=True,
    ),
    ParameterSpec(
        "region_class_names", None,
        "Class names of the region_checkpoint decoder, in its output order, e.g. [flat, gabled, hipped]; "
        "default (unset): the names stored beside the decoder file. " + RESTART,
        read_only=True, dynamic_typing=True,  # unset by default (an empty list has no type in ROS parameters)
    ),
    ParameterSpec(
        "region_points", 4,
        "Points sampled inside each region; the region's class is their majority vote. A ~/classify_regions "
        "request may ask for another count. " + RESTART,
        read_only=True, integer_range=(1, 64),
    ),
    ParameterSpec(
        "region_cache_frames", 4,
        "With region_checkpoint: how many of the latest segmented frames keep their image embedding (about "
        "4 MiB each, on the model's device) for region queries by stamp. " + RESTART,
        read_only=True, integer_range=(1, 100),
    ),
    ParameterSpec(
        "classes", None,
        "Active classes in priority order, e.g. [road, person]; default: every class of the prompt bank. "
        "Takes effect on the next frame (no reload). Unknown names, an empty list, duplicates or more than "
        "max_classes are refused and the previous value stays.",
        dynamic_typing=True,  # so that an empty list (which arrives typed as BOOL_ARRAY) gets our reason
    ),
    ParameterSpec(
        "fusion", "argmax",
        "How overlapping classes become one label: argmax (highest score wins) or priority (first class "
        "in `classes` above the threshold wins). Takes effect on the next frame.",
        choices=FUSIONS,
    ),
    ParameterSpec(
        "score_threshold", 0.5,
        "A class is present where its probability (sigmoid of the mask logit) exceeds this; 0.5 is "
        "FPSeg's logit > 0 rule. Takes effect on the next frame.",
        float_range=(0.01, 0.99),
    ),
    ParameterSpec(
        "publish_color", False,
        "Publish ~/color, the rgb8 overlay of the labels on the image (costs CPU and bandwidth). "
        "Takes effect on the next frame.",
    ),
    ParameterSpec(
        "publish_confidence", False,
        "Publish ~/confidence, mono8: per pixel round(255 * probability of the winning class), 0 where no class "
        "is present; computed in the same low-resolution pass as the labels. Takes effect on the next frame.",
    ),
    ParameterSpec(
        "latency_budget_ms", 0.0,
        "Per-frame processing budget in ms (0 = none): when the active classes are predicted not to fit (from "
        "the node's running estimates of its fixed and per-class cost), only the longest prefix of `classes` "
        "that fits is segmented (at least one class; the rest are listed in ~/stats skipped_classes). Takes "
        "effect on the next frame.",
        float_range=(0.0, 100000.0),
    ),
    ParameterSpec(
        "expected_input_hz", 0.0,
        "Image rate the camera should deliver; /diagnostics warns when the input is slower or stalls "
        "(0 = not checked). Takes effect on the next diagnostics update.",
        float_range=(0.0, 1000.0),
    ),
    ParameterSpec(
        "latency_warn_ms", 0.0,
        "/diagnostics warns when the rolling p95 end-to-end latency exceeds this (0 = not checked). Takes "
        "effect on the next diagnostics update.",
        float_range=(0.0, 100000.0),
    ),
    ParameterSpec(
        "stats_window", 100,
        "Number of recent frames the rolling latency / throughput figures in ~/stats cover. "
        "Takes effect on the next frame.",
        integer_range=(1, 10000),
    ),
)
PARAMETER_BY_NAME = {spec.name: spec for spec in PARAMETERS}
_CAMERA_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*(/[A-Za-z][A-Za-z0-9_]*)*")


def camera_names(value: Any) -> tuple[str, ...]:
    """The `cameras` parameter as a tuple of names; () (one camera, topics without a prefix) when unset or empty.

    Each name must be a relative ROS name (letters, digits, '_', '/'-separated tokens starting with a letter),
    and the names distinct; ValueError says which is not."""
    if value is None or (isinstance(value, (list, tuple)) and not value):
        return ()
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise ValueError(f"cameras must be a list of names, e.g. [front, rear], got {value!r}")
    bad = [name for name in value if not isinstance(name, str) or not _CAMERA_NAME.fullmatch(name)]
    if bad:
        raise ValueError(f"camera name(s) {', '.join(map(repr, bad))} are not relative ROS names (letters, digits "
                         "and '_', '/' between parts, starting with a letter), e.g. [front, rear]")
    repeated = sorted({name for name in value if value.count(name) > 1})
    if repeated:
        raise ValueError(f"camera(s) listed twice: {', '.join(repeated)}")
    return tuple(value)
RUNTIME_PARAMETERS = tuple(spec.name for spec in PARAMETERS if not spec.read_only)
