"""Small files for the node's region-classification tests: an official-layout SAM / MobileSAM checkpoint (image
encoder, prompt encoder with its point weights, SAM's whole mask decoder) and a RoofSAM decoder file with its
class-name sidecar, all random, made from fpseg_core's own modules (no segment_anything needed).

The SAM file loads both as the FPSeg pipeline's `checkpoint` (with a prompt bank) and as the region
classifier's prompt encoder, as on a robot.
"""

from __future__ import annotations

from pathlib import Path

import torch

from fpseg_core import PromptBank, decoder_fingerprint
from fpseg_core.checkpoint import load_checkpoint
from fpseg_core.modeling.build import EMBED_DIM, PATCH_STRIDE, FPSegConfig, build_image_encoder
from fpseg_core.modeling.class_decoder import ClassDecoder
from fpseg_core.modeling.point_prompt_encoder import PointPromptEncoder
from fpseg_core.regions.loader import CLASS_HEAD_PREFIX, save_decoder

IMG_SIZE = 256  # MobileSAM's architecture (an official file has no size options) on a 16 x 16 grid: fast on a CPU
REGION_CLASSES = ["flat", "gabled", "hipped"]


def write_official_sam(path: Path, seed: int = 0) -> Path:
    """A MobileSAM checkpoint in the official layout (as `fpseg weights fetch mobilesam` gives), for IMG_SIZE."""
    torch.manual_seed(seed)
    image_encoder = build_image_encoder(FPSegConfig("mobilesam", img_size=IMG_SIZE))
    grid = IMG_SIZE // PATCH_STRIDE
    prompt_encoder = PointPromptEncoder(EMBED_DIM, (grid, grid), (IMG_SIZE, IMG_SIZE))
    mask_decoder = {k: v for k, v in ClassDecoder(1).state_dict().items() if not k.startswith(CLASS_HEAD_PREFIX)}
    state = {**{f"image_encoder.{k}": v for k, v in image_encoder.state_dict().items()},
             **{f"prompt_encoder.{k}": v for k, v in prompt_encoder.state_dict().items()},
             **{f"mask_decoder.{k}": v for k, v in mask_decoder.items()}}
    torch.save(state, path)
    return path


def write_bank(sam_path: Path, names: list[str], path: Path, seed: int = 1) -> Path:
    """A prompt bank of random tokens that fits the FPSeg network built from `sam_path`."""
    loaded = load_checkpoint(sam_path, prompt_size=4)
    tokens = torch.randn(len(names), 4, EMBED_DIM, generator=torch.Generator().manual_seed(seed))
    return PromptBank(names, tokens, loaded.config.encoder, decoder_fingerprint(loaded.model.state_dict()),
                      source=f"test bank {seed}").save(path)


def write_decoder(path: Path, class_names: list[str] = REGION_CLASSES, seed: int = 2) -> Path:
    """A RoofSAM decoder file (random weights) and its <stem>.classes.json sidecar."""
    torch.manual_seed(seed)
    return save_decoder(ClassDecoder(len(class_names)), class_names, path)
