"""ROS 2 message types for bags, without ROS (rosbags' typestore), and message construction.

The typestore is ROS 2 Humble's built-in one plus the two message packages the node publishes that rosbags
does not ship: vision_msgs (LabelInfo, VisionClass) and fpseg_ros (SegmentationStats).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np

from ..errors import FPSegError
from .conventions import LABEL_INFO_TYPE, STATS_TYPE

try:
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore
    from rosbags.typesys.store import Typestore
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "fpseg_core.replay needs the rosbags library: pip install 'fpseg_ros[bag]' (or: pip install rosbags)"
    ) from exc

# vision_msgs 4.x (Humble, Jazzy), msg/VisionClass.msg and msg/LabelInfo.msg without comments.
VISION_CLASS_MSG = """\
uint16 class_id
string class_name
"""
LABEL_INFO_MSG = """\
std_msgs/Header header
vision_msgs/VisionClass[] class_map
float32 threshold
"""
# Copy of msg/SegmentationStats.msg for pip installs, where the repository's msg/ folder is not installed;
# test_replay_evaluation checks that the two are identical.
SEGMENTATION_STATS_MSG = """# One report per segmented frame, published by the fpseg node on ~/stats.

# Stamp and frame_id of the input image.
std_msgs/Header header

# The input's camera (parameter `cameras`; empty in a single-camera node). Counts, windows and rates below
# are this camera's.
string camera
# Frames of this camera segmented since the node started (the first is 1).
uint64 frame
# Frames segmented together with this one (the waiting frames of several cameras, encoded as one batch on a
# GPU, one after the other on the CPU; 1 otherwise).
uint32 batch_size
# Classes segmented in this frame, in priority order.
string[] classes
# Active classes left out of this frame to keep to latency_budget_ms (the end of the priority list; empty
# without a budget or when every active class fits).
string[] skipped_classes
# Inference backend that ran the model: torch, onnxruntime, openvino or tensorrt.
string backend

# Wall time of each stage for this frame, milliseconds (encoder_ms: the whole batch's encoder pass).
float32 preprocess_ms
float32 encoder_ms
float32 decoder_ms
float32 postprocess_ms
# preprocess + encoder + decoder + postprocess.
float32 inference_ms
# The latency budget in force (parameter latency_budget_ms; 0 = none) that inference_ms is planned against.
float64 budget_ms

# End to end: from the image's header stamp (its arrival if unstamped) to the outputs being ready to
# publish, on the node's clock (sim time when use_sim_time is set).
float32 latency_ms

# Over the last `window` segmented frames (parameter stats_window).
uint32 window
float32 latency_mean_ms
float32 latency_p50_ms
float32 latency_p95_ms
float32 latency_max_ms
# Frames segmented per second.
float32 throughput_hz

# Counts since the node started.
# Frames replaced by a newer one before inference (the node keeps only the newest frame under overload).
uint64 dropped_frames
# Malformed messages dropped (wrong step, size mismatch, unsupported encoding, empty, undecodable).
uint64 rejected_frames
# Frames whose inference failed (logged).
uint64 failed_frames
"""


class BagError(FPSegError):
    """A bag, or a message in it, that cannot be used as asked."""


def project_types() -> dict[str, Any]:
    """Field definitions of the message types the node uses beyond ROS 2 Humble's built-in ones."""
    types = {}
    types.update(get_types_from_msg(VISION_CLASS_MSG, "vision_msgs/msg/VisionClass"))
    types.update(get_types_from_msg(LABEL_INFO_MSG, LABEL_INFO_TYPE))
    types.update(get_types_from_msg(SEGMENTATION_STATS_MSG, STATS_TYPE))
    return types


def new_typestore() -> Typestore:
    """A fresh ROS 2 Humble typestore with the project's types registered (add a bag's own types to it)."""
    store = get_typestore(Stores.ROS2_HUMBLE)
    store.register(project_types())
    return store


@lru_cache(maxsize=1)
def typestore() -> Typestore:
    """The shared `new_typestore()` used to build and serialize messages."""
    return new_typestore()


def split_stamp(stamp_ns: int) -> tuple[int, int]:
    """Nanoseconds since the epoch -> (sec, nanosec) of builtin_interfaces/Time."""
    return divmod(int(stamp_ns), 1_000_000_000)


def header(stamp: int, frame_id: str) -> Any:
    """std_msgs/Header with the stamp given in nanoseconds."""
    store = typestore()
    sec, nanosec = split_stamp(stamp)
    time = store.types["builtin_interfaces/msg/Time"](sec=sec, nanosec=nanosec)
    return store.types["std_msgs/msg/Header"](stamp=time, frame_id=frame_id)


def image_message(array: np.ndarray, stamp: int, frame_id: str) -> Any:
    """sensor_msgs/Image from an H x W x 3 uint8 RGB array (rgb8) or an H x W uint8 array (mono8)."""
    if array.dtype != np.uint8 or array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] != 3):
        raise ValueError(f"expected H x W x 3 or H x W uint8, got {array.shape} {array.dtype}")
    channels = 1 if array.ndim == 2 else 3
    height, width = array.shape[:2]
    return typestore().types["sensor_msgs/msg/Image"](
        header=header(stamp, frame_id), height=height, width=width,
        encoding="mono8" if channels == 1 else "rgb8", is_bigendian=0, step=width * channels,
        data=np.ascontiguousarray(array).reshape(-1),
    )


def serialize(msg: Any) -> bytes:
    """CDR bytes of a typestore message (its type is taken from the message)."""
    return bytes(typestore().serialize_cdr(msg, msg.__msgtype__))
