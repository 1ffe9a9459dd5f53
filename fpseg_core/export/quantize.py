"""`fpseg quantize`: post-training int8 quantization (NNCF) of an `fpseg export-onnx` folder for OpenVINO.

Each graph of the export is read by OpenVINO and quantized with `nncf.quantize` (model type transformer)
on calibration data made from images: the encoder sees the images pre-processed as the pipeline does
(`input_mode` from the export's manifest), the decoder their fp32 embeddings with prompt tokens from a bank
(`--prompts`, every class of it) or, without one, random tokens (N(0, 1), as many classes as the export's
bank had). `subset_size` (default 300) caps the samples NNCF uses per graph. The decoder is kept unquantized
in fp32 by default, since its logits decide the labels directly (`--decoder fp32|bf16|int8`: bf16 is faster
only on CPUs with native bf16, OpenVINO emulates it elsewhere, far slower; int8 quantizes it too).

The result is an export folder OpenVINO runs (`backend openvino`, `dtype int8`): encoder.xml/.bin and
decoder.xml/.bin (OpenVINO IR), and a copy of the source manifest whose `files` list the IR files, with
`precision` (per graph), `calibration` (image count, the sha256 of the sorted list of resolved image paths,
subset size, where the prompt tokens came from) and `source_files` (the ONNX graphs it was made from)
added. The other backends refuse such a folder. As `fpseg export-onnx` does, the old manifest is removed
first, each file is written atomically and the manifest comes last.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._version import __version__
from ..artifacts import SIDECAR, ExportError, check_outputs, file_entry, read_sidecar
from ..files import atomic_write_text, install_staged
from ..image_io import read_image
from ..modeling.build import EMBED_DIM
from ..preprocess import preprocess
from ..prompt_bank import PromptBank

QUANTIZED_KEY = "precision"
GRAPH_PRECISIONS = ("fp32", "bf16", "int8")
DECODER_PRECISIONS = GRAPH_PRECISIONS
DEFAULT_DECODER_PRECISION = "fp32"
DEFAULT_SUBSET_SIZE = 300
IR_FILES = {"encoder": ("encoder.xml", "encoder.bin"), "decoder": ("decoder.xml", "decoder.bin")}
QUANTIZE_OUTPUTS = (SIDECAR, *(name for pair in IR_FILES.values() for name in pair))
WEIGHTS_ROLE = "{role}_weights"
QUANTIZE_COMMAND = "fpseg quantize --onnx {onnx} --calibration IMAGES... --out QUANT_DIR"
GRAPH_FORMAT = "openvino-ir"


def is_quantized(sidecar: Mapping[str, Any]) -> bool:
    """Whether an export manifest describes a folder written by `fpseg quantize` (OpenVINO IR graphs)."""
    return QUANTIZED_KEY in sidecar


def quantized_refusal(folder: str | Path, user: str) -> ExportError:
    """The error for an `fpseg quantize` folder handed to `user` (a backend, a build or a check): only OpenVINO
    runs its IR graphs, so `user` needs the fp32 export it was made from."""
    return ExportError(f"{folder} holds an `fpseg quantize` folder (OpenVINO IR, int8), which {user} cannot use; "
                       "run it with backend auto (or openvino with dtype int8), or pass the fp32 `fpseg export-onnx` "
                       "folder it was made from")


def graph_precisions(sidecar: Mapping[str, Any]) -> dict[str, str]:
    """The recorded precision of each graph of a quantized folder; ExportError where it is malformed."""
    precision = sidecar.get(QUANTIZED_KEY)
    if not (isinstance(precision, dict) and set(precision) == set(IR_FILES)
            and all(p in GRAPH_PRECISIONS for p in precision.values())):
        raise ExportError(f"{SIDECAR} field {QUANTIZED_KEY} {precision!r} is not one of "
                          f"{'/'.join(GRAPH_PRECISIONS)} for each of {', '.join(IR_FILES)}; write the folder "
                          f"again: `{QUANTIZE_COMMAND.format(onnx='ONNX_DIR')} --overwrite`")
    return dict(precision)


def calibration_fingerprint(images: Sequence[str | Path]) -> str:
    """sha256 of the sorted, resolved calibration image paths, one per line."""
    listing = "\n".join(sorted(str(Path(p).resolve()) for p in images))
    return hashlib.sha256(listing.encode()).hexdigest()


def quantize_export(
    onnx_dir: str | Path,
    images: Sequence[str | Path],
    out_dir: str | Path,
    decoder: str = DEFAULT_DECODER_PRECISION,
    subset_size: int = DEFAULT_SUBSET_SIZE,
    prompts: str | Path | None = None,
    overwrite: bool = False,
    seed: int = 0,
) -> dict[str, Any]:
    """Quantize the export in `onnx_dir` to int8 on `images` and write the OpenVINO folder `out_dir`.

    Returns the new manifest. `decoder` is the decoder's precision (int8 quantizes it too). `prompts` is a
    bank for the decoder's calibration tokens (it must fit the export's decoder and prompt size).
    """
    import nncf
    import openvino as ov

    if decoder not in DECODER_PRECISIONS:
        raise ValueError(f"decoder must be one of {', '.join(DECODER_PRECISIONS)}, got {decoder!r}")
    if subset_size < 1:
        raise ValueError(f"subset_size must be a positive number of samples, got {subset_size}")
    if not images:
        raise ValueError("give at least one calibration image (--calibration IMAGES...)")
    source, out = Path(onnx_dir), Path(out_dir)
    sidecar = read_sidecar(source)
    if is_quantized(sidecar):
        raise ExportError(f"{source} is already a quantized folder ({graph_precisions(sidecar)}); pass the fp32 "
                          "`fpseg export-onnx` folder as --onnx")
    if out.resolve() == source.resolve():
        raise ExportError(f"--out {out} is the --onnx folder; choose another --out")
    tokens = _prompt_tokens(sidecar, prompts, seed)
    check_outputs(out, QUANTIZE_OUTPUTS, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    (out / SIDECAR).unlink(missing_ok=True)  # until the new manifest is written, this is no export
    core = ov.Core()
    files = sidecar["files"]
    encoder = core.read_model(str(source / files["encoder"]["name"]))
    decoder_model = core.read_model(str(source / files["decoder"]["name"]))
    size = sidecar["img_size"]
    inputs = [preprocess(read_image(path), size, sidecar["input_mode"])[0].numpy() for path in images]
    used = min(subset_size, len(inputs))
    encoder_fp32 = core.compile_model(encoder, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    embeddings = [encoder_fp32({"image": x})[0] for x in inputs]
    quantized = {"encoder": nncf.quantize(encoder, nncf.Dataset([{"image": x} for x in inputs]),
                                          model_type=nncf.ModelType.TRANSFORMER, subset_size=used)}
    if decoder == "int8":
        samples = [{"image_embeddings": e, "prompt_tokens": tokens} for e in embeddings]
        quantized["decoder"] = nncf.quantize(decoder_model, nncf.Dataset(samples),
                                             model_type=nncf.ModelType.TRANSFORMER, subset_size=used)
    else:
        quantized["decoder"] = decoder_model
    for role, model in quantized.items():
        _save_ir(ov, model, out, *IR_FILES[role])
    manifest = {
        **sidecar,
        "graph_format": GRAPH_FORMAT,
        QUANTIZED_KEY: {"encoder": "int8", "decoder": decoder},
        "calibration": {"images": len(images), "sha256": calibration_fingerprint(images), "subset_size": used,
                        "prompts": str(prompts) if prompts else f"random N(0, 1), {len(tokens)} classes"},
        "source_files": sidecar["files"],
        "files": {key: file_entry(out / name) for role, pair in IR_FILES.items()
                  for key, name in zip((role, WEIGHTS_ROLE.format(role=role)), pair, strict=True)},
        "quantized_by": {"fpseg_core": __version__, "openvino": ov.__version__, "nncf": nncf.__version__},
        "quantized": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    atomic_write_text(out / SIDECAR, json.dumps(manifest, indent=2) + "\n")
    return manifest


def _prompt_tokens(sidecar: Mapping[str, Any], prompts: str | Path | None, seed: int) -> np.ndarray:
    """[N, P, 256] decoder calibration tokens: every class of the bank `prompts`, else random N(0, 1)."""
    prompt_size = sidecar["prompt_size"]
    if prompts is None:
        generator = torch.Generator().manual_seed(seed)
        return torch.randn(sidecar["bank_classes"], prompt_size, EMBED_DIM, generator=generator).numpy()
    bank = PromptBank.load(prompts)
    bank.check_fits(sidecar["decoder_fingerprint"])
    if bank.prompt_size != prompt_size:
        raise ExportError(f"the bank {prompts} has prompt size {bank.prompt_size}, the export takes {prompt_size}; "
                          "pass a bank of the export's prompt size")
    return bank.embeddings.numpy()


def _save_ir(ov: Any, model: Any, out: Path, xml_name: str, bin_name: str) -> None:
    """Write `model` as `xml_name` + `bin_name` in `out`, each file replaced atomically (weights first)."""
    with tempfile.TemporaryDirectory(prefix=".quantize.", dir=out) as scratch:
        staged = Path(scratch) / xml_name
        ov.save_model(model, str(staged), compress_to_fp16=False)
        install_staged(scratch, (bin_name, xml_name), out)
