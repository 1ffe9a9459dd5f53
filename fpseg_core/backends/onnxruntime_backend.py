"""ONNX Runtime backend: runs the graphs of an `fpseg export-onnx` folder (the CPU default without a GPU)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..artifacts import GRAPH_FILES, ExportError, ModelIdentity, check_model, check_prompt_size, read_sidecar
from ..errors import FPSegError
from ..export.quantize import is_quantized, quantized_refusal
from ..modeling.build import EMBED_DIM
from ..modeling.fpseg import FPSegModel

VERIFY_TOLERANCE = 1e-3


class OnnxRuntimeBackend:
    """encoder.onnx and decoder.onnx in two ONNX Runtime sessions.

    The export must have been made from the model `identity` describes (see `fpseg_core.artifacts`).
    CPU sessions use `threads` intra-op threads (default: torch's thread count). On a CUDA device the CUDA
    execution provider is used where this onnxruntime build has it; inputs and outputs pass through host
    memory as numpy arrays, and results come back as torch tensors on `device`.
    """

    name = "onnxruntime"
    batch_encoding = False  # encoder.onnx is exported for one image

    def __init__(self, folder: Path, device: torch.device, identity: ModelIdentity,
                 threads: int | None = None) -> None:
        import onnxruntime as ort

        self.folder = Path(folder)
        self.sidecar = read_sidecar(self.folder)
        check_model(self.sidecar, identity, self.folder)
        self.device = device
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # ORT's idle workers spin by default, taking the cores from the torch work that follows each run.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = ["CPUExecutionProvider"]
        if device.type == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise FPSegError("this onnxruntime build has no CUDA provider; use device cpu, or the torch / "
                                 "tensorrt backend on the GPU (or pip install onnxruntime-gpu)")
            providers.insert(0, "CUDAExecutionProvider")
        files = self.sidecar["files"]
        self.encoder = ort.InferenceSession(str(self.folder / files["encoder"]["name"]), options,
                                            providers=providers)
        self.decoder = ort.InferenceSession(str(self.folder / files["decoder"]["name"]), options,
                                            providers=providers)

    def check_prompt_size(self, prompt_size: int) -> None:
        """Refuse a bank of another prompt size than the exported decoder takes (ExportError)."""
        check_prompt_size(self.sidecar, prompt_size, self.folder)

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        (embedding,) = self.encoder.run(None, {"image": _numpy(image)})
        return torch.from_numpy(embedding).to(self.device)

    def decode(self, embedding: torch.Tensor, prompt_tokens: torch.Tensor) -> torch.Tensor:
        self.check_prompt_size(prompt_tokens.shape[1])
        (logits,) = self.decoder.run(None, {"image_embeddings": _numpy(embedding),
                                            "prompt_tokens": _numpy(prompt_tokens)})
        return torch.from_numpy(logits).to(self.device)


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(tensor.detach().to("cpu", torch.float32).numpy())


def verify_export(folder: str | Path, model: FPSegModel, class_counts: tuple[int, ...] = (1, 3),
                  threads: int | None = None) -> dict[str, float]:
    """onnx.checker on both graphs, and ONNX Runtime against torch on random inputs.

    The export must be `model`'s. Returns the relative errors (max |ort - torch| / max |torch|) for the
    encoder and for the decoder at each class count; raises ExportError if any exceeds 1e-3.
    """
    import onnx

    folder = Path(folder)
    sidecar = read_sidecar(folder)
    if is_quantized(sidecar):
        raise quantized_refusal(folder, "`fpseg export-onnx --verify` (ONNX Runtime against torch)")
    for role in GRAPH_FILES:
        onnx.checker.check_model(str(folder / sidecar["files"][role]["name"]), full_check=True)
    backend = OnnxRuntimeBackend(folder, torch.device("cpu"), ModelIdentity.of(model, sidecar["input_mode"]),
                                 threads)
    generator = torch.Generator().manual_seed(0)
    size, prompt_size = sidecar["img_size"], sidecar["prompt_size"]
    image = torch.randn(1, 3, size, size, generator=generator)
    errors: dict[str, float] = {}
    with torch.inference_mode():
        reference = model.encode(image)
        errors["encoder"] = _relative_error(backend.encode(image), reference)
        for n in class_counts:
            prompts = torch.randn(n, prompt_size, EMBED_DIM, generator=generator)
            errors[f"decoder_n{n}"] = _relative_error(backend.decode(reference, prompts),
                                                      model.decode(reference, prompts))
    bad = {k: v for k, v in errors.items() if not v < VERIFY_TOLERANCE}
    if bad:
        raise ExportError(f"ONNX Runtime disagrees with torch beyond {VERIFY_TOLERANCE} (relative): {bad}")
    return errors


def _relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    scale = float(expected.abs().max())
    return float(np.abs(actual.cpu().numpy() - expected.cpu().numpy()).max()) / max(scale, 1e-12)
