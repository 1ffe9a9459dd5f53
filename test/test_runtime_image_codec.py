"""sensor_msgs Image / CompressedImage <-> numpy: round trips, padded rows, and refusal of malformed input."""

from __future__ import annotations

import array
import re
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
    ({"encoding": "nv12"}, "unsupported image encoding 'nv12'"),
    ({"encoding": "32FC1"}, "unsupported image encoding"),
    ({"encoding": ["rgb8"]}, "unsupported image encoding"),
    ({"step": 14}, "step 14 is smaller than width x channels (bytes per pixel) = 5 x 3 = 15"),
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


# --- 16-bit grey, YUV 4:2:2 and Bayer: the encodings USB and machine-vision cameras publish -----------------

def _raw_message(rows: np.ndarray, width: int, encoding: str, big_endian: bool = False,
                 padding: int = 0) -> SimpleNamespace:
    """An Image message of already-encoded rows (H x row bytes uint8), each followed by `padding` bytes."""
    padded = np.concatenate([rows, np.full((rows.shape[0], padding), 0xAB, np.uint8)], axis=1)
    return SimpleNamespace(height=rows.shape[0], width=width, encoding=encoding, is_bigendian=int(big_endian),
                           step=padded.shape[1], data=padded.tobytes())


@pytest.mark.parametrize("encoding", ["mono16", "16UC1"])
@pytest.mark.parametrize("big_endian", [False, True])
def test_16_bit_grey_keeps_its_values_and_is_scaled_by_its_bit_depth(encoding: str, big_endian: bool) -> None:
    values = np.array([[0, 255, 256, 4096], [32768, 40000, 65280, 65535]], dtype=np.uint16)
    rows = values.astype(">u2" if big_endian else "<u2").view(np.uint8).reshape(2, 8)
    decoded = decode_image(_raw_message(rows, 4, encoding, big_endian, padding=2))
    assert decoded.pixels.dtype == np.uint16
    np.testing.assert_array_equal(decoded.pixels, values)
    grey = to_rgb(decoded.pixels, decoded.color_order)[..., 0]
    np.testing.assert_array_equal(grey, [[0, 0, 1, 16], [128, 156, 255, 255]])  # value >> 8, never clipped


# Colours and their BT.601 limited-range Y, U, V (the values OpenCV's COLOR_RGB2YUV family and cameras use).
YUV_COLOURS = {
    "red": ((255, 0, 0), (82, 90, 240)),
    "green": ((0, 255, 0), (145, 54, 34)),
    "blue": ((0, 0, 255), (41, 240, 110)),
    "white": ((255, 255, 255), (235, 128, 128)),
    "black": ((0, 0, 0), (16, 128, 128)),
    "grey": ((128, 128, 128), (126, 128, 128)),
}
# Byte positions of one two-pixel group, written out per encoding: Y0, U, Y1, V.
YUV_GROUP = {"yuv422": lambda y0, u, y1, v: [u, y0, v, y1], "yuv422_yuy2": lambda y0, u, y1, v: [y0, u, y1, v]}


@pytest.mark.parametrize("encoding", list(YUV_GROUP))
@pytest.mark.parametrize("colour", list(YUV_COLOURS))
def test_yuv422_solid_colours_decode_to_their_rgb(encoding: str, colour: str) -> None:
    rgb, (y, u, v) = YUV_COLOURS[colour]
    rows = np.tile(np.array(YUV_GROUP[encoding](y, u, y, v), np.uint8), (3, 4))  # 3 rows of 8 pixels
    decoded = decode_image(_raw_message(rows, 8, encoding, padding=4))
    assert decoded.pixels.shape == (3, 8, 3) and decoded.color_order == "rgb"
    assert np.abs(decoded.pixels.astype(int) - rgb).max() <= 2, decoded.pixels[0, 0]


@pytest.mark.parametrize("encoding", list(YUV_GROUP))
def test_yuv422_byte_order_puts_each_luma_on_its_own_pixel(encoding: str) -> None:
    rows = np.array([YUV_GROUP[encoding](16, 128, 235, 128)], np.uint8)  # black then white, no colour
    pixels = decode_image(_raw_message(rows, 2, encoding)).pixels
    np.testing.assert_array_equal(pixels[0], [[0, 0, 0], [255, 255, 255]])


def test_yuv422_refuses_an_odd_width() -> None:
    with pytest.raises(MalformedImageError, match="width must be even, got 3"):
        decode_image(_raw_message(np.zeros((2, 6), np.uint8), 3, "yuv422"))


def _mosaic(rgb: np.ndarray, pattern: str) -> np.ndarray:
    """What a Bayer sensor records of an H x W x 3 scene: one channel per pixel, by the 2 x 2 tile `pattern`."""
    height, width = rgb.shape[:2]
    y, x = np.mgrid[:height, :width]
    channel = np.array(["rgb".index(c) for c in pattern])[2 * (y % 2) + x % 2]
    return np.take_along_axis(rgb, channel[..., None], axis=2)[..., 0]


BAYER = ["bayer_rggb8", "bayer_bggr8", "bayer_gbrg8", "bayer_grbg8"]


@pytest.mark.parametrize("encoding", BAYER)
@pytest.mark.parametrize("colour", [(255, 0, 0), (0, 255, 0), (0, 0, 255), (128, 128, 128), (200, 100, 50)])
def test_bayer_solid_colours_decode_to_their_rgb(encoding: str, colour: tuple[int, int, int]) -> None:
    scene = np.broadcast_to(np.array(colour, np.uint8), (5, 6, 3))  # odd height: a partial tile row
    decoded = decode_image(_raw_message(_mosaic(scene, encoding[6:10]), 6, encoding, padding=1))
    assert decoded.pixels.shape == (5, 6, 3) and decoded.color_order == "rgb"
    np.testing.assert_array_equal(decoded.pixels, scene)


def test_bayer_demosaic_is_bilinear() -> None:
    raw = np.arange(16, dtype=np.uint8).reshape(4, 4) * 10  # RGGB: R at even row / even column
    pixels = decode_image(_raw_message(raw, 4, "bayer_rggb8")).pixels.astype(float)
    # (1, 1) is a blue site: red from the 4 diagonal neighbours, green from the 4 direct ones.
    assert pixels[1, 1, 0] == np.mean(raw[[0, 0, 2, 2], [0, 2, 0, 2]])
    assert pixels[1, 1, 1] == np.mean(raw[[0, 1, 1, 2], [1, 0, 2, 1]])
    assert pixels[1, 1, 2] == raw[1, 1]
    # (1, 2) is a green site on a blue row: red from above and below, blue from left and right.
    assert tuple(pixels[1, 2]) == (np.mean(raw[[0, 2], 2]), raw[1, 2], np.mean(raw[1, [1, 3]]))


def test_bayer_needs_a_whole_tile() -> None:
    with pytest.raises(MalformedImageError, match="needs at least 2 x 2 pixels"):
        decode_image(_raw_message(np.zeros((1, 8), np.uint8), 8, "bayer_grbg8"))


@pytest.mark.parametrize(("encoding", "width", "step", "expected"), [
    ("yuv422", 4, 7, "step 7 is smaller than width x channels (bytes per pixel) = 4 x 2 = 8"),
    ("mono16", 3, 5, "= 3 x 2 = 6 bytes (mono16)"),
    ("bayer_rggb8", 4, 3, "= 4 x 1 = 4 bytes (bayer_rggb8)"),
])
def test_new_encodings_get_the_strict_step_check(encoding: str, width: int, step: int, expected: str) -> None:
    msg = SimpleNamespace(height=2, width=width, encoding=encoding, is_bigendian=0, step=step, data=bytes(2 * step))
    with pytest.raises(MalformedImageError, match=re.escape(expected)):
        decode_image(msg)


def test_16_bit_png_is_not_clipped() -> None:
    ramp = np.linspace(0, 65535, 24).astype(np.uint16).reshape(4, 6)
    decoded = decode_compressed(compressed_message(ramp, "png"))
    np.testing.assert_array_equal(decoded.pixels, ramp)
    np.testing.assert_array_equal(to_rgb(decoded.pixels)[..., 0], ramp >> 8)
