"""Arguments and helpers shared by several subcommands."""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

from ..constants import BACKENDS, DEVICE_FORMS, DTYPE_NAMES, FUSIONS, INPUT_MODES
from ..files import OutputExistsError
from ..jobs.distributed import is_main_process, shutdown_distributed
from ..jobs.options import device_type, resolve_config
from ..modeling.build import ENCODERS, tiny_config
from ..predictor import FPSeg
from ..weights import REGISTRY, resolve_checkpoint

# The backends an fp32 reference runs on (`benchmark`, `compare-precision`).
REFERENCE_BACKENDS = ("onnxruntime", "openvino", "torch")
RANDOM_WARNING = "WARNING: --random-weights: the network is random, its labels mean nothing (smoke tests / timing)"


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """--checkpoint / --prompts / --random-weights and the inference options every runtime command takes."""
    group = parser.add_argument_group("model")
    group.add_argument("--checkpoint", type=Path,
                       help="SAM / MobileSAM / FPSeg / fpseg_ros checkpoint (.pth), or the name of cached weights "
                            f"({', '.join(REGISTRY)}; `fpseg weights fetch NAME` caches them)")
    group.add_argument("--prompts", type=Path, help="prompt bank (.safetensors); required for SAM checkpoints")
    group.add_argument("--force-prompts", action="store_true",
                       help="use a prompt bank even if it was tuned for another decoder")
    group.add_argument("--encoder", choices=ENCODERS, help="refuse a checkpoint of another encoder")
    group.add_argument("--random-weights", action="store_true",
                       help="no checkpoint: a small random network (prints a warning; for smoke tests)")
    group.add_argument("--device", type=device_type, default="cpu", help=f"{DEVICE_FORMS} (default: cpu)")
    group.add_argument("--input-mode", choices=INPUT_MODES, default="squash",
                       help="squash the image to the encoder size (FPSeg) or letterbox it (SAM)")
    group.add_argument("--fusion", choices=FUSIONS, default="argmax")
    group.add_argument("--threshold", type=float, default=0.0, help="a class is present where its logit > this")
    add_backend_arguments(group)


def add_backend_arguments(group: argparse._ActionsContainer) -> None:
    """--backend / --engine-dir / --dtype: where the network runs (see fpseg_core.backends)."""
    group.add_argument("--backend", choices=BACKENDS, default="auto",
                       help="auto: tensorrt if --engine-dir has engines and a GPU is usable, else onnxruntime "
                            "if it has an ONNX export (openvino at int8 if it is an `fpseg quantize` folder); "
                            "torch without --engine-dir (a missing or mismatched --engine-dir is an error); "
                            "openvino: CPU, --dtype fp32 or bf16 on an export")
    group.add_argument("--engine-dir", type=Path,
                       help="folder written by `fpseg export-onnx` (and `fpseg build-engine`)")
    group.add_argument("--dtype", choices=DTYPE_NAMES, default="fp32", help="torch backend precision")


def load_model(args: argparse.Namespace) -> FPSeg:
    options = {"device": args.device, "input_mode": args.input_mode, "fusion": args.fusion,
               "threshold": args.threshold, "backend": args.backend, "engine_dir": args.engine_dir,
               "dtype": args.dtype}
    if args.random_weights:
        print(RANDOM_WARNING, file=sys.stderr)
        with warnings.catch_warnings():  # the line above already says it, in the CLI's words
            warnings.simplefilter("ignore", UserWarning)
            return FPSeg.random(tiny_config(args.encoder or "mobilesam"), **options)
    if args.checkpoint is None:
        raise ValueError("--checkpoint is required (or --random-weights for a smoke test)")
    resolved = resolve_checkpoint(args.checkpoint)  # a cached name's bank is the default prompts
    return FPSeg.from_checkpoint(resolved.checkpoint, prompts=args.prompts or resolved.prompts, encoder=args.encoder,
                                 force_prompts=args.force_prompts, **options)




OVERWRITE_HELP = "replace outputs that already exist (default: refuse them, exit code 2)"
RUN_OVERWRITE_HELP = ("start over in an --out that holds a previous run: its outputs are deleted first (default: "
                      "refuse it; --resume continues it)")


def add_overwrite_argument(parser: argparse.ArgumentParser, help: str = OVERWRITE_HELP) -> None:
    """--overwrite: the one switch every writing command takes to replace existing outputs."""
    parser.add_argument("--overwrite", action="store_true", help=help)


def check_output_folder(path: Path, flag: str = "--out") -> Path:
    """Refuse an output folder that names an existing file (before any work is done); returns `path`."""
    if path.exists() and not path.is_dir():
        raise OutputExistsError(f"{flag} {path} is a file, but a folder is expected there; choose another {flag}")
    return path


def run_training_command(args: argparse.Namespace, config_cls: type, job: Callable[..., Path],
                         result_file: str) -> int:
    """The body of `fpseg train`, `distill` and `train-regions`: resolve the configuration, refuse an --out that
    is a file, run `job(config, overwrite=...)` (under torchrun too), and print the main output's path once."""
    config = resolve_config(config_cls, args)
    check_output_folder(Path(config.out))
    try:
        out = job(config, overwrite=args.overwrite)
    finally:
        shutdown_distributed()
    if is_main_process():
        print(out / result_file)
    return 0
