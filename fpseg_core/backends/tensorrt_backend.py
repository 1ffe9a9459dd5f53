"""TensorRT 10 backend and engine builder (`fpseg build-engine`), written to the TensorRT 10 Python API.

Engines are built on the target device from an `fpseg export-onnx` folder: the decoder engine has an
optimisation profile over the class axis N (1..max_classes), so changing or adding classes never needs a
rebuild. I/O buffers are torch CUDA tensors (no pycuda). `fpseg_engines.json` (written last; format and
checks in `fpseg_core.artifacts`) records the TensorRT version, the class range, each engine's size and
sha256 and the ONNX manifest the engines were built from; engines built by another TensorRT version, for
another model, or changed since are refused.
"""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path
from typing import Any

import torch

from ..artifacts import (
    ENGINE_FILES,
    ENGINE_FORMAT,
    ENGINE_OUTPUTS,
    ENGINE_SIDECAR,
    ExportError,
    ModelIdentity,
    check_model,
    check_outputs,
    check_prompt_size,
    file_entry,
    read_engine_sidecar,
    read_sidecar,
)
from ..errors import FPSegError
from ..files import atomic_write_bytes, atomic_write_text

TIMING_CACHE = "timing.cache"
BUILD_LOG = "build.log"
DEFAULT_MAX_CLASSES = 33
DEFAULT_WORKSPACE_GIB = 2.0


def require_tensorrt() -> Any:
    """The tensorrt module, or FPSegError saying what is missing (TensorRT, a CUDA GPU) and how to get it."""
    problems = []
    if importlib.util.find_spec("tensorrt") is None:
        problems.append("the `tensorrt` Python package is not installed (pip install 'fpseg_ros[tensorrt]', "
                        "or use the one shipped with JetPack)")
    if not torch.cuda.is_available():
        problems.append("no CUDA GPU is usable by torch (torch.cuda.is_available() is False)")
    if problems:
        raise FPSegError("TensorRT cannot run here: " + "; ".join(problems)
                         + ". Use --backend onnxruntime (CPU) or torch instead.")
    import tensorrt as trt

    if int(trt.__version__.split(".")[0]) < 10:
        raise FPSegError(f"TensorRT {trt.__version__} found; fpseg needs TensorRT 10 or newer")
    return trt


def _logger(trt: Any, lines: list[str]) -> Any:
    class _CollectingLogger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)

        def log(self, severity: Any, msg: str) -> None:
            lines.append(f"[{severity.name}] {msg}")

    return _CollectingLogger()


def build_engines(
    onnx_dir: str | Path,
    out_dir: str | Path,
    fp16: bool = False,
    max_classes: int = DEFAULT_MAX_CLASSES,
    workspace_gib: float = DEFAULT_WORKSPACE_GIB,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Build encoder.engine and decoder.engine from the graphs in `onnx_dir` into `out_dir`.

    Engines already in `out_dir` are refused unless `overwrite` (`--overwrite`). Each engine is written
    atomically and the engine sidecar last, after the old one was removed. The timing cache
    `out_dir/timing.cache` is read if present and written back, so rebuilds are fast; the builder's log is
    kept in `out_dir/build.log`. Returns the engine sidecar.
    """
    onnx_dir, out_dir = Path(onnx_dir), Path(out_dir)
    sidecar = read_sidecar(onnx_dir)
    if not 1 <= max_classes <= sidecar["max_classes"]:
        raise ValueError(f"max_classes must be in 1..{sidecar['max_classes']}, got {max_classes}")
    check_outputs(out_dir, ENGINE_OUTPUTS, overwrite)
    trt = require_tensorrt()
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / ENGINE_SIDECAR).unlink(missing_ok=True)  # until the new sidecar is written, these are no engines
    log_lines: list[str] = []
    logger = _logger(trt, log_lines)
    builder = trt.Builder(logger)
    cache_path = out_dir / TIMING_CACHE
    cache_bytes = cache_path.read_bytes() if cache_path.is_file() else b""
    grid, prompt_size, dim = sidecar["embedding_size"], sidecar["prompt_size"], sidecar["embed_dim"]
    shapes = {
        "encoder": {"image": ((1, 3, sidecar["img_size"], sidecar["img_size"]),) * 3},
        "decoder": {
            "image_embeddings": ((1, dim, grid, grid),) * 3,
            "prompt_tokens": ((1, prompt_size, dim), (max_classes, prompt_size, dim),
                              (max_classes, prompt_size, dim)),
        },
    }
    try:
        for role, inputs in shapes.items():
            network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
            parser = trt.OnnxParser(network, logger)
            if not parser.parse_from_file(str(onnx_dir / sidecar["files"][role]["name"])):
                errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
                raise FPSegError(f"TensorRT could not parse {role}.onnx: {errors}")
            config = builder.create_builder_config()
            config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
            if fp16:
                config.set_flag(trt.BuilderFlag.FP16)
            cache = config.create_timing_cache(cache_bytes)
            config.set_timing_cache(cache, ignore_mismatch=False)
            profile = builder.create_optimization_profile()
            for name, (low, opt, high) in inputs.items():
                profile.set_shape(name, low, opt, high)
            config.add_optimization_profile(profile)
            started = time.perf_counter()
            serialized = builder.build_serialized_network(network, config)
            if serialized is None:
                raise FPSegError(f"TensorRT failed to build the {role} engine; see {out_dir / BUILD_LOG}")
            atomic_write_bytes(out_dir / ENGINE_FILES[role], bytes(serialized))
            log_lines.append(f"[fpseg] built {role} engine in {time.perf_counter() - started:.1f} s")
            cache_bytes = bytes(config.get_timing_cache().serialize())
            atomic_write_bytes(cache_path, cache_bytes)
    finally:
        atomic_write_text(out_dir / BUILD_LOG, "\n".join(log_lines) + "\n")
    engines = {
        "format": ENGINE_FORMAT,
        "tensorrt_version": trt.__version__,
        "gpu": torch.cuda.get_device_name(),
        "fp16": fp16,
        "max_classes": max_classes,
        "files": {role: file_entry(out_dir / name) for role, name in ENGINE_FILES.items()},
        "onnx": sidecar,
    }
    atomic_write_text(out_dir / ENGINE_SIDECAR, json.dumps(engines, indent=2) + "\n")
    return engines


class TensorRTBackend:
    """encoder.engine / decoder.engine on the GPU; inputs and outputs are torch CUDA tensors.

    More classes than the engine's profile allows are decoded in several passes of at most max_classes.
    """

    name = "tensorrt"

    def __init__(self, folder: Path, device: torch.device, identity: ModelIdentity) -> None:
        trt = require_tensorrt()
        if device.type != "cuda":
            raise FPSegError(f"the tensorrt backend runs on a CUDA device, not {device}; pass device='cuda'")
        self.device = device
        self.folder = Path(folder)
        self.engines = read_engine_sidecar(self.folder, trt.__version__)
        check_model(self.engines, identity, self.folder)
        self.max_classes = self.engines["max_classes"]
        self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self._trt = trt
        self._contexts = {}
        for role, entry in self.engines["files"].items():
            path = self.folder / entry["name"]
            engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
            if engine is None:
                raise ExportError(f"TensorRT could not load {path}; rebuild it with `fpseg build-engine --overwrite`")
            self._contexts[role] = (engine, engine.create_execution_context())

    def check_prompt_size(self, prompt_size: int) -> None:
        """Refuse a bank of another prompt size than the engines take (ExportError)."""
        check_prompt_size(self.engines, prompt_size, self.folder)

    def _run(self, role: str, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        engine, context = self._contexts[role]
        for name, tensor in inputs.items():
            context.set_input_shape(name, tuple(tensor.shape))
            context.set_tensor_address(name, tensor.data_ptr())
        output = None
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            if engine.get_tensor_mode(name) == self._trt.TensorIOMode.OUTPUT:
                output = torch.empty(tuple(context.get_tensor_shape(name)), dtype=torch.float32, device=self.device)
                context.set_tensor_address(name, output.data_ptr())
        # On torch's current stream, so it is ordered with the torch work before and after it.
        if not context.execute_async_v3(torch.cuda.current_stream(self.device).cuda_stream):
            raise FPSegError(f"TensorRT {role} engine failed to run")
        return output

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        image = image.to(self.device, torch.float32).contiguous()
        return self._run("encoder", {"image": image})

    def decode(self, embedding: torch.Tensor, prompt_tokens: torch.Tensor) -> torch.Tensor:
        self.check_prompt_size(prompt_tokens.shape[1])
        embedding = embedding.to(self.device, torch.float32).contiguous()
        prompt_tokens = prompt_tokens.to(self.device, torch.float32)
        parts = [self._run("decoder", {"image_embeddings": embedding,
                                       "prompt_tokens": prompt_tokens[i : i + self.max_classes].contiguous()})
                 for i in range(0, prompt_tokens.shape[0], self.max_classes)]
        return torch.cat(parts, dim=1)
