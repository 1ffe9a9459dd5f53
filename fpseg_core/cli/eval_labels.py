"""`fpseg eval-labels`: score labelId PNGs on disk against Cityscapes ground truth (cityscapesScripts rules)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..evaluation.metrics import check_report_folder, evaluate_label_dirs, write_report
from .common import add_overwrite_argument, check_output_folder


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval-labels", help="Cityscapes mIoU of labelId prediction PNGs already on disk",
        description="Compare prediction PNGs with gtFine labelIds exactly as cityscapesScripts' "
                    "evalPixelLevelSemanticLabeling does. Each ground-truth image <city>_<seq>_<frame> needs one "
                    "prediction named <city>_<seq>_<frame>*.png (anywhere under --pred) holding Cityscapes "
                    "labelIds. Writes results.json, results.md and confusion.png (refused where a report exists, "
                    "unless --overwrite).",
    )
    parser.add_argument("--gt", type=Path, required=True, help="Cityscapes root (holding gtFine/<split>/)")
    parser.add_argument("--pred", type=Path, required=True, help="folder of labelId prediction PNGs")
    parser.add_argument("--split", default="val", help="ground-truth split (default: val)")
    parser.add_argument("--out", type=Path, help="report folder (default: <pred>/evaluation)")
    parser.add_argument("--title", default=None, help="report title")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_overwrite_argument(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    out = check_report_folder(check_output_folder(args.out or args.pred / "evaluation"), args.overwrite)
    result = evaluate_label_dirs(args.gt, args.pred, args.split, progress=not args.no_progress)
    title = args.title or f"{args.pred.name} on Cityscapes {args.split}"
    for path in write_report(result, out, title):
        print(path)
    miou = result["miou"]
    print(f"mIoU {100 * miou:.2f} over {result['n_images']} images" if miou is not None else "mIoU n/a")
    return 0
