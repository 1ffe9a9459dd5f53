"""`fpseg export-onnx`: the encoder and the decoder as two ONNX graphs, prompts as an input, plus a sidecar.

encoder.onnx: image [1, 3, S, S] (normalised RGB) -> image_embeddings [1, 256, S/16, S/16]
decoder.onnx: image_embeddings, prompt_tokens [N, P, 256] (N dynamic) -> low_res_logits [1, N, S/4, S/4]

The published FPSeg export baked the prompts in as constants, so changing a class meant a new export and a
new engine. Here the prompt tokens are an input: any bank tuned for the same decoder (same fingerprint)
runs on the same graphs. The decoder graph is `FastMaskDecoder` (class-independent work done once).
`fpseg_onnx.json` records what the graphs were made from; the ONNX Runtime and TensorRT backends refuse
graphs whose decoder fingerprint differs from the loaded model's.
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import __version__
from ..backends.fast_decoder import FastMaskDecoder
from ..errors import FPSegError
from ..modeling.build import FPSegConfig
from ..modeling.fpseg import FPSegModel
from ..preprocess import INPUT_MODES
from ..prompt_bank import EMBED_DIM, decoder_fingerprint

SIDECAR = "fpseg_onnx.json"
ENGINE_SIDECAR = "fpseg_engines.json"
ENCODER_FILE = "encoder.onnx"
DECODER_FILE = "decoder.onnx"
FORMAT = "fpseg-onnx-export/1"
DEFAULT_OPSET = 17
MAX_CLASSES = 255  # uint8 labels
VERIFY_TOLERANCE = 1e-3


class ExportError(FPSegError):
    """An export folder is missing, incomplete, or made for another model."""


class EncoderGraph(nn.Module):
    """image [1, 3, S, S] -> image_embeddings [1, 256, S/16, S/16]."""

    def __init__(self, model: FPSegModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model.encode(image)


class DecoderGraph(nn.Module):
    """image_embeddings [1, 256, h, w], prompt_tokens [N, P, 256] -> low_res_logits [1, N, 4h, 4w]."""

    def __init__(self, model: FPSegModel) -> None:
        super().__init__()
        self.decoder = FastMaskDecoder(model, class_chunk=None)

    def forward(self, image_embeddings: torch.Tensor, prompt_tokens: torch.Tensor) -> torch.Tensor:
        return self.decoder(image_embeddings, prompt_tokens)


def has_onnx_export(folder: Path) -> bool:
    return all((folder / name).is_file() for name in (SIDECAR, ENCODER_FILE, DECODER_FILE))


def has_engines(folder: Path) -> bool:
    return (folder / ENGINE_SIDECAR).is_file()


def export_onnx(
    model: FPSegModel,
    config: FPSegConfig,
    out_dir: str | Path,
    input_mode: str = "squash",
    opset: int = DEFAULT_OPSET,
) -> dict[str, Any]:
    """Write encoder.onnx, decoder.onnx and fpseg_onnx.json to `out_dir`; returns the sidecar dict."""
    if input_mode not in INPUT_MODES:
        raise ValueError(f"input_mode must be one of {', '.join(INPUT_MODES)}, got {input_mode!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    size, grid = config.img_size, config.embedding_size
    prompt_size = model.prompt_encoder.prompt_size
    image = torch.randn(1, 3, size, size)
    embedding = torch.randn(1, EMBED_DIM, grid, grid)
    prompts = torch.randn(3, prompt_size, EMBED_DIM)
    _export(EncoderGraph(model), (image,), out / ENCODER_FILE, ["image"], ["image_embeddings"], opset, None)
    _export(DecoderGraph(model), (embedding, prompts), out / DECODER_FILE, ["image_embeddings", "prompt_tokens"],
            ["low_res_logits"], opset, {"prompt_tokens": {0: "classes"}, "low_res_logits": {1: "classes"}})
    sidecar = {
        "format": FORMAT,
        "encoder": config.encoder,
        "img_size": size,
        "embedding_size": grid,
        "low_res_size": 4 * grid,
        "prompt_size": prompt_size,
        "embed_dim": EMBED_DIM,
        "max_classes": MAX_CLASSES,
        "opset": opset,
        "exporter": "torch.onnx.export (TorchScript-based, dynamo=False)",
        "decoder_fingerprint": decoder_fingerprint(model.state_dict()),
        "input_mode": input_mode,
        "decoder_output": "low_res_logits",
        "files": {"encoder": ENCODER_FILE, "decoder": DECODER_FILE},
        "inputs": {"encoder": ["image"], "decoder": ["image_embeddings", "prompt_tokens"]},
        "fpseg_core_version": __version__,
        "torch_version": torch.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    (out / SIDECAR).write_text(json.dumps(sidecar, indent=2) + "\n")
    return sidecar


def _export(module: nn.Module, args: tuple, path: Path, input_names: list[str], output_names: list[str],
            opset: int, dynamic_axes: dict | None) -> None:
    # The TorchScript-based exporter: torch 2.13's dynamo exporter fails to decompose the CPU flash attention
    # that TinyViT's windowed attention runs on (a view of its output gets impossible strides).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its deprecation notice and tracer warnings about shape arithmetic
        torch.onnx.export(module.eval(), args, str(path), input_names=input_names, output_names=output_names,
                          opset_version=opset, dynamo=False, dynamic_axes=dynamic_axes)


def read_sidecar(folder: str | Path) -> dict[str, Any]:
    """The sidecar of an export folder, or ExportError saying what is missing and how to make it."""
    folder = Path(folder)
    path = folder / SIDECAR
    if not path.is_file():
        raise ExportError(f"{folder} has no {SIDECAR}: it is not an `fpseg export-onnx` folder "
                          f"(run `fpseg export-onnx --checkpoint CKPT --out {folder}`)")
    try:
        sidecar = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ExportError(f"{path} is not valid JSON ({exc}); export again") from exc
    if not isinstance(sidecar, dict) or sidecar.get("format") != FORMAT:
        raise ExportError(f"{path} is not an {FORMAT} sidecar; export again with this version of fpseg")
    for role, name in sidecar["files"].items():
        if not (folder / name).is_file():
            raise ExportError(f"{folder} lacks the {role} graph {name}; export again")
    return sidecar


def check_fingerprint(sidecar: dict[str, Any], fingerprint: str, where: str | Path) -> None:
    """Refuse graphs exported from a decoder other than the loaded model's."""
    if fingerprint and sidecar["decoder_fingerprint"] != fingerprint:
        raise ExportError(
            f"{where} was exported from a model with decoder fingerprint {sidecar['decoder_fingerprint']}, "
            f"but the loaded checkpoint's is {fingerprint}; export this checkpoint again "
            "(`fpseg export-onnx --checkpoint CKPT --out DIR`)"
        )


def verify_export(folder: str | Path, model: FPSegModel, class_counts: tuple[int, ...] = (1, 3),
                  threads: int | None = None) -> dict[str, float]:
    """onnx.checker on both graphs, and ONNX Runtime against torch on random inputs.

    Returns the relative errors (max |ort - torch| / max |torch|) for the encoder and for the decoder at
    each class count; raises ExportError if any exceeds 1e-3.
    """
    import onnx

    from ..backends.onnxruntime_backend import OnnxRuntimeBackend

    folder = Path(folder)
    sidecar = read_sidecar(folder)
    for name in sidecar["files"].values():
        onnx.checker.check_model(str(folder / name), full_check=True)
    backend = OnnxRuntimeBackend(folder, torch.device("cpu"), decoder_fingerprint(model.state_dict()), threads)
    generator = torch.Generator().manual_seed(0)
    size, prompt_size = sidecar["img_size"], sidecar["prompt_size"]
    image = torch.randn(1, 3, size, size, generator=generator)
    errors: dict[str, float] = {}
    with torch.inference_mode():
        reference = model.encode(image)
        errors["encoder"] = _relative_error(backend.encode(image), reference)
        for n in class_counts:
            prompts = torch.randn(n, prompt_size, EMBED_DIM, generator=generator)
            errors[f"decoder_n{n}"] = _relative_error(backend.decode(reference, prompts),
                                                      model.decode(reference, prompts))
    bad = {k: v for k, v in errors.items() if not v < VERIFY_TOLERANCE}
    if bad:
        raise ExportError(f"ONNX Runtime disagrees with torch beyond {VERIFY_TOLERANCE} (relative): {bad}")
    return errors


def _relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    scale = float(expected.abs().max())
    return float(np.abs(actual.cpu().numpy() - expected.cpu().numpy()).max()) / max(scale, 1e-12)
