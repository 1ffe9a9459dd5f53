"""One code path for a single process and for `torchrun` (DistributedDataParallel, one process per GPU)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    """This process's rank among `world_size` processes and the device it computes on."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def sum(self, values: np.ndarray) -> np.ndarray:
        """Element-wise sum of a numeric array over all processes (the array itself when alone)."""
        if not self.distributed:
            return values
        tensor = torch.as_tensor(values, dtype=torch.float64)
        if dist.get_backend() == "nccl":
            tensor = tensor.to(self.device)
        dist.all_reduce(tensor)
        return tensor.cpu().numpy().astype(values.dtype)


def init_distributed(device: str) -> DistContext:
    """Join the process group torchrun describes (WORLD_SIZE, RANK, LOCAL_RANK), or run alone.

    On CUDA each process uses cuda:LOCAL_RANK and NCCL; on CPU the gloo backend.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    target = torch.device(device)
    if target.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} asked for, but CUDA is not available; use --device cpu")
        if world_size > 1:
            target = torch.device("cuda", local_rank)
        torch.cuda.set_device(target)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if target.type == "cuda" else "gloo")
    return DistContext(rank, world_size, target)


def is_main_process() -> bool:
    """Rank 0 of a torchrun job, or a single process (for printing once)."""
    return int(os.environ.get("RANK", "0")) == 0


def shutdown_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
