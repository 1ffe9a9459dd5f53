"""TensorRT backend and engine builder (`fpseg build-engine`), for TensorRT 8.6 to 10.x.

JetPack 6.0 ships TensorRT 8.6, JetPack 6.1 / 6.2 ship 10.3. TensorRT 8.5 (JetPack 5) is refused: its ONNX
parser has no LayerNormalization. TensorRT 11 is refused until this builder makes strongly typed networks
(11 has no BuilderFlag.FP16). Engines are built on the target device from an `fpseg export-onnx` folder:
the decoder engine has an optimisation profile over the class axis N (1..max_classes, tuned for
opt_classes), so changing or adding classes never needs a rebuild. I/O buffers are torch CUDA tensors (no
pycuda); engines run on a private CUDA stream ordered with torch's current stream both ways.
`fpseg_engines.json` (written last; format and checks in `fpseg_core.artifacts`) records the TensorRT
version, compute capability and device name, each engine's precision, TF32, the class profile, each
engine's size and sha256 and the ONNX manifest the engines were built from.

Nothing here has run on a real TensorRT in this project's checks: the tests drive it with a stand-in module.
"""

from __future__ import annotations

import collections
import importlib.util
import json
import logging
import re
import time
from pathlib import Path
from typing import IO, Any

import torch

from ..artifacts import (
    ENGINE_FILES,
    ENGINE_FORMAT,
    ENGINE_OUTPUTS,
    ENGINE_SIDECAR,
    LAYERNORM_OPSET,
    EngineTarget,
    ExportError,
    ModelIdentity,
    check_model,
    check_outputs,
    check_prompt_size,
    file_entry,
    other_device,
    read_engine_sidecar,
    read_sidecar,
)
from ..errors import FPSegError
from ..export.quantize import is_quantized, quantized_refusal
from ..files import atomic_write_bytes, atomic_write_text

LOGGER = logging.getLogger("fpseg")
MIN_VERSION = (8, 6)
TENSORRT_10 = (10, 0)  # from here every network is explicit-batch (creation flag 0)
FIRST_REFUSED_VERSION = (11, 0)  # strongly typed networks only: no BuilderFlag.FP16
BUILD_LOG = "build.log"
TIMING_CACHE = "timing-{version}-sm{cc}.cache"
DEFAULT_MAX_CLASSES = 33
DEFAULT_WORKSPACE_GIB = 2.0
FP16_SCOPES = ("encoder", "all")  # which engines `--fp16` builds in fp16; the rest stay fp32
KEPT_ERRORS = 20  # TensorRT ERROR lines kept for a message

# The ONNX operators the TensorRT ONNX parser imports, from onnx-tensorrt's docs/operators.md ("Supported: Y")
# of release/8.6-GA and release/10.1-GA, with the highest opset each reads.
_OPS_8_6 = frozenset({
    "Abs", "Acos", "Acosh", "Add", "And", "ArgMax", "ArgMin", "Asin", "Asinh", "Atan", "Atanh", "AveragePool",
    "BatchNormalization", "Cast", "Ceil", "Celu", "Clip", "Concat", "Constant", "ConstantOfShape", "Conv",
    "ConvTranspose", "Cos", "Cosh", "CumSum", "DepthToSpace", "DequantizeLinear", "Div", "Dropout", "Einsum", "Elu",
    "Equal", "Erf", "Exp", "Expand", "EyeLike", "Flatten", "Floor", "GRU", "Gather", "GatherElements", "GatherND",
    "Gemm", "GlobalAveragePool", "GlobalLpPool", "GlobalMaxPool", "Greater", "GreaterOrEqual", "GridSample",
    "GroupNormalization", "HardSigmoid", "HardSwish", "Identity", "If", "ImageScaler", "InstanceNormalization",
    "IsInf", "IsNaN", "LRN", "LSTM", "LayerNormalization", "LeakyRelu", "Less", "LessOrEqual", "Log", "LogSoftmax",
    "Loop", "LpNormalization", "LpPool", "MatMul", "Max", "MaxPool", "Mean", "MeanVarianceNormalization", "Min",
    "Mod", "Mul", "Neg", "NonMaxSuppression", "NonZero", "Not", "OneHot", "Or", "PRelu", "Pad", "ParametricSoftplus",
    "Pow", "QuantizeLinear", "RNN", "RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Range",
    "Reciprocal", "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean", "ReduceMin",
    "ReduceProd", "ReduceSum", "ReduceSumSquare", "Relu", "Reshape", "Resize", "ReverseSequence", "RoiAlign", "Round",
    "ScaledTanh", "Scan", "Scatter", "ScatterElements", "ScatterND", "Selu", "Shape", "Shrink", "Sigmoid", "Sign",
    "Sin", "Sinh", "Size", "Slice", "Softmax", "Softplus", "Softsign", "SpaceToDepth", "Split", "Sqrt", "Squeeze",
    "Sub", "Sum", "Tan", "Tanh", "ThresholdedRelu", "Tile", "TopK", "Transpose", "Trilu", "Unsqueeze", "Upsample",
    "Where", "Xor"
})
SUPPORTED_OPS: dict[str, frozenset[str]] = {
    "8.6": _OPS_8_6,
    "10": _OPS_8_6 | {"CastLike", "DeformConv", "Gelu", "Hardmax", "Mish"},
}
MAX_OPSET = {"8.6": 17, "10": 20}


def parse_version(version: str) -> tuple[int, int]:
    """(major, minor) of a TensorRT version string such as '8.6.2.3' or '10.3.0'."""
    found = re.match(r"(\d+)\.(\d+)", version)
    if not found:
        raise FPSegError(f"cannot read the TensorRT version {version!r}; reinstall TensorRT (8.6 to 10.x)")
    return int(found[1]), int(found[2])


def tensorrt_series(version: str) -> str:
    """The key of SUPPORTED_OPS for TensorRT `version` ('8.6' or '10'); FPSegError for versions not supported."""
    major_minor = parse_version(version)
    if major_minor < MIN_VERSION:
        raise FPSegError(f"TensorRT {version} is too old: fpseg needs TensorRT 8.6 to 10.x (older ONNX parsers "
                         "have no LayerNormalization); on JetPack 5 use --backend onnxruntime, see the README "
                         "section 'On a Jetson'")
    if major_minor >= FIRST_REFUSED_VERSION:
        raise FPSegError(f"TensorRT {version} is not supported yet: from TensorRT 11 networks are strongly typed "
                         "(no BuilderFlag.FP16), which fpseg's builder does not make; install TensorRT 10 "
                         "(pip install 'tensorrt>=8.6,<11')")
    return "8.6" if major_minor < TENSORRT_10 else "10"


def require_tensorrt() -> Any:
    """The tensorrt module, or FPSegError saying what is missing (TensorRT 8.6-10.x, a CUDA GPU) and how to get it."""
    problems = []
    if importlib.util.find_spec("tensorrt") is None:
        problems.append("the `tensorrt` Python package is not installed (pip install 'fpseg_ros[tensorrt]', "
                        "or on a Jetson JetPack's, in a venv made with --system-site-packages)")
    if not torch.cuda.is_available():
        problems.append("no CUDA GPU is usable by torch (torch.cuda.is_available() is False)")
    if problems:
        raise FPSegError("TensorRT cannot run here: " + "; ".join(problems)
                         + ". Use --backend onnxruntime (CPU) or torch instead.")
    import tensorrt as trt

    tensorrt_series(trt.__version__)
    return trt


def network_flags(trt: Any) -> int:
    """Network creation flags: EXPLICIT_BATCH below TensorRT 10 (8.x's ONNX parser needs it), else 0."""
    if parse_version(trt.__version__) >= TENSORRT_10:
        return 0
    return 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)


def engine_target(trt_version: str, device: torch.device | None = None) -> EngineTarget:
    """What engines built here are bound to: this TensorRT version and the GPU's compute capability and name."""
    major, minor = torch.cuda.get_device_capability(device)
    return EngineTarget(trt_version, f"{major}.{minor}", torch.cuda.get_device_name(device))


def timing_cache_name(trt_version: str, compute_capability: str) -> str:
    """The timing cache file for one TensorRT version and compute capability, e.g. timing-10.3.0-sm87.cache."""
    return TIMING_CACHE.format(version=trt_version, cc=compute_capability.replace(".", ""))


def check_export_ops(sidecar: dict[str, Any], series: str, folder: Path) -> list[str]:
    """Refuse (FPSegError) an export TensorRT `series` cannot import, naming each unsupported op and opset;
    returns advice (one line each) for an export it imports but should be made differently."""
    opset = sidecar["opset"]
    if opset > MAX_OPSET[series]:
        raise FPSegError(f"the export in {folder} is opset {opset}, TensorRT {series}'s ONNX parser reads up to "
                         f"opset {MAX_OPSET[series]}; export again with `fpseg export-onnx --opset {LAYERNORM_OPSET}`")
    unsupported = {role: sorted(set(ops) - SUPPORTED_OPS[series]) for role, ops in sidecar["ops"].items()}
    listed = "; ".join(f"{role}.onnx: {', '.join(ops)}" for role, ops in unsupported.items() if ops)
    if listed:
        raise FPSegError(f"TensorRT {series}'s ONNX parser has no importer for ops in {folder} ({listed}); "
                         "export with another --opset or use --backend onnxruntime")
    if opset < LAYERNORM_OPSET:
        return [f"the export in {folder} is opset {opset}: LayerNorm is decomposed into ReduceMean / Pow / Sqrt, "
                f"kept in fp32 by precision constraints in fp16 engines; TensorRT {series} imports "
                f"LayerNormalization, so export again with --opset {LAYERNORM_OPSET} for faster fp16 engines"]
    return []


def _logger(trt: Any, sink: IO[str] | None = None) -> Any:
    """A TensorRT logger keeping the last ERROR lines (`.errors`); INFO and above go to `sink` when given (the
    build log; VERBOSE is dropped), else WARNING and above go to the `fpseg` Python logger."""
    severity_type = trt.ILogger.Severity
    error, warning, info = (int(severity_type.ERROR), int(severity_type.WARNING), int(severity_type.INFO))

    class _Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: collections.deque[str] = collections.deque(maxlen=KEPT_ERRORS)

        def log(self, severity: Any, msg: str) -> None:
            level = int(severity)
            if level <= error:
                self.errors.append(msg)
            if sink is not None and level <= info:
                sink.write(f"[{severity.name}] {msg}\n")
            elif sink is None and level <= warning:
                LOGGER.warning("TensorRT: %s", msg)

    return _Logger()


def _errors(logger: Any) -> str:
    return f" (TensorRT: {' | '.join(logger.errors)})" if logger.errors else ""


def _made(made: Any, what: str, logger: Any) -> Any:
    """`made`, or FPSegError where TensorRT returned None for it."""
    if made is None:
        raise FPSegError(f"TensorRT could not create {what}{_errors(logger)}")
    return made


def _keep_reductions_fp32(trt: Any, network: Any) -> int:
    """In a network with reductions (a decomposed LayerNorm: ReduceMean, Pow, ReduceMean, Sqrt), constrain the
    reduction, Pow and Sqrt layers to fp32; returns how many (0, constraining nothing, without reductions)."""
    layers = [network.get_layer(i) for i in range(network.num_layers)]
    if not any(layer.type == trt.LayerType.REDUCE for layer in layers):
        return 0
    kept = 0
    for layer in layers:
        if layer.type == trt.LayerType.ELEMENTWISE:
            layer.__class__ = trt.IElementWiseLayer
            keep = layer.op == trt.ElementWiseOperation.POW
        elif layer.type == trt.LayerType.UNARY:
            layer.__class__ = trt.IUnaryLayer
            keep = layer.op == trt.UnaryOperation.SQRT
        else:
            keep = layer.type == trt.LayerType.REDUCE
        if keep:
            layer.precision = trt.float32
            for output in range(layer.num_outputs):
                layer.set_output_type(output, trt.float32)
            kept += 1
    return kept


def _set_timing_cache(config: Any, cache_bytes: bytes, log: IO[str], path: Path) -> None:
    """Use the timing cache `cache_bytes`, or an empty one where TensorRT refuses it."""
    cache = config.create_timing_cache(cache_bytes)
    if cache is not None and config.set_timing_cache(cache, ignore_mismatch=False):
        return
    if not cache_bytes:
        raise FPSegError("TensorRT refused an empty timing cache; see the build log")
    log.write(f"[fpseg] TensorRT refused the timing cache {path.name}; starting from an empty one\n")
    cache = config.create_timing_cache(b"")
    if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
        raise FPSegError("TensorRT refused an empty timing cache; see the build log")


def build_engines(
    onnx_dir: str | Path,
    out_dir: str | Path,
    fp16: str | None = None,
    max_classes: int = DEFAULT_MAX_CLASSES,
    workspace_gib: float = DEFAULT_WORKSPACE_GIB,
    overwrite: bool = False,
    *,
    opt_classes: int | None = None,
    tf32: bool = False,
) -> dict[str, Any]:
    """Build encoder.engine and decoder.engine from the graphs in `onnx_dir` into `out_dir`.

    `fp16`: None (fp32 engines), 'encoder' (fp16 encoder, fp32 decoder) or 'all'. TF32 is off unless `tf32`.
    The decoder's class profile is 1..`max_classes`, tuned for `opt_classes` (default: the exported bank's
    class count, at most `max_classes`). Engines already in `out_dir` are refused unless `overwrite`. The old
    sidecar is removed first, each engine is written atomically and the new sidecar last. The timing cache
    (named by TensorRT version and compute capability) is read if present and written back; INFO-level builder
    messages stream to `out_dir/build.log`. Returns the engine sidecar.
    """
    onnx_dir, out_dir = Path(onnx_dir), Path(out_dir)
    sidecar = read_sidecar(onnx_dir)
    if is_quantized(sidecar):
        raise quantized_refusal(onnx_dir, "`fpseg build-engine` (TensorRT builds from ONNX graphs)")
    if fp16 and fp16 not in FP16_SCOPES:
        raise ValueError(f"fp16 must be one of {', '.join(FP16_SCOPES)} or None, got {fp16!r}")
    if not 1 <= max_classes <= sidecar["max_classes"]:
        raise ValueError(f"max_classes must be in 1..{sidecar['max_classes']}, got {max_classes}")
    if opt_classes is None:
        opt_classes = min(sidecar["bank_classes"], max_classes)
    if not 1 <= opt_classes <= max_classes:
        raise ValueError(f"opt_classes must be in 1..{max_classes} (max_classes), got {opt_classes}")
    check_outputs(out_dir, ENGINE_OUTPUTS, overwrite)
    trt = require_tensorrt()
    advice = check_export_ops(sidecar, tensorrt_series(trt.__version__), onnx_dir)
    for line in advice:
        LOGGER.warning("%s", line)
    target = engine_target(trt.__version__)
    precision = {"encoder": "fp16" if fp16 else "fp32", "decoder": "fp16" if fp16 == "all" else "fp32"}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / ENGINE_SIDECAR).unlink(missing_ok=True)  # until the new sidecar is written, these are no engines
    cache_path = out_dir / timing_cache_name(target.tensorrt_version, target.compute_capability)
    cache_bytes = cache_path.read_bytes() if cache_path.is_file() else b""
    grid, prompt_size, dim = sidecar["embedding_size"], sidecar["prompt_size"], sidecar["embed_dim"]
    shapes = {
        "encoder": {"image": ((1, 3, sidecar["img_size"], sidecar["img_size"]),) * 3},
        "decoder": {
            "image_embeddings": ((1, dim, grid, grid),) * 3,
            "prompt_tokens": ((1, prompt_size, dim), (opt_classes, prompt_size, dim),
                              (max_classes, prompt_size, dim)),
        },
    }
    with open(out_dir / BUILD_LOG, "w", encoding="utf-8", buffering=1) as log:
        for line in advice:
            log.write(f"[fpseg] {line}\n")
        logger = _logger(trt, log)
        builder = trt.Builder(logger)
        for role, inputs in shapes.items():
            network = _made(builder.create_network(network_flags(trt)), f"the {role} network", logger)
            parser = trt.OnnxParser(network, logger)
            if not parser.parse_from_file(str(onnx_dir / sidecar["files"][role]["name"])):
                errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
                raise FPSegError(f"TensorRT could not parse {role}.onnx: {errors}")
            config = _made(builder.create_builder_config(), "a builder config", logger)
            config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
            if not tf32:
                config.clear_flag(trt.BuilderFlag.TF32)
            if precision[role] == "fp16":
                config.set_flag(trt.BuilderFlag.FP16)
                kept = _keep_reductions_fp32(trt, network)
                if kept:
                    config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
                    log.write(f"[fpseg] {role}: {kept} reduction / Pow / Sqrt layers constrained to fp32\n")
            _set_timing_cache(config, cache_bytes, log, cache_path)
            profile = _made(builder.create_optimization_profile(), "an optimisation profile", logger)
            for name, (low, opt, high) in inputs.items():
                try:
                    profile.set_shape(name, low, opt, high)
                except RuntimeError as exc:
                    raise FPSegError(f"TensorRT refused the {role} profile {name} {low}..{high}: {exc}") from exc
            if config.add_optimization_profile(profile) < 0:
                raise FPSegError(f"TensorRT refused the {role} optimisation profile{_errors(logger)}")
            started = time.perf_counter()
            serialized = builder.build_serialized_network(network, config)
            if serialized is None:
                raise FPSegError(f"TensorRT failed to build the {role} engine{_errors(logger)}; see "
                                 f"{out_dir / BUILD_LOG}")
            atomic_write_bytes(out_dir / ENGINE_FILES[role], bytes(serialized))
            log.write(f"[fpseg] built the {precision[role]} {role} engine in {time.perf_counter() - started:.1f} s\n")
            cache_bytes = bytes(_made(config.get_timing_cache(), "the timing cache", logger).serialize())
            atomic_write_bytes(cache_path, cache_bytes)
    engines = {
        "format": ENGINE_FORMAT,
        "tensorrt_version": target.tensorrt_version,
        "compute_capability": target.compute_capability,
        "device_name": target.device_name,
        "precision": precision,
        "tf32": tf32,
        "profile": {"min": 1, "opt": opt_classes, "max": max_classes},
        "files": {role: file_entry(out_dir / name) for role, name in ENGINE_FILES.items()},
        "onnx": sidecar,
    }
    atomic_write_text(out_dir / ENGINE_SIDECAR, json.dumps(engines, indent=2) + "\n")
    return engines


def tensorrt_refusal(folder: Path, device: torch.device) -> str | None:
    """Why the engines in `folder` cannot run on `device` here (no TensorRT, another TensorRT version or GPU
    architecture than they were built for), or None when they can; their files are checked when loaded."""
    try:
        if device.type != "cuda":
            return f"TensorRT engines need a CUDA device, not {device}"
        trt = require_tensorrt()
        read_engine_sidecar(folder, engine_target(trt.__version__, device), check_files=False)
    except FPSegError as exc:
        return str(exc)
    return None


def check_engine_profile(engine: Any, manifest: dict[str, Any], folder: Path) -> None:
    """Refuse a decoder engine whose class profile is not the one `manifest` records."""
    found = [int(shape[0]) for shape in engine.get_tensor_profile_shape("prompt_tokens", 0)]
    recorded = [manifest["profile"][key] for key in ("min", "opt", "max")]
    if found != recorded:
        raise ExportError(f"the decoder engine in {folder} has class profile min/opt/max {found}, "
                          f"{ENGINE_SIDECAR} records {recorded}; rebuild it with `fpseg build-engine --overwrite`")


class TensorRTBackend:
    """encoder.engine / decoder.engine on the GPU; inputs and outputs are torch CUDA tensors.

    More classes than the engine's profile allows are decoded in several passes of at most its max classes.
    """

    name = "tensorrt"
    batch_encoding = False  # the encoder engine's profile is one image

    def __init__(self, folder: Path, device: torch.device, identity: ModelIdentity) -> None:
        trt = require_tensorrt()
        if device.type != "cuda":
            raise FPSegError(f"the tensorrt backend runs on a CUDA device, not {device}; pass device='cuda'")
        self.device = device
        self.folder = Path(folder)
        target = engine_target(trt.__version__, device)
        self.engines = read_engine_sidecar(self.folder, target)
        warning = other_device(self.engines, target, self.folder)
        if warning:
            LOGGER.warning("%s", warning)
        check_model(self.engines, identity, self.folder)
        self.max_classes = self.engines["profile"]["max"]
        self.precisions = dict(self.engines["precision"])  # per engine, as built (fp32 / fp16)
        self.low_res_size = self.engines["onnx"]["low_res_size"]
        self._logger = _logger(trt)
        self._runtime = trt.Runtime(self._logger)
        self._trt = trt
        self._stream = torch.cuda.Stream(device)
        self._contexts = {}
        for role, entry in self.engines["files"].items():
            path = self.folder / entry["name"]
            self._logger.errors.clear()
            engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
            if engine is None:
                raise ExportError(f"TensorRT could not load {path}{_errors(self._logger)}; rebuild it with "
                                  "`fpseg build-engine --overwrite`")
            if role == "decoder":
                check_engine_profile(engine, self.engines, self.folder)
            context = engine.create_execution_context()
            if context is None:
                raise FPSegError(f"TensorRT could not create an execution context for {path}"
                                 f"{_errors(self._logger)} (out of GPU memory?)")
            self._contexts[role] = (engine, context)

    def check_prompt_size(self, prompt_size: int) -> None:
        """Refuse a bank of another prompt size than the engines take (ExportError)."""
        check_prompt_size(self.engines, prompt_size, self.folder)

    def _run(self, role: str, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        engine, context = self._contexts[role]
        for name, tensor in inputs.items():
            if not context.set_input_shape(name, tuple(tensor.shape)):
                raise FPSegError(f"TensorRT {role} engine refused input {name} of shape {tuple(tensor.shape)}"
                                 f"{_errors(self._logger)}")
            if not context.set_tensor_address(name, tensor.data_ptr()):
                raise FPSegError(f"TensorRT {role} engine refused the address of {name}{_errors(self._logger)}")
        output = None
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            if engine.get_tensor_mode(name) == self._trt.TensorIOMode.OUTPUT:
                output = torch.empty(tuple(context.get_tensor_shape(name)), dtype=torch.float32, device=self.device)
                if not context.set_tensor_address(name, output.data_ptr()):
                    raise FPSegError(f"TensorRT {role} engine refused the address of {name}")
        # A private stream (the legacy default stream adds syncs to enqueueV3), ordered with torch's current
        # stream both ways: after the work that made the inputs, before the work that reads the output.
        current = torch.cuda.current_stream(self.device)
        self._stream.wait_stream(current)
        if not context.execute_async_v3(self._stream.cuda_stream):
            raise FPSegError(f"TensorRT {role} engine failed to run{_errors(self._logger)}")
        current.wait_stream(self._stream)
        return output

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        image = image.to(self.device, torch.float32).contiguous()
        return self._run("encoder", {"image": image})

    def decode(self, embedding: torch.Tensor, prompt_tokens: torch.Tensor) -> torch.Tensor:
        self.check_prompt_size(prompt_tokens.shape[1])
        if prompt_tokens.shape[0] == 0:
            return torch.empty(1, 0, self.low_res_size, self.low_res_size, device=self.device)
        embedding = embedding.to(self.device, torch.float32).contiguous()
        prompt_tokens = prompt_tokens.to(self.device, torch.float32)
        parts = [self._run("decoder", {"image_embeddings": embedding,
                                       "prompt_tokens": prompt_tokens[i : i + self.max_classes].contiguous()})
                 for i in range(0, prompt_tokens.shape[0], self.max_classes)]
        return torch.cat(parts, dim=1)
