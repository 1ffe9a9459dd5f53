"""Checkpoint recognition and loading: official SAM / MobileSAM files, FPSeg state dicts, bad files."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import oracles
import pytest
import torch

from fpseg_core import CheckpointError, FPSeg, PromptBankError, load_checkpoint, save_checkpoint
from fpseg_core.cityscapes_labels import BANK33
from fpseg_core.cli.main import main as fpseg_main
from fpseg_core.modeling.build import FPSegConfig, build_fpseg
from fpseg_core.prompt_bank import PromptBank


@pytest.fixture(scope="module")
def sam_vit_b_file(tmp_path_factory) -> tuple[Path, dict]:
    sa = oracles.segment_anything()
    torch.manual_seed(0)
    state = sa.build_sam_vit_b().state_dict()
    path = tmp_path_factory.mktemp("sam") / "sam_vit_b_01ec64.pth"
    torch.save(state, path)
    return path, state


@pytest.fixture(scope="module")
def mobile_sam_file(tmp_path_factory) -> tuple[Path, dict]:
    ms = oracles.mobile_sam()
    torch.manual_seed(0)
    state = ms.build_sam_vit_t().state_dict()
    path = tmp_path_factory.mktemp("mobilesam") / "mobile_sam.pt"
    torch.save(state, path)
    return path, state


@pytest.fixture(scope="module")
def fpseg33_file(tmp_path_factory) -> tuple[Path, dict]:
    """A published-format FPSeg file: plain state dict, MobileSAM encoder, 33 classes, prompt size 64."""
    torch.manual_seed(1)
    state = build_fpseg(FPSegConfig("mobilesam", 33, 64, 1024)).state_dict()
    path = tmp_path_factory.mktemp("fpseg") / "fpseg_mobilesam.pth"
    torch.save(state, path)
    return path, state


def _assert_converted_from_sam(loaded, official: dict) -> None:
    ours = loaded.model.state_dict()
    for key, value in ours.items():
        if key == "mask_decoder.mask_tokens.weight":
            torch.testing.assert_close(value, official[key][:1])
        elif key != "prompt_encoder.prompt_embeddings":
            torch.testing.assert_close(value, official[key], msg=key)
    assert loaded.bank is None and loaded.kind == "sam"


@pytest.mark.slow
def test_official_sam_vit_b_state_dict_loads(sam_vit_b_file) -> None:
    path, official = sam_vit_b_file
    loaded = load_checkpoint(path)
    assert loaded.config.encoder == "vit_b" and loaded.config.img_size == 1024
    _assert_converted_from_sam(loaded, official)


def test_official_mobile_sam_state_dict_loads(mobile_sam_file) -> None:
    path, official = mobile_sam_file
    loaded = load_checkpoint(path, encoder="mobilesam", n_classes=5, prompt_size=8)
    assert loaded.config.encoder == "mobilesam"
    assert loaded.model.prompt_encoder.prompt_embeddings.shape == (5, 8, 256)
    _assert_converted_from_sam(loaded, official)


def test_sam_checkpoint_without_prompts_needs_a_bank(mobile_sam_file) -> None:
    with pytest.raises(PromptBankError, match="without trained prompts; pass prompts="):
        FPSeg.from_checkpoint(mobile_sam_file[0])


def test_checkpoint_for_another_encoder_is_refused(mobile_sam_file) -> None:
    with pytest.raises(CheckpointError, match=r"mobile_sam\.pt is a mobilesam checkpoint, but encoder 'vit_b'"):
        load_checkpoint(mobile_sam_file[0], encoder="vit_b")


def test_fpseg_33_class_state_dict_loads_strictly_with_published_names(fpseg33_file) -> None:
    path, state = fpseg33_file
    loaded = load_checkpoint(path)
    assert loaded.kind == "fpseg" and loaded.bank is not None
    assert loaded.bank.names == list(BANK33)
    assert loaded.bank.names[:3] == ["road", "flat", "sidewalk"] and loaded.bank.names[22] == "human"
    torch.testing.assert_close(loaded.bank.embeddings, state["prompt_encoder.prompt_embeddings"])
    for key, value in loaded.model.state_dict().items():
        torch.testing.assert_close(value, state[key], msg=key)


def test_prompts_extract_names_rows_in_published_order(fpseg33_file, tmp_path, capsys) -> None:
    path, state = fpseg33_file
    out = tmp_path / "cityscapes33.safetensors"
    assert fpseg_main(["prompts", "extract", str(path), "-o", str(out)]) == 0
    bank = PromptBank.load(out)
    assert bank.names == list(BANK33)
    torch.testing.assert_close(bank.embeddings[24], state["prompt_encoder.prompt_embeddings"][24])
    assert bank.names[24] == "car" and bank.prompt_size == 64
    assert bank.decoder_fingerprint == load_checkpoint(path).fingerprint
    assert "33 classes" in capsys.readouterr().out


def test_info_describes_checkpoint_and_bank(fpseg33_file, tmp_path, capsys) -> None:
    path, _ = fpseg33_file
    assert fpseg_main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "fpseg checkpoint, encoder mobilesam" in out and "classes: 33, prompt size: 64" in out


def test_project_checkpoint_round_trip(tiny_checkpoint) -> None:
    loaded = load_checkpoint(tiny_checkpoint)
    assert loaded.kind == "project" and loaded.bank.names == ["road", "car", "person", "sky"]
    assert loaded.config.img_size == 128


# --- bad files: one clear error each, naming the file, what was expected and what was found ---------------

def test_missing_file(tmp_path) -> None:
    with pytest.raises(CheckpointError, match=r"nope\.pth does not exist"):
        load_checkpoint(tmp_path / "nope.pth")


def test_truncated_file(fpseg33_file, tmp_path) -> None:
    data = fpseg33_file[0].read_bytes()
    bad = tmp_path / "truncated.pth"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"truncated\.pth is truncated or corrupt \(PytorchStreamReader"):
        load_checkpoint(bad)


def test_garbage_file(tmp_path) -> None:
    bad = tmp_path / "garbage.pth"
    bad.write_bytes(os.urandom(4096))
    with pytest.raises(CheckpointError, match=r"garbage\.pth (is truncated or corrupt|is not a torch checkpoint)"):
        load_checkpoint(bad)


class _Payload:
    """Stands for arbitrary pickled code: weights_only loading must refuse it."""


def test_pickled_objects_are_refused(tmp_path) -> None:
    bad = tmp_path / "pickled.pth"
    torch.save({"model": _Payload()}, bad)
    with pytest.raises(CheckpointError, match=r"not a plain tensor checkpoint: it holds Python objects/code "
                                              r"\(test_checkpoint\._Payload\)") as info:
        load_checkpoint(bad)
    assert "weights_only" not in str(info.value)


def test_missing_and_unexpected_keys_are_listed(fpseg33_file, tmp_path) -> None:
    state = dict(fpseg33_file[1])
    del state["mask_decoder.output_upscaling.0.weight"]
    state["mask_decoder.extra_head.weight"] = torch.zeros(1)
    bad = tmp_path / "edited.pth"
    torch.save(state, bad)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(bad)
    message = str(info.value)
    assert "edited.pth does not match an FPSeg mobilesam model with 33 classes" in message
    assert "1 missing key(s): mask_decoder.output_upscaling.0.weight" in message
    assert "1 unexpected key(s): mask_decoder.extra_head.weight" in message


def test_wrong_shapes_are_listed(fpseg33_file, tmp_path) -> None:
    state = dict(fpseg33_file[1])
    state["mask_decoder.mask_tokens.weight"] = torch.zeros(2, 256)
    bad = tmp_path / "shapes.pth"
    torch.save(state, bad)
    with pytest.raises(CheckpointError, match=r"mask_tokens\.weight \(expected \[1, 256\], found \[2, 256\]\)"):
        load_checkpoint(bad)


def test_state_dict_without_encoder_is_refused(tmp_path) -> None:
    bad = tmp_path / "decoder_only.pth"
    torch.save({"mask_decoder.mask_tokens.weight": torch.zeros(1, 256)}, bad)
    with pytest.raises(CheckpointError, match="not a SAM, MobileSAM or FPSeg checkpoint"):
        load_checkpoint(bad)


def test_save_checkpoint_is_atomic_with_the_umask_mode(tiny_checkpoint, tmp_path) -> None:
    loaded = load_checkpoint(tiny_checkpoint)
    path = tmp_path / "saved.pth"
    old_mask = os.umask(0o022)
    try:
        save_checkpoint(loaded.model, loaded.config, loaded.bank.names, path)
    finally:
        os.umask(old_mask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["saved.pth"]  # no temporary file left behind
    assert load_checkpoint(path).bank.names == loaded.bank.names
