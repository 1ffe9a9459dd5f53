"""ONNX export, the ONNX Runtime / TensorRT backends, and how `auto` chooses (real onnx + onnxruntime)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from label_checks import assert_same_decisions

from fpseg_core import FPSeg, FPSegError, __version__, decoder_fingerprint, tiny_config
from fpseg_core.artifacts import ExportError, read_sidecar
from fpseg_core.backends import choose_backend
from fpseg_core.backends.onnxruntime_backend import verify_export
from fpseg_core.backends.tensorrt_backend import require_tensorrt
from fpseg_core.cli.main import main as fpseg_main
from fpseg_core.export.onnx_export import export_onnx
from fpseg_core.prompt_bank import weights_fingerprint

CONFIG = tiny_config("mobilesam", n_classes=6, prompt_size=4, img_size=128)
INPUT_MODE = "letterbox"  # the export's, and so every pipeline's here (graphs run only in the mode they were made for)
HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None


def random_fpseg(seed: int = 0, **options) -> FPSeg:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return FPSeg.random(CONFIG, seed=seed, **{"input_mode": INPUT_MODE, **options})


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("onnx")
    export_onnx(random_fpseg(backend="torch").model, CONFIG, out, input_mode=INPUT_MODE)
    return out


def test_export_writes_two_graphs_and_a_sidecar(export_dir: Path) -> None:
    sidecar = json.loads((export_dir / "fpseg_onnx.json").read_text())
    model = random_fpseg(backend="torch")
    assert sidecar["encoder"] == "mobilesam" and sidecar["img_size"] == 128
    assert sidecar["prompt_size"] == 4 and sidecar["opset"] == 17
    assert sidecar["decoder_fingerprint"] == decoder_fingerprint(model.model.state_dict())
    assert sidecar["encoder_fingerprint"] == weights_fingerprint(model.model.state_dict(), ("image_encoder.",))
    assert sidecar["input_mode"] == INPUT_MODE and sidecar["fpseg_core_version"] == __version__
    for role in ("encoder", "decoder"):
        path = export_dir / f"{role}.onnx"
        assert sidecar["files"][role] == {"name": path.name, "bytes": path.stat().st_size,
                                          "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
        onnx.checker.check_model(str(path), full_check=True)
    decoder = onnx.load(str(export_dir / "decoder.onnx"))
    inputs = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in decoder.graph.input}
    assert inputs == {"image_embeddings": [1, 256, 8, 8], "prompt_tokens": ["classes", 4, 256]}
    # the prompts are an input, not baked-in constants: no initializer has the bank's shape
    assert all(list(t.dims) != [6, 4, 256] for t in decoder.graph.initializer)


def test_onnxruntime_matches_torch_for_one_and_many_classes(export_dir: Path) -> None:
    errors = verify_export(export_dir, random_fpseg(backend="torch").model, class_counts=(1, 5))
    assert set(errors) == {"encoder", "decoder_n1", "decoder_n5"}
    assert max(errors.values()) < 1e-3


def test_onnxruntime_backend_labels_equal_torch_backend(export_dir: Path) -> None:
    torch_model = random_fpseg(backend="torch")
    ort_model = random_fpseg(backend="onnxruntime", engine_dir=export_dir)
    assert (torch_model.backend_name, ort_model.backend_name) == ("torch", "onnxruntime")
    image = np.random.default_rng(3).integers(0, 256, (90, 150, 3), dtype=np.uint8)
    for classes in (["class_2"], ["class_5", "class_0", "class_3"], None):
        expected = torch_model.segment(image, classes)
        actual = ort_model.segment(image, classes)
        ids = torch_model.resolve_classes(classes)
        logits_torch = torch_model.class_logits(image, ids)
        logits_ort = ort_model.class_logits(image, ids)
        assert (logits_ort - logits_torch).abs().max() < 1e-3 * logits_torch.abs().max()
        assert_same_decisions(actual.labels, expected.labels, logits_torch, "argmax")


def test_onnxruntime_refuses_graphs_of_another_decoder(export_dir: Path) -> None:
    with pytest.raises(ExportError, match=r"does not fit the loaded pipeline: .*decoder fingerprint .* export this "
                                          "model again"):
        random_fpseg(seed=1, backend="onnxruntime", engine_dir=export_dir)


def test_missing_or_broken_export_is_explained(tmp_path: Path, export_dir: Path) -> None:
    with pytest.raises(ExportError, match="not an `fpseg export-onnx` folder"):
        read_sidecar(tmp_path)
    (tmp_path / "fpseg_onnx.json").write_text(json.dumps(read_sidecar(export_dir)))
    with pytest.raises(ExportError, match=r"lacks the encoder graph encoder\.onnx"):
        read_sidecar(tmp_path)


def test_auto_picks_onnxruntime_on_cpu_with_an_export_and_says_so(export_dir: Path, caplog) -> None:
    with caplog.at_level(logging.INFO, logger="fpseg"):
        model = random_fpseg(backend="auto", engine_dir=export_dir)
    assert model.backend_name == "onnxruntime"
    assert f"backend auto -> onnxruntime (ONNX export in {export_dir})" in caplog.text


def test_auto_runs_torch_only_without_engine_dir_and_says_why(tmp_path: Path, caplog) -> None:
    with caplog.at_level(logging.INFO, logger="fpseg"):
        assert random_fpseg(backend="auto").backend_name == "torch"
    assert "backend auto -> torch (no engine_dir given" in caplog.text
    with pytest.raises(ExportError, match=r"backend auto cannot use engine_dir .*: it holds neither fpseg_onnx\.json"):
        random_fpseg(backend="auto", engine_dir=tmp_path)


def test_choose_backend_rules(export_dir: Path, tmp_path: Path) -> None:
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert choose_backend("auto", cpu, export_dir)[0] == "onnxruntime"
    assert choose_backend("torch", cpu, export_dir) == ("torch", "requested")
    assert choose_backend("auto", cpu, None)[0] == "torch"
    with pytest.raises(ExportError, match=f"engine_dir {tmp_path / 'missing'} does not exist"):
        choose_backend("auto", cpu, tmp_path / "missing")
    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        with pytest.raises(ExportError, match="this onnxruntime has no CUDA provider"):
            choose_backend("auto", gpu, export_dir)  # never a quiet fallback to torch
    with pytest.raises(ValueError, match="backend must be one of auto, torch, onnxruntime, tensorrt, openvino"):
        choose_backend("onnx", cpu, None)


def test_backends_other_than_torch_need_an_engine_dir() -> None:
    with pytest.raises(ValueError, match="backend 'onnxruntime' needs engine_dir"):
        random_fpseg(backend="onnxruntime")


@pytest.mark.skipif(HAS_TENSORRT and torch.cuda.is_available(), reason="TensorRT and a GPU are available here")
def test_tensorrt_refuses_clearly_where_it_cannot_run(export_dir: Path, tmp_path: Path, capsys) -> None:
    with pytest.raises(FPSegError, match="TensorRT cannot run here") as caught:
        require_tensorrt()
    if not HAS_TENSORRT:
        assert "the `tensorrt` Python package is not installed" in str(caught.value)
    if not torch.cuda.is_available():
        assert "no CUDA GPU" in str(caught.value)
    with pytest.raises(FPSegError, match="TensorRT cannot run here"):
        random_fpseg(backend="tensorrt", engine_dir=export_dir)
    assert fpseg_main(["build-engine", "--onnx", str(export_dir), "--out", str(tmp_path)]) == 2
    assert "fpseg build-engine: error: TensorRT cannot run here" in capsys.readouterr().err
    assert not (tmp_path / "fpseg_engines.json").exists()


@pytest.mark.skipif(not (HAS_TENSORRT and torch.cuda.is_available()), reason="needs tensorrt and a CUDA GPU")
def test_tensorrt_engines_match_torch_and_take_any_class_count(export_dir: Path, tmp_path: Path) -> None:
    from fpseg_core.backends.tensorrt_backend import build_engines

    engines = build_engines(export_dir, tmp_path, max_classes=4)
    cache = f"timing-{engines['tensorrt_version']}-sm{engines['compute_capability'].replace('.', '')}.cache"
    assert engines["profile"]["max"] == 4 and (tmp_path / "build.log").is_file() and (tmp_path / cache).is_file()
    for name in ("fpseg_onnx.json", "encoder.onnx", "decoder.onnx"):
        (tmp_path / name).write_bytes((export_dir / name).read_bytes())
    reference = random_fpseg(backend="torch", device="cuda")
    trt_model = random_fpseg(backend="auto", device="cuda", engine_dir=tmp_path)
    assert trt_model.backend_name == "tensorrt"
    image = np.random.default_rng(0).integers(0, 256, (90, 150, 3), dtype=np.uint8)
    for classes in (["class_1"], None):  # None: 6 classes, more than the profile's 4 (two passes)
        logits_trt = trt_model.class_logits(image, trt_model.resolve_classes(classes))
        logits_torch = reference.class_logits(image, reference.resolve_classes(classes))
        assert (logits_trt - logits_torch).abs().max() < 1e-3 * logits_torch.abs().max()
    stale = json.loads((tmp_path / "fpseg_engines.json").read_text())
    stale["tensorrt_version"] = "9.0.0"
    (tmp_path / "fpseg_engines.json").write_text(json.dumps(stale))
    with pytest.raises(ExportError, match=r"built with TensorRT 9\.0\.0 for compute capability"):
        random_fpseg(backend="tensorrt", device="cuda", engine_dir=tmp_path)


def test_export_onnx_cli_exports_and_verifies(tiny_checkpoint: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "export"
    assert fpseg_main(["export-onnx", "--checkpoint", str(tiny_checkpoint), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "verified (onnx.checker; ONNX Runtime vs torch" in printed
    assert read_sidecar(out)["prompt_size"] == 4
    model = FPSeg.from_checkpoint(tiny_checkpoint, backend="auto", engine_dir=out)
    assert model.backend_name == "onnxruntime"
    assert model.predict(np.zeros((40, 60, 3), dtype=np.uint8), ["car", "sky"]).shape == (40, 60)
