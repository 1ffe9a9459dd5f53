"""`fpseg export-onnx --checkpoint CKPT --out DIR`: encoder and decoder ONNX graphs (prompts as an input)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..checkpoint import load_checkpoint
from ..export.onnx_export import DEFAULT_OPSET, export_onnx, verify_export
from ..modeling.build import ENCODERS
from ..preprocess import INPUT_MODES


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export-onnx", help="export the encoder and decoder as ONNX graphs (prompt tokens are an input)",
        description="Writes encoder.onnx, decoder.onnx (class axis N dynamic) and fpseg_onnx.json to --out, "
                    "then checks them with onnx.checker and against torch with ONNX Runtime.")
    parser.add_argument("--checkpoint", type=Path, required=True, help="SAM / MobileSAM / FPSeg / fpseg_ros .pth")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--encoder", choices=ENCODERS, help="refuse a checkpoint of another encoder")
    parser.add_argument("--prompt-size", type=int, default=64,
                        help="prompt tokens per class, for SAM / MobileSAM checkpoints (FPSeg checkpoints "
                             "carry their own)")
    parser.add_argument("--input-mode", choices=INPUT_MODES, default="squash",
                        help="pre-processing the graphs are meant for (recorded in the sidecar)")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET)
    parser.add_argument("--no-verify", action="store_true", help="skip onnx.checker and the ONNX Runtime check")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    loaded = load_checkpoint(args.checkpoint, encoder=args.encoder, prompt_size=args.prompt_size)
    print(f"exporting {loaded.config.encoder} ({args.checkpoint}) to {args.out} ...")
    sidecar = export_onnx(loaded.model, loaded.config, args.out, args.input_mode, args.opset)
    print(f"wrote {args.out}: encoder {loaded.config.img_size}x{loaded.config.img_size} -> "
          f"{sidecar['embedding_size']}x{sidecar['embedding_size']}, decoder N x {sidecar['prompt_size']} x 256 "
          f"prompt tokens (N = 1..{sidecar['max_classes']}), opset {args.opset}, "
          f"decoder fingerprint {sidecar['decoder_fingerprint']}")
    if not args.no_verify:
        errors = verify_export(args.out, loaded.model)
        print("verified (onnx.checker; ONNX Runtime vs torch, max relative error): "
              + ", ".join(f"{k} {v:.1e}" for k, v in errors.items()))
    return 0
