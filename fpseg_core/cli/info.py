"""`fpseg info FILE`: what a checkpoint or prompt bank contains."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..checkpoint import load_checkpoint
from ..files import file_kind
from ..prompt_bank import PromptBank


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("info", help="describe a checkpoint (.pth) or prompt bank (.safetensors)")
    parser.add_argument("file", type=Path)
    parser.set_defaults(func=run)


def describe_bank(bank: PromptBank) -> list[str]:
    return [
        f"classes: {len(bank)}, prompt size: {bank.prompt_size}, encoder: {bank.encoder or 'unknown'}",
        f"decoder fingerprint: {bank.decoder_fingerprint or 'none'}",
        f"source: {bank.source}",
        "names: " + ", ".join(f"{i}:{n}" for i, n in enumerate(bank.names)),
    ]


def run(args: argparse.Namespace) -> int:
    # by content, not by name: a bank renamed .pth is still described as a bank
    if args.file.suffix == ".safetensors" or (args.file.is_file() and file_kind(args.file) == "safetensors"):
        lines = [f"{args.file}: prompt bank", *describe_bank(PromptBank.load(args.file))]
    else:
        loaded = load_checkpoint(args.file)
        n_params = sum(p.numel() for p in loaded.model.parameters())
        lines = [
            f"{args.file}: {loaded.kind} checkpoint, encoder {loaded.config.encoder}, "
            f"input {loaded.config.img_size}x{loaded.config.img_size}, {n_params / 1e6:.1f} M parameters",
            f"decoder fingerprint: {loaded.fingerprint}",
        ]
        lines += describe_bank(loaded.bank) if loaded.bank else [
            "no trained prompts (official SAM / MobileSAM weights): train a bank with `fpseg train`"]
    print("\n".join(lines))
    return 0
