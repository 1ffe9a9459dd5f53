"""Plain stand-ins for sensor_msgs Image / CompressedImage and std_msgs Header (the ROS-free tests' input).

They carry exactly the fields the ROS messages have, so fpseg_ros code that works on them works on rclpy
messages; pixel bytes are laid out here independently of fpseg_core.runtime.image_codec.
"""

from __future__ import annotations

import io
from types import SimpleNamespace

import numpy as np
from PIL import Image as PILImage

CHANNELS = {"mono8": 1, "rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4}


def header(sec: int = 1, nanosec: int = 0, frame_id: str = "camera") -> SimpleNamespace:
    return SimpleNamespace(stamp=SimpleNamespace(sec=sec, nanosec=nanosec), frame_id=frame_id)


def image_message(pixels: np.ndarray, encoding: str, padding: int = 0, sec: int = 1, nanosec: int = 0,
                  frame_id: str = "camera") -> SimpleNamespace:
    """An Image message of `pixels` (H x W or H x W x C uint8); `padding` extra bytes end each row."""
    height, width = pixels.shape[:2]
    row = width * CHANNELS[encoding]
    rows = np.full((height, row + padding), 0xAB, dtype=np.uint8)
    rows[:, :row] = pixels.reshape(height, row)
    return SimpleNamespace(header=header(sec, nanosec, frame_id), height=height, width=width, encoding=encoding,
                           is_bigendian=0, step=row + padding, data=rows.tobytes())


def compressed_message(pixels: np.ndarray, image_format: str = "png", sec: int = 1, nanosec: int = 0
                       ) -> SimpleNamespace:
    buffer = io.BytesIO()
    PILImage.fromarray(pixels).save(buffer, format=image_format.upper())
    return SimpleNamespace(header=header(sec, nanosec), format=image_format, data=buffer.getvalue())


def random_pixels(height: int, width: int, channels: int, seed: int = 0) -> np.ndarray:
    shape = (height, width) if channels == 1 else (height, width, channels)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
