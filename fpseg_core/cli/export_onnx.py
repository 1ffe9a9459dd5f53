"""`fpseg export-onnx --checkpoint CKPT --out DIR`: encoder and decoder ONNX graphs (prompts as an input)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..artifacts import EXPORT_OUTPUTS, OPSETS, check_outputs
from ..backends.onnxruntime_backend import verify_export
from ..checkpoint import load_checkpoint
from ..constants import INPUT_MODES
from ..export.onnx_export import DEFAULT_OPSET, export_onnx
from ..modeling.build import ENCODERS
from ..weights import resolve_checkpoint
from .common import add_overwrite_argument, check_output_folder


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export-onnx", help="export the encoder and decoder as ONNX graphs (prompt tokens are an input)",
        description="Writes encoder.onnx, decoder.onnx (class axis N dynamic) and, last, fpseg_onnx.json "
                    "(which binds them to this checkpoint's weights) to --out, then checks them with "
                    "onnx.checker and against torch with ONNX Runtime. An --out holding an export is refused "
                    "unless --overwrite.")
    parser.add_argument("--checkpoint", type=Path, required=True,
                        help="SAM / MobileSAM / FPSeg / fpseg_ros .pth, or a weights name fetched with "
                             "`fpseg weights fetch`")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--encoder", choices=ENCODERS, help="refuse a checkpoint of another encoder")
    parser.add_argument("--prompt-size", type=int, default=64,
                        help="prompt tokens per class, for SAM / MobileSAM checkpoints (FPSeg checkpoints "
                             "carry their own)")
    parser.add_argument("--input-mode", choices=INPUT_MODES, default="squash",
                        help="pre-processing the graphs are meant for (recorded in the sidecar)")
    parser.add_argument("--opset", type=int, choices=OPSETS, default=DEFAULT_OPSET,
                        help="17: LayerNorm as LayerNormalization (TensorRT 8.6 / 10, fp16-safe); 16: LayerNorm "
                             "decomposed, for ONNX parsers without LayerNormalization (TensorRT 8.5, which "
                             "`fpseg build-engine` does not support; such engines are unsafe in fp16)")
    parser.add_argument("--no-verify", action="store_true", help="skip onnx.checker and the ONNX Runtime check")
    add_overwrite_argument(parser, "replace an export already in --out (default: refuse it, exit code 2)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    check_output_folder(args.out)
    check_outputs(args.out, EXPORT_OUTPUTS, args.overwrite)  # before the checkpoint is loaded
    loaded = load_checkpoint(resolve_checkpoint(args.checkpoint).checkpoint, encoder=args.encoder,
                             prompt_size=args.prompt_size)
    print(f"exporting {loaded.config.encoder} ({args.checkpoint}) to {args.out} ...")
    sidecar = export_onnx(loaded.model, loaded.config, args.out, args.input_mode, args.opset, args.overwrite)
    print(f"wrote {args.out}: encoder {loaded.config.img_size}x{loaded.config.img_size} -> "
          f"{sidecar['embedding_size']}x{sidecar['embedding_size']}, decoder N x {sidecar['prompt_size']} x 256 "
          f"prompt tokens (N = 1..{sidecar['max_classes']}), opset {args.opset}, "
          f"encoder fingerprint {sidecar['encoder_fingerprint']}, decoder fingerprint {sidecar['decoder_fingerprint']}")
    if not args.no_verify:
        errors = verify_export(args.out, loaded.model)
        print("verified (onnx.checker; ONNX Runtime vs torch, max relative error): "
              + ", ".join(f"{k} {v:.1e}" for k, v in errors.items()))
    return 0
