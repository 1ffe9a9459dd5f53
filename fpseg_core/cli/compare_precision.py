"""`fpseg compare-precision`: what a backend or precision changes against an fp32 reference, on images.

    fpseg compare-precision --checkpoint fpseg_mobilesam.pth --backend openvino --dtype int8 \
        --engine-dir engines_int8/ --reference onnxruntime --reference-engine-dir engines/ \
        --json runs/int8_vs_fp32.json --plot runs/int8_vs_fp32.png calib/ val/*.png

Both pipelines load the same weights and bank; each image goes through both. The report (see
`fpseg_core.evaluation.precision`) gives the embedding and logit errors, the label agreement overall and per
class, and the agreement on the pixels where the reference's decision margin exceeds each --deltas delta.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ..class_names import parse_class_list
from ..constants import RUNTIME_DTYPES
from ..data.custom import IMAGE_EXTENSIONS, find_images
from ..evaluation.precision import DEFAULT_DELTAS, PrecisionComparison, plot
from ..files import atomic_write_text, check_output
from ..image_io import read_image
from ..predictor import FPSeg
from .common import REFERENCE_BACKENDS, add_model_arguments, add_overwrite_argument, load_model


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "compare-precision", help="embedding, logit and label differences of a backend / dtype against fp32",
        description="Runs the model twice on each IMAGE (files, or folders searched recursively for .png / "
                    ".jpg / .jpeg): on "
                    "--backend / --dtype / --engine-dir (the candidate, e.g. openvino int8 on an `fpseg "
                    "quantize` folder) and on --reference at fp32 (default torch), and reports the embedding "
                    "error (relative L2, cosine), the low-resolution logit error, the fraction of equal labels, "
                    "each class's IoU against the reference's labels, and the label agreement where the "
                    "reference's margin exceeds each --deltas delta. Writes --json (and --plot, a PNG); "
                    "existing outputs are refused unless --overwrite.", conflict_handler="resolve")
    parser.add_argument("images", nargs="+", type=Path, metavar="IMAGE")
    add_model_arguments(parser)
    parser.add_argument("--dtype", choices=RUNTIME_DTYPES, default="fp32",  # replaces the shared --dtype
                        help="the candidate's precision: torch fp32 / bf16 / fp16; openvino fp32 / bf16 / int8 "
                             "(an `fpseg quantize` folder)")
    parser.add_argument("--reference", choices=REFERENCE_BACKENDS, default="torch",
                        help="the backend the candidate is compared with, at fp32 (default torch)")
    parser.add_argument("--reference-engine-dir", type=Path,
                        help="the fp32 `fpseg export-onnx` folder --reference onnxruntime / openvino runs")
    parser.add_argument("--classes", help="comma-separated class names (default: all of the bank)")
    parser.add_argument("--deltas", default=",".join(map(str, DEFAULT_DELTAS)),
                        help="comma-separated logit deltas: agreement where the reference's margin exceeds each "
                             f"(default {','.join(map(str, DEFAULT_DELTAS))})")
    parser.add_argument("--json", type=Path, required=True, help="the report (JSON)")
    parser.add_argument("--plot", type=Path, help="agreement against the delta and the worst image (PNG; needs "
                                                   "matplotlib)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_overwrite_argument(parser)
    parser.set_defaults(func=run)


def image_files(paths: Sequence[Path]) -> list[Path]:
    """Files as given, folders expanded to their images (`find_images`); ValueError for a folder without any,
    FileNotFoundError for a path that does not exist."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = find_images(path)
            if not found:
                raise ValueError(f"folder {path} holds no {'/'.join(IMAGE_EXTENSIONS)} image; give image files "
                                 "or a folder of them")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"image {path} does not exist; check the path")
    return files


def parse_deltas(text: str) -> list[float]:
    """'0.1,0.5,1' -> [0.1, 0.5, 1.0]: finite logit deltas >= 0; ValueError naming --deltas otherwise."""
    try:
        deltas = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"--deltas must be comma-separated numbers of logits, e.g. 0.1,0.5,1, got {text!r}") from None
    if not deltas or any(not (math.isfinite(d) and d >= 0) for d in deltas):
        raise ValueError(f"--deltas must list finite deltas >= 0, got {text!r}")
    return deltas


def describe(pipeline: FPSeg, requested_dtype: str, engine_dir: Path | None) -> dict[str, Any]:
    """The backend, the precision it ran at and the folder of one side of the comparison: the backend's own
    dtype where it has one (openvino: int8 on a quantized folder even under --backend auto), and each graph's
    precision where the backend records it (openvino, tensorrt)."""
    own = getattr(pipeline.backend, "dtype", None)
    described = {"backend": pipeline.backend_name, "dtype": own if isinstance(own, str) else requested_dtype,
                 "engine_dir": str(engine_dir) if engine_dir else None}
    precisions = getattr(pipeline.backend, "precisions", None)
    if precisions:
        described["precision"] = dict(precisions)
    return described


def _check_arguments(args: argparse.Namespace) -> None:
    """What can be refused before any model is loaded."""
    if args.reference == "torch" and args.reference_engine_dir is not None:
        raise ValueError("--reference-engine-dir is the folder --reference onnxruntime / openvino runs; --reference "
                         "torch runs the checkpoint itself: drop it, or name the reference backend")
    if args.reference != "torch" and args.reference_engine_dir is None:
        raise ValueError(f"--reference {args.reference} needs --reference-engine-dir: the fp32 `fpseg export-onnx` "
                         "folder of these weights (or use --reference torch)")
    backend = "torch" if args.backend == "auto" and args.engine_dir is None else args.backend
    if (backend, args.dtype, args.engine_dir) == (args.reference, "fp32", args.reference_engine_dir):
        raise ValueError(f"the candidate ({args.backend} {args.dtype}) is the reference ({args.reference} fp32): "
                         "choose the runtime or precision to compare with --backend / --dtype / --engine-dir")
    if args.plot is not None and importlib.util.find_spec("matplotlib") is None:
        raise ValueError("--plot needs matplotlib, which is not installed: pip install matplotlib, or drop --plot")
    if args.plot is not None and args.plot.resolve() == args.json.resolve():
        raise ValueError(f"--plot and --json are the same file ({args.json}); give each its own path")


def run(args: argparse.Namespace) -> int:
    deltas = parse_deltas(args.deltas)
    _check_arguments(args)
    outputs = [p for p in (args.json, args.plot) if p is not None]
    for output in outputs:
        check_output(output, args.overwrite)
    files = image_files(args.images)
    for output in outputs:
        check_output(output, args.overwrite, inputs=files)
    candidate = load_model(args)
    reference = FPSeg(candidate.model, candidate.bank, device=candidate.device, input_mode=candidate.input_mode,
                      fusion=candidate.fusion, threshold=candidate.threshold, backend=args.reference,
                      engine_dir=args.reference_engine_dir if args.reference != "torch" else None)
    names = parse_class_list(args.classes) if args.classes else None
    comparison = PrecisionComparison(reference, candidate, candidate.resolve_classes(names), deltas)
    sides = {"reference": describe(reference, "fp32", args.reference_engine_dir),
             "candidate": describe(candidate, args.dtype, args.engine_dir)}
    label = " vs ".join(f"{s['backend']} {s['dtype']}" for s in (sides["candidate"], sides["reference"]))
    for path in tqdm(files, desc=f"compare-precision ({label})", unit="image", file=sys.stderr,
                     disable=args.no_progress):
        comparison.add(str(path), read_image(path))
    report = {**sides, **comparison.report(), "image_files": [str(p) for p in files]}
    atomic_write_text(args.json, json.dumps(report, indent=2) + "\n")
    if args.plot is not None:
        plot(report, comparison.worst, args.plot, f"{label}, {report['images']} images", candidate.bank.names)
    print(summary(report))
    print(f"wrote {', '.join(map(str, outputs))}")
    return 0


def summary(report: dict[str, Any]) -> str:
    """The report's main figures as a few lines of Markdown."""
    embedding, logits, labels = report["embedding"], report["low_res_logits"], report["labels"]
    lines = [
        f"{report['candidate']['backend']} {report['candidate']['dtype']} against {report['reference']['backend']} "
        f"fp32 on {report['images']} image(s), {len(report['classes'])} class(es):",
        f"- embedding: relative L2 {embedding['rel_l2_mean']:.4f} (max {embedding['rel_l2_max']:.4f}), cosine "
        f"{embedding['cosine_mean']:.5f} (min {embedding['cosine_min']:.5f})",
        f"- low-res logits: relative L2 {logits['rel_l2_mean']:.4f} (max {logits['rel_l2_max']:.4f}), mean |error| "
        f"{logits['abs_error_mean']:.4f}",
        f"- labels equal: {100 * labels['agreement']:.2f} % of pixels (worst image "
        f"{100 * labels['agreement_min_image']:.2f} %), class IoU against the reference: "
        + ("-" if labels["class_iou_mean"] is None else f"{100 * labels['class_iou_mean']:.2f} % mean"),
    ]
    for row in report["confident"]:
        agreement = "-" if row["agreement"] is None else f"{100 * row['agreement']:.3f} %"
        lines.append(f"- where the reference's margin > {row['delta']:g}: {agreement} equal "
                     f"({100 * row['pixel_fraction']:.1f} % of pixels)")
    return "\n".join(lines)
