"""`fpseg eval-regions`: accuracy, macro F1, per-class F1 and confusion matrix of a region classifier."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..evaluation.metrics import check_report_folder
from ..jobs.distributed import is_main_process, shutdown_distributed
from ..jobs.options import add_config_arguments, resolve_config
from ..regions.config import RegionEvalConfig
from ..regions.evaluation import evaluate_regions
from .common import add_overwrite_argument, check_output_folder


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval-regions", help="score a region classifier (RoofSAM decoder) on images with class-labelled polygons",
        description="Classify every annotated polygon (or the train / val part of train-regions' split) by the "
                    "majority vote of its points and report region accuracy, macro F1, per-class F1 and the "
                    "confusion matrix. Same data layout as train-regions; uses --embeddings, or encodes the split "
                    "into <out>/embeddings first. Writes results.json, results.md and confusion.png to --out "
                    "(refused where a report exists, unless --overwrite).",
    )
    add_config_arguments(parser, RegionEvalConfig)
    add_overwrite_argument(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    config = resolve_config(RegionEvalConfig, args)
    check_report_folder(check_output_folder(Path(config.out)), args.overwrite)
    try:
        result = evaluate_regions(config)
    finally:
        shutdown_distributed()
    if is_main_process():
        macro = "n/a" if result["macro_f1"] is None else f"{100 * result['macro_f1']:.2f}"
        print(f"region macro F1: {macro}, accuracy: {100 * (result['accuracy'] or 0):.2f} "
              f"({result['n_regions']} regions)")
        print(f"report: {config.out}/results.md")
    return 0
