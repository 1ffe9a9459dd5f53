"""`fpseg build-engine --onnx DIR --out DIR`: TensorRT engines with a dynamic class axis, on the target GPU."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..backends.tensorrt_backend import (
    BUILD_LOG,
    DEFAULT_MAX_CLASSES,
    DEFAULT_WORKSPACE_GIB,
    FP16_SCOPES,
    build_engines,
)
from .common import add_overwrite_argument, check_output_folder


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "build-engine", help="build TensorRT engines from an export-onnx folder (needs TensorRT 8.6-10.x and a GPU)",
        description="Run it on the device that will run the engines (engines are bound to its TensorRT version "
                    "and GPU architecture), with nothing else on the GPU. The decoder engine takes "
                    "1..--max-classes classes without a rebuild. The export's opset and ops are checked against "
                    "what this TensorRT imports. The timing cache in --out (one per TensorRT version and compute "
                    "capability) is reused; the builder's log (INFO) is written next to the engines. The engine "
                    "sidecar, written last, binds the engines to the export's model; engines already in --out "
                    "are refused unless --overwrite.")
    parser.add_argument("--onnx", type=Path, required=True, help="folder written by `fpseg export-onnx`")
    parser.add_argument("--out", type=Path, help="engine folder (default: the --onnx folder, which lets "
                                                 "backend 'auto' find both)")
    parser.add_argument("--fp16", nargs="?", const="all", choices=FP16_SCOPES,
                        help="fp16 kernels: --fp16 (or --fp16 all) for both engines, --fp16 encoder for the encoder "
                             "only (the decoder stays fp32); LayerNorm runs in fp32 either way")
    parser.add_argument("--tf32", action="store_true",
                        help="allow TF32 in fp32 layers on Ampere and newer GPUs (default: off, fp32 is fp32)")
    parser.add_argument("--max-classes", type=int, default=DEFAULT_MAX_CLASSES,
                        help="most classes one decoder call takes (more are run in several passes)")
    parser.add_argument("--opt-classes", type=int,
                        help="class count the decoder engine is tuned for (default: the class count of the bank "
                             "the export was made with, at most --max-classes); set it to the classes you run")
    parser.add_argument("--workspace-gib", type=float, default=DEFAULT_WORKSPACE_GIB)
    add_overwrite_argument(parser, "replace engines already in --out (default: refuse them, exit code 2)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    out = check_output_folder(args.out or args.onnx)
    engines = build_engines(args.onnx, out, args.fp16, args.max_classes, args.workspace_gib, args.overwrite,
                            opt_classes=args.opt_classes, tf32=args.tf32)
    precision, profile = engines["precision"], engines["profile"]
    print(f"wrote {out}: TensorRT {engines['tensorrt_version']} engines for {engines['device_name']} (compute "
          f"capability {engines['compute_capability']}; encoder {precision['encoder']}, decoder "
          f"{precision['decoder']}, TF32 {'on' if engines['tf32'] else 'off'}; classes {profile['min']}.."
          f"{profile['max']}, tuned for {profile['opt']}); log in {out / BUILD_LOG}")
    return 0
