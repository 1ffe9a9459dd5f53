"""Image input checks and FPSeg's pre- and post-processing (squash or SAM letterbox to the encoder size)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from .errors import InputImageError

PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)
INPUT_MODES = ("squash", "letterbox")
InputMode = Literal["squash", "letterbox"]
ColorOrder = Literal["rgb", "bgr"]


def to_rgb(image: np.ndarray, color_order: ColorOrder = "rgb") -> np.ndarray:
    """Any accepted image -> contiguous H x W x 3 uint8 RGB.

    Accepts uint8 arrays H x W (grey), H x W x 1 (grey), H x W x 3 (RGB or BGR) and H x W x 4 (RGBA or
    BGRA; alpha dropped). Anything else raises InputImageError saying what was found and what to pass.
    """
    if not isinstance(image, np.ndarray):
        image = np.asarray(image)
    if image.dtype != np.uint8:
        raise InputImageError(
            f"image dtype is {image.dtype}, expected uint8 0-255; convert with "
            "np.clip(image, 0, 255).astype(np.uint8) (float images in 0-1: multiply by 255 first)"
        )
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
        if mode == "letterbox":
            scale = img_size / max(height, width)
            return cls(height, width, int(height * scale + 0.5), int(width * scale + 0.5), img_size)
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
