"""sensor_msgs Image / CompressedImage <-> numpy: round trips, padded rows, and refusal of malformed input."""

from __future__ import annotations

import array
from types import SimpleNamespace

import numpy as np
import pytest
from ros_fakes import CHANNELS, compressed_message, image_message, random_pixels

from fpseg_core.preprocess import to_rgb
from fpseg_core.runtime import image_codec
from fpseg_core.runtime.image_codec import MalformedImageError, decode_compressed, decode_image, fill_image


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "rgba8", "bgra8", "mono8"])
def test_encode_decode_round_trip(encoding: str) -> None:
    pixels = random_pixels(5, 7, CHANNELS[encoding])
    msg = fill_image(SimpleNamespace(), pixels, encoding)
    assert (msg.height, msg.width, msg.step, msg.encoding) == (5, 7, 7 * CHANNELS[encoding], encoding)
    assert isinstance(msg.data, array.array) and msg.data.typecode == "B"  # what rclpy's uint8[] holds
    decoded = decode_image(msg)
    np.testing.assert_array_equal(decoded.pixels, pixels)


@pytest.mark.parametrize(("encoding", "to_rgb_order"), [
    ("rgb8", [0, 1, 2]), ("bgr8", [2, 1, 0]), ("rgba8", [0, 1, 2]), ("bgra8", [2, 1, 0]),
])
def test_colour_order_reaches_rgb(encoding: str, to_rgb_order: list[int]) -> None:
    pixels = random_pixels(4, 6, CHANNELS[encoding], seed=3)
    decoded = decode_image(image_message(pixels, encoding))
    np.testing.assert_array_equal(to_rgb(decoded.pixels, decoded.color_order), pixels[:, :, to_rgb_order])


def test_mono8_becomes_grey_rgb() -> None:
    pixels = random_pixels(3, 4, 1)
    decoded = decode_image(image_message(pixels, "mono8"))
    assert decoded.pixels.shape == (3, 4)
    np.testing.assert_array_equal(to_rgb(decoded.pixels, decoded.color_order), np.repeat(pixels[..., None], 3, 2))


@pytest.mark.parametrize("encoding", ["rgb8", "mono8", "bgra8"])
def test_row_padding_is_skipped(encoding: str) -> None:
    pixels = random_pixels(6, 5, CHANNELS[encoding], seed=7)
    msg = image_message(pixels, encoding, padding=3)
    assert 0xAB in msg.data[msg.width * CHANNELS[encoding]:msg.step]
    decoded = decode_image(msg)
    np.testing.assert_array_equal(decoded.pixels, pixels)
    assert decoded.pixels.flags.writeable and decoded.pixels.flags.c_contiguous


def test_decoded_pixels_do_not_alias_the_message() -> None:
    pixels = random_pixels(2, 2, 3)
    msg = fill_image(SimpleNamespace(), pixels, "rgb8")
    decoded = decode_image(msg)
    msg.data[0] = (int(msg.data[0]) + 1) % 256
    assert decoded.pixels[0, 0, 0] == pixels[0, 0, 0]


def test_data_as_a_list_of_ints_is_accepted() -> None:
    pixels = random_pixels(2, 3, 1)
    msg = image_message(pixels, "mono8")
    msg.data = list(msg.data)
    np.testing.assert_array_equal(decode_image(msg).pixels, pixels)


def _valid() -> SimpleNamespace:
    return image_message(random_pixels(4, 5, 3), "rgb8")


@pytest.mark.parametrize(("change", "expected"), [
    ({"encoding": "yuv422"}, "unsupported image encoding 'yuv422'"),
    ({"encoding": "16UC1"}, "unsupported image encoding"),
    ({"encoding": ["rgb8"]}, "unsupported image encoding"),
    ({"step": 14}, "step 14 is smaller than width x channels = 5 x 3 = 15"),
    ({"step": -1}, "step -1 is smaller"),
    ({"height": 0}, "empty image"),
    ({"width": 0, "step": 0, "data": b""}, "empty image"),
    ({"height": 5}, "expected step x height = 15 x 5 = 75"),
    ({"data": b"\x00" * 59}, "image data has 59 bytes, expected step x height = 15 x 4 = 60"),
    ({"data": None}, "image data"),
    ({"data": "not bytes"}, "image data"),
    ({"data": [300] * 60}, "0-255 integers"),
    ({"width": 2.5}, "width must be an integer"),
    ({"height": True}, "height must be an integer"),
    ({"step": None}, "step must be an integer"),
])
def test_malformed_image_is_refused_with_the_reason(change: dict, expected: str) -> None:
    msg = _valid()
    for field, value in change.items():
        setattr(msg, field, value)
    with pytest.raises(MalformedImageError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        decode_image(msg)


def test_oversized_image_is_refused_before_allocation(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(image_codec, "MAX_PIXELS", 19)
    with pytest.raises(MalformedImageError, match="exceeds the 19-pixel limit"):
        decode_image(_valid())
    with pytest.raises(MalformedImageError, match="exceeds the 19-pixel limit"):
        decode_compressed(compressed_message(random_pixels(4, 5, 3)))


def test_png_decodes_exactly() -> None:
    pixels = random_pixels(9, 11, 3, seed=5)
    decoded = decode_compressed(compressed_message(pixels, "png"))
    assert decoded.color_order == "rgb"
    np.testing.assert_array_equal(decoded.pixels, pixels)


def test_grey_png_decodes_to_grey() -> None:
    pixels = random_pixels(6, 4, 1, seed=2)
    decoded = decode_compressed(compressed_message(pixels, "png"))
    np.testing.assert_array_equal(decoded.pixels, pixels)


def test_jpeg_decodes_to_nearly_the_same_rgb() -> None:
    # A smooth gradient: JPEG keeps it within a few grey levels.
    ramp = np.linspace(0, 255, 32, dtype=np.float32)
    pixels = np.stack(np.broadcast_arrays(ramp[None, :], ramp[:, None], 128 + 0 * ramp[None, :]), -1)
    pixels = pixels.astype(np.uint8)
    decoded = decode_compressed(compressed_message(pixels, "jpeg"))
    assert decoded.pixels.shape == pixels.shape
    assert np.abs(decoded.pixels.astype(int) - pixels).mean() < 4


@pytest.mark.parametrize(("data", "expected"), [
    (b"", "compressed image is empty"),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "cannot decode compressed image"),
    (b"GIF89a" + b"\x00" * 40, "cannot decode compressed image"),
    (np.random.default_rng(0).integers(0, 256, 500, dtype=np.uint8).tobytes(), "cannot decode"),
])
def test_corrupt_compressed_image_is_refused(data: bytes, expected: str) -> None:
    with pytest.raises(MalformedImageError, match=expected):
        decode_compressed(SimpleNamespace(format="png", data=data))


def test_truncated_jpeg_is_refused() -> None:
    msg = compressed_message(random_pixels(32, 32, 3), "jpeg")
    msg.data = msg.data[: len(msg.data) // 2]
    with pytest.raises(MalformedImageError, match="cannot decode"):
        decode_compressed(msg)


@pytest.mark.parametrize(("pixels", "encoding"), [
    (np.zeros((2, 2), np.float32), "mono8"),
    (np.zeros((2, 2, 3), np.uint8), "mono8"),
    (np.zeros((2, 2), np.uint8), "rgb8"),
    (np.zeros((2, 2, 4), np.uint8), "rgb8"),
    (np.zeros((2, 2), np.uint8), "16UC1"),
])
def test_fill_image_refuses_pixels_that_do_not_fit_the_encoding(pixels: np.ndarray, encoding: str) -> None:
    with pytest.raises(ValueError, match=encoding):
        fill_image(SimpleNamespace(), pixels, encoding)
