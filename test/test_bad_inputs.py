"""Bad inputs, one table each for prompt banks and checkpoints: every one is refused with its own one-line
message, and nothing changes, neither the running controller's bank nor the file.

Decision on other float dtypes: float16, bfloat16 and float64 banks are ACCEPTED and stored as float32 (their
values are representable; a float64 value that is not becomes infinite and is refused). They never change the
dtype of the running bank. Integer, bool and complex tokens are refused.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import TINY_CLASSES, make_bank
from safetensors.torch import save_file

from fpseg_core import CheckpointError, FPSeg, PromptBank, PromptBankError, build_fpseg, load_checkpoint, tiny_config
from fpseg_core.checkpoint import PROJECT_FORMAT, read_state
from fpseg_core.cli.main import main as fpseg_main
from fpseg_core.prompt_bank import FORMAT, TENSOR_KEY
from fpseg_core.runtime.controller import SegmentationController

PROMPT_SIZE = 4  # the conftest tiny model's
ACTIVE = ["sky", "road"]
OTHER_DECODER = "0123456789abcdef"


class _Payload:
    """Stands for arbitrary pickled code: it must never be unpickled."""


# ------------------------------------------------------------------------------------------ helpers
def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _file_digest(path: Path) -> str | None:
    """sha256 of a file, of a folder's listing, or None for a missing path."""
    if path.is_dir():
        return _sha256("\n".join(sorted(p.name for p in path.iterdir())).encode())
    return _sha256(path.read_bytes()) if path.exists() else None


@dataclass(frozen=True)
class RunningState:
    """What a refused load must leave exactly as it was."""

    available: list[str]
    active: list[str]
    names: list[str]
    dtype: torch.dtype
    device: torch.device
    tokens_sha256: str
    bank_id: int


def _running_state(controller: SegmentationController, model: FPSeg) -> RunningState:
    tokens = model.bank.embeddings
    return RunningState(controller.available, controller.active, list(model.bank.names), tokens.dtype,
                        tokens.device, _sha256(tokens.detach().cpu().contiguous().numpy().tobytes()),
                        id(model.bank))


def _tokens(n: int = 1, size: int = PROMPT_SIZE, width: int = 256, seed: int = 3) -> torch.Tensor:
    return torch.randn(n, size, width, generator=torch.Generator().manual_seed(seed))


def _raw_bank(tmp: Path, model: FPSeg, tokens: torch.Tensor, names: str | None = '["bicycle"]',
              name: str = "bank", **metadata: str) -> Path:
    """A safetensors file written without PromptBank's checks, to hold what PromptBank would refuse."""
    header = {"format": FORMAT, "prompt_size": str(PROMPT_SIZE), "decoder_fingerprint": model.fingerprint,
              **({} if names is None else {"names": names}), **metadata}
    path = tmp / f"{name}.safetensors"
    save_file({TENSOR_KEY: tokens.contiguous()}, str(path), metadata=header)
    return path


def _with(tokens: torch.Tensor, value: float) -> torch.Tensor:
    tokens = tokens.clone()
    tokens[0, 1, 2] = value
    return tokens


def _valid_bank(tmp: Path, model: FPSeg) -> Path:
    return make_bank(model, ["bicycle", "bus"]).save(tmp / "valid.safetensors")


def _cut(path: Path, keep: int) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[:keep if keep >= 0 else len(data) + keep])
    return path


def _write(tmp: Path, name: str, data: bytes) -> Path:
    path = tmp / name
    path.write_bytes(data)
    return path


def _torch_file(tmp: Path, name: str, obj: object, zip_format: bool = True) -> Path:
    path = tmp / name
    torch.save(obj, path, _use_new_zipfile_serialization=zip_format)
    return path


def _folder(tmp: Path, name: str) -> Path:
    path = tmp / name
    path.mkdir()
    (path / "inside.txt").write_text("x")
    return path


TEXT = b"<!DOCTYPE html>\n<html><body>404 Not Found</body></html>\n"


# ----------------------------------------------------------------------------------- prompt banks
@dataclass(frozen=True)
class BankCase:
    name: str
    write: Callable[[Path, FPSeg], Path]
    expected: str
    options: dict[str, Any] = field(default_factory=dict)


BANK_CASES = [
    BankCase("int32", lambda t, m: _raw_bank(t, m, torch.randint(-3, 3, (1, PROMPT_SIZE, 256), dtype=torch.int32)),
             "must be floating point (float16, bfloat16, float32 or float64), found torch.int32"),
    BankCase("bool", lambda t, m: _raw_bank(t, m, torch.ones(1, PROMPT_SIZE, 256, dtype=torch.bool)),
             "must be floating point (float16, bfloat16, float32 or float64), found torch.bool"),
    BankCase("nan", lambda t, m: _raw_bank(t, m, _with(_tokens(), float("nan"))),
             "must hold finite torch.float32 values, found 1 NaN and 0 infinite value(s) in class(es) bicycle"),
    BankCase("inf", lambda t, m: _raw_bank(t, m, _with(_tokens(), float("-inf"))),
             "found 0 NaN and 1 infinite value(s) in class(es) bicycle"),
    BankCase("fp16 inf", lambda t, m: _raw_bank(t, m, _with(_tokens(), float("inf")).half()),
             "found 0 NaN and 1 infinite value(s)"),
    BankCase("fp64 beyond float32", lambda t, m: _raw_bank(t, m, _with(_tokens().double(), 1e300)),
             "found 0 NaN and 1 infinite value(s)"),
    BankCase("names a JSON string", lambda t, m: _raw_bank(t, m, _tokens(), names='"road"'),
             "field 'names' must be a list of class names, found a str 'road'"),
    BankCase("names a JSON object", lambda t, m: _raw_bank(t, m, _tokens(), names='{"road": 0}'),
             "field 'names' must be a list of class names, found a dict"),
    BankCase("names not JSON", lambda t, m: _raw_bank(t, m, _tokens(), names="road"),
             "field 'names' must be JSON text, found 'road' (not JSON)"),
    BankCase("names missing", lambda t, m: _raw_bank(t, m, _tokens(), names=None),
             "field 'names' must be in the metadata"),
    BankCase("names not strings", lambda t, m: _raw_bank(t, m, _tokens(2), names='["bus", 7]'),
             "field 'names' must be strings, found 7 (int) at position 1"),
    BankCase("names duplicated", lambda t, m: _raw_bank(t, m, _tokens(2), names='["bus", "bus"]'),
             "field 'names' must be unique, found duplicate class names bus"),
    BankCase("name empty", lambda t, m: _raw_bank(t, m, _tokens(), names='[" "]'),
             "field 'names' must be non-empty, found ' ' at position 0"),
    BankCase("names fewer than rows", lambda t, m: _raw_bank(t, m, _tokens(2)),
             "1 class names for 2 rows"),
    BankCase("extra not a dict", lambda t, m: _raw_bank(t, m, _tokens(), extra='["x"]'),
             "field 'extra' must be a dict of strings to strings, found ['x']"),
    BankCase("rank 2", lambda t, m: _raw_bank(t, m, _tokens()[0]),
             "must have shape [n_classes, prompt_size, 256] (none of them 0), found [4, 256]"),
    BankCase("width 128", lambda t, m: _raw_bank(t, m, _tokens(width=128)),
             "must have shape [n_classes, prompt_size, 256] (none of them 0), found [1, 4, 128]"),
    BankCase("no classes", lambda t, m: _raw_bank(t, m, _tokens(0), names="[]"),
             "found [0, 4, 256]"),
    BankCase("prompt size mismatch",
             lambda t, m: PromptBank(["bicycle"], _tokens(size=8), "", m.fingerprint).save(t / "size8.safetensors"),
             "prompt size 8 does not match the running bank's 4"),
    BankCase("decoder fingerprint mismatch",
             lambda t, m: PromptBank(["bicycle"], _tokens(), "", OTHER_DECODER).save(t / "other.safetensors"),
             f"was tuned for decoder {OTHER_DECODER}, but the model's decoder is"),
    BankCase("truncated data", lambda t, m: _cut(_valid_bank(t, m), -100), "is truncated: its safetensors header"),
    BankCase("truncated header", lambda t, m: _cut(_valid_bank(t, m), 40), "is truncated: its safetensors header"),
    BankCase("zero bytes", lambda t, m: _write(t, "empty.safetensors", b""), "is empty (0 bytes), not a prompt bank"),
    BankCase("directory", lambda t, m: _folder(t, "bank.safetensors"), "is a directory, not a prompt bank file"),
    BankCase("missing", lambda t, m: t / "missing.safetensors", "does not exist"),
    BankCase("zip pickle renamed",
             lambda t, m: _torch_file(t, "pickle.safetensors", {TENSOR_KEY: _tokens()}),
             "is not a readable safetensors prompt bank: it is a torch checkpoint (pickle / zip)"),
    BankCase("legacy pickle renamed",
             lambda t, m: _torch_file(t, "legacy.safetensors", {TENSOR_KEY: _tokens()}, zip_format=False),
             "is not a readable safetensors prompt bank: it is a torch checkpoint (pickle / zip)"),
    BankCase("text", lambda t, m: _write(t, "page.safetensors", TEXT),
             "is not a readable safetensors prompt bank (it looks like text)"),
    BankCase("safetensors of other weights",
             lambda t, m: (save_file({"weight": torch.zeros(2)}, str(t / "w.safetensors")), t / "w.safetensors")[1],
             "is a safetensors file but not an FPSeg prompt bank"),
    BankCase("classes a string", _valid_bank, "classes must be a list of class names", {"classes": "bus"}),
    BankCase("classes not strings", _valid_bank, "classes must be a list of class names", {"classes": ["bus", 3]}),
    BankCase("unknown class", _valid_bank, "unknown class(es) 'tram'", {"classes": ["tram"]}),
]


@pytest.fixture()
def controller(tiny_model: FPSeg) -> SegmentationController:
    controller = SegmentationController(tiny_model)
    controller.update({"classes": ACTIVE})
    return controller


@pytest.mark.parametrize("case", BANK_CASES, ids=lambda case: case.name)
def test_a_bad_bank_is_refused_and_nothing_changes(
    controller: SegmentationController, tiny_model: FPSeg, tmp_path: Path, case: BankCase
) -> None:
    path = case.write(tmp_path, tiny_model)
    file_before = _file_digest(path)
    before = _running_state(controller, tiny_model)
    update = controller.load_prompts(str(path), activate=True, **case.options)
    assert not update.success
    assert case.expected in update.message
    assert str(path) in update.message and "\n" not in update.message
    assert (update.available, update.active) == (TINY_CLASSES, ACTIVE)
    assert _running_state(controller, tiny_model) == before
    assert _file_digest(path) == file_before


def test_an_unexpected_failure_is_a_refusal_not_an_exception(
    controller: SegmentationController, tiny_model: FPSeg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(_path: object) -> PromptBank:
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(PromptBank, "load", staticmethod(broken))
    before = _running_state(controller, tiny_model)
    update = controller.load_prompts(str(tmp_path / "any.safetensors"))
    assert not update.success and "unexpected ZeroDivisionError: a bug" in update.message
    assert _running_state(controller, tiny_model) == before


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64], ids=str)
def test_other_float_dtypes_are_accepted_as_float32_and_never_cast_the_running_bank(
    controller: SegmentationController, tiny_model: FPSeg, tmp_path: Path, dtype: torch.dtype
) -> None:
    tokens = _tokens(seed=4).to(dtype)
    rows_before = tiny_model.bank.embeddings.clone()
    update = controller.load_prompts(str(_raw_bank(tmp_path, tiny_model, tokens)), activate=True)
    assert update.success, update.message
    bank = tiny_model.bank
    assert bank.names == [*TINY_CLASSES, "bicycle"]
    assert bank.embeddings.dtype == torch.float32 and bank.embeddings.device == rows_before.device
    assert torch.equal(bank.embeddings[:len(TINY_CLASSES)], rows_before)
    assert torch.equal(bank.embeddings[-1], tokens[0].to(torch.float32))


def test_a_valid_merge_after_a_refused_int32_bank_keeps_other_tokens_bit_identical(
    controller: SegmentationController, tiny_model: FPSeg, tmp_path: Path
) -> None:
    rows_before = tiny_model.bank.embeddings.clone()
    int_tokens = torch.randint(-3, 3, (1, PROMPT_SIZE, 256), dtype=torch.int32)
    refused = controller.load_prompts(str(_raw_bank(tmp_path, tiny_model, int_tokens, names='["car"]')))
    assert not refused.success and "found torch.int32" in refused.message
    new = make_bank(tiny_model, ["car"], seed=9)
    update = controller.load_prompts(str(new.save(tmp_path / "car.safetensors")))
    assert update.success, update.message
    tokens = tiny_model.bank.embeddings
    assert tokens.dtype == torch.float32 and tiny_model.bank.names == TINY_CLASSES
    car = TINY_CLASSES.index("car")
    assert torch.equal(tokens[car], new.embeddings[0])
    for row, name in enumerate(TINY_CLASSES):
        if name != "car":
            assert torch.equal(tokens[row], rows_before[row]), name


# ------------------------------------------------------------------------------------ checkpoints
@dataclass(frozen=True)
class CheckpointCase:
    name: str
    write: Callable[[Path, FPSeg], Path]
    expected: str


def _project(tmp: Path, name: str, **fields: object) -> Path:
    config = tiny_config("mobilesam", n_classes=len(TINY_CLASSES), prompt_size=PROMPT_SIZE, img_size=128)
    state = {"format": PROJECT_FORMAT, "config": config.to_dict(), "class_names": list(TINY_CLASSES),
             "state_dict": build_fpseg(config).state_dict(), **fields}
    return _torch_file(tmp, name, state)


CHECKPOINT_CASES = [
    CheckpointCase("pickled code", lambda t, m: _torch_file(t, "code.pth", {"model": _Payload()}),
                   "is not a plain tensor checkpoint: it holds Python objects/code (test_bad_inputs._Payload)"),
    CheckpointCase("prompt bank", lambda t, m: make_bank(m, ["bus"]).save(t / "bank.safetensors"),
                   "is a prompt bank (.safetensors), not a checkpoint; pass it as prompts / --prompts"),
    CheckpointCase("other safetensors",
                   lambda t, m: (save_file({"w": torch.zeros(2)}, str(t / "model.safetensors")),
                                 t / "model.safetensors")[1],
                   "is a safetensors file, not a torch checkpoint"),
    CheckpointCase("text", lambda t, m: _write(t, "download.pth", TEXT),
                   "is not a torch checkpoint (it looks like text"),
    CheckpointCase("directory", lambda t, m: _folder(t, "weights.pth"), "is a directory, not a checkpoint file"),
    CheckpointCase("missing", lambda t, m: t / "missing.pth", "does not exist"),
    CheckpointCase("zero bytes", lambda t, m: _write(t, "empty.pth", b""), "is empty (0 bytes), not a checkpoint"),
    CheckpointCase("truncated zip", lambda t, m: _cut(_project(t, "cut.pth"), -2000),
                   "is truncated or corrupt (PytorchStreamReader failed reading zip archive"),
    CheckpointCase("truncated legacy pickle",
                   lambda t, m: _cut(_torch_file(t, "old.pth", {"w": torch.zeros(100)}, zip_format=False), -100),
                   "is truncated or corrupt (unexpected EOF, expected 100 more bytes)"),
    CheckpointCase("legacy pickle cut in its header",
                   lambda t, m: _cut(_torch_file(t, "head.pth", {"w": torch.zeros(100)}, zip_format=False), 20),
                   "is truncated or corrupt (the file ends early)"),
    CheckpointCase("a list", lambda t, m: _torch_file(t, "list.pth", [torch.zeros(2)]),
                   "the file holds a list where a state dict belongs"),
    CheckpointCase("a tensor", lambda t, m: _torch_file(t, "tensor.pth", torch.zeros(2)),
                   "the file holds a Tensor where a state dict belongs"),
    CheckpointCase("non-tensor entry", lambda t, m: _torch_file(t, "entry.pth", {"image_encoder.pos_embed": [1.0]}),
                   "state-dict entry 'image_encoder.pos_embed' is a list, expected a tensor"),
    CheckpointCase("project state_dict a list", lambda t, m: _project(t, "sd.pth", state_dict=[torch.zeros(1)]),
                   "'state_dict' holds a list where a state dict belongs"),
    CheckpointCase("project class names a string", lambda t, m: _project(t, "names.pth", class_names="road"),
                   "class_names must be a list of class names, found a str"),
]


@pytest.mark.parametrize("case", CHECKPOINT_CASES, ids=lambda case: case.name)
def test_a_bad_checkpoint_is_refused_with_its_own_message(
    tiny_model: FPSeg, tmp_path: Path, case: CheckpointCase
) -> None:
    path = case.write(tmp_path, tiny_model)
    file_before = _file_digest(path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert case.expected in message
    assert str(path) in message and "\n" not in message
    assert "weights_only" not in message
    assert _file_digest(path) == file_before


def test_info_on_a_text_file_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path, "notes.txt", b"hello, this is not a model\n")
    assert fpseg_main(["info", str(path)]) == 2
    assert capsys.readouterr().err == (
        f"fpseg info: error: {path} is not a torch checkpoint (it looks like text, e.g. a web page saved by a "
        "failed download); download it again and compare its size / checksum with the published one\n"
    )


# ---------------------------------------------------------------------------------- unreadable files
@pytest.mark.parametrize(("read", "error"), [(PromptBank.load, PromptBankError), (read_state, CheckpointError)],
                         ids=["bank", "checkpoint"])
def test_an_unreadable_file_names_owner_mode_and_user(
    tiny_model: FPSeg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, read: Callable, error: type
) -> None:
    path = make_bank(tiny_model, ["bus"]).save(tmp_path / "file.safetensors")
    monkeypatch.setattr(os, "access", lambda *_args, **_kwargs: False)  # root reads everything: pretend
    with pytest.raises(error, match=r"file\.safetensors is not readable by user .* with mode -rw-r--r-- "
                                    r"\(0644\); make it readable"):
        read(path)


@pytest.mark.parametrize("module", ["fpseg_core.prompt_bank", "fpseg_core.checkpoint"])
def test_a_permission_error_while_reading_names_the_user(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, module: str
) -> None:
    def denied(path: Path) -> str:
        raise PermissionError(13, "Permission denied", str(path))

    path = _write(tmp_path, "file.bin", b"x" * 16)
    monkeypatch.setattr(f"{module}.file_kind", denied)
    read = PromptBank.load if module.endswith("prompt_bank") else read_state
    with pytest.raises((PromptBankError, CheckpointError), match=r"file\.bin is not readable by user .*: "
                                                                 "Permission denied"):
        read(path)


def test_metadata_json_of_a_saved_bank_is_what_load_validates(tiny_model: FPSeg, tmp_path: Path) -> None:
    """The table above writes raw files; this pins that a real save writes the same metadata fields."""
    path = make_bank(tiny_model, ["bus"]).save(tmp_path / "real.safetensors")
    header_length = int.from_bytes(path.read_bytes()[:8], "little")
    metadata = json.loads(path.read_bytes()[8:8 + header_length])["__metadata__"]
    assert metadata["format"] == FORMAT and json.loads(metadata["names"]) == ["bus"]
    assert json.loads(metadata["extra"]) == {}


def test_a_bank_without_a_decoder_fingerprint_loads_but_the_reply_says_it_is_unchecked(
    controller: SegmentationController, tiny_model: FPSeg, tmp_path: Path
) -> None:
    unchecked = PromptBank(["bicycle"], _tokens(seed=6), "mobilesam", "", source="another tool")
    update = controller.load_prompts(str(unchecked.save(tmp_path / "other_tool.safetensors")), activate=True)
    assert update.success and "unchecked: the file records no decoder fingerprint" in update.message
    assert tiny_model.bank.names == [*TINY_CLASSES, "bicycle"]
    fingerprinted = controller.load_prompts(str(make_bank(tiny_model, ["car"]).save(tmp_path / "car.safetensors")))
    assert fingerprinted.success and "unchecked" not in fingerprinted.message
