"""Exports and engines are bound to the model they came from (issue 9): every bad folder is refused when the
backend is built or a bank is swapped in, with the field, both values and the command that fixes it, and is
left as it was. Also: how the backend and the device are chosen, and what `export-onnx` / `build-engine`
refuse to overwrite. Real onnx + onnxruntime on tiny models; no GPU needed."""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch

import fpseg_core.export.onnx_export as onnx_export
from fpseg_core import FPSeg, PromptBank, build_fpseg, decoder_fingerprint, tiny_config
from fpseg_core.artifacts import (
    ENGINE_FILES,
    ENGINE_FORMAT,
    EngineTarget,
    ExportError,
    ModelIdentity,
    check_model,
    check_prompt_size,
    encoder_fingerprint,
    file_entry,
    read_engine_sidecar,
)
from fpseg_core.backends import DeviceError
from fpseg_core.cli.main import main as fpseg_main
from fpseg_core.export.onnx_export import export_onnx
from fpseg_core.modeling.fpseg import FPSegModel
from fpseg_core.runtime.controller import load_pipeline

CONFIG = tiny_config("mobilesam", n_classes=3, prompt_size=4, img_size=128)
NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without a usable GPU")


def model_like(config, donor: FPSegModel, keep: Callable[[str], bool], seed: int = 7) -> FPSegModel:
    """A model of `config` holding `donor`'s weights where `keep(key)`, its own random ones elsewhere."""
    torch.manual_seed(seed)
    model = build_fpseg(config)
    model.load_state_dict({k: v for k, v in donor.state_dict().items() if keep(k)}, strict=False)
    return model.eval()


def own_bank(model: FPSegModel) -> PromptBank:
    """The bank a checkpoint of `model` would carry: its own prompt tokens, tuned for its own decoder."""
    tokens = model.prompt_encoder.prompt_embeddings.detach().clone()
    return PromptBank([f"class_{i}" for i in range(len(tokens))], tokens, "mobilesam",
                      decoder_fingerprint(model.state_dict()), source="test")


@dataclass
class Models:
    reference: FPSegModel  # the model the export is made from
    other_encoder: FPSegModel  # same decoder, other encoder weights (what `fpseg distill` produces)
    other_image_size: FPSegModel  # same decoder, 64 x 64 input
    other_prompt_size: FPSegModel  # same encoder and decoder, 6 prompt tokens per class
    export: Path  # the reference model's export (never changed; cases work on copies)
    other_export: Path  # the other encoder's export


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Models:
    torch.manual_seed(0)
    reference = build_fpseg(CONFIG).eval()
    other_encoder = copy.deepcopy(reference)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in other_encoder.image_encoder.parameters():
            param.add_(0.05 * torch.randn(param.shape, generator=generator))
    other_image_size = model_like(tiny_config("mobilesam", 3, 4, img_size=64), reference,
                                  lambda k: not k.startswith("image_encoder."))
    other_prompt_size = model_like(tiny_config("mobilesam", 3, 6, img_size=128), reference,
                                   lambda k: k != "prompt_encoder.prompt_embeddings")
    fingerprint = decoder_fingerprint(reference.state_dict())
    for model in (other_encoder, other_image_size, other_prompt_size):  # the cases differ only where they say
        assert decoder_fingerprint(model.state_dict()) == fingerprint
    assert encoder_fingerprint(other_prompt_size.state_dict()) == encoder_fingerprint(reference.state_dict())
    assert encoder_fingerprint(other_encoder.state_dict()) != encoder_fingerprint(reference.state_dict())
    export, other_export = tmp_path_factory.mktemp("export"), tmp_path_factory.mktemp("other_export")
    export_onnx(reference, CONFIG, export)
    export_onnx(other_encoder, CONFIG, other_export)
    return Models(reference, other_encoder, other_image_size, other_prompt_size, export, other_export)


def pipeline(model: FPSegModel, folder: Path | None, bank: PromptBank | None = None, **options) -> FPSeg:
    return FPSeg(copy.deepcopy(model), bank or own_bank(model), engine_dir=folder, **options)


def hashes(folder: Path) -> dict[str, str]:
    return {p.name: _sha256(p) for p in sorted(folder.iterdir())}


def fix_command(folder: Path, options: str = "") -> str:
    return f"`fpseg export-onnx --checkpoint CKPT --out {folder}{options} --overwrite`"


def _replace_encoder_graph(folder: Path, m: Models) -> None:
    """What an export interrupted between graph and sidecar left behind: a new encoder.onnx, the old sidecar."""
    shutil.copyfile(m.other_export / "encoder.onnx", folder / "encoder.onnx")


def _changed(path: Path) -> bytes:
    """The file's bytes with its middle byte changed: the same size, other content."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    return bytes(data)


def _change_encoder_bytes(folder: Path, m: Models) -> None:
    (folder / "encoder.onnx").write_bytes(_changed(folder / "encoder.onnx"))


def _truncate_decoder_graph(folder: Path, m: Models) -> None:
    data = (folder / "decoder.onnx").read_bytes()
    (folder / "decoder.onnx").write_bytes(data[: len(data) // 2])


def _old_format(folder: Path, m: Models) -> None:
    sidecar = json.loads((folder / "fpseg_onnx.json").read_text())
    (folder / "fpseg_onnx.json").write_text(json.dumps({**sidecar, "format": "fpseg-onnx-export/1"}))


def _list_no_files(folder: Path, m: Models) -> None:
    sidecar = json.loads((folder / "fpseg_onnx.json").read_text())
    (folder / "fpseg_onnx.json").write_text(json.dumps({**sidecar, "files": {}}))


def _list_a_file_outside(folder: Path, m: Models) -> None:
    sidecar = json.loads((folder / "fpseg_onnx.json").read_text())
    sidecar["files"]["encoder"]["name"] = "../encoder.onnx"
    (folder / "fpseg_onnx.json").write_text(json.dumps(sidecar))


def _remove_sidecar(folder: Path, m: Models) -> None:
    (folder / "fpseg_onnx.json").unlink()


def _unchanged(folder: Path, m: Models) -> None:
    pass


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass(frozen=True)
class BadExport:
    """A copy of the reference export spoilt by `spoil`, loaded for `model` with `options`: the message must
    hold `expected(models)` and the export command (with `--input-mode`, where the model does not fit)."""

    model: str
    spoil: Callable[[Path, Models], None]
    expected: Callable[[Models], str]
    options: dict = field(default_factory=dict)
    command_options: str = ""


NOT_FITTING = " --input-mode squash"
BAD_EXPORTS = {
    "other encoder": BadExport(
        "other_encoder", _unchanged,
        lambda m: f"encoder fingerprint '{encoder_fingerprint(m.reference.state_dict())}' in fpseg_onnx.json, "
                  f"'{encoder_fingerprint(m.other_encoder.state_dict())}' in the loaded pipeline",
        command_options=NOT_FITTING),
    "other image size": BadExport(
        "other_image_size", _unchanged, lambda m: "image size 128 in fpseg_onnx.json, 64 in the loaded pipeline",
        command_options=NOT_FITTING),
    "other input mode": BadExport(
        "reference", _unchanged,
        lambda m: "input mode 'squash' in fpseg_onnx.json, 'letterbox' in the loaded pipeline",
        {"input_mode": "letterbox"}, " --input-mode letterbox"),
    "other prompt size": BadExport(
        "other_prompt_size", _unchanged, lambda m: "takes prompt size 4, the prompt bank has prompt size 6"),
    "sidecar missing": BadExport(
        "reference", _remove_sidecar, lambda m: "has no fpseg_onnx.json: it is not an `fpseg export-onnx` folder"),
    "graph replaced after the sidecar": BadExport(
        "reference", _replace_encoder_graph,
        lambda m: f"encoder.onnx is not the encoder graph fpseg_onnx.json describes: it has "
                  f"{(m.other_export / 'encoder.onnx').stat().st_size} bytes, fpseg_onnx.json records "
                  f"{(m.export / 'encoder.onnx').stat().st_size} bytes"),
    "graph changed, same size": BadExport(
        "reference", _change_encoder_bytes,
        lambda m: f"encoder.onnx is not the encoder graph fpseg_onnx.json describes: it has sha256 "
                  f"{hashlib.sha256(_changed(m.export / 'encoder.onnx')).hexdigest()}, fpseg_onnx.json "
                  f"records sha256 {_sha256(m.export / 'encoder.onnx')}"),
    "graph truncated": BadExport(
        "reference", _truncate_decoder_graph,
        lambda m: f"it has {(m.export / 'decoder.onnx').stat().st_size // 2} bytes, fpseg_onnx.json records "
                  f"{(m.export / 'decoder.onnx').stat().st_size} bytes"),
    "sidecar listing no files": BadExport(
        "reference", _list_no_files, lambda m: "fpseg_onnx.json is malformed: 'files' must list the encoder and "
                                               "the decoder"),
    "sidecar naming a file outside the folder": BadExport(
        "reference", _list_a_file_outside, lambda m: "fpseg_onnx.json is malformed"),
    "sidecar of an older format": BadExport(
        "reference", _old_format,
        lambda m: "has format 'fpseg-onnx-export/1', this fpseg reads 'fpseg-onnx-export/3'"),
}


@pytest.mark.parametrize("backend", ["onnxruntime", "auto"])
@pytest.mark.parametrize("case", list(BAD_EXPORTS))
def test_a_bad_export_is_refused_at_load_and_left_alone(case: str, backend: str, models: Models,
                                                       tmp_path: Path) -> None:
    bad = BAD_EXPORTS[case]
    folder = tmp_path / "export"
    shutil.copytree(models.export, folder)
    bad.spoil(folder, models)
    before = hashes(folder)
    with pytest.raises(ExportError) as caught:
        pipeline(getattr(models, bad.model), folder, backend=backend, **bad.options)
    message = str(caught.value)
    assert "\n" not in message
    assert bad.expected(models) in message
    assert fix_command(folder, bad.command_options) in message
    assert hashes(folder) == before


def test_the_model_an_export_came_from_runs_on_it(models: Models) -> None:
    """The control for the table: the checks refuse only what is wrong, and the export is that model."""
    image = np.random.default_rng(0).integers(0, 256, (70, 90, 3), dtype=np.uint8)
    ort = pipeline(models.reference, models.export, backend="auto")
    reference = pipeline(models.reference, None, backend="torch")
    assert ort.backend_name == "onnxruntime"
    ids = reference.resolve_classes(None)
    logits_ort, logits_torch = ort.class_logits(image, ids), reference.class_logits(image, ids)
    assert (logits_ort - logits_torch).abs().max() < 1e-3 * logits_torch.abs().max()


def test_a_bank_of_another_prompt_size_is_refused_when_swapped_in(models: Models) -> None:
    ort = pipeline(models.reference, models.export, backend="onnxruntime")
    bank = ort.bank
    other = own_bank(models.other_prompt_size)  # same decoder fingerprint, prompt size 6
    with pytest.raises(ExportError, match=f"the ONNX export {models.export} takes prompt size 4, the prompt bank "
                                          "has prompt size 6; use a bank of prompt size 4"):
        ort.set_bank(other)
    assert ort.bank is bank
    assert ort.predict(np.zeros((20, 30, 3), dtype=np.uint8)).shape == (20, 30)
    torch_pipeline = pipeline(models.reference, None, backend="torch")
    torch_pipeline.set_bank(other)  # the model's own decoder takes any prompt size
    assert torch_pipeline.bank.prompt_size == 6


def test_an_interrupted_export_leaves_no_sidecar_and_no_temporary_file(models: Models, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "export"
    shutil.copytree(models.export, folder)
    real_export = onnx_export._export

    def interrupted(module, args, path, *rest) -> None:
        if isinstance(module, onnx_export.DecoderGraph):
            raise KeyboardInterrupt
        real_export(module, args, path, *rest)

    monkeypatch.setattr(onnx_export, "_export", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export_onnx(models.other_encoder, CONFIG, folder, overwrite=True)
    assert sorted(p.name for p in folder.iterdir()) == ["decoder.onnx", "encoder.onnx"]
    with pytest.raises(ExportError, match=r"has no fpseg_onnx\.json"):
        pipeline(models.other_encoder, folder, backend="onnxruntime")


def test_a_graph_over_the_protobuf_limit_keeps_its_weights_in_one_checked_data_file(
        models: Models, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SAM vit_h's encoder is over 2 GiB, where torch writes every weight as a file of its own beside the graph.
    The export gathers them into encoder.onnx.data (no stray files), the manifest checks it like a graph, and a
    later self-contained export removes it."""
    import onnx

    real_export = onnx_export._export

    def as_torch_writes_big_models(module, args, path, *rest) -> None:
        real_export(module, args, path, *rest)
        if isinstance(module, onnx_export.EncoderGraph):
            onnx.save_model(onnx.load(str(path)), str(path), save_as_external_data=True,
                            all_tensors_to_one_file=False, size_threshold=0)

    monkeypatch.setattr(onnx_export, "_export", as_torch_writes_big_models)
    folder = tmp_path / "export"
    export_onnx(models.reference, CONFIG, folder)
    assert sorted(p.name for p in folder.iterdir()) == [
        "decoder.onnx", "encoder.onnx", "encoder.onnx.data", "fpseg_onnx.json"]
    manifest = json.loads((folder / "fpseg_onnx.json").read_text())
    data = folder / "encoder.onnx.data"
    assert manifest["files"]["encoder_data"] == file_entry(data)
    assert (folder / "encoder.onnx").stat().st_size < data.stat().st_size / 10  # the weights are outside
    image = np.random.default_rng(1).integers(0, 256, (70, 90, 3), dtype=np.uint8)
    ort, reference = pipeline(models.reference, folder, backend="onnxruntime"), pipeline(models.reference, None)
    ids = reference.resolve_classes(None)
    logits_ort, logits_torch = ort.class_logits(image, ids), reference.class_logits(image, ids)
    assert (logits_ort - logits_torch).abs().max() < 1e-3 * logits_torch.abs().max()

    weights = bytearray(data.read_bytes())
    weights[len(weights) // 2] ^= 0xFF
    data.write_bytes(bytes(weights))
    with pytest.raises(ExportError, match=r"encoder\.onnx\.data is not the encoder weights fpseg_onnx\.json "
                                          r"describes: it has sha256"):
        pipeline(models.reference, folder, backend="onnxruntime")

    monkeypatch.setattr(onnx_export, "_export", real_export)
    export_onnx(models.reference, CONFIG, folder, overwrite=True)
    assert sorted(p.name for p in folder.iterdir()) == ["decoder.onnx", "encoder.onnx", "fpseg_onnx.json"]
    assert "encoder_data" not in json.loads((folder / "fpseg_onnx.json").read_text())["files"]
    assert pipeline(models.reference, folder, backend="onnxruntime").backend_name == "onnxruntime"


def test_engine_manifests_are_checked_like_exports(models: Models, tmp_path: Path) -> None:
    """The engine side of `artifacts` without TensorRT: identity, prompt size, target and engine files."""
    for name in ENGINE_FILES.values():
        (tmp_path / name).write_bytes(name.encode() * 100)
    onnx = json.loads((models.export / "fpseg_onnx.json").read_text())
    engines = {"format": ENGINE_FORMAT, "tensorrt_version": "10.3.0", "compute_capability": "8.7",
               "device_name": "Orin", "precision": {"encoder": "fp32", "decoder": "fp32"}, "tf32": False,
               "profile": {"min": 1, "opt": 3, "max": 8}, "onnx": onnx,
               "files": {role: file_entry(tmp_path / name) for role, name in ENGINE_FILES.items()}}
    (tmp_path / "fpseg_engines.json").write_text(json.dumps(engines))
    here = EngineTarget("10.3.0", "8.7", "Orin")
    manifest = read_engine_sidecar(tmp_path, here)
    check_model(manifest, ModelIdentity.of(models.reference, "squash"), tmp_path)
    with pytest.raises(ExportError) as caught:
        check_model(manifest, ModelIdentity.of(models.other_encoder, "squash"), tmp_path)
    assert f"the TensorRT engine folder {tmp_path} does not fit the loaded pipeline: encoder fingerprint " in \
        str(caught.value)
    assert str(caught.value).endswith(f"then `fpseg build-engine --onnx ONNX_DIR --out {tmp_path} --overwrite`")
    with pytest.raises(ExportError, match="takes prompt size 4, the prompt bank has prompt size 6"):
        check_prompt_size(manifest, 6, tmp_path)
    with pytest.raises(ExportError, match=r"built with TensorRT 10\.3\.0 for compute capability 8\.7 \(Orin\), "
                                          r"this is TensorRT 10\.4\.0"):
        read_engine_sidecar(tmp_path, EngineTarget("10.4.0", "8.7", "Orin"))
    (tmp_path / "decoder.engine").write_bytes(b"decoder.engine" * 99 + b"x" * 14)  # same size, other bytes
    with pytest.raises(ExportError, match=r"decoder\.engine is not the decoder engine fpseg_engines\.json describes"):
        read_engine_sidecar(tmp_path, here)


# ------------------------------------------------------------------------------------ backend choice
def test_an_explicit_engine_dir_that_is_missing_is_an_error(models: Models, tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    for backend in ("onnxruntime", "auto"):
        with pytest.raises(ExportError, match=f"{missing} does not exist"):
            pipeline(models.reference, missing, backend=backend)


def test_auto_without_engine_dir_runs_torch_and_says_so_at_info(models: Models, caplog) -> None:
    with caplog.at_level(logging.DEBUG, logger="fpseg"):
        assert pipeline(models.reference, None, backend="auto").backend_name == "torch"
    choices = [r for r in caplog.records if r.message.startswith("backend auto -> torch (no engine_dir given")]
    assert [r.levelno for r in choices] == [logging.INFO]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


@NO_GPU
def test_device_cuda_without_a_gpu_is_an_error_at_start(models: Models, tiny_checkpoint: Path) -> None:
    for device in ("cuda", "cuda:1"):
        with pytest.raises(DeviceError, match=rf"device '{device}' was asked for, but torch can use no CUDA GPU"):
            pipeline(models.reference, None, backend="torch", device=device)
    with pytest.raises(DeviceError, match=r"torch\.cuda\.is_available\(\) is False"):
        load_pipeline(str(tiny_checkpoint), device="cuda")


@NO_GPU
def test_device_auto_says_what_it_chose_and_why(models: Models, caplog) -> None:
    with caplog.at_level(logging.INFO, logger="fpseg"):
        assert pipeline(models.reference, None, backend="torch", device="auto").device == torch.device("cpu")
    assert "device auto -> cpu (torch.cuda.is_available() is False)" in caplog.messages


@pytest.mark.parametrize("device", ["foo", "cuda:x", "vulkan"])
def test_a_bad_device_string_is_one_clear_line(models: Models, device: str) -> None:
    with pytest.raises(ValueError, match=rf"^device '{device}' is not a device; use auto, cpu, cuda, cuda:N "
                                         r"\(N = GPU index, e.g. cuda:0\) or mps$"):
        pipeline(models.reference, None, backend="torch", device=device)


# ------------------------------------------------------------------------------------------ overwriting
def test_export_onnx_refuses_an_existing_export_unless_overwrite(models: Models, tiny_checkpoint: Path,
                                                                tmp_path: Path, capsys) -> None:
    folder = tmp_path / "export"
    shutil.copytree(models.export, folder)
    before = hashes(folder)
    command = ["export-onnx", "--checkpoint", str(tiny_checkpoint), "--out", str(folder), "--no-verify"]
    assert fpseg_main(command) == 2
    assert "pass --overwrite to replace it" in capsys.readouterr().err
    assert hashes(folder) == before
    assert fpseg_main([*command, "--overwrite"]) == 0
    assert hashes(folder)["fpseg_onnx.json"] != before["fpseg_onnx.json"]
    assert FPSeg.from_checkpoint(tiny_checkpoint, backend="onnxruntime", engine_dir=folder).backend_name == \
        "onnxruntime"  # the new sidecar describes the new graphs and the checkpoint they came from


def test_build_engine_refuses_existing_engines_unless_overwrite(models: Models, tmp_path: Path, capsys) -> None:
    folder = tmp_path / "export"
    shutil.copytree(models.export, folder)
    (folder / "fpseg_engines.json").write_text("{}")
    before = hashes(folder)
    assert fpseg_main(["build-engine", "--onnx", str(folder)]) == 2
    assert f"output {folder / 'fpseg_engines.json'} exists; choose another path or pass --overwrite" in \
        capsys.readouterr().err
    assert hashes(folder) == before
