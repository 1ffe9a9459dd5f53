"""sensor_msgs Image / CompressedImage fields <-> numpy, with strict checks (no rclpy import).

Messages are duck-typed: anything with `height, width, encoding, step, data` (Image) or `format, data`
(CompressedImage) works, so the same code runs on rclpy messages, rosbags messages and plain test objects.
rosbags-image and cv_bridge were considered: both need OpenCV, and rosbags-image ignores `step` (padded
rows), so raw images are viewed with numpy here and compressed ones decoded with Pillow.
"""

from __future__ import annotations

import array
import io
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image as PILImage

from fpseg_core.errors import InputImageError
from fpseg_core.preprocess import ColorOrder

# encoding -> (channels, colour order of the first three channels)
DECODABLE: dict[str, tuple[int, ColorOrder]] = {
    "rgb8": (3, "rgb"),
    "bgr8": (3, "bgr"),
    "rgba8": (4, "rgb"),
    "bgra8": (4, "bgr"),
    "mono8": (1, "rgb"),
}
# encoding -> channels, for the images the node publishes
ENCODABLE = {"mono8": 1, "rgb8": 3, "rgba8": 4, "bgr8": 3, "bgra8": 4}
COMPRESSED_FORMATS = ("JPEG", "PNG")
# A camera frame larger than this (pixels) is refused rather than decoded: it guards against a corrupt
# height/width or a decompression bomb exhausting memory.
MAX_PIXELS = 64 * 1024 * 1024


class MalformedImageError(InputImageError):
    """An image message whose fields do not describe a decodable image."""


@dataclass(frozen=True)
class DecodedImage:
    """Pixels as H x W (grey) or H x W x C uint8, and the colour order of the first three channels."""

    pixels: np.ndarray
    color_order: ColorOrder


def _as_bytes(data: Any) -> np.ndarray:
    try:
        return np.frombuffer(data, dtype=np.uint8)
    except (TypeError, ValueError, BufferError):
        pass
    try:
        values = np.asarray(data)
    except (ValueError, TypeError) as exc:
        raise MalformedImageError(f"image data is not a byte buffer ({type(data).__name__}): {exc}") from None
    if values.ndim != 1 or (values.size and (values.dtype.kind not in "iu" or values.min() < 0
                                            or values.max() > 255)):
        raise MalformedImageError(
            f"image data must be bytes or a flat sequence of 0-255 integers, got {type(data).__name__} "
            f"of dtype {values.dtype} and shape {values.shape}"
        )
    return values.astype(np.uint8)


def _dimension(msg: Any, field: str) -> int:
    value = getattr(msg, field, None)
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise MalformedImageError(f"image {field} must be an integer, got {value!r}")
    return int(value)


def decode_image(msg: Any) -> DecodedImage:
    """sensor_msgs/Image -> pixels (a contiguous copy, row padding removed) and colour order.

    Checks encoding, positive size, `step >= width * channels` and `len(data) == step * height`; any
    violation raises MalformedImageError naming the field and the expected value.
    """
    encoding = getattr(msg, "encoding", None)
    if not isinstance(encoding, str) or encoding not in DECODABLE:
        raise MalformedImageError(
            f"unsupported image encoding {encoding!r}; supported: {', '.join(DECODABLE)} "
            "(or CompressedImage jpeg/png with compressed_input:=true)"
        )
    channels, color_order = DECODABLE[encoding]
    height, width, step = (_dimension(msg, f) for f in ("height", "width", "step"))
    if height <= 0 or width <= 0:
        raise MalformedImageError(f"empty image: {width} x {height} pixels")
    if height * width > MAX_PIXELS:
        raise MalformedImageError(f"image of {width} x {height} pixels exceeds the {MAX_PIXELS}-pixel limit")
    row_bytes = width * channels
    if step < row_bytes:
        raise MalformedImageError(
            f"step {step} is smaller than width x channels = {width} x {channels} = {row_bytes} bytes ({encoding})"
        )
    data = _as_bytes(getattr(msg, "data", None))
    if data.size != step * height:
        raise MalformedImageError(
            f"image data has {data.size} bytes, expected step x height = {step} x {height} = {step * height}"
        )
    rows = data.reshape(height, step)[:, :row_bytes]
    pixels = rows if channels == 1 else rows.reshape(height, width, channels)
    return DecodedImage(pixels.copy(), color_order)


def decode_compressed(msg: Any) -> DecodedImage:
    """sensor_msgs/CompressedImage (JPEG or PNG, whatever `format` says) -> RGB or grey pixels."""
    data = _as_bytes(getattr(msg, "data", None))
    if data.size == 0:
        raise MalformedImageError("compressed image is empty")
    try:
        with PILImage.open(io.BytesIO(data.tobytes()), formats=COMPRESSED_FORMATS) as image:
            if image.width * image.height > MAX_PIXELS:
                raise MalformedImageError(
                    f"compressed image of {image.width} x {image.height} pixels exceeds the "
                    f"{MAX_PIXELS}-pixel limit"
                )
            grey = image.mode in ("L", "1", "I;16", "I")
            pixels = np.array(image.convert("L" if grey else "RGB"))
    except MalformedImageError:
        raise
    # Pillow's decoders raise many exception types on corrupt input (OSError, ValueError, SyntaxError,
    # struct.error, ...); each means the same thing here.
    except Exception as exc:
        raise MalformedImageError(
            f"cannot decode compressed image (format {getattr(msg, 'format', '?')!r}) as JPEG or PNG: {exc}"
        ) from None
    return DecodedImage(pixels, "rgb")


def fill_image(msg: Any, pixels: np.ndarray, encoding: str) -> Any:
    """Write H x W (mono8) or H x W x C uint8 pixels into an Image message's fields; returns `msg`."""
    if encoding not in ENCODABLE:
        raise ValueError(f"cannot encode {encoding!r}; choose one of {', '.join(ENCODABLE)}")
    channels = ENCODABLE[encoding]
    expected_ndim = 2 if channels == 1 else 3
    if pixels.dtype != np.uint8 or pixels.ndim != expected_ndim or (
        channels > 1 and pixels.shape[2] != channels
    ):
        raise ValueError(f"{encoding} needs uint8 pixels of {channels} channel(s), got {pixels.dtype} "
                         f"{pixels.shape}")
    msg.height, msg.width = int(pixels.shape[0]), int(pixels.shape[1])
    msg.encoding = encoding
    msg.is_bigendian = 0
    msg.step = msg.width * channels
    msg.data = array.array("B", np.ascontiguousarray(pixels).tobytes())
    return msg
