"""`fpseg train`: tune prompts for classes, or add new classes to a deployed prompt bank."""

from __future__ import annotations

import argparse

from ..jobs.options import add_config_arguments
from ..training.config import TrainConfig
from ..training.prompt_tuning import BANK_FILE, train
from .common import RUN_OVERWRITE_HELP, add_overwrite_argument, run_training_command


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train", help="prompt tuning on precomputed embeddings (or prompt transfer of new classes)",
        description="Tune per-class prompt tokens against a frozen FPSeg / SAM / MobileSAM model on "
                    "embeddings from `fpseg precompute`. Writes prompts.safetensors (best validation binary "
                    "IoU), state.pt (for --resume), config.yaml and CSV logs to --out; an --out holding a previous run "
                    "is refused unless --resume or --overwrite. With --new-classes and "
                    "--bank, only the new classes are tuned and merged into the deployed bank. Runs under "
                    "torchrun.",
    )
    add_config_arguments(parser, TrainConfig)
    add_overwrite_argument(parser, RUN_OVERWRITE_HELP)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    return run_training_command(args, TrainConfig, train, BANK_FILE)
