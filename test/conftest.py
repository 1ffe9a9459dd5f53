"""Shared fixtures: tiny random FPSeg models saved through the real checkpoint / prompt-bank code."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

from fpseg_core import FPSeg, PromptBank, build_fpseg, decoder_fingerprint, save_checkpoint, tiny_config

TINY_CLASSES = ["road", "car", "person", "sky"]


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project checkpoint of a tiny MobileSAM-family model with 4 Cityscapes-named classes."""
    torch.manual_seed(0)
    config = tiny_config("mobilesam", n_classes=len(TINY_CLASSES), prompt_size=4, img_size=128)
    model = build_fpseg(config)
    return save_checkpoint(model, config, TINY_CLASSES, tmp_path_factory.mktemp("ckpt") / "tiny.pth")


@pytest.fixture()
def tiny_model(tiny_checkpoint: Path) -> FPSeg:
    return FPSeg.from_checkpoint(tiny_checkpoint)


@pytest.fixture()
def random_model() -> FPSeg:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return FPSeg.random(tiny_config("mobilesam", n_classes=4, prompt_size=4, img_size=128), TINY_CLASSES,
                            seed=5)


def make_bank(model: FPSeg, names: list[str], seed: int = 1) -> PromptBank:
    """A bank of random tokens that fits `model` (same prompt size and decoder fingerprint)."""
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randn(len(names), model.bank.prompt_size, 256, generator=generator)
    return PromptBank(names, tokens, model.bank.encoder, decoder_fingerprint(model.model.state_dict()),
                      source=f"test bank {seed}")
