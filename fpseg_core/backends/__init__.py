"""Inference backends: where FPSeg's encoder and decoder run (PyTorch, ONNX Runtime, TensorRT).

A backend does two things, on tensors that live on the pipeline's device:

    encode(image [1, 3, S, S] normalised)              -> embedding [1, 256, S/16, S/16]
    decode(embedding, prompt_tokens [N, P, 256])        -> low-resolution logits [1, N, S/4, S/4]

Pre-processing and the label image (`FastLabeler`) stay in PyTorch on the pipeline's device, whatever the
backend. On CPU, freed memory is kept for reuse (see `cpu_memory`). `auto` picks TensorRT where `engine_dir`
holds engines and a GPU is usable, else ONNX Runtime where `engine_dir` holds an `fpseg export-onnx` folder,
else PyTorch, and logs which one and why.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Protocol

import torch

from ..modeling.fpseg import FPSegModel
from .cpu_memory import keep_freed_memory

BACKENDS = ("auto", "torch", "onnxruntime", "tensorrt")
LOGGER = logging.getLogger("fpseg")


class Backend(Protocol):
    """What `FPSeg` needs from an inference engine (see the module docstring for shapes)."""

    name: str

    def encode(self, image: torch.Tensor) -> torch.Tensor: ...

    def decode(self, embedding: torch.Tensor, prompt_tokens: torch.Tensor) -> torch.Tensor: ...


def choose_backend(requested: str, device: torch.device, engine_dir: str | Path | None) -> tuple[str, str]:
    """(backend name, reason): `requested` unless it is 'auto', which picks what can run here."""
    if requested not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {requested!r}")
    if requested != "auto":
        return requested, "requested"
    from ..export.onnx_export import has_engines, has_onnx_export

    if engine_dir is None:
        return "torch", "no engine_dir given (export one with `fpseg export-onnx`)"
    folder = Path(engine_dir)
    if has_engines(folder) and device.type == "cuda" and _importable("tensorrt"):
        return "tensorrt", f"TensorRT engines in {folder} and a GPU"
    if has_onnx_export(folder) and _importable("onnxruntime"):
        if device.type == "cpu" or _onnxruntime_has_cuda():
            return "onnxruntime", f"ONNX export in {folder}"
        return "torch", f"ONNX Runtime has no CUDA provider here and {device} is a GPU"
    if not folder.is_dir():
        return "torch", f"engine_dir {folder} does not exist"
    return "torch", f"{folder} holds no usable ONNX export or TensorRT engines"


def create_backend(
    name: str,
    model: FPSegModel,
    device: torch.device,
    engine_dir: str | Path | None = None,
    fingerprint: str = "",
    dtype: str = "fp32",
) -> Backend:
    """The backend `name` ('auto' resolved by `choose_backend`) for `model` on `device`.

    ONNX Runtime and TensorRT run the graphs in `engine_dir` and refuse ones exported from a decoder other
    than `fingerprint`'s; `dtype` (fp32, fp16, bf16) applies to the torch backend.
    """
    chosen, reason = choose_backend(name, device, engine_dir)
    if device.type == "cpu":
        keep_freed_memory()
    if name == "auto":
        log = LOGGER.warning if engine_dir is not None and chosen == "torch" else LOGGER.info
        log("backend auto -> %s (%s)", chosen, reason)
    if chosen != "torch" and engine_dir is None:
        raise ValueError(f"backend {chosen!r} needs engine_dir (an `fpseg export-onnx` / `build-engine` folder)")
    if chosen == "torch":
        from .torch_backend import TorchBackend

        return TorchBackend(model, device, dtype)
    if dtype != "fp32":
        raise ValueError(f"dtype {dtype!r} applies to the torch backend; for {chosen} it is fixed at export / "
                         "engine build time (build-engine --fp16)")
    if chosen == "onnxruntime":
        from .onnxruntime_backend import OnnxRuntimeBackend

        return OnnxRuntimeBackend(Path(engine_dir), device, fingerprint)
    from .tensorrt_backend import TensorRTBackend

    return TensorRTBackend(Path(engine_dir), device, fingerprint)


def _importable(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _onnxruntime_has_cuda() -> bool:
    import onnxruntime

    return "CUDAExecutionProvider" in onnxruntime.get_available_providers()
