"""Official SAM / MobileSAM files as RoofSAM uses them (image encoder, point prompt encoder, mask decoder) and
RoofSAM decoder files (`torch.save(model.mask_decoder.state_dict())`: SAM's mask decoder keys plus
`class_pred_mlp.*`), with their class names in a sidecar `<decoder stem>.classes.json` (a JSON list).

Every file is read with weights_only loading (`checkpoint.read_state`): code is never unpickled.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from ..checkpoint import PROJECT_FORMAT, checked_state_dict, detect_encoder_in, load_strict, read_state
from ..errors import CheckpointError
from ..files import atomic_write, atomic_write_text
from ..modeling.build import EMBED_DIM, PATCH_STRIDE, FPSegConfig, build_image_encoder
from ..modeling.class_decoder import ClassDecoder
from ..modeling.point_prompt_encoder import PointPromptEncoder

ENCODER_PREFIX = "image_encoder."
PROMPT_PREFIX = "prompt_encoder."
DECODER_PREFIX = "mask_decoder."
MASK_PROMPT_PREFIX = "mask_downscaling."  # SAM's mask-prompt path: not used for point prompts
CLASS_HEAD_PREFIX = "class_pred_mlp."
CLASS_COUNT_KEY = "class_pred_mlp.layers.2.weight"
SAM_MARKERS = ("prompt_encoder.point_embeddings.0.weight", "mask_decoder.iou_token.weight")
CLASSES_SUFFIX = ".classes.json"
SAM_HINT = "pass the official SAM / MobileSAM checkpoint (e.g. sam_vit_h_4b8939.pth)"
DECODER_HINT = "pass a RoofSAM decoder file: torch.save(model.mask_decoder.state_dict())"


def _under(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries of `state` under `prefix`, with the prefix removed."""
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def read_sam_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict of an official SAM / MobileSAM file; anything else is refused with the reason."""
    path = Path(path)
    state = read_state(path)
    if state.get("format") == PROJECT_FORMAT:
        raise CheckpointError(f"{path} is an fpseg_ros checkpoint (FPSeg prompts, no point-prompt weights); "
                              f"{SAM_HINT}")
    state = checked_state_dict(state, path, "the file")
    if CLASS_COUNT_KEY in state:
        raise CheckpointError(f"{path} is a RoofSAM decoder, not a SAM checkpoint; pass it as the decoder and "
                              "the SAM file it was trained with as the SAM checkpoint")
    missing = [k for k in SAM_MARKERS if k not in state]
    if missing:
        raise CheckpointError(f"{path} is not an official SAM / MobileSAM checkpoint (no {', '.join(missing)}); "
                              f"{SAM_HINT}")
    return state


def sam_image_encoder(state: Mapping[str, torch.Tensor], path: Path) -> tuple[nn.Module, FPSegConfig]:
    """The image encoder of a SAM state dict (ViT-B/L/H or MobileSAM, detected from its keys) and its config."""
    name, img_size = detect_encoder_in(state, path)
    config = FPSegConfig(name, img_size=img_size)
    encoder = build_image_encoder(config)
    load_strict(encoder, _under(state, ENCODER_PREFIX), path, f"the official {name} image encoder")
    return encoder.eval(), config


def sam_point_prompt_encoder(state: Mapping[str, torch.Tensor], path: Path, img_size: int) -> PointPromptEncoder:
    """SAM's prompt encoder (point path) for an encoder input of img_size x img_size; mask_downscaling dropped."""
    grid = img_size // PATCH_STRIDE
    encoder = PointPromptEncoder(EMBED_DIM, (grid, grid), (img_size, img_size))
    weights = {k: v for k, v in _under(state, PROMPT_PREFIX).items() if not k.startswith(MASK_PROMPT_PREFIX)}
    load_strict(encoder, weights, path, "SAM's point prompt encoder")
    return encoder.eval()


def sam_class_decoder(state: Mapping[str, torch.Tensor], path: Path, n_classes: int) -> ClassDecoder:
    """A class decoder for training: SAM's mask decoder weights, `class_pred_mlp` freshly initialised."""
    decoder = ClassDecoder(n_classes, EMBED_DIM)
    head = {k: v for k, v in decoder.state_dict().items() if k.startswith(CLASS_HEAD_PREFIX)}
    load_strict(decoder, {**_under(state, DECODER_PREFIX), **head}, path, "SAM's mask decoder")
    return decoder


def load_decoder(path: str | Path) -> ClassDecoder:
    """A RoofSAM decoder file as a ClassDecoder (its class count from `class_pred_mlp.layers.2.weight`)."""
    path = Path(path)
    state = read_state(path)
    if state.get("format") == PROJECT_FORMAT:
        raise CheckpointError(f"{path} is an fpseg_ros checkpoint, not a RoofSAM decoder; {DECODER_HINT}")
    state = checked_state_dict(state, path, "the file")
    if any(k.startswith((ENCODER_PREFIX, DECODER_PREFIX)) for k in state):
        raise CheckpointError(f"{path} is a whole-model checkpoint (image_encoder.* / mask_decoder.* keys), not a "
                              f"RoofSAM decoder; {DECODER_HINT}")
    weight = state.get(CLASS_COUNT_KEY)
    if weight is None or weight.ndim != 2:
        raise CheckpointError(f"{path} is not a RoofSAM decoder (no {CLASS_COUNT_KEY} [n_classes, {EMBED_DIM}]); "
                              f"{DECODER_HINT}")
    decoder = ClassDecoder(int(weight.shape[0]), EMBED_DIM)
    load_strict(decoder, state, path, f"a RoofSAM decoder with {decoder.n_classes} classes")
    return decoder.eval()


def classes_path(decoder_path: str | Path) -> Path:
    """The sidecar file of a decoder's class names: decoder.pt -> decoder.classes.json."""
    return Path(decoder_path).with_suffix(CLASSES_SUFFIX)


def decoder_class_names(decoder_path: str | Path, n_classes: int, class_names: Sequence[str] | None = None
                        ) -> list[str]:
    """The names of a decoder's classes: `class_names`, else its sidecar JSON, else class_0 .. (with a warning)."""
    decoder_path = Path(decoder_path)
    source = "the class_names given"
    if class_names is None:
        sidecar = classes_path(decoder_path)
        if not sidecar.is_file():
            warnings.warn(f"{decoder_path} has no {sidecar.name} and no class_names were given: its classes are "
                          f"called class_0 .. class_{n_classes - 1}; pass class_names (RoofSAM: the sorted "
                          "class names of its dataset)", UserWarning, stacklevel=3)
            return [f"class_{i}" for i in range(n_classes)]
        source = str(sidecar)
        try:
            class_names = json.loads(sidecar.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CheckpointError(f"{sidecar} is not valid JSON ({exc}); write a JSON list of class names") from None
    if isinstance(class_names, str) or not isinstance(class_names, Sequence) or not all(
            isinstance(n, str) and n for n in class_names):
        raise CheckpointError(f"{source}: class names must be a list of non-empty strings, e.g. [\"flat\", "
                              "\"gabled\"]")
    if len(set(class_names)) != len(class_names):
        raise CheckpointError(f"{source}: class names repeat ({', '.join(class_names)}); give each class once")
    if len(class_names) != n_classes:
        raise CheckpointError(f"{decoder_path} has {n_classes} classes but {source} name {len(class_names)}; "
                              "give one name per class, in the decoder's order")
    return list(class_names)


def save_decoder(decoder: ClassDecoder, class_names: Sequence[str], path: str | Path) -> Path:
    """Write a RoofSAM decoder file (plain state dict) and its class-name sidecar, each atomically."""
    state = {k: v.detach().cpu() for k, v in decoder.state_dict().items()}
    atomic_write(path, lambda tmp: torch.save(state, tmp))
    atomic_write_text(classes_path(path), json.dumps(list(class_names), indent=1) + "\n")
    return Path(path)
