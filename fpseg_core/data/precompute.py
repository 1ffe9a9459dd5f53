"""`fpseg precompute`: encode the images of dataset splits once and store their embeddings."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..checkpoint import load_checkpoint
from ..constants import INPUT_MODES, require_choice
from ..jobs.distributed import DistContext, init_distributed
from ..jobs.options import doc, option
from ..modeling.build import FPSegConfig
from ..modeling.fpseg import FPSegModel
from . import open_dataset
from .base import SegmentationDataset
from .embeddings import DTYPES, EmbeddingHeader, EmbeddingStore, encoder_fingerprint
from .sampling import ImageTensors


@dataclass
class PrecomputeConfig:
    data: str = option("", "dataset root (Cityscapes layout, or a custom images/ + masks/ folder)")
    dataset: str = option("cityscapes", "dataset kind: cityscapes or custom")
    splits: list[str] = field(default_factory=lambda: ["train", "val"], metadata=doc("splits to encode"))
    checkpoint: str = option("", "SAM / MobileSAM / FPSeg / fpseg_ros checkpoint whose encoder is used")
    encoder: str | None = option(None, "refuse a checkpoint of another encoder (mobilesam, vit_b/l/h)")
    out: str = option("embeddings", "output folder (resumable: files already there are skipped)")
    dtype: str = option("float32", "storage precision: float32, or float16 (half the disk)")
    input_mode: str = option("squash", "squash (FPSeg) or letterbox (SAM) images to the encoder size")
    batch_size: int = option(8, "images per encoder forward pass (per process)")
    num_workers: int = option(4, "image-decoding worker processes (0: in the main process)")
    device: str = option("cpu", "cpu, cuda or cuda:N (under torchrun each process uses cuda:LOCAL_RANK)")
    progress: bool = option(True, "show a progress bar")


def encode_split(model: FPSegModel, store: EmbeddingStore, dataset: SegmentationDataset, ctx: DistContext,
                 batch_size: int, num_workers: int, progress: bool) -> int:
    """Encode this process's share of the frames of `dataset` that have no embedding yet; returns how many."""
    todo = [i for i, frame in enumerate(dataset.frames) if not store.has(dataset.split, frame.key)]
    mine = todo[ctx.rank::ctx.world_size]
    images = ImageTensors(dataset, mine, store.header.img_size, store.header.input_mode)
    loader = DataLoader(images, batch_size=batch_size, num_workers=num_workers)
    bar = tqdm(total=len(todo), desc=f"encoding {dataset.split}", unit="img",
               disable=not (progress and ctx.is_main))
    with torch.inference_mode():
        for positions, batch in loader:
            embeddings = model.encode(batch.to(ctx.device))
            for position, embedding in zip(positions.tolist(), embeddings, strict=True):
                store.write(dataset.split, dataset.frames[mine[position]].key, embedding)
            bar.update(len(positions) * ctx.world_size)
    bar.close()
    return len(mine)


def create_store(model: FPSegModel, model_config: FPSegConfig, checkpoint: str | Path, out: str | Path,
                 input_mode: str, dtype: str, ctx: DistContext) -> EmbeddingStore:
    """The store at `out` for this model's encoder: created by rank 0, verified by every process."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    require_choice("input_mode", input_mode, INPUT_MODES)
    header = EmbeddingHeader(model_config.encoder, encoder_fingerprint(model.state_dict()), model_config.img_size,
                             input_mode, dtype, Path(checkpoint).name)
    if ctx.is_main:
        EmbeddingStore.create(out, header)
    ctx.barrier()
    return EmbeddingStore.create(out, header)


def encode_splits(model: FPSegModel, store: EmbeddingStore, datasets: list[SegmentationDataset],
                  ctx: DistContext, batch_size: int, num_workers: int, progress: bool) -> None:
    """Encode every frame of `datasets` that has no embedding in `store` yet and list them in its manifest."""
    for dataset in datasets:
        done_before = sum(store.has(dataset.split, f.key) for f in dataset.frames)
        if done_before and ctx.is_main:
            print(f"{dataset.split}: {done_before} of {len(dataset)} images already encoded, skipping them",
                  file=sys.stderr)
        encode_split(model, store, dataset, ctx, batch_size, num_workers, progress)
        ctx.barrier()
        if ctx.is_main:
            store.record(dataset.split, [f.key for f in dataset.frames if store.has(dataset.split, f.key)])


def precompute(config: PrecomputeConfig) -> EmbeddingStore:
    """Encode every split of `config`; returns the store (manifest verified, files listed)."""
    if not config.checkpoint:
        raise ValueError("no checkpoint given (--checkpoint): its image encoder computes the embeddings")
    ctx = init_distributed(config.device)
    loaded = load_checkpoint(config.checkpoint, encoder=config.encoder)
    model = loaded.model.to(ctx.device).eval()
    datasets = [open_dataset(config.dataset, config.data, split, require_labels=False) for split in config.splits]
    store = create_store(model, loaded.config, config.checkpoint, config.out, config.input_mode, config.dtype, ctx)
    encode_splits(model, store, datasets, ctx, config.batch_size, config.num_workers, config.progress)
    return store
