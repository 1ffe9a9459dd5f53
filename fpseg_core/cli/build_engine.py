"""`fpseg build-engine --onnx DIR --out DIR`: TensorRT engines with a dynamic class axis, on the target GPU."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..backends.tensorrt_backend import BUILD_LOG, DEFAULT_MAX_CLASSES, DEFAULT_WORKSPACE_GIB, build_engines
from .common import add_overwrite_argument, check_output_folder


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "build-engine", help="build TensorRT engines from an export-onnx folder (needs TensorRT 10 and a GPU)",
        description="The decoder engine takes 1..--max-classes classes without a rebuild. The timing cache in "
                    "--out is reused; the builder's log is kept next to the engines. The engine sidecar, written "
                    "last, binds the engines to the export's model; engines already in --out are refused "
                    "unless --overwrite.")
    parser.add_argument("--onnx", type=Path, required=True, help="folder written by `fpseg export-onnx`")
    parser.add_argument("--out", type=Path, help="engine folder (default: the --onnx folder, which lets "
                                                 "backend 'auto' find both)")
    parser.add_argument("--fp16", action="store_true", help="allow fp16 kernels")
    parser.add_argument("--max-classes", type=int, default=DEFAULT_MAX_CLASSES,
                        help="most classes one decoder call takes (more are run in several passes)")
    parser.add_argument("--workspace-gib", type=float, default=DEFAULT_WORKSPACE_GIB)
    add_overwrite_argument(parser, "replace engines already in --out (default: refuse them, exit code 2)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    out = check_output_folder(args.out or args.onnx)
    engines = build_engines(args.onnx, out, args.fp16, args.max_classes, args.workspace_gib, args.overwrite)
    print(f"wrote {out}: TensorRT {engines['tensorrt_version']} engines for {engines['gpu']} "
          f"({'fp16' if args.fp16 else 'fp32'}, 1..{args.max_classes} classes); log in {out / BUILD_LOG}")
    return 0
