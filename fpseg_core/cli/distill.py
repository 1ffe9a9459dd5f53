"""`fpseg distill`: distil a SAM encoder into a MobileSAM (TinyViT) encoder."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..jobs.distributed import is_main_process, shutdown_distributed
from ..jobs.options import add_config_arguments, resolve_config
from ..training.bookkeeping import CHECKPOINT_FILE
from ..training.config import DistillConfig
from ..training.distill import distill
from .common import RUN_OVERWRITE_HELP, add_overwrite_argument, check_output_folder


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "distill", help="train a MobileSAM encoder to reproduce a SAM encoder (MSE on embeddings)",
        description="Encoder distillation: a MobileSAM (TinyViT) student learns the teacher SAM encoder's "
                    "embeddings (MSE), from teacher embeddings precomputed with `fpseg precompute` or computed "
                    "on the fly. Keeps the checkpoint with the lowest validation MSE (student encoder + the "
                    "teacher's decoder, so the teacher's prompt banks fit). An --out holding a previous run is refused "
                    "unless --resume or --overwrite. Runs under torchrun.",
    )
    add_config_arguments(parser, DistillConfig)
    add_overwrite_argument(parser, RUN_OVERWRITE_HELP)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    config = resolve_config(DistillConfig, args)
    check_output_folder(Path(config.out))
    try:
        out = distill(config, overwrite=args.overwrite)
    finally:
        shutdown_distributed()
    if is_main_process():
        print(out / CHECKPOINT_FILE)
    return 0
