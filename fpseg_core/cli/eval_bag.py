"""`fpseg eval-bag BAG`: Cityscapes evaluation of the node's pipeline on a bag, or of a recorded node run."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from ..cityscapes_labels import TRAIN_ID_NAMES
from ..class_names import parse_class_list
from ..evaluation.metrics import check_report_folder
from ..replay.conventions import GT_TOPIC, IMAGE_TOPIC, LABEL_INFO_TOPIC, LABELS_TOPIC, STATS_TOPIC
from .common import add_model_arguments, add_overwrite_argument, check_output_folder, load_model


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval-bag",
        help="score the node's pipeline on a bag (no ROS), or a recorded node run (--recorded)",
        description=(
            "Without --recorded: segment every image of BAG exactly as the fpseg node does and score it "
            "against the bag's ground truth (a bag from `fpseg bag-from-cityscapes --with-gt`). With "
            "--recorded: score the labels a running node published, from a bag recorded with "
            f"`ros2 bag record {LABELS_TOPIC} {LABEL_INFO_TOPIC} {STATS_TOPIC} {GT_TOPIC}`. Writes the "
            "report of `fpseg eval-labels` (results.json, results.md, confusion.png) plus frame counts "
            "and latency (refused where a report exists, unless --overwrite)."
        ),
    )
    parser.add_argument("bag", type=Path, metavar="BAG", help="rosbag2 folder (mcap or sqlite3)")
    parser.add_argument("--out", type=Path, required=True, help="report folder")
    add_overwrite_argument(parser)
    parser.add_argument("--title", help="report title (default: derived from the bag and mode)")
    parser.add_argument("--recorded", action="store_true",
                        help="score the node output recorded in BAG instead of running a model")
    add_model_arguments(parser)
    parser.add_argument("--classes", default=",".join(TRAIN_ID_NAMES),
                        help="active classes, comma-separated (default: the 19 Cityscapes benchmark classes)")
    topics = parser.add_argument_group("topics")
    topics.add_argument("--image-topic", default=IMAGE_TOPIC)
    topics.add_argument("--gt-topic", default=GT_TOPIC)
    topics.add_argument("--labels-topic", default=LABELS_TOPIC, help="with --recorded")
    topics.add_argument("--label-info-topic", default=LABEL_INFO_TOPIC, help="with --recorded")
    topics.add_argument("--stats-topic", default=STATS_TOPIC, help="with --recorded (optional in the bag)")
    parser.add_argument("--max-pending", type=int, default=100,
                        help="frames waiting for their ground truth / labels before the oldest counts unmatched")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..replay.evaluator import write_stream_report
    from ..replay.offline import evaluate_bag, evaluate_recorded_bag

    check_report_folder(check_output_folder(args.out), args.overwrite)
    if args.recorded:
        result = evaluate_recorded_bag(args.bag, args.labels_topic, args.label_info_topic, args.stats_topic,
                                       args.gt_topic, args.max_pending)
        title = args.title or f"fpseg node output recorded in {args.bag.name}"
    else:
        model = load_model(args)
        # The node takes a probability; --threshold is a logit like everywhere else in the CLI.
        score_threshold = 1.0 / (1.0 + math.exp(-args.threshold))
        result = evaluate_bag(args.bag, model, parse_class_list(args.classes), args.fusion, score_threshold,
                              args.image_topic, args.gt_topic, args.max_pending)
        title = args.title or f"fpseg pipeline on {args.bag.name}"
    paths = write_stream_report(result, args.out, title)
    frames = result["frames"]
    miou = "n/a" if result["miou"] is None else f"{100 * result['miou']:.2f}"
    print(f"mIoU {miou} over {frames['scored']} frames (unmatched: {frames['unmatched_ground_truth']} ground "
          f"truth, {frames['unmatched_predictions']} labels; rejected {frames['rejected_messages']}, "
          f"invalid {frames['invalid']})")
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0
