"""PyTorch backend: the model itself, on CPU or CUDA, in float32, bfloat16 or float16."""

from __future__ import annotations

import copy

import torch

from ..constants import DTYPE_NAMES, require_choice
from ..modeling.fast_decoder import FastMaskDecoder
from ..modeling.fpseg import FPSegModel

DTYPES = dict(zip(DTYPE_NAMES, (torch.float32, torch.bfloat16, torch.float16), strict=True))


class TorchBackend:
    """Runs the encoder as it is and the decoder through `FastMaskDecoder` (`class_chunk` classes at a time).

    With dtype bf16 / fp16 a converted copy of the model runs (the pipeline's float32 model is untouched);
    outputs are returned as float32. fp16 needs CUDA: PyTorch's CPU kernels for it are missing or slow.
    On CPU the convolution weights are kept channels-last (oneDNN's preferred layout; MobileSAM's encoder
    ran ~10% faster on the development machine); values and state-dict keys are unchanged.
    """

    name = "torch"

    def __init__(self, model: FPSegModel, device: torch.device, dtype: str = "fp32", class_chunk: int = 8) -> None:
        require_choice("dtype", dtype, DTYPE_NAMES)
        if dtype == "fp16" and device.type != "cuda":
            raise ValueError("dtype fp16 needs a CUDA device; on CPU use bf16 (or fp32)")
        self.device = device
        # Batches only on the GPU: on 2 CPU cores a MobileSAM batch of two took as long as two single passes and
        # raised the node's peak RSS by 30 % (fpseg_graph_benchmark, benchmarks/results/*_graph.json).
        self.batch_encoding = device.type == "cuda"
        self.dtype = DTYPES[dtype]
        if self.dtype != torch.float32:
            model = copy.deepcopy(model).to(device=device, dtype=self.dtype)
        self.memory_format = torch.channels_last if device.type == "cpu" else torch.contiguous_format
        self.model = model.to(memory_format=self.memory_format).eval()
        self.decoder = FastMaskDecoder(self.model, class_chunk)

    def check_prompt_size(self, prompt_size: int) -> None:
        """Any prompt size: the model's decoder takes any number of prompt tokens per class."""

    @torch.inference_mode()
    def encode(self, image: torch.Tensor) -> torch.Tensor:
        image = image.to(self.device, self.dtype).contiguous(memory_format=self.memory_format)
        return self.model.encode(image).float().contiguous()

    @torch.inference_mode()
    def decode(self, embedding: torch.Tensor, prompt_tokens: torch.Tensor) -> torch.Tensor:
        return self.decoder(embedding.to(self.device, self.dtype), prompt_tokens.to(self.device, self.dtype)).float()
