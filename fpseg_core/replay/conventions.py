"""Topic names, message types, stamps and storage names of the project's bags (no rosbags import, so the CLI
and the ROS evaluator can use them without the `bag` extra)."""

from __future__ import annotations

IMAGE_TOPIC = "/camera/image_raw"
CAMERA_INFO_TOPIC = "/camera/camera_info"
GT_TOPIC = "/camera/gt_labels"
# The segmentation node is named `fpseg`, so its private topics ~/labels etc. resolve to these.
LABELS_TOPIC = "/fpseg/labels"
LABEL_INFO_TOPIC = "/fpseg/label_info"
STATS_TOPIC = "/fpseg/stats"

IMAGE_TYPE = "sensor_msgs/msg/Image"
CAMERA_INFO_TYPE = "sensor_msgs/msg/CameraInfo"
LABEL_INFO_TYPE = "vision_msgs/msg/LabelInfo"
STATS_TYPE = "fpseg_ros/msg/SegmentationStats"

FRAME_ID = "camera"
# 2023-11-14T22:13:20Z: a fixed, recent start so stamps are deterministic and look like wall time.
START_TIME_NS = 1_700_000_000_000_000_000
DEFAULT_RATE_HZ = 2.0
MAX_RATE_HZ = 1000.0
STORAGE_NAMES = ("mcap", "sqlite3")


def frame_stamp(index: int, rate: float) -> int:
    """Header stamp (ns) of frame `index` of a converted bag: START_TIME_NS + index / rate seconds."""
    return START_TIME_NS + round(index * 1e9 / rate)
