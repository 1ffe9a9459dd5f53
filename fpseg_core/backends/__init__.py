"""Inference backends: where FPSeg's encoder and decoder run (PyTorch, ONNX Runtime, TensorRT, OpenVINO).

A backend does three things, on tensors that live on the pipeline's device:

    encode(image [1, 3, S, S] normalised)              -> embedding [1, 256, S/16, S/16]
    decode(embedding, prompt_tokens [N, P, 256])        -> low-resolution logits [1, N, S/4, S/4]
    check_prompt_size(P)                                 refuses a bank its decoder cannot take

Pre-processing and the label image (`FastLabeler`) stay in PyTorch on the pipeline's device, whatever the
backend. On CPU, freed memory is kept for reuse (see `cpu_memory`). ONNX Runtime and TensorRT refuse, when
built, graphs or engines made from another model (see `fpseg_core.artifacts`). `auto` without `engine_dir`
runs PyTorch; with one it picks TensorRT where the folder holds engines TensorRT can run here (a GPU, a
supported TensorRT, the version and GPU architecture they were built for), else ONNX Runtime on the export
beside them (saying at INFO why not TensorRT), and an `engine_dir` it cannot use is an error, never a quiet
fallback to PyTorch. OpenVINO (CPU only, fp32 / bf16 / int8) runs only when asked for, except on a folder
written by `fpseg quantize`, which only OpenVINO runs: `auto` picks it there and the other backends refuse it.
Both the device and the backend chosen are logged at INFO with the reason.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path
from typing import Protocol

import torch

from ..artifacts import ENGINE_SIDECAR, SIDECAR, ExportError, ModelIdentity, has_engines, has_onnx_export
from ..constants import BACKENDS, DEVICE_FORMS, DEVICE_PATTERN, QUANTIZED_DTYPES
from ..errors import FPSegError
from ..export.quantize import is_quantized, quantized_refusal
from ..modeling.fpseg import FPSegModel
from .cpu_memory import keep_freed_memory

LOGGER = logging.getLogger("fpseg")


class DeviceError(FPSegError, ValueError):
    """A device string that names no device, or a device this machine does not have."""


class Backend(Protocol):
    """What `FPSeg` needs from an inference engine (see the module docstring for shapes)."""

    name: str
    # encode() takes a batch [B, 3, S, S] (B > 1) and gains from it: torch on CUDA; the exported graphs and
    # engines take one image
    batch_encoding: bool

    def encode(self, image: torch.Tensor) -> torch.Tensor: ...

    def decode(self, embedding: torch.Tensor, prompt_tokens: torch.Tensor) -> torch.Tensor: ...

    def check_prompt_size(self, prompt_size: int) -> None: ...


def resolve_device(device: str | torch.device) -> torch.device:
    """'auto' -> cuda where torch can use a GPU, else cpu (logged at INFO with the reason); 'cpu', 'cuda',
    'cuda:N' and 'mps' are checked against this machine, so a missing GPU is an error at start, not a slow
    run; anything else is a DeviceError (also a ValueError) with a one-line message."""
    if str(device) == "auto":
        available = torch.cuda.is_available()
        chosen = torch.device("cuda" if available else "cpu")
        LOGGER.info("device auto -> %s (torch.cuda.is_available() is %s)", chosen, available)
        return chosen
    if not DEVICE_PATTERN.fullmatch(str(device)):
        raise DeviceError(f"device {str(device)!r} is not a device; use {DEVICE_FORMS}")
    resolved = torch.device(device)
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceError(f"device {str(device)!r} was asked for, but torch.backends.mps.is_available() is False "
                          "here; use device cpu")
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"device {str(device)!r} was asked for, but torch can use no CUDA GPU here "
                              "(torch.cuda.is_available() is False); use device cpu, or auto to take a GPU "
                              "only where there is one")
        count = torch.cuda.device_count()
        if resolved.index is not None and resolved.index >= count:
            raise DeviceError(f"device {str(device)!r} does not exist: this machine has {count} CUDA GPU(s), "
                              f"cuda:0 to cuda:{count - 1}")
    return resolved


def choose_backend(requested: str, device: torch.device, engine_dir: str | Path | None) -> tuple[str, str]:
    """(backend name, reason): `requested` unless it is 'auto', which picks what can run here.

    'auto' runs torch only when no `engine_dir` is given; engines TensorRT cannot run here fall back to the
    ONNX export beside them (logged at INFO with the reason); an `engine_dir` that is missing or holds nothing
    that can run on `device` raises ExportError saying why.
    """
    if requested not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {requested!r}")
    if requested != "auto":
        return requested, "requested"
    if engine_dir is None:
        return "torch", "no engine_dir given (export one with `fpseg export-onnx`)"
    folder = Path(engine_dir)
    if not folder.is_dir():
        raise ExportError(f"engine_dir {folder} does not exist; pass the folder written by `fpseg export-onnx` "
                          "(or `fpseg build-engine`), or no engine_dir to run torch")
    if quantized_folder(folder):
        if not _importable("openvino"):
            raise ExportError(f"backend auto cannot use engine_dir {folder}: it holds an `fpseg quantize` folder, "
                              "which only OpenVINO runs, and openvino is not installed; pip install "
                              "'fpseg_ros[openvino]'")
        return "openvino", f"`fpseg quantize` folder {folder}, which only OpenVINO runs, at dtype int8"
    refused, engine_refusal = [], None
    if has_engines(folder):
        from .tensorrt_backend import tensorrt_refusal

        engine_refusal = tensorrt_refusal(folder, device)
        if engine_refusal is None:
            return "tensorrt", f"TensorRT engines in {folder} that run on this GPU"
        refused.append(f"its TensorRT engines cannot run here ({engine_refusal})")
    if has_onnx_export(folder):
        if not _importable("onnxruntime"):
            refused.append("it holds an ONNX export but onnxruntime is not installed (pip install "
                           "'fpseg_ros[onnx]')")
        elif device.type == "cuda" and not _onnxruntime_has_cuda():
            refused.append(f"it holds an ONNX export but this onnxruntime has no CUDA provider for {device} "
                           "(pip install onnxruntime-gpu, or build TensorRT engines with `fpseg build-engine`)")
        else:
            if engine_refusal:
                LOGGER.info("TensorRT engines in %s cannot run here, falling back to ONNX Runtime on the ONNX "
                            "export beside them: %s", folder, engine_refusal)
            return "onnxruntime", f"ONNX export in {folder}"
    if not refused:
        refused.append(f"it holds neither {SIDECAR} (`fpseg export-onnx`) nor {ENGINE_SIDECAR} "
                       "(`fpseg build-engine`)")
    raise ExportError(f"backend auto cannot use engine_dir {folder}: {'; '.join(refused)}; fix that, or pass "
                      "no engine_dir to run torch")


def create_backend(
    name: str,
    model: FPSegModel,
    device: torch.device,
    engine_dir: str | Path | None = None,
    *,
    input_mode: str,
    dtype: str = "fp32",
) -> Backend:
    """The backend `name` ('auto' resolved by `choose_backend`) for `model` on `device`.

    ONNX Runtime, TensorRT and OpenVINO run the graphs in `engine_dir` and refuse ones made from another
    model, for another image size or for another `input_mode` than this pipeline's; `dtype` (fp32, fp16,
    bf16) applies to the torch backend, and fp32, bf16 or int8 (an `fpseg quantize` folder) to OpenVINO.
    A folder written by `fpseg quantize` is refused by every backend but OpenVINO.
    """
    chosen, reason = choose_backend(name, device, engine_dir)
    if device.type == "cpu":
        keep_freed_memory()
    if name == "auto":
        LOGGER.info("backend auto -> %s (%s)", chosen, reason)
    if chosen != "torch" and engine_dir is None:
        raise ValueError(f"backend {chosen!r} needs engine_dir (an `fpseg export-onnx` / `build-engine` folder)")
    if chosen == "torch":
        from .torch_backend import TorchBackend

        return TorchBackend(model, device, dtype)
    identity = ModelIdentity.of(model, input_mode)
    if chosen == "openvino":
        from .openvino_backend import OpenVinoBackend

        if name == "auto" and dtype != "fp32" and dtype not in QUANTIZED_DTYPES:
            raise ValueError(f"backend auto picked openvino for the `fpseg quantize` folder {engine_dir}, which "
                             f"runs at dtype int8, not {dtype!r}; pass dtype int8")
        return OpenVinoBackend(Path(engine_dir), device, identity,
                               dtype=QUANTIZED_DTYPES[0] if name == "auto" else dtype)
    if quantized_folder(Path(engine_dir)):
        raise quantized_refusal(engine_dir, f"backend {chosen}")
    if dtype != "fp32":
        raise ValueError(f"dtype {dtype!r} applies to the torch and openvino backends; for {chosen} it is fixed at "
                         "export / engine build time (build-engine --fp16)")
    if chosen == "onnxruntime":
        from .onnxruntime_backend import OnnxRuntimeBackend

        return OnnxRuntimeBackend(Path(engine_dir), device, identity)
    from .tensorrt_backend import TensorRTBackend

    return TensorRTBackend(Path(engine_dir), device, identity)


def quantized_folder(folder: Path) -> bool:
    """Whether `folder`'s export manifest was written by `fpseg quantize` (unreadable manifests are the
    backend's `read_sidecar` to report, so they count as not quantized here)."""
    try:
        manifest = json.loads((folder / SIDECAR).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(manifest, dict) and is_quantized(manifest)


def _importable(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _onnxruntime_has_cuda() -> bool:
    import onnxruntime

    return "CUDAExecutionProvider" in onnxruntime.get_available_providers()
