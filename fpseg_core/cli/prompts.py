"""`fpseg prompts extract CKPT -o BANK`: turn the prompts inside an FPSeg checkpoint into a named bank."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..checkpoint import load_checkpoint
from ..class_names import parse_class_list
from ..files import check_output
from .common import add_overwrite_argument


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("prompts", help="prompt bank tools")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    extract = actions.add_parser("extract", help="write a checkpoint's prompts as a named .safetensors bank")
    extract.add_argument("checkpoint", type=Path)
    extract.add_argument("-o", "--out", type=Path, required=True,
                         help="bank to write (never the checkpoint itself; an existing file needs --overwrite)")
    extract.add_argument("--names", help="comma-separated row names (default: the published 33 Cityscapes)")
    add_overwrite_argument(extract)
    extract.set_defaults(func=run_extract)


def run_extract(args: argparse.Namespace) -> int:
    check_output(args.out, args.overwrite, inputs=[args.checkpoint])
    loaded = load_checkpoint(args.checkpoint, class_names=parse_class_list(args.names))
    if loaded.bank is None:
        raise ValueError(f"{args.checkpoint} is an official SAM / MobileSAM checkpoint: it has no trained prompts")
    loaded.bank.save(args.out)
    print(f"wrote {args.out}: {len(loaded.bank)} classes, prompt size {loaded.bank.prompt_size}, "
          f"decoder {loaded.bank.decoder_fingerprint}")
    return 0
