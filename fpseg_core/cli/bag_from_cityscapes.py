"""`fpseg bag-from-cityscapes ROOT --out BAG`: a Cityscapes split as a rosbag2 for `ros2 bag play`."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..class_names import parse_class_list
from ..replay.conventions import DEFAULT_RATE_HZ, START_TIME_NS, STORAGE_NAMES


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "bag-from-cityscapes",
        help="write Cityscapes images (+ gtFine labelIds) as a rosbag2 that `ros2 bag play` replays",
        description=(
            "Topics: /camera/image_raw (rgb8), /camera/camera_info and, with --with-gt, /camera/gt_labels "
            f"(mono8 labelIds), all stamped START + i / rate seconds (START = {START_TIME_NS} ns) in sorted "
            "(city, file) order, frame id 'camera'."
        ),
    )
    parser.add_argument("root", type=Path, metavar="ROOT", help="Cityscapes folder (leftImg8bit/, gtFine/)")
    parser.add_argument("--split", default="val", help="train, val or test (default: val)")
    parser.add_argument("--cities", help="comma-separated cities (default: all of the split)")
    parser.add_argument("--limit", type=int, help="only the first N frames (after sorting)")
    parser.add_argument("--out", type=Path, required=True, metavar="BAG", help="bag folder to create")
    parser.add_argument("--storage", choices=STORAGE_NAMES, default="mcap")
    parser.add_argument("--rate", type=float, default=DEFAULT_RATE_HZ,
                        help=f"frames per second of bag time (default {DEFAULT_RATE_HZ:g})")
    parser.add_argument("--with-gt", action="store_true", help="add /camera/gt_labels for evaluation")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing bag at --out")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..replay.bag_writer import list_cityscapes_frames, write_cityscapes_bag

    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be at least 1, got {args.limit}")
    cities = parse_class_list(args.cities)
    frames = list_cityscapes_frames(args.root, args.split, cities, need_gt=args.with_gt)
    summary = write_cityscapes_bag(frames[: args.limit], args.out, args.storage, args.rate, args.with_gt,
                                   args.overwrite)
    print("\n".join(summary.lines()))
    return 0
