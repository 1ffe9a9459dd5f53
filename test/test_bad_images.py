"""Unusual and wrong input: every image is read without losing bits or clipping, and every user mistake ends in
one line `fpseg <command>: error: ...` with exit code 2, never a traceback."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fpseg_core import FPSeg
from fpseg_core.cli.main import build_parser, main
from fpseg_core.errors import InputImageError
from fpseg_core.image_io import read_image
from fpseg_core.jobs.options import resolve_config
from fpseg_core.preprocess import to_rgb
from fpseg_core.training.config import TrainConfig

RAMP16 = np.linspace(0, 65535, 64 * 48).astype(np.uint16).reshape(48, 64)  # a 16-bit gradient, dark to bright


def _save(tmp_path: Path, name: str, image: Image.Image) -> Path:
    image.save(tmp_path / name)
    return tmp_path / name


def _palette_image() -> Image.Image:
    image = Image.new("P", (6, 4))
    image.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    image.paste(1, (3, 0, 6, 4))  # right half: palette entry 1
    image.info["transparency"] = b"\x00\xff"  # per-entry alpha: Pillow needs RGBA to convert this
    return image


# --- image files and PIL images: (name, image, the H x W x 3 RGB it must read as) ------------------------------

FILES = [
    ("16-bit grey PNG", lambda: Image.fromarray(RAMP16),
     np.repeat((RAMP16 >> 8).astype(np.uint8)[..., None], 3, axis=2)),
    ("RGBA PNG", lambda: Image.new("RGBA", (5, 3), (1, 2, 3, 0)), np.full((3, 5, 3), (1, 2, 3), np.uint8)),
    ("LA PNG", lambda: Image.new("LA", (5, 3), (77, 9)), np.full((3, 5, 3), 77, np.uint8)),
    ("palette PNG with transparency", _palette_image,
     np.concatenate([np.full((4, 3, 3), (10, 20, 30)), np.full((4, 3, 3), (200, 100, 50))], 1).astype(np.uint8)),
]


@pytest.mark.parametrize(("name", "make", "expected"), FILES, ids=[f[0] for f in FILES])
def test_image_files_read_as_the_rgb_they_show(tmp_path: Path, name: str, make, expected: np.ndarray) -> None:
    path = _save(tmp_path, "image.png", make())
    np.testing.assert_array_equal(read_image(path), expected)
    with Image.open(path) as image:  # the same through predict's input conversion
        np.testing.assert_array_equal(to_rgb(image), expected)


def test_a_16_bit_png_keeps_its_gradient_and_is_not_clipped_white(tmp_path: Path) -> None:
    grey = read_image(_save(tmp_path, "depth.png", Image.fromarray(RAMP16)))[..., 0]
    assert (grey == 255).mean() < 0.01  # clipped to 8 bits, 99.6% of this ramp would be 255
    assert np.all(np.diff(grey.ravel().astype(int)) >= 0) and grey.min() == 0 and grey.max() == 255


# --- arrays: (name, image, the InputImageError message), each refused with how to fix it ------------------------

REFUSED = [
    ("float in 0-1", np.full((4, 4, 3), 0.5, np.float32), r"float32.*\(np.clip\(image, 0, 1\) \* 255\)"),
    ("float64 grey", np.zeros((4, 4), np.float64), "float64, expected uint8 or uint16"),
    ("PIL float (mode F)", Image.new("F", (4, 4)), r"mode F\): scale it to 8 bits"),
    ("int32 beyond 16 bits", Image.fromarray(np.full((2, 2), 70000, np.int32)), "only 8- and 16-bit"),
    ("int64", np.zeros((4, 4, 3), np.int64), r"np.clip\(image, 0, 255\).astype\(np.uint8\)"),
    ("0 x 0", np.zeros((0, 0, 3), np.uint8), "image is empty"),
    ("0 rows", np.zeros((0, 7), np.uint16), "image is empty"),
    ("two channels", np.zeros((4, 4, 2), np.uint8), "expected H x W"),
]


@pytest.mark.parametrize(("name", "image", "expected"), REFUSED, ids=[r[0] for r in REFUSED])
def test_images_that_cannot_be_taken_are_refused_with_the_conversion(name: str, image, expected: str) -> None:
    with pytest.raises(InputImageError, match=expected):
        to_rgb(image)


def test_16_bit_pixels_are_scaled_by_their_bit_depth_however_they_are_held() -> None:
    values = np.array([[0, 255, 256, 65535]], np.uint16)
    # native and big-endian arrays, and PIL mode I (how Pillow before 10 opens a 16-bit PNG)
    for pixels in (values, values.astype(">u2"), Image.fromarray(values.astype(np.int32))):
        np.testing.assert_array_equal(to_rgb(pixels)[..., 1], [[0, 0, 1, 255]])


# --- through the model: odd sizes and PIL input --------------------------------------------------------------

@pytest.mark.parametrize("mode", ["squash", "letterbox"])
@pytest.mark.parametrize("shape", [(1, 1), (1, 2000), (2000, 1), (3, 700)])
def test_tiny_and_extreme_aspect_images_give_labels_of_their_size(random_model: FPSeg, mode: str,
                                                                  shape: tuple[int, int]) -> None:
    random_model.input_mode = mode
    image = np.random.default_rng(0).integers(0, 256, (*shape, 3), dtype=np.uint8)
    labels = random_model.predict(image)
    assert labels.shape == shape and labels.dtype == np.uint8


def test_predict_takes_a_pil_image_as_its_array(random_model: FPSeg) -> None:
    array = np.random.default_rng(1).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    np.testing.assert_array_equal(random_model.predict(Image.fromarray(array)), random_model.predict(array))


# --- the CLI: user mistakes -> one line and exit code 2 ------------------------------------------------------

def _run(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse refuses bad arguments by exiting
        code = exc.code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err.strip().splitlines()[-1]


def _segment(*args: str) -> list[str]:
    return ["segment", *args, "--random-weights"]


@pytest.fixture()
def image_file(tmp_path: Path) -> Path:
    return _save(tmp_path, "frame.png", Image.new("RGB", (16, 12), (90, 120, 30)))


def test_segment_reads_a_16_bit_png(tmp_path: Path) -> None:
    depth = _save(tmp_path, "depth.png", Image.fromarray(RAMP16))
    assert main(_segment(str(depth), "--out", str(tmp_path / "out"))) == 0
    with Image.open(tmp_path / "out" / "depth_labels.png") as labels:
        assert labels.size == (64, 48)


CLI_MISTAKES = [
    ("a text file as image", lambda tmp, img: _segment(str(_text(tmp)), "--out", str(tmp / "out")),
     r"fpseg segment: error: .*notes.txt is not an image Pillow can read \(PNG, JPEG"),
    ("a truncated PNG", lambda tmp, img: _segment(str(_truncated(tmp)), "--out", str(tmp / "out")),
     r"fpseg segment: error: cannot read image .*cut.png"),
    ("a folder as image", lambda tmp, img: _segment(str(tmp), "--out", str(tmp / "out")),
     "is a folder; pass image files"),
    ("a missing image", lambda tmp, img: _segment(str(tmp / "nope.png"), "--out", str(tmp / "out")),
     "image .*nope.png does not exist"),
    ("--device foo", lambda tmp, img: _segment(str(img), "--out", str(tmp / "out"), "--device", "foo"),
     r"fpseg segment: error: argument --device: invalid device 'foo': use auto, cpu, cuda, cuda:N .* or mps"),
    ("--device cuda:x", lambda tmp, img: _segment(str(img), "--out", str(tmp / "out"), "--device", "cuda:x"),
     "invalid device 'cuda:x'"),
    ("--out naming a file", lambda tmp, img: _segment(str(img), "--out", str(img)),
     r"fpseg segment: error: .*frame.png"),
    ("--out inside a file", lambda tmp, img: _segment(str(img), "--out", str(tmp / "notes.txt" / "out")),
     "notes.txt"),
    ("--set without =", lambda tmp, img: ["train", "--set", "lr"],
     r"fpseg train: error: --set 'lr': expected KEY=VALUE"),
    ("--set without key", lambda tmp, img: ["train", "--set", "=1"], "expected KEY=VALUE"),
    ("--set bad YAML", lambda tmp, img: ["train", "--set", "lr=[1, 2"],
     r"--set 'lr=\[1, 2': the value is not valid YAML"),
    ("--set bad value", lambda tmp, img: ["train", "--set", "lr=fast"],
     "--set lr=fast: lr must be float, got 'fast'"),
    ("train --device foo", lambda tmp, img: ["train", "--device", "foo"], "argument --device: invalid device 'foo'"),
    ("YAML device: foo", lambda tmp, img: ["train", "--config", str(_yaml(tmp, "device: foo\n"))],
     r"config.yaml: invalid device 'foo'"),
    ("YAML syntax error", lambda tmp, img: ["train", "--config", str(_yaml(tmp, "lr: [1\n"))],
     r"config.yaml is not valid YAML: .* at line 2"),
]


def _text(tmp: Path) -> Path:
    (tmp / "notes.txt").write_text("not an image\n")
    return tmp / "notes.txt"


def _truncated(tmp: Path) -> Path:
    data = _save(tmp, "big.png", Image.fromarray(RAMP16.astype(np.uint8))).read_bytes()
    (tmp / "cut.png").write_bytes(data[: len(data) // 2])
    return tmp / "cut.png"


def _yaml(tmp: Path, text: str) -> Path:
    (tmp / "config.yaml").write_text(text)
    return tmp / "config.yaml"


@pytest.mark.parametrize(("name", "argv", "expected"), CLI_MISTAKES, ids=[m[0] for m in CLI_MISTAKES])
def test_cli_mistakes_end_in_one_line_and_exit_code_2(tmp_path: Path, image_file: Path,
                                                      capsys: pytest.CaptureFixture[str], name: str, argv,
                                                      expected: str) -> None:
    _text(tmp_path)
    code, last_line = _run(capsys, argv(tmp_path, image_file))
    assert code == 2
    assert re.search(expected, last_line), last_line


# --- YAML numbers ---------------------------------------------------------------------------------------------

def test_yaml_exponent_floats_are_floats(tmp_path: Path) -> None:
    config = _yaml(tmp_path, "lr: 1e-3\ndecoder_lr: .5e-2\n")
    args = build_parser().parse_args(["train", "--config", str(config), "--set", "weight_decay=1E+1"])
    resolved = resolve_config(TrainConfig, args)
    assert (resolved.lr, resolved.decoder_lr, resolved.weight_decay) == (0.001, 0.005, 10.0)
