"""Image input checks and FPSeg's pre- and post-processing (squash or SAM letterbox to the encoder size)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image as PILImage

from .constants import INPUT_MODES, InputMode
from .errors import InputImageError

PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)
ColorOrder = Literal["rgb", "bgr"]
UINT16_MAX = np.iinfo(np.uint16).max
GREY_MODES = ("1", "L", "LA")  # PIL modes read as H x W grey
FLOAT_CONVERSION = ("scale it to 8 bits first, e.g. (np.clip(image, 0, 1) * 255).round().astype(np.uint8) "
                    "for values in 0-1")


def pil_to_array(image: PILImage.Image) -> np.ndarray:
    """A PIL image as H x W grey (uint8, or uint16 for 16-bit images) or H x W x 3 uint8 RGB pixels.

    16-bit grey (modes I;16*, and mode I holding 0-65535, as older Pillow opens 16-bit PNGs) stays uint16 so
    that `to_rgb` scales it by its bit depth instead of clipping it. Palette, alpha, CMYK and other modes
    are converted by Pillow (alpha dropped). Float (F) and wider integer images raise InputImageError saying
    how to convert them.
    """
    if image.mode.startswith("I;16"):
        return np.array(image).astype(np.uint16)  # I;16B arrays are big-endian: make them native
    if image.mode == "I":
        pixels = np.array(image)
        if pixels.size and (pixels.min() < 0 or pixels.max() > UINT16_MAX):
            raise InputImageError(
                f"32-bit integer image with values {pixels.min()}..{pixels.max()}: only 8- and 16-bit images "
                "are taken; scale it to 0-255 and pass uint8"
            )
        return pixels.astype(np.uint16)
    if image.mode == "F":
        raise InputImageError(f"32-bit float image (PIL mode F): {FLOAT_CONVERSION}")
    if image.mode in GREY_MODES:
        return np.array(image.convert("L"))
    if image.mode == "RGB":
        return np.array(image)
    with_alpha = "A" in image.getbands() or "transparency" in image.info  # palette transparency needs RGBA
    return np.array(image.convert("RGBA" if with_alpha else "RGB"))[:, :, :3]


def _to_uint8(pixels: np.ndarray) -> np.ndarray:
    """8-bit pixels as they are; 16-bit ones (uint16, either byte order) scaled by their bit depth (value >> 8,
    so 65535 -> 255, never clipped). Any other dtype raises InputImageError naming the conversion."""
    if pixels.dtype == np.uint8:
        return pixels
    if pixels.dtype.kind == "u" and pixels.dtype.itemsize == 2:
        return (pixels.astype(np.uint16) >> 8).astype(np.uint8)
    if pixels.dtype.kind == "f":
        raise InputImageError(f"image dtype is {pixels.dtype}, expected uint8 or uint16: {FLOAT_CONVERSION}")
    raise InputImageError(
        f"image dtype is {pixels.dtype}, expected uint8 (0-255) or uint16 (0-65535); convert it, e.g. "
        "np.clip(image, 0, 255).astype(np.uint8) for values in 0-255"
    )


def to_rgb(image: np.ndarray | PILImage.Image, color_order: ColorOrder = "rgb") -> np.ndarray:
    """Any accepted image -> contiguous H x W x 3 uint8 RGB.

    Accepts PIL images (see `pil_to_array`) and arrays H x W (grey), H x W x 1 (grey), H x W x 3 (RGB or
    BGR) and H x W x 4 (RGBA or BGRA; alpha dropped) of uint8, or of uint16 (16-bit, e.g. mono16), scaled to
    8 bits by their bit depth (value >> 8). Anything else raises InputImageError saying what was found and what to pass.
    """
    if isinstance(image, PILImage.Image):
        image = pil_to_array(image)
    elif not isinstance(image, np.ndarray):
        image = np.asarray(image)
    image = _to_uint8(image)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    elif image.ndim != 3 or image.shape[2] not in (3, 4):
        raise InputImageError(
            f"image shape is {image.shape}, expected H x W (grey), H x W x 3 (RGB/BGR) or H x W x 4 (RGBA)"
        )
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise InputImageError(f"image is empty (shape {image.shape})")
    if color_order not in ("rgb", "bgr"):
        raise InputImageError(f"color_order must be 'rgb' or 'bgr', got {color_order!r}")
    image = image[:, :, :3]
    if color_order == "bgr":
        image = image[:, :, ::-1]
    return np.ascontiguousarray(image)


@dataclass(frozen=True)
class Geometry:
    """Where the original image sits in the encoder's square input."""

    height: int
    width: int
    resized_height: int
    resized_width: int
    img_size: int

    @classmethod
    def for_image(cls, height: int, width: int, img_size: int, mode: InputMode) -> Geometry:
        if mode == "squash":
            return cls(height, width, img_size, img_size, img_size)
        if mode == "letterbox":  # the short side keeps at least one row / column, however extreme the aspect
            scale = img_size / max(height, width)
            return cls(height, width, max(1, int(height * scale + 0.5)), max(1, int(width * scale + 0.5)), img_size)
        raise InputImageError(f"input mode must be one of {', '.join(INPUT_MODES)}, got {mode!r}")


def preprocess(
    rgb: np.ndarray | torch.Tensor, img_size: int, mode: InputMode = "squash", device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, Geometry]:
    """H x W x 3 uint8 RGB (numpy, or a torch tensor already on `device`) -> ([1, 3, S, S] normalised, Geometry).

    Squash resizes the whole image to S x S; letterbox resizes the longest side to S and zero-pads the
    bottom/right after normalisation, as SAM does. Resizing is bilinear with antialiasing.
    """
    tensor = torch.as_tensor(rgb).to(device)
    height, width = int(tensor.shape[0]), int(tensor.shape[1])
    geometry = Geometry.for_image(height, width, img_size, mode)
    x = tensor.permute(2, 0, 1).unsqueeze(0).to(torch.float32)
    if (height, width) != (geometry.resized_height, geometry.resized_width):
        x = F.interpolate(x, (geometry.resized_height, geometry.resized_width), mode="bilinear",
                          align_corners=False, antialias=True)
    mean = torch.tensor(PIXEL_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(PIXEL_STD, device=x.device).view(1, 3, 1, 1)
    x = (x - mean) / std
    x = F.pad(x, (0, img_size - geometry.resized_width, 0, img_size - geometry.resized_height))
    return x.to(dtype), geometry


def postprocess_logits(low_res: torch.Tensor, geometry: Geometry) -> torch.Tensor:
    """Low-resolution logits [B, N, h, w] -> [B, N, H, W] at the original size, as FPSeg does it:
    bilinear to S x S, crop the padding (none when squashing), bilinear to the original size."""
    s = geometry.img_size
    x = F.interpolate(low_res, (s, s), mode="bilinear", align_corners=False)
    x = x[..., : geometry.resized_height, : geometry.resized_width]
    return F.interpolate(x, (geometry.height, geometry.width), mode="bilinear", align_corners=False)
