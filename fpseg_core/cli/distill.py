"""`fpseg distill`: distil a SAM encoder into a MobileSAM (TinyViT) encoder."""

from __future__ import annotations

import argparse

from ..jobs.options import add_config_arguments
from ..training.bookkeeping import CHECKPOINT_FILE
from ..training.config import DistillConfig
from ..training.distill import distill
from .common import RUN_OVERWRITE_HELP, add_overwrite_argument, run_training_command


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
    return run_training_command(args, DistillConfig, distill, CHECKPOINT_FILE)
