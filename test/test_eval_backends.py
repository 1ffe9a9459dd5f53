"""`fpseg eval --backend/--engine-dir/--dtype` (issue 13): on the synthetic Cityscapes set and a tiny checkpoint,
ONNX Runtime and OpenVINO at fp32 on an export of the same checkpoint score what torch fp32 (the reference)
scores, the report names the network that ran, an int8 folder reports its manifest's precision, and options
that cannot run are refused with one line naming the fix, before any report is written."""

from __future__ import annotations

import builtins
import importlib.util
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from training_workspace import Workspace, fpseg, make_workspace, tiny_checkpoint

from fpseg_core import load_checkpoint
from fpseg_core.backends.openvino_backend import INSTALL_HINT
from fpseg_core.data.embeddings import EmbeddingStore
from fpseg_core.export.onnx_export import export_onnx
from fpseg_core.export.quantize import quantize_export

# Both sides run fp32; ONNX Runtime / OpenVINO differ from torch by float rounding only (relative error
# ~1e-6 on the logits), which can flip a pixel whose logit is ~0. One flipped pixel moves a class's IoU on
# these 64 x 32 images by ~1e-3.
IOU_TOLERANCE = 5e-3
EMBEDDING_TOLERANCE = 1e-4
QUICK_EVAL = ["--samples-per-class", "4", "--num-workers", "0", "--no-progress"]
NEEDS_OPENVINO = pytest.mark.skipif(importlib.util.find_spec("openvino") is None,
                                    reason="openvino is not importable (pip install 'fpseg_ros[openvino]')")


@dataclass
class Setup:
    ws: Workspace
    export: Path  # `fpseg export-onnx` of ws.checkpoint
    reference: dict[str, Any]  # results.json of the torch fp32 eval


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Setup:
    ws = make_workspace(tmp_path_factory.mktemp("eval_backends"))
    loaded = load_checkpoint(ws.checkpoint)
    export_onnx(loaded.model, loaded.config, ws.root / "export")
    out = ws.root / "reference"
    assert fpseg("eval", "--data", ws.data, "--checkpoint", ws.checkpoint, "--embeddings", ws.embeddings,
                 "--out", out, *QUICK_EVAL) == 0
    return Setup(ws, ws.root / "export", json.loads((out / "results.json").read_text()))


def run_eval(setup: Setup, out: Path, *options: object) -> dict[str, Any]:
    """`fpseg eval` of the workspace's checkpoint with `options`, encoding the split itself; results.json."""
    ws = setup.ws
    assert fpseg("eval", "--data", ws.data, "--checkpoint", ws.checkpoint, "--out", out, *QUICK_EVAL, *options) == 0
    return json.loads((out / "results.json").read_text())


def assert_same_scores(result: dict[str, Any], reference: dict[str, Any]) -> None:
    assert result["n_images"] == reference["n_images"] == 6
    assert result["miou"] == pytest.approx(reference["miou"], abs=IOU_TOLERANCE)
    assert result["class_iou"] == pytest.approx(reference["class_iou"], abs=IOU_TOLERANCE)
    binary, expected = result["binary_iou"], reference["binary_iou"]
    assert binary["samples_per_class"] == expected["samples_per_class"]  # the same sampled examples
    assert binary["mean"] == pytest.approx(expected["mean"], abs=IOU_TOLERANCE)
    assert binary["per_class"] == pytest.approx(expected["per_class"], abs=IOU_TOLERANCE)


def assert_encoded_like_torch(setup: Setup, folder: Path, tolerance: float = EMBEDDING_TOLERANCE) -> None:
    """The backend's own embeddings of the split are the torch fp32 ones within `tolerance` (relative)."""
    mine, torch_store = EmbeddingStore.open(folder), EmbeddingStore.open(setup.ws.embeddings)
    assert mine.files["val"] == torch_store.files["val"]
    for key in mine.files["val"]:
        expected = torch_store.read("val", key)
        assert float((mine.read("val", key) - expected).abs().max()) <= tolerance * float(expected.abs().max())


def keyed_folder(out: Path, backend: str, dtype: str) -> Path:
    (folder,) = out.glob(f"embeddings-{backend}-{dtype}-*")
    assert re.fullmatch(rf"embeddings-{backend}-{dtype}-[0-9a-f]{{8}}", folder.name)
    assert not (out / "embeddings").exists()  # never the reference's folder
    return folder


def test_the_reference_report_records_torch_fp32(setup: Setup) -> None:
    reference = setup.reference
    assert (reference["backend"], reference["dtype"], reference["engine_dir"]) == ("torch", "fp32", None)
    assert reference["precision"] == {"encoder": "fp32", "decoder": "fp32"}
    text = (setup.ws.root / "reference" / "results.md").read_text()
    assert "Network: backend torch, dtype fp32 (encoder fp32, decoder fp32)." in text


def test_onnxruntime_at_fp32_scores_what_torch_scores(setup: Setup, capsys: pytest.CaptureFixture) -> None:
    out = setup.ws.root / "onnxruntime"
    result = run_eval(setup, out, "--backend", "onnxruntime", "--engine-dir", setup.export)
    assert_same_scores(result, setup.reference)
    assert (result["backend"], result["dtype"], result["engine_dir"]) == ("onnxruntime", "fp32", str(setup.export))
    assert result["title"].endswith("(onnxruntime fp32)")
    assert f"Network: backend onnxruntime, dtype fp32, engine_dir `{setup.export}`" in (out / "results.md").read_text()
    assert "network: backend onnxruntime, dtype fp32" in capsys.readouterr().out
    assert_encoded_like_torch(setup, keyed_folder(out, "onnxruntime", "fp32"))


@NEEDS_OPENVINO
def test_openvino_at_fp32_scores_what_torch_scores(setup: Setup) -> None:
    out = setup.ws.root / "openvino"
    result = run_eval(setup, out, "--backend", "openvino", "--dtype", "fp32", "--engine-dir", setup.export)
    assert_same_scores(result, setup.reference)
    assert (result["backend"], result["dtype"]) == ("openvino", "fp32")
    assert result["precision"] == {"encoder": "fp32", "decoder": "fp32"}
    assert_encoded_like_torch(setup, keyed_folder(out, "openvino", "fp32"))


def test_torch_bf16_encodes_into_its_own_folder_and_says_so(setup: Setup) -> None:
    out = setup.ws.root / "bf16"
    result = run_eval(setup, out, "--dtype", "bf16")
    assert (result["backend"], result["dtype"], result["engine_dir"]) == ("torch", "bf16", None)
    assert result["precision"] == {"encoder": "bf16", "decoder": "bf16"}
    assert result["miou"] is not None and result["binary_iou"]["mean"] is not None
    assert (out / "embeddings-torch-bf16" / "manifest.json").is_file() and not (out / "embeddings").exists()


@NEEDS_OPENVINO
@pytest.mark.skipif(importlib.util.find_spec("nncf") is None, reason="nncf is not importable (int8 quantization)")
def test_int8_runs_a_quantized_folder_and_reports_its_precision(setup: Setup, capsys: pytest.CaptureFixture) -> None:
    images = sorted((setup.ws.data / "leftImg8bit" / "train").rglob("*.png"))
    quantized = setup.ws.root / "int8"
    manifest = quantize_export(setup.export, images, quantized, subset_size=len(images))
    out = setup.ws.root / "eval_int8"
    result = run_eval(setup, out, "--backend", "openvino", "--dtype", "int8", "--engine-dir", quantized)
    assert (result["backend"], result["dtype"]) == ("openvino", "int8")
    assert result["precision"] == manifest["precision"] == {"encoder": "int8", "decoder": "fp32"}
    assert "(encoder int8, decoder fp32)" in (out / "results.md").read_text()
    assert result["miou"] is not None and keyed_folder(out, "openvino", "int8").is_dir()
    # backend auto runs such a folder on OpenVINO at int8, and the report says int8, not the default fp32
    auto = run_eval(setup, setup.ws.root / "eval_auto", "--backend", "auto", "--engine-dir", quantized)
    assert (auto["backend"], auto["dtype"], auto["miou"]) == ("openvino", "int8", result["miou"])
    # ONNX Runtime refuses it, with the backends' own message
    ws = setup.ws
    assert fpseg("eval", "--data", ws.data, "--checkpoint", ws.checkpoint, "--out", ws.root / "refused",
                 "--backend", "onnxruntime", "--engine-dir", quantized, *QUICK_EVAL) == 2
    assert "which backend onnxruntime cannot use" in capsys.readouterr().err
    assert not (ws.root / "refused" / "results.json").exists()


def _other_export(setup: Setup) -> Path:
    folder = setup.ws.root / "other_export"
    if not folder.is_dir():
        loaded = load_checkpoint(tiny_checkpoint(setup.ws.root / "other.pth", seed=1))
        export_onnx(loaded.model, loaded.config, folder)
    return folder


REFUSALS = [
    ("precomputed embeddings with another backend",
     lambda s: ["--backend", "onnxruntime", "--engine-dir", s.export, "--embeddings", s.ws.embeddings],
     r"--embeddings .* were computed by torch, but backend onnxruntime dtype fp32 must encode the split itself.*"
     r"drop --embeddings"),
    ("precomputed embeddings with torch bf16", lambda s: ["--dtype", "bf16", "--embeddings", s.ws.embeddings],
     r"backend torch dtype bf16 must encode the split itself"),
    ("a missing engine_dir", lambda s: ["--backend", "onnxruntime", "--engine-dir", s.ws.root / "nowhere"],
     r"nowhere does not exist; export one: `fpseg export-onnx"),
    ("a missing engine_dir for auto", lambda s: ["--backend", "auto", "--engine-dir", s.ws.root / "nowhere"],
     r"engine_dir .*nowhere does not exist; pass the folder written by `fpseg export-onnx`"),
    ("an export of another model", lambda s: ["--backend", "onnxruntime", "--engine-dir", _other_export(s)],
     r"does not fit the loaded pipeline: .*export this model again"),
    ("int8 on a plain export", lambda s: ["--backend", "openvino", "--dtype", "int8", "--engine-dir", s.export],
     r"dtype int8 needs a quantized folder: `fpseg quantize --onnx"),
    ("int8 without a folder", lambda s: ["--backend", "openvino", "--dtype", "int8"],
     r"dtype int8 runs a folder written by `fpseg quantize` on OpenVINO: pass --backend openvino --engine-dir"),
    ("int8 on torch", lambda s: ["--dtype", "int8"], r"dtype int8 runs a folder written by `fpseg quantize`"),
    ("an engine_dir for torch", lambda s: ["--engine-dir", s.export],
     r"is run by the other backends, not by backend torch.*pass --backend onnxruntime"),
    ("a dtype the backend does not take", lambda s: ["--backend", "onnxruntime", "--engine-dir", s.export,
                                                     "--dtype", "bf16"],
     r"dtype 'bf16' applies to the torch and openvino backends"),
    ("an unknown backend", lambda s: ["--backend", "cuda"], r"backend must be one of auto, torch, onnxruntime"),
    ("an unknown dtype", lambda s: ["--dtype", "int4"], r"dtype must be one of fp32, bf16, fp16, int8, got 'int4'"),
]


@pytest.mark.parametrize(("options", "message"), [r[1:] for r in REFUSALS], ids=[r[0] for r in REFUSALS])
def test_options_that_cannot_run_are_refused_in_one_line(setup: Setup, options, message: str,
                                                         capsys: pytest.CaptureFixture) -> None:
    ws, out = setup.ws, setup.ws.root / "refused"
    code = fpseg("eval", "--data", ws.data, "--checkpoint", ws.checkpoint, "--out", out, *QUICK_EVAL,
                 *options(setup))
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert re.search(message, err), err
    assert len(err.splitlines()) == 1 and err.startswith("fpseg eval: error:"), err
    assert not (out / "results.json").exists()


def test_missing_openvino_names_the_extra(setup: Setup, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture) -> None:
    real_import = builtins.__import__

    def no_openvino(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "openvino" or name.startswith("openvino."):
            raise ImportError("No module named 'openvino'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_openvino)
    ws = setup.ws
    assert fpseg("eval", "--data", ws.data, "--checkpoint", ws.checkpoint, "--out", ws.root / "no_openvino",
                 "--backend", "openvino", "--engine-dir", setup.export, *QUICK_EVAL) == 2
    err = capsys.readouterr().err
    assert INSTALL_HINT in err and "backend openvino needs the openvino package" in err
    assert len(err.strip().splitlines()) == 1

