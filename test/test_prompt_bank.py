"""Prompt banks: safetensors round trip, merge / subset, fingerprint checks, refused files; palettes."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_bank
from safetensors.torch import save_file

from fpseg_core import FPSeg, PromptBank, PromptBankError
from fpseg_core.visualize import blend, class_color, colorize, palette


def test_round_trip_keeps_names_tokens_and_metadata(tmp_path, tiny_model) -> None:
    bank = make_bank(tiny_model, ["road", "curb"])
    path = bank.save(tmp_path / "bank.safetensors")
    loaded = PromptBank.load(path)
    assert loaded.names == ["road", "curb"]
    torch.testing.assert_close(loaded.embeddings, bank.embeddings)
    assert loaded.decoder_fingerprint == tiny_model.fingerprint and loaded.prompt_size == 4


def test_merge_overwrites_same_names_and_appends_new_ones(tiny_model) -> None:
    base = make_bank(tiny_model, ["road", "car"], seed=1)
    update = make_bank(tiny_model, ["car", "curb"], seed=2)
    merged = base.merge(update)
    assert merged.names == ["road", "car", "curb"]
    torch.testing.assert_close(merged.embeddings[0], base.embeddings[0])
    torch.testing.assert_close(merged.embeddings[1], update.embeddings[0])
    torch.testing.assert_close(merged.subset(["curb", "road"]).embeddings[0], update.embeddings[1])


def test_merge_refuses_other_prompt_size(tiny_model) -> None:
    other = PromptBank(["curb"], torch.zeros(1, 8, 256))
    with pytest.raises(PromptBankError, match="prompt size 8 does not match this bank's 4"):
        tiny_model.bank.merge(other)


def test_bank_from_another_decoder_is_refused_unless_forced(tiny_checkpoint, tiny_model, random_model,
                                                            tmp_path) -> None:
    path = make_bank(random_model, ["road"]).save(tmp_path / "foreign.safetensors")
    with pytest.raises(PromptBankError, match=r"foreign\.safetensors.*tuned for decoder .* pass force=True"):
        FPSeg.from_checkpoint(tiny_checkpoint, prompts=path)
    before = tiny_model.bank
    with pytest.raises(PromptBankError, match="tuned for decoder"):
        tiny_model.set_bank(PromptBank.load(path))
    assert tiny_model.bank is before  # refused: the old bank is kept
    forced = FPSeg.from_checkpoint(tiny_checkpoint, prompts=path, force_prompts=True)
    assert forced.classes == ["road"]


@pytest.mark.parametrize(
    ("tensors", "metadata", "message"),
    [
        ({"prompt_embeddings": torch.zeros(2, 4, 256)}, {"format": "other"}, "not an FPSeg prompt bank"),
        ({"weights": torch.zeros(2, 4, 256)}, {"format": "fpseg-prompt-bank/1"}, "not an FPSeg prompt bank"),
        ({"prompt_embeddings": torch.zeros(2, 4, 256)},
         {"format": "fpseg-prompt-bank/1", "names": '["a"]'}, "1 class names for 2 rows"),
        ({"prompt_embeddings": torch.zeros(2, 4, 128)},
         {"format": "fpseg-prompt-bank/1", "names": '["a", "b"]'}, r"shape \[n_classes, prompt_size, 256\]"),
        ({"prompt_embeddings": torch.zeros(2, 4, 256)},
         {"format": "fpseg-prompt-bank/1", "names": '["a", "a"]'}, "duplicate class names"),
        ({"prompt_embeddings": torch.zeros(1, 4, 256)},
         {"format": "fpseg-prompt-bank/1", "names": "road"}, "not JSON"),
    ],
)
def test_malformed_banks_are_refused(tmp_path, tensors, metadata, message) -> None:
    path = tmp_path / "bad.safetensors"
    save_file(tensors, str(path), metadata=metadata)
    with pytest.raises(PromptBankError, match=message):
        PromptBank.load(path)


def test_non_safetensors_file_is_refused(tmp_path) -> None:
    path = tmp_path / "bank.pth"
    torch.save({"prompt_embeddings": torch.zeros(1, 4, 256)}, path)
    with pytest.raises(PromptBankError, match=r"bank\.pth is not a readable safetensors prompt bank"):
        PromptBank.load(path)
    with pytest.raises(PromptBankError, match="does not exist"):
        PromptBank.load(tmp_path / "missing.safetensors")


def test_construction_stores_float32_and_refuses_what_breaks_the_invariant() -> None:
    half = torch.randn(1, 2, 256).half()
    bank = PromptBank(["road"], half)
    assert bank.embeddings.dtype == torch.float32 and torch.equal(bank.embeddings, half.float())
    with pytest.raises(PromptBankError, match=r"^prompt bank: field 'prompt_embeddings' must be floating point"):
        PromptBank(["road"], torch.zeros(1, 2, 256, dtype=torch.int64))
    with pytest.raises(PromptBankError, match="field 'names' must be a list of class names, found a str 'ab'"):
        PromptBank("ab", torch.zeros(2, 2, 256))
    with pytest.raises(PromptBankError, match=r"field 'encoder' must be a string, found 3 \(int\)"):
        PromptBank(["road"], torch.zeros(1, 2, 256), encoder=3)
    with pytest.raises(PromptBankError, match="field 'extra' must be a dict of strings to strings"):
        PromptBank(["road"], torch.zeros(1, 2, 256), extra={"epochs": 3})


def test_merge_and_subset_keep_the_dtype_and_device_of_the_bank_they_start_from(tiny_model) -> None:
    base = make_bank(tiny_model, ["road", "car"], seed=1)
    update = PromptBank(["car"], torch.randn(1, 4, 256, dtype=torch.float64), "", base.decoder_fingerprint)
    merged = base.merge(update)
    assert merged.embeddings.dtype == torch.float32 and merged.embeddings.device == base.embeddings.device
    assert torch.equal(merged.embeddings[0], base.embeddings[0])
    assert merged.subset(["car"]).embeddings.dtype == torch.float32


def test_save_is_atomic_and_uses_the_umask_mode(tiny_model, tmp_path, monkeypatch) -> None:
    path = tmp_path / "bank.safetensors"
    old_mask = os.umask(0o022)
    try:
        make_bank(tiny_model, ["road"], seed=1).save(path)
    finally:
        os.umask(old_mask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # safetensors alone creates 0600 files
    saved = path.read_bytes()

    def interrupted(tensors, filename, metadata):
        Path(filename).write_bytes(b"half a bank")
        raise KeyboardInterrupt

    monkeypatch.setattr("fpseg_core.prompt_bank.save_file", interrupted)
    with pytest.raises(KeyboardInterrupt):
        make_bank(tiny_model, ["car"], seed=2).save(path)
    assert path.read_bytes() == saved and [p.name for p in tmp_path.iterdir()] == ["bank.safetensors"]


def test_palette_uses_cityscapes_colours_and_is_deterministic() -> None:
    table = palette(["road", "curb", "human"])
    assert tuple(table[0]) == (0, 0, 0) and tuple(table[1]) == (128, 64, 128)
    assert tuple(table[2]) == class_color("curb") != (0, 0, 0)
    assert tuple(table[3]) == (220, 20, 60)  # a category takes its first member's colour
    labels = np.array([[0, 1], [2, 3]], np.uint8)
    colours = colorize(labels, table)
    assert colours.shape == (2, 2, 3) and tuple(colours[0, 1]) == (128, 64, 128)
    image = np.full((2, 2, 3), 100, np.uint8)
    mixed = blend(image, colours, alpha=0.5)
    assert tuple(mixed[0, 0]) == (100, 100, 100)  # 'none' leaves the camera image untouched
    assert tuple(mixed[0, 1]) == (114, 82, 114)


def test_a_bank_without_a_fingerprint_is_used_with_a_warning(tiny_model, caplog) -> None:
    unchecked = PromptBank(["road"], torch.randn(1, 4, 256), "mobilesam", "", source="another tool")
    with caplog.at_level(logging.WARNING, logger="fpseg"):
        tiny_model.set_bank(unchecked)
    assert tiny_model.classes == ["road"]
    warnings = [r.getMessage() for r in caplog.records if "records no decoder fingerprint" in r.getMessage()]
    assert len(warnings) == 1 and "another tool" in warnings[0] and tiny_model.fingerprint in warnings[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="fpseg"):
        tiny_model.set_bank(unchecked, force=True)  # asked for: no warning
        tiny_model.set_bank(make_bank(tiny_model, ["road"]))  # fingerprinted: no warning
    assert not caplog.records
