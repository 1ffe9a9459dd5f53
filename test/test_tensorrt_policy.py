"""TensorRT as it ships on Jetson (issue 18), without TensorRT or a GPU.

ONNX level (real onnx + onnxruntime): opset 17 keeps every LayerNorm one LayerNormalization node, opset 16
decomposes it, both verify against torch, and each export's op list is in its manifest and in the table of
ops the TensorRT ONNX parser imports. TensorRT side: our decisions (version policy, network flags, TF32,
fp16 scope, precision constraints, timing cache, sidecar checks, `auto`'s fallback) driven through a small
stand-in for the `tensorrt` module. Nothing here shows that a real TensorRT builds or runs these engines.
"""

from __future__ import annotations

import enum
import importlib.machinery
import json
import logging
import re
import shutil
import sys
import types
import warnings
from pathlib import Path
from typing import Any

import onnx
import pytest
import torch

from fpseg_core import FPSeg, FPSegError, tiny_config
from fpseg_core.artifacts import (
    ENGINE_FILES,
    ENGINE_FORMAT,
    EngineTarget,
    ExportError,
    file_entry,
    other_device,
    read_engine_sidecar,
    read_sidecar,
)
from fpseg_core.backends import choose_backend
from fpseg_core.backends import tensorrt_backend as trt_backend
from fpseg_core.backends.onnxruntime_backend import verify_export
from fpseg_core.backends.tensorrt_backend import (
    SUPPORTED_OPS,
    TensorRTBackend,
    build_engines,
    check_engine_profile,
    check_export_ops,
    network_flags,
    tensorrt_series,
    timing_cache_name,
)
from fpseg_core.export.onnx_export import export_onnx, graph_ops
from fpseg_core.modeling.common import LayerNorm2d

CONFIG = tiny_config("mobilesam", n_classes=3, prompt_size=4, img_size=128)
GPU = ((8, 7), "Orin")  # what the stand-in torch.cuda reports
LAYERNORM_DECOMPOSITION = {"ReduceMean", "Pow"}


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return FPSeg.random(CONFIG, seed=0, backend="torch").model


@pytest.fixture(scope="module")
def exports(model: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    """The tiny model exported once at each opset."""
    folders = {}
    for opset in (16, 17):
        folders[opset] = tmp_path_factory.mktemp(f"opset{opset}")
        export_onnx(model, CONFIG, folders[opset], opset=opset)
    return folders


def _ops(path: Path) -> list[str]:
    return [node.op_type for node in onnx.load(str(path)).graph.node]


# --------------------------------------------------------------------------------------------- ONNX level
def test_layernorm2d_is_sams_formula_within_1e6_with_the_same_keys() -> None:
    torch.manual_seed(0)
    norm = LayerNorm2d(32)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    x = 50 * torch.randn(2, 32, 9, 7) + 20
    u = x.mean(1, keepdim=True)
    s = (x - u).pow(2).mean(1, keepdim=True)
    expected = norm.weight[:, None, None] * (x - u) / torch.sqrt(s + norm.eps) + norm.bias[:, None, None]
    assert (norm(x) - expected).abs().max() <= 1e-6 * expected.abs().max()
    assert list(norm.state_dict()) == ["weight", "bias"]


def test_opset17_graphs_hold_layernormalization_and_no_decomposition(exports: dict[int, Path]) -> None:
    for role in ("encoder", "decoder"):
        graph = onnx.load(str(exports[17] / f"{role}.onnx")).graph
        ops = [node.op_type for node in graph.node]
        assert "LayerNormalization" in ops, role
        assert not LAYERNORM_DECOMPOSITION & set(ops), role
        # what Sqrt is left computes the attention scale 1 / sqrt(head width) from shapes and constants only
        static = {t.name for t in graph.initializer}
        for node in graph.node:  # in topological order
            if node.op_type in ("Shape", "Constant") or all(name in static for name in node.input):
                static.update(node.output)
        assert all(node.input[0] in static for node in graph.node if node.op_type == "Sqrt"), role


def test_opset16_decomposes_layernorm(exports: dict[int, Path]) -> None:
    ops = set(_ops(exports[16] / "encoder.onnx"))
    assert ops >= LAYERNORM_DECOMPOSITION and "LayerNormalization" not in ops


@pytest.mark.parametrize("opset", [16, 17])
def test_each_opset_verifies_against_torch(exports: dict[int, Path], model: torch.nn.Module, opset: int) -> None:
    errors = verify_export(exports[opset], model, class_counts=(1, 3))
    assert read_sidecar(exports[opset])["opset"] == opset
    assert max(errors.values()) < 1e-3


@pytest.mark.parametrize("opset", [16, 17])
def test_the_manifest_lists_each_graphs_ops_and_tensorrt_imports_them(exports: dict[int, Path], opset: int) -> None:
    sidecar = read_sidecar(exports[opset])
    assert set(sidecar["ops"]) == {"encoder", "decoder"}
    for role, ops in sidecar["ops"].items():
        assert ops == sorted(set(_ops(exports[opset] / f"{role}.onnx"))) == graph_ops(exports[opset] / f"{role}.onnx")
        for series, supported in SUPPORTED_OPS.items():
            assert set(ops) <= supported, (series, role, set(ops) - supported)
    advice = {series: check_export_ops(sidecar, series, exports[opset]) for series in SUPPORTED_OPS}
    if opset == 17:
        assert advice == {"8.6": [], "10": []}
    else:
        assert all("opset 16: LayerNorm is decomposed" in lines[0] and "--opset 17" in lines[0]
                   for lines in advice.values())


def test_an_op_tensorrt_cannot_import_is_refused_by_name(exports: dict[int, Path]) -> None:
    sidecar = read_sidecar(exports[17])
    with_gelu = {**sidecar, "ops": {**sidecar["ops"], "decoder": sorted([*sidecar["ops"]["decoder"], "Gelu"])}}
    assert check_export_ops(with_gelu, "10", exports[17]) == []  # Gelu: imported from TensorRT 10 on
    with pytest.raises(FPSegError, match=r"TensorRT 8\.6's ONNX parser has no importer for ops in .*"
                                         r"\(decoder\.onnx: Gelu\)"):
        check_export_ops(with_gelu, "8.6", exports[17])
    with pytest.raises(FPSegError, match=r"is opset 18, TensorRT 8\.6's ONNX parser reads up to opset 17"):
        check_export_ops({**sidecar, "opset": 18}, "8.6", exports[17])


def test_export_refuses_an_opset_it_does_not_write(model: torch.nn.Module, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="opset must be one of 16, 17, got 15"):
        export_onnx(model, CONFIG, tmp_path, opset=15)
    assert not any(tmp_path.iterdir())


# ----------------------------------------------------------------------------- the stand-in `tensorrt`
class Severity(enum.IntEnum):
    INTERNAL_ERROR = 0
    ERROR = 1
    WARNING = 2
    INFO = 3
    VERBOSE = 4


class ILogger:
    Severity = Severity

    def __init__(self) -> None:
        pass


BuilderFlag = enum.Enum("BuilderFlag", "FP16 TF32 OBEY_PRECISION_CONSTRAINTS")
LayerType = enum.Enum("LayerType", "REDUCE ELEMENTWISE UNARY NORMALIZATION OTHER")
ElementWiseOperation = enum.Enum("ElementWiseOperation", "POW SUM PROD SUB DIV")
UnaryOperation = enum.Enum("UnaryOperation", "SQRT ERF EXP")
LAYERS = {"ReduceMean": (LayerType.REDUCE, None), "Pow": (LayerType.ELEMENTWISE, ElementWiseOperation.POW),
          "Add": (LayerType.ELEMENTWISE, ElementWiseOperation.SUM), "Sqrt": (LayerType.UNARY, UnaryOperation.SQRT),
          "Erf": (LayerType.UNARY, UnaryOperation.ERF), "LayerNormalization": (LayerType.NORMALIZATION, None)}
CACHE = b"fake timing cache"


class Layer:
    def __init__(self, onnx_op: str) -> None:
        self.type, self._op = LAYERS.get(onnx_op, (LayerType.OTHER, None))
        self.num_outputs, self.precision, self.output_types = 1, None, {}

    def set_output_type(self, index: int, dtype: str) -> None:
        self.output_types[index] = dtype


class IElementWiseLayer(Layer):
    @property
    def op(self) -> Any:
        return self._op


class IUnaryLayer(IElementWiseLayer):
    pass


class Network:
    def __init__(self, flags: int) -> None:
        self.flags, self.layers = flags, []

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def get_layer(self, index: int) -> Layer:
        return self.layers[index]


class OnnxParser:
    def __init__(self, network: Network, logger: ILogger) -> None:
        self.network, self.logger, self.num_errors = network, logger, 0

    def parse_from_file(self, path: str) -> bool:
        self.network.layers = [Layer(op) for op in _ops(Path(path))]
        self.network.role = Path(path).stem
        self.logger.log(Severity.INFO, f"parsed {Path(path).name}")
        self.logger.log(Severity.VERBOSE, "a VERBOSE line the build log must not keep")
        return True


class TimingCache:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def serialize(self) -> bytes:
        return CACHE


class Profile:
    def __init__(self) -> None:
        self.shapes = {}

    def set_shape(self, name: str, low: tuple, opt: tuple, high: tuple) -> None:
        self.shapes[name] = (low, opt, high)


class Config:
    def __init__(self) -> None:
        self.flags, self.profiles, self.cache = {BuilderFlag.TF32}, [], None  # TF32 is on by default

    def set_memory_pool_limit(self, pool: str, size: int) -> None:
        self.workspace = size

    def set_flag(self, flag: BuilderFlag) -> None:
        self.flags.add(flag)

    def clear_flag(self, flag: BuilderFlag) -> None:
        self.flags.discard(flag)

    def create_timing_cache(self, data: bytes) -> TimingCache:
        return TimingCache(bytes(data))

    def set_timing_cache(self, cache: TimingCache, ignore_mismatch: bool) -> bool:
        if cache.data not in (b"", CACHE):  # one made by another TensorRT / GPU
            return False
        self.cache = cache
        return True

    def get_timing_cache(self) -> TimingCache:
        return self.cache

    def add_optimization_profile(self, profile: Profile) -> int:
        self.profiles.append(profile)
        return len(self.profiles) - 1


class Builder:
    def __init__(self, logger: ILogger) -> None:
        self.logger = logger
        FAKE.builds.clear()

    def create_network(self, flags: int) -> Network:
        return Network(flags)

    def create_builder_config(self) -> Config:
        return Config()

    def create_optimization_profile(self) -> Profile:
        return Profile()

    def build_serialized_network(self, network: Network, config: Config) -> bytes | None:
        if network.role in FAKE.fail:
            self.logger.log(Severity.ERROR, f"no implementation for a layer of {network.role}")
            return None
        FAKE.builds[network.role] = (network, config)
        return f"{network.role} engine".encode()


class Dims(tuple):
    pass


class Engine:
    def __init__(self, profile: list[int]) -> None:
        self.profile = profile

    def get_tensor_profile_shape(self, name: str, index: int) -> list[Dims]:
        return [Dims((n, 4, 256)) for n in self.profile]


def fake_tensorrt(version: str) -> types.ModuleType:
    module = types.ModuleType("tensorrt")
    module.__spec__ = importlib.machinery.ModuleSpec("tensorrt", None)
    module.__version__ = version
    module.ILogger, module.Builder, module.OnnxParser = ILogger, Builder, OnnxParser
    module.BuilderFlag, module.LayerType = BuilderFlag, LayerType
    module.ElementWiseOperation, module.UnaryOperation = ElementWiseOperation, UnaryOperation
    module.IElementWiseLayer, module.IUnaryLayer = IElementWiseLayer, IUnaryLayer
    module.NetworkDefinitionCreationFlag = enum.IntEnum("NetworkDefinitionCreationFlag", {"EXPLICIT_BATCH": 0})
    module.MemoryPoolType = types.SimpleNamespace(WORKSPACE="workspace")
    module.float32 = "float32"
    module.builds, module.fail = {}, set()
    return module


FAKE = fake_tensorrt("10.3.0")


@pytest.fixture()
def trt(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """The stand-in module as `tensorrt` (TensorRT 10.3), on a machine whose torch sees an Orin (sm 8.7)."""
    FAKE.__version__, FAKE.fail, FAKE.builds = "10.3.0", set(), {}
    monkeypatch.setitem(sys.modules, "tensorrt", FAKE)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: GPU[0])
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: GPU[1])
    return FAKE


# ------------------------------------------------------------------------------------ TensorRT decisions
@pytest.mark.parametrize(("version", "series"), [("8.6.2.3", "8.6"), ("8.6.1", "8.6"), ("10.3.0", "10"),
                                                 ("10.16.1.11", "10")])
def test_tensorrt_8_6_to_10_are_supported(version: str, series: str) -> None:
    assert tensorrt_series(version) == series


def test_tensorrt_8_5_and_11_are_refused_with_what_to_do(trt: types.ModuleType) -> None:
    with pytest.raises(FPSegError, match=r"^TensorRT 8\.5\.2\.2 is too old: fpseg needs TensorRT 8\.6 to 10\.x .*"
                                         "LayerNormalization.*--backend onnxruntime"):
        tensorrt_series("8.5.2.2")
    with pytest.raises(FPSegError, match=r"^TensorRT 11\.0\.0 is not supported yet: .*strongly typed .*"
                                         r"BuilderFlag\.FP16.*install TensorRT 10"):
        tensorrt_series("11.0.0")
    trt.__version__ = "8.5.2.2"
    with pytest.raises(FPSegError, match="is too old"):
        trt_backend.require_tensorrt()
    trt.__version__ = "10.3.0"
    assert trt_backend.require_tensorrt() is trt


def test_explicit_batch_below_tensorrt_10_only() -> None:
    assert network_flags(fake_tensorrt("8.6.2.3")) == 1 << 0  # 1 << int(EXPLICIT_BATCH)
    assert network_flags(fake_tensorrt("10.3.0")) == 0


def test_timing_cache_is_named_by_tensorrt_version_and_compute_capability() -> None:
    assert timing_cache_name("10.3.0", "8.7") == "timing-10.3.0-sm87.cache"
    assert timing_cache_name("8.6.2.3", "7.2") == "timing-8.6.2.3-sm72.cache"


def _build(trt: types.ModuleType, export: Path, out: Path, **options: Any) -> dict[str, Any]:
    return build_engines(export, out, options.pop("fp16", None), options.pop("max_classes", 5),
                         overwrite=True, **options)


def test_fp32_build_clears_tf32_and_writes_the_sidecar(trt: types.ModuleType, exports: dict[int, Path],
                                                       tmp_path: Path) -> None:
    engines = _build(trt, exports[17], tmp_path)
    assert {role: config.flags for role, (_, config) in trt.builds.items()} == {"encoder": set(), "decoder": set()}
    assert {role: network.flags for role, (network, _) in trt.builds.items()} == {"encoder": 0, "decoder": 0}
    decoder_profile = trt.builds["decoder"][1].profiles[0].shapes["prompt_tokens"]
    assert [shape[0] for shape in decoder_profile] == [1, 3, 5]  # opt: the exported bank's 3 classes
    on_disk = json.loads((tmp_path / "fpseg_engines.json").read_text())
    assert on_disk == engines
    assert {k: engines[k] for k in ("tensorrt_version", "compute_capability", "device_name", "precision", "tf32",
                                    "profile")} == {
        "tensorrt_version": "10.3.0", "compute_capability": "8.7", "device_name": "Orin",
        "precision": {"encoder": "fp32", "decoder": "fp32"}, "tf32": False, "profile": {"min": 1, "opt": 3, "max": 5}}
    log = (tmp_path / "build.log").read_text()
    assert "[INFO] parsed encoder.onnx" in log and "VERBOSE" not in log
    assert (tmp_path / "timing-10.3.0-sm87.cache").read_bytes() == CACHE
    assert read_engine_sidecar(tmp_path, EngineTarget("10.3.0", "8.7", "Orin")) == engines


def test_tf32_only_when_asked_and_fp16_for_the_encoder_only(trt: types.ModuleType, exports: dict[int, Path],
                                                            tmp_path: Path) -> None:
    engines = _build(trt, exports[17], tmp_path, fp16="encoder", tf32=True, opt_classes=2)
    flags = {role: config.flags for role, (_, config) in trt.builds.items()}
    assert flags == {"encoder": {BuilderFlag.FP16, BuilderFlag.TF32}, "decoder": {BuilderFlag.TF32}}
    assert engines["precision"] == {"encoder": "fp16", "decoder": "fp32"} and engines["tf32"] is True
    assert engines["profile"] == {"min": 1, "opt": 2, "max": 5}


def test_fp16_keeps_a_decomposed_layernorm_in_fp32(trt: types.ModuleType, exports: dict[int, Path],
                                                   tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="fpseg"):
        _build(trt, exports[16], tmp_path, fp16="all")
    assert "opset 16: LayerNorm is decomposed" in caplog.text
    for role, (network, config) in trt.builds.items():
        assert BuilderFlag.OBEY_PRECISION_CONSTRAINTS in config.flags, role
        kept = [layer for layer in network.layers if layer.precision == "float32"]
        assert {layer.type for layer in kept} == {LayerType.REDUCE, LayerType.ELEMENTWISE, LayerType.UNARY}
        assert all(layer.op in (ElementWiseOperation.POW, UnaryOperation.SQRT) for layer in kept
                   if layer.type != LayerType.REDUCE)
        assert all(layer.output_types == {0: "float32"} for layer in kept)
        assert not [layer for layer in network.layers if layer.type == LayerType.ELEMENTWISE
                    and layer.op == ElementWiseOperation.SUM and layer.precision]


def test_a_timing_cache_tensorrt_refuses_is_replaced_by_an_empty_one(trt: types.ModuleType,
                                                                    exports: dict[int, Path], tmp_path: Path) -> None:
    (tmp_path / "timing-10.3.0-sm87.cache").write_bytes(b"made by another TensorRT")
    (tmp_path / "timing-8.6.2.3-sm72.cache").write_bytes(b"another GPU's, left alone")
    _build(trt, exports[17], tmp_path)
    assert trt.builds["encoder"][1].cache.data == b""
    assert "TensorRT refused the timing cache timing-10.3.0-sm87.cache; starting from an empty one" in \
        (tmp_path / "build.log").read_text()
    assert (tmp_path / "timing-10.3.0-sm87.cache").read_bytes() == CACHE
    assert (tmp_path / "timing-8.6.2.3-sm72.cache").read_bytes() == b"another GPU's, left alone"
    _build(trt, exports[17], tmp_path)
    assert trt.builds["encoder"][1].cache.data == CACHE  # reused next time


def test_a_failed_rebuild_leaves_no_sidecar_and_says_why(trt: types.ModuleType, exports: dict[int, Path],
                                                         tmp_path: Path) -> None:
    _build(trt, exports[17], tmp_path)
    trt.fail = {"decoder"}
    with pytest.raises(FPSegError, match=r"failed to build the decoder engine \(TensorRT: no implementation for a "
                                         r"layer of decoder\); see .*build\.log"):
        _build(trt, exports[17], tmp_path)
    assert not (tmp_path / "fpseg_engines.json").exists()
    with pytest.raises(ExportError, match=r"has no fpseg_engines\.json"):
        read_engine_sidecar(tmp_path, EngineTarget("10.3.0", "8.7", "Orin"))


def test_build_refuses_an_unsupported_op_before_building(trt: types.ModuleType, exports: dict[int, Path],
                                                         tmp_path: Path) -> None:
    export = tmp_path / "export"
    shutil.copytree(exports[17], export)
    sidecar = json.loads((export / "fpseg_onnx.json").read_text())
    sidecar["ops"]["encoder"].append("Col2Im")
    (export / "fpseg_onnx.json").write_text(json.dumps(sidecar))
    with pytest.raises(FPSegError, match=r"no importer for ops in .*\(encoder\.onnx: Col2Im\)"):
        _build(trt, export, tmp_path / "engines")
    assert not trt.builds and not (tmp_path / "engines").exists()


def _engine_folder(export: Path, folder: Path, **fields: Any) -> Path:
    """An engine folder (made-up engine bytes) beside a copy of `export`, its sidecar holding `fields`."""
    shutil.copytree(export, folder, dirs_exist_ok=True)
    for name in ENGINE_FILES.values():
        (folder / name).write_bytes(name.encode() * 10)
    engines = {"format": ENGINE_FORMAT, "tensorrt_version": "10.3.0", "compute_capability": "8.7",
               "device_name": "Orin", "precision": {"encoder": "fp16", "decoder": "fp32"}, "tf32": False,
               "profile": {"min": 1, "opt": 3, "max": 8}, "onnx": read_sidecar(export),
               "files": {role: file_entry(folder / name) for role, name in ENGINE_FILES.items()}, **fields}
    (folder / "fpseg_engines.json").write_text(json.dumps(engines))
    return folder


def test_engines_are_refused_under_another_tensorrt_or_gpu_architecture(exports: dict[int, Path],
                                                                         tmp_path: Path) -> None:
    folder = _engine_folder(exports[17], tmp_path)
    here = EngineTarget("10.3.0", "8.7", "Orin")
    assert read_engine_sidecar(folder, here)["profile"]["max"] == 8
    for other in (EngineTarget("10.4.0", "8.7", "Orin"), EngineTarget("10.3.0", "8.6", "NVIDIA A10")):
        with pytest.raises(ExportError) as caught:
            read_engine_sidecar(folder, other)
        assert str(caught.value).startswith(
            f"the engines in {folder} were built with TensorRT 10.3.0 for compute capability 8.7 (Orin), this is "
            f"TensorRT {other.tensorrt_version} on compute capability {other.compute_capability} "
            f"({other.device_name}); engines run only where they were built: build them here: `fpseg build-engine")
    same_architecture = EngineTarget("10.3.0", "8.7", "Jetson AGX Orin")
    manifest = read_engine_sidecar(folder, same_architecture)  # runs, with a warning at load
    assert other_device(manifest, here, folder) is None
    assert other_device(manifest, same_architecture, folder).startswith(
        f"the engines in {folder} were built on Orin, this GPU is Jetson AGX Orin (the same compute capability 8.7)")


@pytest.mark.parametrize(("fields", "problem"), [
    ({"precision": {"encoder": "int8", "decoder": "fp32"}}, "precision"),
    ({"tf32": "no"}, "tf32 'no' is not true or false"),
    ({"profile": {"min": 1, "opt": 9, "max": 8}}, "1 <= min <= opt <= max"),
    ({"compute_capability": 87}, "compute_capability is not a string"),
])
def test_a_malformed_engine_sidecar_is_refused(exports: dict[int, Path], tmp_path: Path, fields: dict,
                                              problem: str) -> None:
    folder = _engine_folder(exports[17], tmp_path, **fields)
    with pytest.raises(ExportError, match=rf"fpseg_engines\.json is malformed: .*{problem}"):
        read_engine_sidecar(folder, EngineTarget("10.3.0", "8.7", "Orin"))


def test_the_decoder_engines_profile_must_be_the_recorded_one(tmp_path: Path) -> None:
    manifest = {"profile": {"min": 1, "opt": 3, "max": 8}}
    check_engine_profile(Engine([1, 3, 8]), manifest, tmp_path)
    with pytest.raises(ExportError, match=r"class profile min/opt/max \[1, 8, 8\], fpseg_engines\.json records "
                                          r"\[1, 3, 8\]"):
        check_engine_profile(Engine([1, 8, 8]), manifest, tmp_path)


def test_zero_classes_decode_to_an_empty_map(exports: dict[int, Path], tmp_path: Path) -> None:
    backend = object.__new__(TensorRTBackend)  # only the bookkeeping: no engine runs for zero classes
    backend.engines, backend.folder = {"format": ENGINE_FORMAT, "onnx": read_sidecar(exports[17])}, tmp_path
    backend.device, backend.low_res_size = torch.device("cpu"), 32
    logits = backend.decode(torch.zeros(1, 256, 8, 8), torch.zeros(0, 4, 256))
    assert logits.shape == (1, 0, 32, 32)


@pytest.mark.parametrize(("installed", "reason"), [
    ("10.4.0", "were built with TensorRT 10.3.0 for compute capability 8.7 (Orin), this is TensorRT 10.4.0"),
    ("11.0.0", "TensorRT 11.0.0 is not supported yet"),
])
def test_auto_falls_back_to_onnxruntime_beside_engines_tensorrt_cannot_use(
        trt: types.ModuleType, exports: dict[int, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture, installed: str, reason: str) -> None:
    import fpseg_core.backends as backends

    monkeypatch.setattr(backends, "_onnxruntime_has_cuda", lambda: True)
    folder = _engine_folder(exports[17], tmp_path)
    gpu = torch.device("cuda")
    assert choose_backend("auto", gpu, folder)[0] == "tensorrt"
    trt.__version__ = installed
    with caplog.at_level(logging.INFO, logger="fpseg"):
        assert choose_backend("auto", gpu, folder) == ("onnxruntime", f"ONNX export in {folder}")
    (record,) = [r for r in caplog.records if "falling back to ONNX Runtime" in r.message]
    assert record.levelno == logging.INFO and reason in record.message
    for name in ("fpseg_onnx.json", "encoder.onnx", "decoder.onnx"):
        (folder / name).unlink()
    with pytest.raises(ExportError, match=rf"backend auto cannot use engine_dir .*its TensorRT engines cannot run "
                                          rf"here \(.*{re.escape(reason)}"):
        choose_backend("auto", gpu, folder)


def test_build_engine_cli_takes_the_fp16_scope_tf32_and_opt_classes(trt: types.ModuleType, exports: dict[int, Path],
                                                                    tmp_path: Path, capsys) -> None:
    from fpseg_core.cli.main import main as fpseg_main

    command = ["build-engine", "--onnx", str(exports[17]), "--out", str(tmp_path), "--max-classes", "6"]
    assert fpseg_main([*command, "--fp16", "encoder", "--opt-classes", "2"]) == 0
    assert capsys.readouterr().out.startswith(
        f"wrote {tmp_path}: TensorRT 10.3.0 engines for Orin (compute capability 8.7; encoder fp16, decoder fp32, "
        "TF32 off; classes 1..6, tuned for 2)")
    assert fpseg_main([*command, "--fp16", "--tf32", "--overwrite"]) == 0
    assert "encoder fp16, decoder fp16, TF32 on; classes 1..6, tuned for 3)" in capsys.readouterr().out
