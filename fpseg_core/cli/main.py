"""`fpseg`: one entry point, one module per subcommand (each defines `register(subparsers)`)."""

from __future__ import annotations

import argparse
import importlib
import sys

from ..errors import FPSegError

# Subcommand modules in fpseg_core/cli/, in the order `fpseg --help` lists them.
COMMAND_MODULES = ("segment", "info", "prompts", "bag_from_cityscapes", "eval_bag", "precompute", "train",
                   "distill", "eval", "eval_labels", "export_onnx", "build_engine", "benchmark")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fpseg", description="FPSeg: promptable, class-flexible semantic segmentation (SAM / MobileSAM)"
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"{__package__}.{name.replace('-', '_')}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (FPSegError, KeyError, ValueError, FileNotFoundError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"fpseg {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
