"""Shared set-up of the region-classifier (RoofSAM) tests: a tiny "SAM" file in the official key layout and
a synthetic dataset of images with coloured, class-labelled polygons."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from fpseg_core import checkpoint
from fpseg_core.modeling import build
from fpseg_core.modeling.class_decoder import ClassDecoder
from fpseg_core.modeling.point_prompt_encoder import PointPromptEncoder

IMG = 64  # the tiny encoder's input size
COLOURS = {"red": (220, 40, 40), "blue": (40, 60, 220), "green": (40, 200, 60)}


@contextlib.contextmanager
def tiny_sam_architecture() -> Iterator[None]:
    """Let a tiny MobileSAM-like encoder (64-pixel input) stand in for the official architecture: the key
    layout of the files is the official one, only the widths are the tiny ones (detection is patched)."""
    tiny = build.tiny_config("mobilesam", img_size=IMG)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(build, "MOBILESAM_CONFIG", {**build.MOBILESAM_CONFIG, **tiny.encoder_overrides})
        patch.setattr(checkpoint, "detect_encoder", lambda state: ("mobilesam", IMG))
        yield


def save_tiny_sam(path: Path, prompt_encoder: Mapping[str, torch.Tensor] | None = None,
                  mask_decoder: Mapping[str, torch.Tensor] | None = None, seed: int = 0) -> Path:
    """A SAM file (official keys: image_encoder.*, prompt_encoder.*, mask_decoder.*) around the tiny encoder;
    the prompt encoder and mask decoder are ours (random) unless given. Call inside `tiny_sam_architecture`."""
    torch.manual_seed(seed)
    encoder = build.build_image_encoder(build.tiny_config("mobilesam", img_size=IMG))
    if prompt_encoder is None:
        prompt_encoder = PointPromptEncoder(256, (IMG // 16, IMG // 16), (IMG, IMG)).state_dict()
    if mask_decoder is None:
        mask_decoder = {k: v for k, v in ClassDecoder(1).state_dict().items() if not k.startswith("class_pred_mlp.")}
    state = {**{f"image_encoder.{k}": v for k, v in encoder.state_dict().items()},
             **{f"prompt_encoder.{k}": v for k, v in prompt_encoder.items()},
             **{f"mask_decoder.{k}": v for k, v in mask_decoder.items()}}
    torch.save(state, path)
    return path


def _polygon(rng: np.random.Generator, kind: str) -> list[list[float]]:
    """A random triangle or quadrilateral (kind "red" / "blue" / "green") inside a 64 x 64 image."""
    cx, cy = rng.uniform(14, 50, size=2)
    n = 3 if kind == "red" else 4
    angles = np.sort(rng.uniform(0, 2 * np.pi, n))
    radius = rng.uniform(8, 13, n)
    return np.stack([cx + radius * np.cos(angles), cy + radius * np.sin(angles)], axis=1).round(1).tolist()


def make_region_dataset(root: Path, n_images: int = 6, split: str = "train", seed: int = 0) -> Path:
    """root/images/<split>/img_<i>.png with red and blue polygons (and one green one: a rare class), and
    root/regions.json mapping each image to its regions. Returns the annotation file."""
    rng = np.random.default_rng(seed)
    folder = root / "images" / split
    folder.mkdir(parents=True)
    annotations: dict[str, list[dict]] = {}
    for i in range(n_images):
        image = Image.new("RGB", (IMG, IMG), (128, 128, 128))
        draw = ImageDraw.Draw(image)
        kinds = ["red", "blue", "red" if i % 2 else "blue"] + (["green"] if i == 0 else [])
        regions = []
        for kind in kinds:
            polygon = _polygon(rng, kind)
            draw.polygon([tuple(p) for p in polygon], fill=COLOURS[kind])
            regions.append({"class": kind, "polygon": polygon})
        image.save(folder / f"img_{i}.png")
        annotations[f"img_{i}.png"] = regions
    path = root / "regions.json"
    path.write_text(json.dumps(annotations))
    return path
