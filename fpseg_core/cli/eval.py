"""`fpseg eval`: class-wise binary IoU (the paper's metric) and Cityscapes 19-class mIoU of a model."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..evaluation.config import EvalConfig
from ..evaluation.evaluate import evaluate
from ..evaluation.metrics import check_report_folder
from ..jobs.distributed import shutdown_distributed
from ..jobs.options import add_config_arguments, resolve_config
from .common import add_overwrite_argument, check_output_folder


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval", help="binary IoU and Cityscapes mIoU of a checkpoint + prompt bank on a split",
        description="Evaluate a checkpoint and prompt bank on a dataset split: the paper's class-wise binary "
                    "IoU, and on Cityscapes the 19-class mIoU as cityscapesScripts computes it. Uses "
                    "precomputed --embeddings, or encodes the split into <out>/embeddings first. --backend / "
                    "--dtype run the network elsewhere than torch fp32 (the reference), encoding the split with "
                    "that backend, to measure a runtime's or a precision's cost before switching. Writes "
                    "results.json, results.md and confusion.png to --out (refused where a report exists, unless "
                    "--overwrite).",
    )
    add_config_arguments(parser, EvalConfig)
    add_overwrite_argument(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    config = resolve_config(EvalConfig, args)
    check_report_folder(check_output_folder(Path(config.out)), args.overwrite)
    try:
        result = evaluate(config)
    finally:
        shutdown_distributed()
    if result.get("miou") is not None:
        print(f"Cityscapes 19-class mIoU: {100 * result['miou']:.2f} ({result['n_images']} images)")
    binary = result.get("binary_iou")
    if binary and binary["mean"] is not None:
        print(f"class-wise binary IoU: {100 * binary['mean']:.2f} ({len(binary['per_class'])} classes)")
    print(f"network: backend {result['backend']}, dtype {result['dtype']}")
    print(f"report: {config.out}/results.md")
    return 0
