"""`fpseg precompute`: encode dataset splits once, for training and evaluation on embeddings."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..data.precompute import PrecomputeConfig, precompute
from ..jobs.distributed import is_main_process, shutdown_distributed
from ..jobs.options import add_config_arguments, resolve_config
from .common import check_output_folder


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "precompute", help="encode dataset images once and store their embeddings",
        description="Encode the images of dataset splits with a checkpoint's image encoder and store the "
                    "embeddings (one safetensors file per image + manifest.json). Resumable: images already "
                    "encoded are skipped; a folder made with another encoder is refused. Runs under torchrun.",
    )
    add_config_arguments(parser, PrecomputeConfig)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    config = resolve_config(PrecomputeConfig, args)
    check_output_folder(Path(config.out))
    try:
        store = precompute(config)
    finally:
        shutdown_distributed()
    if not is_main_process():
        return 0
    counts = ", ".join(f"{split}: {len(keys)}" for split, keys in sorted(store.files.items()))
    print(f"embeddings in {store.root} ({store.header.encoder}, {store.header.dtype}; {counts})")
    return 0
