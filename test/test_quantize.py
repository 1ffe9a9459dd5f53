"""`fpseg quantize` (issue 13): an int8 OpenVINO folder made with NNCF from a tiny export and a handful of
calibration images runs through FPSeg on backend openvino, records its precision and calibration, and is
refused by the other backends, by another model and where its files changed."""

from __future__ import annotations

import copy
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fpseg_core import FPSeg, PromptBank, build_fpseg, decoder_fingerprint, tiny_config
from fpseg_core.artifacts import SIDECAR, ExportError, read_sidecar
from fpseg_core.cli.main import main as fpseg_main
from fpseg_core.export.onnx_export import export_onnx
from fpseg_core.export.quantize import IR_FILES, calibration_fingerprint, quantize_export
from fpseg_core.modeling.fpseg import FPSegModel

CONFIG = tiny_config("mobilesam", n_classes=5, prompt_size=4, img_size=128)
IMAGE_SHAPE = (72, 120, 3)


@dataclass
class Quantized:
    model: FPSegModel
    export: Path  # the fp32 ONNX export
    images: list[Path]
    int8: Path  # encoder and decoder int8, written by the CLI
    fp32_decoder: Path  # encoder int8, decoder fp32 (the default)


def bank(model: FPSegModel) -> PromptBank:
    tokens = torch.randn(model.prompt_encoder.prompt_embeddings.shape, generator=torch.Generator().manual_seed(3))
    return PromptBank([f"class_{i}" for i in range(len(tokens))], tokens, "mobilesam",
                      decoder_fingerprint(model.state_dict()), source="test")


@pytest.fixture(scope="module")
def quantized(tmp_path_factory: pytest.TempPathFactory) -> Quantized:
    root = tmp_path_factory.mktemp("quantize")
    torch.manual_seed(0)
    model = build_fpseg(CONFIG).eval()
    export_onnx(model, CONFIG, root / "export")
    rng = np.random.default_rng(0)
    images = []
    for i in range(4):
        images.append(root / f"calibration_{i}.png")
        Image.fromarray(rng.integers(0, 256, IMAGE_SHAPE, dtype=np.uint8)).save(images[-1])
    code = fpseg_main(["quantize", "--onnx", str(root / "export"), "--calibration", *map(str, images),
                       "--out", str(root / "int8"), "--decoder", "int8", "--subset-size", "3"])
    assert code == 0
    quantize_export(root / "export", images[:2], root / "fp32_decoder")
    return Quantized(model, root / "export", images, root / "int8", root / "fp32_decoder")


def test_manifest_records_precision_and_calibration(quantized: Quantized) -> None:
    manifest = read_sidecar(quantized.int8)
    source = read_sidecar(quantized.export)
    assert manifest["precision"] == {"encoder": "int8", "decoder": "int8"}
    assert manifest["calibration"]["images"] == 4 and manifest["calibration"]["subset_size"] == 3
    assert manifest["calibration"]["sha256"] == calibration_fingerprint(reversed(quantized.images))
    assert manifest["source_files"] == source["files"]
    assert {entry["name"] for entry in manifest["files"].values()} == {n for pair in IR_FILES.values() for n in pair}
    assert all(manifest[key] == source[key] for key in ("encoder_fingerprint", "decoder_fingerprint", "prompt_size"))
    assert read_sidecar(quantized.fp32_decoder)["precision"] == {"encoder": "int8", "decoder": "fp32"}


@pytest.mark.parametrize("folder", ["int8", "fp32_decoder"])
def test_quantized_folder_runs_on_openvino(quantized: Quantized, folder: str) -> None:
    image = np.random.default_rng(1).integers(0, 256, (90, 150, 3), dtype=np.uint8)
    pipeline = FPSeg(copy.deepcopy(quantized.model), bank(quantized.model), backend="openvino",
                     engine_dir=getattr(quantized, folder), dtype="int8")
    assert pipeline.backend_name == "openvino"
    labels = pipeline.segment(image, pipeline.classes[:3]).labels
    assert labels.shape == (90, 150) and labels.dtype == np.uint8 and labels.max() <= 3


def test_auto_picks_openvino_for_a_quantized_folder(quantized: Quantized) -> None:
    pipeline = FPSeg(copy.deepcopy(quantized.model), bank(quantized.model), engine_dir=quantized.int8)
    assert pipeline.backend_name == "openvino" and pipeline.backend.dtype == "int8"


def test_other_backends_and_dtypes_are_refused(quantized: Quantized) -> None:
    model, tokens = copy.deepcopy(quantized.model), bank(quantized.model)
    with pytest.raises(ExportError, match="backend onnxruntime cannot use"):
        FPSeg(model, tokens, backend="onnxruntime", engine_dir=quantized.int8)
    with pytest.raises(ExportError, match="run it with dtype int8"):
        FPSeg(model, tokens, backend="openvino", engine_dir=quantized.int8, dtype="fp32")


def test_engine_builds_and_export_checks_refuse_a_quantized_folder(quantized: Quantized, tmp_path: Path) -> None:
    """Both read ONNX graphs; a quantized folder holds OpenVINO IR: refused, naming the fp32 export to pass."""
    from fpseg_core.backends.onnxruntime_backend import verify_export
    from fpseg_core.backends.tensorrt_backend import build_engines

    with pytest.raises(ExportError, match=r"fpseg build-engine.*cannot use.*fp32 `fpseg export-onnx` folder"):
        build_engines(quantized.int8, tmp_path / "engines")
    with pytest.raises(ExportError, match=r"--verify.*cannot use"):
        verify_export(quantized.int8, quantized.model)
    assert not (tmp_path / "engines").exists()


def test_another_model_is_refused(quantized: Quantized) -> None:
    other = copy.deepcopy(quantized.model)
    with torch.no_grad():
        next(other.image_encoder.parameters()).add_(0.1)
    with pytest.raises(ExportError, match="encoder fingerprint"):
        FPSeg(other, bank(other), backend="openvino", engine_dir=quantized.int8, dtype="int8")


def test_changed_weights_file_is_refused(quantized: Quantized, tmp_path: Path) -> None:
    copied = shutil.copytree(quantized.int8, tmp_path / "int8")
    with open(copied / "encoder.bin", "r+b") as weights:
        weights.write(b"\0\0\0\0")
    with pytest.raises(ExportError, match=r"encoder\.bin is not the encoder weights fpseg_onnx\.json describes"):
        read_sidecar(copied)


def test_cli_refuses_outputs_and_inputs(quantized: Quantized, capsys: pytest.CaptureFixture[str]) -> None:
    before = (quantized.int8 / SIDECAR).read_text()
    base = ["quantize", "--calibration", str(quantized.images[0])]
    assert fpseg_main([*base, "--onnx", str(quantized.export), "--out", str(quantized.int8)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert fpseg_main([*base, "--onnx", str(quantized.int8), "--out", str(quantized.int8 / "again")]) == 2
    assert "already a quantized folder" in capsys.readouterr().err
    assert (quantized.int8 / SIDECAR).read_text() == before
    assert json.loads(before)["precision"]["encoder"] == "int8"
