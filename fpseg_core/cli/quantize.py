"""`fpseg quantize --onnx DIR --calibration IMAGES... --out DIR`: an int8 OpenVINO folder of an ONNX export."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..artifacts import check_outputs
from ..constants import QUANTIZED_DTYPES
from ..export.quantize import (
    DECODER_PRECISIONS,
    DEFAULT_DECODER_PRECISION,
    DEFAULT_SUBSET_SIZE,
    QUANTIZE_OUTPUTS,
    quantize_export,
)
from .common import add_overwrite_argument, check_output_folder


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "quantize", help="int8 post-training quantization (NNCF) of an ONNX export, for backend openvino",
        description="Quantizes the encoder (and with --decoder int8 the decoder) of an `fpseg export-onnx` "
                    "folder with NNCF on calibration images, and writes OpenVINO IR graphs and, last, "
                    "fpseg_onnx.json (the export's manifest plus precision and calibration) to --out. Run it "
                    "with --backend auto (which picks openvino at int8 for it); the other backends refuse it. "
                    "Needs pip install 'fpseg_ros[openvino]'.")
    parser.add_argument("--onnx", type=Path, required=True, help="folder written by `fpseg export-onnx`")
    parser.add_argument("--calibration", type=Path, nargs="+", required=True,
                        help="calibration images, like the images the model will see")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--dtype", choices=QUANTIZED_DTYPES, default=QUANTIZED_DTYPES[0],
                        help="precision of the quantized graphs")
    parser.add_argument("--decoder", choices=DECODER_PRECISIONS, default=DEFAULT_DECODER_PRECISION,
                        help=f"decoder precision (default {DEFAULT_DECODER_PRECISION}: unquantized; bf16: run with "
                             "the bf16 hint, fast only on CPUs with native bf16; int8: quantized too, at a higher "
                             "cost in accuracy)")
    parser.add_argument("--subset-size", type=int, default=DEFAULT_SUBSET_SIZE,
                        help=f"at most this many calibration samples per graph (default {DEFAULT_SUBSET_SIZE})")
    parser.add_argument("--prompts", type=Path,
                        help="prompt bank for the decoder's calibration tokens (default: random tokens; "
                             "matters only with --decoder int8)")
    add_overwrite_argument(parser, "replace a quantized folder already in --out (default: refuse it, exit code 2)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    check_output_folder(args.out)
    check_outputs(args.out, QUANTIZE_OUTPUTS, args.overwrite)  # before any work is done
    print(f"quantizing {args.onnx} to {args.dtype} on {len(args.calibration)} calibration image(s) "
          f"(decoder {args.decoder}) ...")
    manifest = quantize_export(args.onnx, args.calibration, args.out, decoder=args.decoder,
                               subset_size=args.subset_size, prompts=args.prompts, overwrite=args.overwrite)
    calibration = manifest["calibration"]
    print(f"wrote {args.out}: encoder {manifest['precision']['encoder']}, decoder {manifest['precision']['decoder']}; "
          f"calibrated on {calibration['subset_size']} of {calibration['images']} image(s) (sha256 "
          f"{calibration['sha256'][:12]}); run it with --engine-dir {args.out} (--backend auto picks openvino at int8)")
    return 0
