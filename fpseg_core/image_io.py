"""Image files -> RGB pixels, without losing a bit depth or reading a non-image silently."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from .errors import InputImageError
from .files import permission_message
from .preprocess import to_rgb

# What Pillow opens, in the words a user knows.
READABLE_FORMATS = "PNG, JPEG, BMP, TIFF, WebP, ..."


def read_image(path: str | Path) -> np.ndarray:
    """An image file as H x W x 3 uint8 RGB (16-bit images scaled by their bit depth), or InputImageError /
    FileNotFoundError naming the file and what it should be."""
    path = Path(path)
    if path.is_dir():
        raise InputImageError(f"{path} is a folder; pass image files, e.g. {path / '*.png'}")
    if not path.is_file():
        raise FileNotFoundError(f"image {path} does not exist")
    try:
        with Image.open(path) as image:
            return to_rgb(image)
    except Image.UnidentifiedImageError:
        raise InputImageError(f"{path} is not an image Pillow can read ({READABLE_FORMATS})") from None
    except InputImageError as exc:
        raise InputImageError(f"{path}: {exc}") from None
    except PermissionError as exc:
        raise InputImageError(permission_message(path, exc)) from None
    # A truncated or corrupt file fails while its pixels are decoded, with OSError, SyntaxError or ValueError.
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise InputImageError(f"cannot read image {path}: {exc}") from None
