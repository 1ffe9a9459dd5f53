"""TensorRT 10 backend and engine builder (`fpseg build-engine`), written to the TensorRT 10 Python API.

Engines are built on the target device from an `fpseg export-onnx` folder: the decoder engine has an
optimisation profile over the class axis N (1..max_classes), so changing or adding classes never needs a
rebuild. I/O buffers are torch CUDA tensors (no pycuda). `fpseg_engines.json` records the TensorRT version,
the decoder fingerprint and the profile; engines built by another TensorRT version or for another decoder
are refused.
"""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path
from typing import Any

import torch

from ..errors import FPSegError
from ..export.onnx_export import ENGINE_SIDECAR, ExportError, check_fingerprint, read_sidecar

ENGINE_FORMAT = "fpseg-tensorrt-engines/1"
ENGINE_FILES = {"encoder": "encoder.engine", "decoder": "decoder.engine"}
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
) -> dict[str, Any]:
    """Build encoder.engine and decoder.engine from the graphs in `onnx_dir` into `out_dir`.

    The timing cache `out_dir/timing.cache` is read if present and written back, so rebuilds are fast; the
    builder's log is kept in `out_dir/build.log`. Returns the engine sidecar.
    """
    trt = require_tensorrt()
    onnx_dir, out_dir = Path(onnx_dir), Path(out_dir)
    sidecar = read_sidecar(onnx_dir)
    if not 1 <= max_classes <= sidecar["max_classes"]:
        raise ValueError(f"max_classes must be in 1..{sidecar['max_classes']}, got {max_classes}")
    out_dir.mkdir(parents=True, exist_ok=True)
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
            if not parser.parse_from_file(str(onnx_dir / sidecar["files"][role])):
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
            (out_dir / ENGINE_FILES[role]).write_bytes(bytes(serialized))
            log_lines.append(f"[fpseg] built {role} engine in {time.perf_counter() - started:.1f} s")
            cache_bytes = bytes(config.get_timing_cache().serialize())
            cache_path.write_bytes(cache_bytes)
    finally:
        (out_dir / BUILD_LOG).write_text("\n".join(log_lines) + "\n")
    engines = {
        "format": ENGINE_FORMAT,
        "tensorrt_version": trt.__version__,
        "gpu": torch.cuda.get_device_name(),
        "fp16": fp16,
        "max_classes": max_classes,
        "decoder_fingerprint": sidecar["decoder_fingerprint"],
        "files": ENGINE_FILES,
        "onnx": sidecar,
    }
    (out_dir / ENGINE_SIDECAR).write_text(json.dumps(engines, indent=2) + "\n")
    return engines


def read_engine_sidecar(folder: Path, trt_version: str, fingerprint: str) -> dict[str, Any]:
    """The engine sidecar, refusing engines of another TensorRT version or decoder."""
    path = folder / ENGINE_SIDECAR
    if not path.is_file():
        raise ExportError(f"{folder} has no {ENGINE_SIDECAR}; build engines with "
                          f"`fpseg build-engine --onnx ONNX_DIR --out {folder}`")
    engines = json.loads(path.read_text())
    if engines.get("format") != ENGINE_FORMAT:
        raise ExportError(f"{path} is not an {ENGINE_FORMAT} sidecar; build the engines again")
    if engines["tensorrt_version"] != trt_version:
        raise ExportError(f"the engines in {folder} were built with TensorRT {engines['tensorrt_version']}, "
                          f"this is TensorRT {trt_version}; rebuild them with `fpseg build-engine`")
    check_fingerprint(engines, fingerprint, folder)
    return engines


class TensorRTBackend:
    """encoder.engine / decoder.engine on the GPU; inputs and outputs are torch CUDA tensors.

    More classes than the engine's profile allows are decoded in several passes of at most max_classes.
    """

    name = "tensorrt"

    def __init__(self, folder: Path, device: torch.device, fingerprint: str = "") -> None:
        trt = require_tensorrt()
        if device.type != "cuda":
            raise FPSegError(f"the tensorrt backend runs on a CUDA device, not {device}; pass device='cuda'")
        self.device = device
        self.engines = read_engine_sidecar(folder, trt.__version__, fingerprint)
        self.prompt_size = self.engines["onnx"]["prompt_size"]
        self.max_classes = self.engines["max_classes"]
        self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self._trt = trt
        self._contexts = {}
        for role, name in self.engines["files"].items():
            engine = self._runtime.deserialize_cuda_engine((folder / name).read_bytes())
            if engine is None:
                raise ExportError(f"TensorRT could not load {folder / name}; rebuild it with `fpseg build-engine`")
            self._contexts[role] = (engine, engine.create_execution_context())

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
        if prompt_tokens.shape[1] != self.prompt_size:
            raise ValueError(f"the engines take {self.prompt_size} prompt tokens per class, "
                             f"got {prompt_tokens.shape[1]}")
        embedding = embedding.to(self.device, torch.float32).contiguous()
        prompt_tokens = prompt_tokens.to(self.device, torch.float32)
        parts = [self._run("decoder", {"image_embeddings": embedding,
                                       "prompt_tokens": prompt_tokens[i : i + self.max_classes].contiguous()})
                 for i in range(0, prompt_tokens.shape[0], self.max_classes)]
        return torch.cat(parts, dim=1)
