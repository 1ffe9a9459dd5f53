"""OpenVINO backend: runs an `fpseg export-onnx` folder, or an `fpseg quantize` folder, on the CPU.

`dtype` fp32 or bf16 compiles the ONNX graphs of an export with that inference precision (bf16:
INFERENCE_PRECISION_HINT bf16, matmuls and convolutions in bf16, accumulation in fp32); `dtype` int8 runs
the OpenVINO IR graphs of a folder written by `fpseg quantize`, each graph at the precision its manifest
records (int8 graphs keep their unquantized operations in fp32; a bf16 decoder is compiled with the bf16
hint). Each graph is compiled for latency on one image at a time: PERFORMANCE_HINT LATENCY, NUM_STREAMS 1
and `threads` inference threads (default: torch's thread count). The decoder keeps the export's dynamic
class axis. Where OpenVINO does not list BF16 among this CPU's OPTIMIZATION_CAPABILITIES, bf16 is allowed
with a warning: OpenVINO then emulates it, correct but far slower than fp32.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..artifacts import ExportError, ModelIdentity, check_model, check_prompt_size, read_sidecar
from ..errors import FPSegError
from ..export.quantize import QUANTIZE_COMMAND, graph_precisions, is_quantized
from ..modeling.build import EMBED_DIM

LOGGER = logging.getLogger("fpseg")
INSTALL_HINT = "pip install 'fpseg_ros[openvino]'"
DTYPES = ("fp32", "bf16", "int8")
# OpenVINO's inference precision for the operations of a graph stored at each precision.
INFERENCE_PRECISIONS = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}
DEVICE = "CPU"


def import_openvino() -> Any:
    """The openvino module, or FPSegError naming the extra that installs it."""
    try:
        import openvino
    except ImportError as exc:
        raise FPSegError(f"backend openvino needs the openvino package, which is not importable here ({exc}); "
                         f"{INSTALL_HINT}") from exc
    return openvino


def bf16_warning(core: Any) -> str | None:
    """Why bf16 may not be native on this CPU (OpenVINO lists no BF16 capability), or None where it is."""
    capabilities = core.get_property(DEVICE, "OPTIMIZATION_CAPABILITIES")
    if "BF16" in capabilities:
        return None
    return (f"OpenVINO does not list BF16 among this CPU's optimization capabilities ({', '.join(capabilities)}): "
            "bf16 is then emulated, far slower than fp32 (13x for the MobileSAM encoder on a Xeon without "
            "AVX512-BF16); compare with `fpseg benchmark --backend openvino --dtype bf16`")


class OpenVinoBackend:
    """The encoder and the decoder of an export folder as two compiled OpenVINO models on the CPU.

    The folder must have been made from the model `identity` describes (see `fpseg_core.artifacts`).
    `dtype` fp32 / bf16 needs a plain export, int8 a folder written by `fpseg quantize`; anything else is
    refused with the command that writes a fitting folder. Results come back as torch tensors on `device`.
    """

    name = "openvino"
    batch_encoding = False  # reshaped to one image

    def __init__(self, folder: Path, device: torch.device, identity: ModelIdentity, dtype: str = "fp32",
                 threads: int | None = None) -> None:
        if dtype not in DTYPES:
            raise ValueError(f"dtype for backend openvino must be one of {', '.join(DTYPES)}, got {dtype!r}")
        if device.type != "cpu":
            raise FPSegError(f"backend openvino runs on the CPU, not {device}; use device cpu, or the torch / "
                             "tensorrt backend on the GPU")
        openvino = import_openvino()
        self.folder = Path(folder)
        self.sidecar = read_sidecar(self.folder)
        check_model(self.sidecar, identity, self.folder)
        quantized = is_quantized(self.sidecar)
        if dtype == "int8" and not quantized:
            raise ExportError(f"{self.folder} is an fp32 ONNX export; dtype int8 needs a quantized folder: "
                              f"`{QUANTIZE_COMMAND.format(onnx=self.folder)}`, then pass that --out as engine_dir")
        if dtype != "int8" and quantized:
            raise ExportError(f"{self.folder} holds an `fpseg quantize` folder ({graph_precisions(self.sidecar)}); "
                              f"run it with dtype int8 (or backend auto), or pass the fp32 export it was made from for "
                              f"dtype {dtype}")
        self.device, self.dtype = device, dtype
        precisions = graph_precisions(self.sidecar) if quantized else {"encoder": dtype, "decoder": dtype}
        core = openvino.Core()
        if "bf16" in precisions.values():
            warning = bf16_warning(core)
            if warning:
                LOGGER.warning(warning)
                warnings.warn(warning, stacklevel=2)
        self.threads = threads or torch.get_num_threads()
        self.precisions = precisions
        files = self.sidecar["files"]
        encoder = core.read_model(str(self.folder / files["encoder"]["name"]))
        decoder = core.read_model(str(self.folder / files["decoder"]["name"]))
        size, grid, prompt_size = self.sidecar["img_size"], self.sidecar["embedding_size"], self.sidecar["prompt_size"]
        encoder.reshape({"image": [1, 3, size, size]})
        decoder.reshape({"image_embeddings": [1, EMBED_DIM, grid, grid], "prompt_tokens": [-1, prompt_size, EMBED_DIM]})
        self.encoder = self._compile(core, encoder, precisions["encoder"]).create_infer_request()
        self.decoder = self._compile(core, decoder, precisions["decoder"]).create_infer_request()

    def _compile(self, core: Any, model: Any, precision: str) -> Any:
        return core.compile_model(model, DEVICE, {
            "INFERENCE_PRECISION_HINT": INFERENCE_PRECISIONS[precision],
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_NUM_THREADS": self.threads,
            "NUM_STREAMS": 1,
        })

    def check_prompt_size(self, prompt_size: int) -> None:
        """Refuse a bank of another prompt size than the exported decoder takes (ExportError)."""
        check_prompt_size(self.sidecar, prompt_size, self.folder)

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        self.encoder.infer({"image": _numpy(image)})
        return torch.from_numpy(self.encoder.get_output_tensor(0).data.copy()).to(self.device)

    def decode(self, embedding: torch.Tensor, prompt_tokens: torch.Tensor) -> torch.Tensor:
        self.check_prompt_size(prompt_tokens.shape[1])
        self.decoder.infer({"image_embeddings": _numpy(embedding), "prompt_tokens": _numpy(prompt_tokens)})
        return torch.from_numpy(self.decoder.get_output_tensor(0).data.copy()).to(self.device)


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(tensor.detach().to("cpu", torch.float32).numpy())
