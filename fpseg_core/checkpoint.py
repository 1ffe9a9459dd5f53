"""Recognise and load SAM / MobileSAM / FPSeg checkpoints into an FPSeg network (never unpickling code)."""

from __future__ import annotations

import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .cityscapes_labels import BANK33
from .errors import CheckpointError, PromptBankError
from .files import atomic_write, file_kind, permission_message, unreadable_reason
from .modeling.build import ENCODERS, PATCH_STRIDE, FPSegConfig, build_fpseg
from .modeling.fpseg import FPSegModel
from .prompt_bank import FORMAT as BANK_FORMAT
from .prompt_bank import PromptBank, decoder_fingerprint, read_safetensors_header

PROJECT_FORMAT = "fpseg_ros-checkpoint/1"
PROMPTS_KEY = "prompt_encoder.prompt_embeddings"
SAM_MASK_TOKENS_KEY = "mask_decoder.mask_tokens.weight"
# Weights of the official SAM that FPSeg does not use: IoU head, extra mask outputs, point/box/mask prompts.
SAM_DROPPED_PREFIXES = (
    "mask_decoder.iou_token.",
    "mask_decoder.iou_prediction_head.",
    "mask_decoder.output_hypernetworks_mlps.1.",
    "mask_decoder.output_hypernetworks_mlps.2.",
    "mask_decoder.output_hypernetworks_mlps.3.",
    "prompt_encoder.point_embeddings.",
    "prompt_encoder.not_a_point_embed.",
    "prompt_encoder.mask_downscaling.",
)
VIT_EMBED_DIMS = {768: "vit_b", 1024: "vit_l", 1280: "vit_h"}
MAX_LISTED_KEYS = 8
RESAVE_HINT = "re-save the weights as a plain state dict: torch.save(model.state_dict(), path)"
DOWNLOAD_HINT = "download it again and compare its size / checksum with the published one"
# torch's weights-only unpickler names the first class or function it refused like this.
UNSUPPORTED_GLOBAL = re.compile(r"Unsupported global: GLOBAL (\S+)")
WEIGHTS_UNPICKLER_MARK = "WeightsUnpickler error:"


@dataclass
class LoadedCheckpoint:
    """A ready network, the prompt bank the file carried (None for SAM / MobileSAM files) and the file kind."""

    model: FPSegModel
    config: FPSegConfig
    bank: PromptBank | None
    kind: str  # "sam", "fpseg" or "project"
    path: Path

    @property
    def fingerprint(self) -> str:
        return decoder_fingerprint(self.model.state_dict())


def read_state(path: str | Path) -> dict:
    """torch.load with weights_only=True (code is never unpickled), turning every failure into one
    CheckpointError that names the file, what it is instead and the fix."""
    path = Path(path)
    try:
        _refuse_non_checkpoint(path)
        state = _torch_load(path)
    except PermissionError as exc:
        raise CheckpointError(permission_message(path, exc)) from exc
    if not isinstance(state, dict):
        raise CheckpointError(_not_a_state_dict(path, "the file", state))
    return state


def _refuse_non_checkpoint(path: Path) -> None:
    """Refuse what is recognisably no torch checkpoint before torch.load sees it."""
    reason = unreadable_reason(path, "checkpoint")
    if reason:
        raise CheckpointError(reason)
    kind = file_kind(path)
    if kind == "empty":
        raise CheckpointError(f"{path} is empty (0 bytes), not a checkpoint; {DOWNLOAD_HINT}")
    if kind == "text":
        raise CheckpointError(f"{path} is not a torch checkpoint (it looks like text, e.g. a web page saved by a "
                              f"failed download); {DOWNLOAD_HINT}")
    if kind == "safetensors":
        raise CheckpointError(_safetensors_message(path))


def _safetensors_message(path: Path) -> str:
    try:
        is_bank = (read_safetensors_header(path).get("__metadata__") or {}).get("format") == BANK_FORMAT
    except PromptBankError:  # a damaged safetensors file is still no checkpoint
        is_bank = False
    if is_bank:
        return f"{path} is a prompt bank (.safetensors), not a checkpoint; pass it as prompts / --prompts"
    return (f"{path} is a safetensors file, not a torch checkpoint; pass a SAM, MobileSAM or FPSeg checkpoint "
            "saved with torch.save (.pth / .pt)")


def _torch_load(path: Path) -> object:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = UNSUPPORTED_GLOBAL.search(str(exc))
        if found:
            raise CheckpointError(
                f"{path} is not a plain tensor checkpoint: it holds Python objects/code ({found.group(1)}), "
                f"which are never unpickled; {RESAVE_HINT}, where the file was made"
            ) from None
        raise CheckpointError(
            f"{path} is not a torch checkpoint: its pickle data is corrupt ({_torch_reason(exc)}); {DOWNLOAD_HINT}"
        ) from None
    except (PermissionError, MemoryError):
        raise
    # torch.load fails on damaged files with many exception types (RuntimeError, EOFError, KeyError, ...).
    except Exception as exc:
        raise CheckpointError(f"{path} is truncated or corrupt ({_torch_reason(exc)}); {DOWNLOAD_HINT}") from None


def _torch_reason(exc: Exception) -> str:
    """torch's own account of a failed load, on one line and without its advice on how to load anyway."""
    if isinstance(exc, EOFError):
        return "the file ends early"
    text = str(exc).split(WEIGHTS_UNPICKLER_MARK)[-1]
    line = next((part.strip() for part in text.splitlines() if part.strip()), "")
    sentence = line.split(". ")[0].rstrip(".")
    return sentence if sentence and "weights_only" not in sentence else type(exc).__name__


def _not_a_state_dict(path: Path, what: str, value: object) -> str:
    return (f"{path}: {what} holds a {type(value).__name__} where a state dict belongs (parameter name -> "
            f"tensor); {RESAVE_HINT}")


def checked_state_dict(value: object, path: Path, what: str) -> dict[str, torch.Tensor]:
    """`value` when it is a state dict of tensors; otherwise a CheckpointError naming the first wrong entry."""
    if not isinstance(value, dict):
        raise CheckpointError(_not_a_state_dict(path, what, value))
    for key, tensor in value.items():
        if not isinstance(tensor, torch.Tensor):
            raise CheckpointError(
                f"{path}: state-dict entry {key!r} is a {type(tensor).__name__}, expected a tensor; {RESAVE_HINT}"
            )
    return value


def detect_encoder(state_dict: Mapping[str, torch.Tensor]) -> tuple[str, int]:
    """(encoder name, image size) from the image-encoder keys of a state dict."""
    if "image_encoder.patch_embed.seq.0.c.weight" in state_dict:
        return "mobilesam", 1024
    pos_embed = state_dict.get("image_encoder.pos_embed")
    if pos_embed is not None and pos_embed.ndim == 4:
        name = VIT_EMBED_DIMS.get(int(pos_embed.shape[-1]))
        if name is not None:
            return name, int(pos_embed.shape[1]) * PATCH_STRIDE
    raise CheckpointError(
        "found no SAM ViT-B/L/H or MobileSAM image-encoder weights (keys 'image_encoder.pos_embed' or "
        "'image_encoder.patch_embed.seq.0.c.weight')"
    )


def _unwrap(state: dict) -> dict:
    for key in ("model", "state_dict"):
        if isinstance(state.get(key), dict) and not any(isinstance(v, torch.Tensor) for v in state.values()):
            return state[key]
    return state


def _listed(keys: list[str]) -> str:
    shown = ", ".join(sorted(keys)[:MAX_LISTED_KEYS])
    return shown + (f" (+{len(keys) - MAX_LISTED_KEYS} more)" if len(keys) > MAX_LISTED_KEYS else "")


def load_strict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], path: Path, what: str) -> None:
    """load_state_dict(strict=True), with one error listing missing / unexpected keys and wrong shapes."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    wrong = [
        f"{k} (expected {list(expected[k].shape)}, found {list(state_dict[k].shape)})"
        for k in expected
        if k in state_dict and tuple(state_dict[k].shape) != tuple(expected[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s): {_listed(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {_listed(unexpected)}")
    if wrong:
        problems.append(f"{len(wrong)} wrong shape(s): {_listed(wrong)}")
    if problems:
        raise CheckpointError(f"{path} does not match {what}: " + "; ".join(problems))
    model.load_state_dict(state_dict, strict=True)


def _convert_sam(state_dict: Mapping[str, torch.Tensor], model: FPSegModel, path: Path) -> dict:
    tokens = state_dict.get(SAM_MASK_TOKENS_KEY)
    if tokens is None or tokens.ndim != 2 or tokens.shape[0] < 1:
        raise CheckpointError(f"{path}: SAM checkpoint without a valid {SAM_MASK_TOKENS_KEY}")
    converted = {k: v for k, v in state_dict.items() if not k.startswith(SAM_DROPPED_PREFIXES)}
    converted[SAM_MASK_TOKENS_KEY] = tokens[:1].clone()
    converted[PROMPTS_KEY] = model.prompt_encoder.prompt_embeddings.detach().clone()
    return converted


def _bank_names(n_classes: int, names: list[str] | None, path: Path) -> list[str]:
    if names is not None:
        if isinstance(names, str) or not isinstance(names, (list, tuple)):
            raise CheckpointError(f"{path}: class_names must be a list of class names, found a "
                                  f"{type(names).__name__}; re-save the checkpoint with a list")
        if len(names) != n_classes:
            raise CheckpointError(f"{path} has {n_classes} prompt rows but {len(names)} class names were given")
        return list(names)
    if n_classes == len(BANK33):
        return list(BANK33)
    return [f"class_{i}" for i in range(n_classes)]


def load_checkpoint(
    path: str | Path,
    encoder: str | None = None,
    n_classes: int = len(BANK33),
    prompt_size: int = 64,
    class_names: list[str] | None = None,
) -> LoadedCheckpoint:
    """Load an official SAM vit_b/l/h or MobileSAM file, a full FPSeg state dict, or a project checkpoint.

    `encoder` (optional) is the encoder the caller expects; a file for another encoder is refused.
    `n_classes` / `prompt_size` size the random prompt bank created for SAM / MobileSAM files.
    `class_names` names the rows of an FPSeg state dict (default: the published 33 Cityscapes entries).
    """
    path = Path(path)
    if encoder is not None and encoder not in ENCODERS:
        raise CheckpointError(f"unknown encoder {encoder!r}; choose one of {', '.join(ENCODERS)}")
    state = read_state(path)
    if state.get("format") == PROJECT_FORMAT:
        return _load_project(state, path, encoder)
    state_dict = checked_state_dict(_unwrap(state), path, "the state dict")
    detected, img_size = detect_encoder_in(state_dict, path)
    if encoder is not None and encoder != detected:
        raise CheckpointError(
            f"{path} is a {detected} checkpoint, but encoder {encoder!r} was asked for; pass the matching "
            f"checkpoint or encoder={detected!r}"
        )
    if SAM_MASK_TOKENS_KEY in state_dict and "mask_decoder.iou_token.weight" in state_dict:
        config = FPSegConfig(detected, n_classes, prompt_size, img_size)
        model = build_fpseg(config)
        load_strict(model, _convert_sam(state_dict, model, path), path, f"the official {detected} SAM layout")
        return LoadedCheckpoint(model, config, None, "sam", path)
    prompts = state_dict.get(PROMPTS_KEY)
    if prompts is None or prompts.ndim != 3:
        raise CheckpointError(
            f"{path} has {detected} encoder weights but neither SAM's decoder (mask_decoder.iou_token) nor "
            f"FPSeg prompts ({PROMPTS_KEY} [n_classes, prompt_size, 256])"
        )
    config = FPSegConfig(detected, int(prompts.shape[0]), int(prompts.shape[1]), img_size)
    model = build_fpseg(config)
    load_strict(model, state_dict, path, f"an FPSeg {detected} model with {config.n_classes} classes")
    return LoadedCheckpoint(model, config, _bank_from_model(model, config, path, "fpseg", class_names),
                            "fpseg", path)


def detect_encoder_in(state_dict: Mapping[str, torch.Tensor], path: Path) -> tuple[str, int]:
    try:
        return detect_encoder(state_dict)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}; it is not a SAM, MobileSAM or FPSeg checkpoint") from None


def _bank_from_model(
    model: FPSegModel, config: FPSegConfig, path: Path, kind: str, class_names: list[str] | None
) -> PromptBank:
    try:
        return PromptBank(
            names=_bank_names(config.n_classes, class_names, path),
            embeddings=model.prompt_encoder.prompt_embeddings.detach().clone(),
            encoder=config.encoder,
            decoder_fingerprint=decoder_fingerprint(model.state_dict()),
            source=f"{path.name} ({kind})",
        )
    except PromptBankError as exc:
        raise CheckpointError(f"{path}: its prompts are unusable: {exc}") from exc


def _load_project(state: dict, path: Path, encoder: str | None) -> LoadedCheckpoint:
    try:
        config = FPSegConfig.from_dict(state["config"])
        state_dict = checked_state_dict(state["state_dict"], path, "'state_dict'")
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: malformed fpseg_ros checkpoint ({exc})") from exc
    if encoder is not None and encoder != config.encoder:
        raise CheckpointError(
            f"{path} is a {config.encoder} checkpoint, but encoder {encoder!r} was asked for; pass the "
            f"matching checkpoint or encoder={config.encoder!r}"
        )
    model = build_fpseg(config)
    load_strict(model, state_dict, path, f"the fpseg_ros {config.encoder} model it describes")
    bank = _bank_from_model(model, config, path, "project", state.get("class_names"))
    return LoadedCheckpoint(model, config, bank, "project", path)


def save_checkpoint(model: FPSegModel, config: FPSegConfig, class_names: list[str], path: str | Path) -> Path:
    """Write a project checkpoint: config + class names + state dict, loadable with weights_only=True.

    The file is written atomically with the umask's mode: a reader never sees half a checkpoint."""
    payload = {"format": PROJECT_FORMAT, "config": config.to_dict(), "class_names": list(class_names),
               "state_dict": model.state_dict()}
    return atomic_write(path, lambda tmp: torch.save(payload, tmp))
