"""`fpseg`: one entry point, one module per subcommand (each defines `register(subparsers)`)."""

from __future__ import annotations

import argparse
import importlib
import sys

from ..errors import FPSegError

# Subcommand modules in fpseg_core/cli/, in the order `fpseg --help` lists them.
COMMAND_MODULES = ("weights", "doctor", "segment", "info", "prompts", "bag_from_cityscapes", "eval_bag",
                   "synthetic_data", "precompute",
                   "train", "distill", "eval", "eval_labels", "train_regions", "eval_regions", "export_onnx",
                   "build_engine", "quantize", "compare_precision", "benchmark")
# What to do about an OSError on a path the user gave, by kind (the first match wins).
OS_ERROR_HINTS: dict[type[OSError], str] = {
    FileNotFoundError: "check the path",
    FileExistsError: "a file is in the way: remove it or choose another path",
    NotADirectoryError: "a part of the path is a file, not a folder: choose another path",
    IsADirectoryError: "it is a folder: give a file path",
    PermissionError: "check its permissions (ls -l) or choose another path",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fpseg", description="FPSeg: promptable, class-flexible semantic segmentation (SAM / MobileSAM)"
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"{__package__}.{name.replace('-', '_')}").register(subparsers)
    return parser


def os_error_message(exc: OSError) -> str:
    """One line for an OSError the system raised: the path, the reason and what to do about it."""
    if exc.filename is None:  # raised by the project with its own message, e.g. FileNotFoundError("image x ...")
        return str(exc)
    path = exc.filename if exc.filename2 is None else f"{exc.filename} -> {exc.filename2}"
    hint = next((text for kind, text in OS_ERROR_HINTS.items() if isinstance(exc, kind)), "")
    return f"{path}: {exc.strerror or exc}" + (f"; {hint}" if hint else "")


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; a user's mistake (FPSegError, a bad value or key, an unusable path) ends in one line
    `fpseg <command>: error: ...` on stderr and exit code 2. Programming errors keep their traceback."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (FPSegError, KeyError, ValueError, OSError) as exc:
        if isinstance(exc, KeyError) and exc.args:
            message = exc.args[0]
        elif isinstance(exc, OSError) and not isinstance(exc, FPSegError):
            message = os_error_message(exc)
        else:
            message = exc
        print(f"fpseg {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
