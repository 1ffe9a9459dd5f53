"""Deployment artefacts: the manifests (sidecars) of an `fpseg export-onnx` folder and of TensorRT engines,
and every check that binds them to the model they were made from.

`fpseg_onnx.json` (written last by `fpseg export-onnx`) records the encoder and decoder weight fingerprints,
the image size, the prompt size, the input mode, the opset, each graph's ONNX op types and each graph's size
and sha256; `fpseg_engines.json` (written last by `fpseg build-engine`) records the TensorRT version, the
GPU's compute capability and name, each engine's precision, TF32, the decoder's class profile
(min / opt / max), each engine's size and sha256, and the ONNX manifest the engines were built from. Engines
run only under the TensorRT version and on the GPU architecture they were built for. A backend that runs an
export or engines checks them against the loaded model when it is built, and every prompt bank swapped in
against the prompt size; any mismatch is an ExportError naming the field, both values and the command
that fixes it. Nothing here imports `export/` or `backends/`: both import this module.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import FPSegError
from .files import check_output
from .prompt_bank import decoder_fingerprint, weights_fingerprint

if TYPE_CHECKING:
    import torch

    from .modeling.fpseg import FPSegModel

SIDECAR = "fpseg_onnx.json"
ENGINE_SIDECAR = "fpseg_engines.json"
ENCODER_FILE = "encoder.onnx"
DECODER_FILE = "decoder.onnx"
GRAPH_FILES = {"encoder": ENCODER_FILE, "decoder": DECODER_FILE}
# A graph over protobuf's 2 GiB limit (SAM vit_h's encoder) keeps its weights in one file beside it, listed in
# the manifest's `files` under its own role: {"encoder_data": "encoder.onnx.data", ...}.
EXTERNAL_DATA_BYTES = 2**31 - 2**24  # torch's exporter switches to external weights at 2 GiB; leave it headroom
DATA_FILES = {f"{role}_data": f"{name}.data" for role, name in GRAPH_FILES.items()}
ENGINE_FILES = {"encoder": "encoder.engine", "decoder": "decoder.engine"}
EXPORT_OUTPUTS = (SIDECAR, *GRAPH_FILES.values(), *DATA_FILES.values())  # what `fpseg export-onnx` refuses to replace
ENGINE_OUTPUTS = (ENGINE_SIDECAR, *ENGINE_FILES.values())  # what `fpseg build-engine` refuses to replace
FORMAT = "fpseg-onnx-export/3"
ENGINE_FORMAT = "fpseg-tensorrt-engines/3"
LAYERNORM_OPSET = 17  # the first ONNX opset with LayerNormalization; below it LayerNorm is decomposed
OPSETS = (16, LAYERNORM_OPSET)  # what `fpseg export-onnx --opset` writes (16 for parsers without LayerNormalization)
PRECISIONS = ("fp32", "fp16")
ENCODER_PREFIXES = ("image_encoder.",)
EXPORT_COMMAND = "fpseg export-onnx --checkpoint CKPT --out {folder}{options} --overwrite"
ENGINE_COMMAND = "fpseg build-engine --onnx ONNX_DIR --out {folder} --overwrite"
HASH_CHUNK = 1 << 20
# Manifest fields a backend must match, with the words messages use for them.
MODEL_FIELDS = {
    "img_size": "image size",
    "input_mode": "input mode",
    "encoder_fingerprint": "encoder fingerprint",
    "decoder_fingerprint": "decoder fingerprint",
}


class ExportError(FPSegError):
    """An export or engine folder that is missing, incomplete, or made for another model."""


@dataclass(frozen=True)
class EngineTarget:
    """Where engines are built or run: the TensorRT version and the GPU (compute capability 'major.minor', name)."""

    tensorrt_version: str
    compute_capability: str
    device_name: str


def encoder_fingerprint(state_dict: Mapping[str, torch.Tensor]) -> str:
    """Fingerprint of the image encoder's weights (what `fpseg distill` changes while the decoder stays)."""
    return weights_fingerprint(state_dict, ENCODER_PREFIXES)


@dataclass(frozen=True)
class ModelIdentity:
    """What an export or engine folder must have been made from to run for a model in a pipeline."""

    encoder_fingerprint: str
    decoder_fingerprint: str
    img_size: int
    input_mode: str

    @classmethod
    def of(cls, model: FPSegModel, input_mode: str) -> ModelIdentity:
        """The identity of `model` run with pre-processing `input_mode`."""
        state = model.state_dict()
        return cls(encoder_fingerprint(state), decoder_fingerprint(state), int(model.img_size), input_mode)


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def file_entry(path: Path) -> dict[str, Any]:
    """What a manifest records of one written file: its name in the folder, size and sha256."""
    return {"name": path.name, "bytes": path.stat().st_size, "sha256": sha256_file(path)}


def has_onnx_export(folder: Path) -> bool:
    """Whether `folder` holds an export or part of one (what is wrong with it is `read_sidecar`'s to say)."""
    return any((folder / name).is_file() for name in EXPORT_OUTPUTS)


def has_engines(folder: Path) -> bool:
    """Whether `folder` holds engines or part of them (what is wrong is `read_engine_sidecar`'s to say)."""
    return any((folder / name).is_file() for name in ENGINE_OUTPUTS)


def check_outputs(folder: Path, names: Iterable[str], overwrite: bool) -> None:
    """Refuse to write into `folder` where one of `names` exists, unless `overwrite` (`--overwrite`)."""
    for name in names:
        check_output(folder / name, overwrite)


def _is_engines(manifest: Mapping[str, Any]) -> bool:
    return manifest.get("format") == ENGINE_FORMAT


def _export_command(folder: Path | str, input_mode: str | None = None) -> str:
    return EXPORT_COMMAND.format(folder=folder, options=f" --input-mode {input_mode}" if input_mode else "")


def _command(manifest: Mapping[str, Any], folder: Path, input_mode: str | None = None) -> str:
    """The command(s) that write a fitting `folder` of the kind `manifest` describes (for `input_mode`)."""
    if _is_engines(manifest):
        return f"`{_export_command('ONNX_DIR', input_mode)}` then `{ENGINE_COMMAND.format(folder=folder)}`"
    return f"`{_export_command(folder, input_mode)}`"


def _what(manifest: Mapping[str, Any], folder: Path) -> str:
    return f"{'the TensorRT engine folder' if _is_engines(manifest) else 'the ONNX export'} {folder}"


def _manifest_name(manifest: Mapping[str, Any]) -> str:
    return ENGINE_SIDECAR if _is_engines(manifest) else SIDECAR


def _model_manifest(manifest: Mapping[str, Any]) -> Mapping[str, Any]:
    """The fields describing the model: an engine manifest carries the ONNX manifest it was built from."""
    return manifest["onnx"] if _is_engines(manifest) else manifest


def _read_json(path: Path, expected_format: str, fix: str) -> dict[str, Any]:
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ExportError(f"{path} is not readable JSON ({exc}); {fix}") from exc
    found = manifest.get("format") if isinstance(manifest, dict) else None
    if found != expected_format:
        raise ExportError(f"{path} has format {found!r}, this fpseg reads {expected_format!r}; {fix}")
    return manifest


def _check_file_entries(files: object, path: Path, fix: str) -> None:
    """The manifest's `files` lists at least the encoder and the decoder, each a plain file name in the folder
    with an integer size and a sha256: a manifest that lists less would let unchecked files through."""
    def valid(entry: object) -> bool:
        return (isinstance(entry, dict) and isinstance(entry.get("name"), str)
                and Path(entry["name"]).name == entry["name"] not in ("", ".", "..")
                and isinstance(entry.get("bytes"), int) and isinstance(entry.get("sha256"), str))

    if not isinstance(files, dict) or not {"encoder", "decoder"} <= files.keys() or not all(
            valid(entry) for entry in files.values()):
        raise ExportError(f"{path} is malformed: 'files' must list the encoder and the decoder, each with a file "
                          f"name in the folder, its size and sha256; found {files!r:.200}; write it again: {fix}")


def _check_files(manifest: Mapping[str, Any], folder: Path) -> None:
    """Each file the manifest lists exists with the recorded size and sha256 (the cheap size check first)."""
    noun, sidecar = ("engine" if _is_engines(manifest) else "graph"), _manifest_name(manifest)
    _check_file_entries(manifest.get("files"), folder / sidecar, _command(manifest, folder))
    for role, entry in manifest["files"].items():
        path = folder / entry["name"]
        graph, _, part = role.partition("_")  # encoder_data (ONNX), encoder_weights (OpenVINO IR): weights
        what = f"{graph} {'weights' if part else noun}"
        if not path.is_file():
            raise ExportError(f"{folder} lacks the {what} {entry['name']}; write it again: "
                              f"{_command(manifest, folder)}")
        size = path.stat().st_size
        if size != entry["bytes"]:
            found, recorded = f"{size} bytes", f"{entry['bytes']} bytes"
        else:
            found, recorded = f"sha256 {sha256_file(path)}", f"sha256 {entry['sha256']}"
        if found != recorded:
            raise ExportError(
                f"{path} is not the {what} {sidecar} describes: it has {found}, {sidecar} records "
                f"{recorded} (replaced after the export, or an interrupted write); write it again: "
                f"{_command(manifest, folder)}"
            )


def read_sidecar(folder: str | Path) -> dict[str, Any]:
    """The manifest of an export folder, its graphs checked against the recorded sizes and sha256.

    Raises ExportError saying what is missing or changed and the command that makes a good export.
    """
    folder = Path(folder)
    fix = f"export one: `{_export_command(folder)}`"
    if not folder.is_dir():
        raise ExportError(f"{folder} does not exist; {fix}")
    path = folder / SIDECAR
    if not path.is_file():
        raise ExportError(f"{folder} has no {SIDECAR}: it is not an `fpseg export-onnx` folder (or its export "
                          f"was interrupted); {fix}")
    manifest = _read_json(path, FORMAT, fix)
    _check_files(manifest, folder)
    return manifest


def read_engine_sidecar(folder: str | Path, target: EngineTarget, check_files: bool = True) -> dict[str, Any]:
    """The manifest of an engine folder, refusing engines built for another TensorRT version or GPU architecture,
    a manifest with malformed fields, or (`check_files`) changed engine files.

    Another GPU of the same compute capability is not refused (see `other_device`).
    """
    folder = Path(folder)
    fix = f"build them here: `{ENGINE_COMMAND.format(folder=folder)}`"
    path = folder / ENGINE_SIDECAR
    if not path.is_file():
        raise ExportError(f"{folder} has no {ENGINE_SIDECAR}; {fix}")
    manifest = _read_json(path, ENGINE_FORMAT, fix)
    _check_engine_fields(manifest, path, fix)
    built = (manifest["tensorrt_version"], manifest["compute_capability"])
    if built != (target.tensorrt_version, target.compute_capability):
        raise ExportError(f"the engines in {folder} were built with TensorRT {built[0]} for compute capability "
                          f"{built[1]} ({manifest['device_name']}), this is TensorRT {target.tensorrt_version} on "
                          f"compute capability {target.compute_capability} ({target.device_name}); engines run "
                          f"only where they were built: {fix}")
    if check_files:
        _check_files(manifest, folder)
    return manifest


def other_device(manifest: Mapping[str, Any], target: EngineTarget, folder: str | Path) -> str | None:
    """The warning for engines built on another GPU of the same compute capability (TensorRT runs them, but
    their kernels were chosen for the GPU that built them), or None when the device names match."""
    if manifest["device_name"] == target.device_name:
        return None
    return (f"the engines in {folder} were built on {manifest['device_name']}, this GPU is {target.device_name} "
            f"(the same compute capability {target.compute_capability}): they run, but may be slow; rebuild them "
            f"here: `{ENGINE_COMMAND.format(folder=folder)}`")


def _check_engine_fields(manifest: Mapping[str, Any], path: Path, fix: str) -> None:
    """Refuse an engine manifest whose target, precision, TF32 or class profile fields are missing or malformed."""
    problems = [f"{key} is not a string" for key in ("tensorrt_version", "compute_capability", "device_name")
                if not isinstance(manifest.get(key), str)]
    precision = manifest.get("precision")
    if not (isinstance(precision, dict) and set(precision) == set(ENGINE_FILES)
            and all(p in PRECISIONS for p in precision.values())):
        problems.append(f"precision {precision!r} is not one of {'/'.join(PRECISIONS)} for each of "
                        f"{', '.join(ENGINE_FILES)}")
    if not isinstance(manifest.get("tf32"), bool):
        problems.append(f"tf32 {manifest.get('tf32')!r} is not true or false")
    profile = manifest.get("profile")
    bounds = [profile.get(key) for key in ("min", "opt", "max")] if isinstance(profile, dict) else []
    if not (len(bounds) == 3 and all(isinstance(b, int) for b in bounds) and 1 <= bounds[0] <= bounds[1] <= bounds[2]):
        problems.append(f"profile {profile!r} is not {{min, opt, max}} with 1 <= min <= opt <= max")
    if problems:
        raise ExportError(f"{path} is malformed: {'; '.join(problems)}; {fix}")


def check_model(manifest: Mapping[str, Any], identity: ModelIdentity, folder: str | Path) -> None:
    """Refuse an export / engines made from another model or for another image size or input mode.

    Every mismatching field is named with both values, then the command that writes a fitting folder.
    """
    folder = Path(folder)
    recorded = _model_manifest(manifest)
    sidecar = _manifest_name(manifest)
    mismatches = [f"{words} {recorded[key]!r} in {sidecar}, {getattr(identity, key)!r} in the loaded pipeline"
                  for key, words in MODEL_FIELDS.items() if recorded[key] != getattr(identity, key)]
    if mismatches:
        raise ExportError(f"{_what(manifest, folder)} does not fit the loaded pipeline: {'; '.join(mismatches)}; "
                          f"export this model again: {_command(manifest, folder, identity.input_mode)}")


def check_prompt_size(manifest: Mapping[str, Any], prompt_size: int, folder: str | Path) -> None:
    """Refuse prompt tokens of another prompt size than the exported decoder takes."""
    folder = Path(folder)
    expected = _model_manifest(manifest)["prompt_size"]
    if prompt_size != expected:
        raise ExportError(
            f"{_what(manifest, folder)} takes prompt size {expected}, the prompt bank has prompt size "
            f"{prompt_size}; use a bank of prompt size {expected}, or export the model of prompt size "
            f"{prompt_size}: {_command(manifest, folder)}"
        )
