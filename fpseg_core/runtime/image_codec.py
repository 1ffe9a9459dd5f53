"""sensor_msgs Image / CompressedImage fields <-> numpy, with strict checks (no rclpy import).

Messages are duck-typed: anything with `height, width, encoding, step, data` (Image) or `format, data`
(CompressedImage) works, so the same code runs on rclpy messages, rosbags messages and plain test objects.
rosbags-image and cv_bridge were considered: both need OpenCV, and rosbags-image ignores `step` (padded
rows), so raw images are viewed with numpy here and compressed ones decoded with Pillow.

Memory bound: decoding keeps no state between messages (the tables here are constants); each DecodedImage
holds a copy of its pixels, never a view of the message's buffer, so a message is not kept alive by its
decoded frame.
"""

from __future__ import annotations

import array
import io
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
from PIL import Image as PILImage

from fpseg_core.errors import InputImageError
from fpseg_core.preprocess import ColorOrder, pil_to_array

# encoding -> channels, for the images the node publishes
ENCODABLE = {"mono8": 1, "rgb8": 3, "rgba8": 4, "bgr8": 3, "bgra8": 4}
COMPRESSED_FORMATS = ("JPEG", "PNG")
# A camera frame larger than this (pixels) is refused rather than decoded: it guards against a corrupt
# height/width or a decompression bomb exhausting memory.
MAX_PIXELS = 64 * 1024 * 1024
BAYER_PATTERNS = ("rggb", "bggr", "gbrg", "grbg")  # the 2 x 2 colour filter tile, row by row
# YUV 4:2:2 packs two pixels in 4 bytes: positions of (Y0, Y1), U and V in each group.
YUV422_ORDERS = {"yuv422": ((1, 3), 0, 2), "yuv422_yuy2": ((0, 2), 1, 3)}  # UYVY, YUYV
# BT.601 limited range ("studio swing") YUV -> RGB, as ROS image_proc / OpenCV's COLOR_YUV2RGB_UYVY convert.
YUV_LUMA_OFFSET, YUV_LUMA_GAIN = 16.0, 255.0 / 219.0
YUV_CHROMA = np.array([[0.0, 1.596], [-0.391, -0.813], [2.018, 0.0]], np.float32)  # R, G, B x (U - 128, V - 128)


class MalformedImageError(InputImageError):
    """An image message whose fields do not describe a decodable image."""


@dataclass(frozen=True)
class DecodedImage:
    """Pixels as H x W (grey; uint16 for mono16 / 16UC1, else uint8) or H x W x C uint8 (YUV and Bayer
    encodings are converted to RGB), and the colour order of the first three channels."""

    pixels: np.ndarray
    color_order: ColorOrder


# Decoders: (rows of the message without their padding, H x row bytes uint8; width; is_bigendian) -> pixels.
def _interleaved(rows: np.ndarray, width: int, _big_endian: bool, *, channels: int) -> np.ndarray:
    return (rows if channels == 1 else rows.reshape(rows.shape[0], width, channels)).copy()


def _mono16(rows: np.ndarray, _width: int, big_endian: bool) -> np.ndarray:
    return rows.copy().view(">u2" if big_endian else "<u2").astype(np.uint16)


def _yuv422(rows: np.ndarray, width: int, _big_endian: bool, *, encoding: str) -> np.ndarray:
    if width % 2:
        raise MalformedImageError(f"{encoding} packs two pixels in 4 bytes: width must be even, got {width}")
    (y0, y1), u, v = YUV422_ORDERS[encoding]
    groups = rows.reshape(rows.shape[0], width // 2, 4).astype(np.float32)
    luma = groups[..., [y0, y1]].reshape(rows.shape[0], width)
    chroma = np.repeat(groups[..., [u, v]] - 128.0, 2, axis=1)  # each U, V pair serves two pixels
    rgb = YUV_LUMA_GAIN * (luma[..., None] - YUV_LUMA_OFFSET) + chroma @ YUV_CHROMA.T
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def _blur3(values: np.ndarray) -> np.ndarray:
    """3 x 3 sum weighted [1 2 1] x [1 2 1], zero outside the image (separable, vectorised)."""
    p = np.pad(values, 1)
    p = p[:, :-2] + 2 * p[:, 1:-1] + p[:, 2:]
    return p[:-2] + 2 * p[1:-1] + p[2:]


def _demosaic(raw: np.ndarray, width: int, _big_endian: bool, *, pattern: str) -> np.ndarray:
    """Bilinear demosaic: each channel keeps its own samples and elsewhere takes the weighted mean of the
    samples of that colour in the 3 x 3 neighbourhood (a normalised convolution, so borders need no care)."""
    height = raw.shape[0]
    if height < 2 or width < 2:
        raise MalformedImageError(f"bayer_{pattern}8 needs at least 2 x 2 pixels (one colour filter tile), got "
                                  f"{width} x {height}")
    rgb = np.empty((height, width, 3), np.uint8)
    for channel, colour in enumerate("rgb"):
        mask = np.zeros((height, width), bool)
        for position, tile_colour in enumerate(pattern):
            if tile_colour == colour:
                mask[position // 2::2, position % 2::2] = True
        interpolated = _blur3(np.where(mask, raw, 0).astype(np.float32)) / _blur3(mask.astype(np.float32))
        rgb[..., channel] = np.where(mask, raw, np.rint(interpolated))
    return rgb


@dataclass(frozen=True)
class _Encoding:
    bytes_per_pixel: int
    color_order: ColorOrder  # of the decoded pixels' first three channels
    decode: Callable[[np.ndarray, int, bool], np.ndarray]


DECODABLE: dict[str, _Encoding] = {
    **{name: _Encoding(channels, "bgr" if name.startswith("bgr") else "rgb", partial(_interleaved, channels=channels))
       for name, channels in ENCODABLE.items()},
    # 16-bit grey stays uint16 here (label and depth values intact); to_rgb scales it by its bit depth.
    "mono16": _Encoding(2, "rgb", _mono16),
    "16UC1": _Encoding(2, "rgb", _mono16),
    **{name: _Encoding(2, "rgb", partial(_yuv422, encoding=name)) for name in YUV422_ORDERS},
    **{f"bayer_{p}8": _Encoding(1, "rgb", partial(_demosaic, pattern=p)) for p in BAYER_PATTERNS},
}


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


def stamp_ns(header: Any) -> int:
    """A std_msgs/Header's stamp in nanoseconds since the epoch; MalformedImageError if it has none."""
    try:
        return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)
    except (AttributeError, TypeError, ValueError) as exc:
        raise MalformedImageError(f"message header has no valid stamp ({exc})") from None


def _dimension(msg: Any, field: str) -> int:
    value = getattr(msg, field, None)
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise MalformedImageError(f"image {field} must be an integer, got {value!r}")
    return int(value)


def decode_image(msg: Any) -> DecodedImage:
    """sensor_msgs/Image -> pixels (a contiguous copy, row padding removed) and colour order.

    8-bit encodings are viewed as they are, mono16 / 16UC1 as native uint16 (honouring `is_bigendian`),
    yuv422 (UYVY) / yuv422_yuy2 (YUYV) and the 8-bit Bayer encodings converted to RGB. Checks encoding,
    positive size, `step >= width * bytes per pixel` and `len(data) == step * height`; any violation raises
    MalformedImageError naming the field and the expected value.
    """
    encoding = getattr(msg, "encoding", None)
    if not isinstance(encoding, str) or encoding not in DECODABLE:
        raise MalformedImageError(
            f"unsupported image encoding {encoding!r}; supported: {', '.join(DECODABLE)} "
            "(or CompressedImage jpeg/png with compressed_input:=true)"
        )
    layout = DECODABLE[encoding]
    height, width, step = (_dimension(msg, f) for f in ("height", "width", "step"))
    if height <= 0 or width <= 0:
        raise MalformedImageError(f"empty image: {width} x {height} pixels")
    if height * width > MAX_PIXELS:
        raise MalformedImageError(f"image of {width} x {height} pixels exceeds the {MAX_PIXELS}-pixel limit")
    row_bytes = width * layout.bytes_per_pixel
    if step < row_bytes:
        raise MalformedImageError(
            f"step {step} is smaller than width x channels (bytes per pixel) = {width} x {layout.bytes_per_pixel}"
            f" = {row_bytes} bytes ({encoding})"
        )
    data = _as_bytes(getattr(msg, "data", None))
    if data.size != step * height:
        raise MalformedImageError(
            f"image data has {data.size} bytes, expected step x height = {step} x {height} = {step * height}"
        )
    rows = data.reshape(height, step)[:, :row_bytes]
    pixels = layout.decode(rows, width, bool(getattr(msg, "is_bigendian", 0)))
    return DecodedImage(pixels, layout.color_order)


def decode_compressed(msg: Any) -> DecodedImage:
    """sensor_msgs/CompressedImage (JPEG or PNG, whatever `format` says) -> RGB or grey pixels (uint16 for
    16-bit PNGs, which to_rgb scales)."""
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
            pixels = pil_to_array(image)
    except InputImageError:
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
    data = array.array("B")
    data.frombytes(np.ascontiguousarray(pixels))  # one copy into the message's buffer
    msg.data = data
    return msg
