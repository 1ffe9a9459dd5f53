"""ONNX Runtime backend: runs the graphs of an `fpseg export-onnx` folder (the CPU default without a GPU)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..export.onnx_export import check_fingerprint, read_sidecar


class OnnxRuntimeBackend:
    """encoder.onnx and decoder.onnx in two ONNX Runtime sessions.

    CPU sessions use `threads` intra-op threads (default: torch's thread count). On a CUDA device the CUDA
    execution provider is used where this onnxruntime build has it; inputs and outputs pass through host
    memory as numpy arrays, and results come back as torch tensors on `device`.
    """

    name = "onnxruntime"

    def __init__(self, folder: Path, device: torch.device, fingerprint: str = "", threads: int | None = None) -> None:
        import onnxruntime as ort

        self.sidecar = read_sidecar(folder)
        check_fingerprint(self.sidecar, fingerprint, folder)
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
                raise RuntimeError("this onnxruntime build has no CUDA provider; use device cpu, or the torch / "
                                   "tensorrt backend on the GPU (or pip install onnxruntime-gpu)")
            providers.insert(0, "CUDAExecutionProvider")
        files = self.sidecar["files"]
        self.encoder = ort.InferenceSession(str(folder / files["encoder"]), options, providers=providers)
        self.decoder = ort.InferenceSession(str(folder / files["decoder"]), options, providers=providers)

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        (embedding,) = self.encoder.run(None, {"image": _numpy(image)})
        return torch.from_numpy(embedding).to(self.device)

    def decode(self, embedding: torch.Tensor, prompt_tokens: torch.Tensor) -> torch.Tensor:
        expected = self.sidecar["prompt_size"]
        if prompt_tokens.shape[1] != expected:
            raise ValueError(f"the exported decoder takes {expected} prompt tokens per class, "
                             f"got {prompt_tokens.shape[1]}; export a model with this prompt size")
        (logits,) = self.decoder.run(None, {"image_embeddings": _numpy(embedding),
                                            "prompt_tokens": _numpy(prompt_tokens)})
        return torch.from_numpy(logits).to(self.device)


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(tensor.detach().to("cpu", torch.float32).numpy())
