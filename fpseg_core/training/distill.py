"""`fpseg distill`: train a MobileSAM (TinyViT) image encoder to reproduce a SAM encoder's embeddings (MSE).

The result is a project checkpoint of the student encoder with the teacher's prompt encoder and mask
decoder: the decoder fingerprint is unchanged, so prompt banks tuned for the teacher load into it.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset

from ..checkpoint import LoadedCheckpoint, load_checkpoint, save_checkpoint
from ..data import open_dataset
from ..data.base import SegmentationDataset
from ..data.embeddings import EmbeddingStore, encoder_fingerprint
from ..data.sampling import ImageTensors
from ..jobs.distributed import init_distributed
from ..jobs.options import option, save_config
from ..modeling.build import FPSegConfig, build_image_encoder
from ..modeling.fpseg import FPSegModel
from .bookkeeping import (
    CHECKPOINT_FILE,
    CONFIG_FILE,
    RUN_OUTPUTS,
    STATE_FILE,
    LoopProgress,
    LoopSettings,
    check_resumable,
    claim_run_folder,
    clear_run_folder,
    epoch_batches,
    load_state,
    run_training_loop,
    save_state,
    steps_per_epoch,
)


@dataclass
class DistillConfig:
    data: str = option("", "dataset root (Cityscapes layout, or a custom images/ folder)")
    dataset: str = option("cityscapes", "dataset kind: cityscapes or custom")
    split: str = option("train", "training split (labels are not used)")
    val_split: str = option("val", "validation split")
    teacher: str = option("", "teacher checkpoint (SAM ViT-B/L/H, or an FPSeg / fpseg_ros one)")
    teacher_embeddings: str | None = option(None, "teacher embeddings from `fpseg precompute` (default: the "
                                                  "teacher encodes every batch)")
    student: str | None = option(None, "MobileSAM / fpseg_ros checkpoint to start the student from "
                                       "(default: a randomly initialised MobileSAM encoder)")
    lr: float = option(1e-3, "AdamW learning rate")
    weight_decay: float = option(0.01, "AdamW weight decay")
    batch_size: int = option(8, "images per step, over all processes (divisible by their number)")
    epochs: int = option(8, "passes over the training images")
    max_steps: int | None = option(None, "stop after this many steps in total (overrides epochs)")
    val_every: int = option(1, "validate every this many epochs (0: never; the last state is kept)")
    val_images: int | None = option(None, "validate on the first N images of val_split only")
    log_every: int = option(10, "log the mean training loss every this many steps")
    save_every: int = option(0, "also save the resume state every this many steps (0: at epoch ends)")
    seed: int = option(0, "seed of the data order")
    resume: bool = option(False, "continue the run saved in --out (state.pt)")
    out: str = option("runs/distill", "output folder: checkpoint.pth, state.pt, logs")
    device: str = option("cpu", "cpu, cuda or cuda:N (under torchrun each process uses cuda:LOCAL_RANK)")
    num_workers: int = option(4, "data-loading worker processes (0: in the main process)")
    tensorboard: bool = option(False, "also log to TensorBoard (needs the tensorboard package)")
    progress: bool = option(True, "show a progress bar")


class DistillItems(Dataset):
    """Items {"image": [3, S, S] normalised, "target": teacher embedding [256, h, w] or an empty tensor}."""

    def __init__(self, dataset: SegmentationDataset, img_size: int, store: EmbeddingStore | None,
                 indices: list[int] | None = None) -> None:
        self.dataset = dataset
        self.indices = list(range(len(dataset))) if indices is None else indices
        self.images = ImageTensors(dataset, self.indices, img_size)
        self.store = store

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> dict[str, torch.Tensor]:
        _, image = self.images[position]
        key = self.dataset.frames[self.indices[position]].key
        target = self.store.read(self.dataset.split, key) if self.store is not None else torch.empty(0)
        return {"image": image, "target": target}


def _student(config: DistillConfig, teacher: LoadedCheckpoint) -> tuple[nn.Module, FPSegConfig]:
    img_size = teacher.config.img_size
    if config.student:
        loaded = load_checkpoint(config.student, encoder="mobilesam")
        if loaded.config.img_size != img_size:
            raise ValueError(f"student {config.student} takes {loaded.config.img_size}px images, the teacher "
                             f"{img_size}px; both must give embeddings of the same size")
        overrides = loaded.config.encoder_overrides
        encoder = loaded.model.image_encoder
    else:
        overrides = {}
        encoder = build_image_encoder(FPSegConfig("mobilesam", img_size=img_size))
    config_out = FPSegConfig("mobilesam", teacher.config.n_classes, teacher.config.prompt_size, img_size, overrides)
    return encoder, config_out


def _freeze_unused(student: nn.Module, teacher_encoder: nn.Module, img_size: int, device: torch.device) -> None:
    """Check that student and teacher embeddings match in shape, and freeze the student parameters that do
    not contribute to its embedding (TinyViT's classification head): DistributedDataParallel needs every
    trained parameter to get a gradient."""
    probe = torch.zeros(1, 3, img_size, img_size, device=device)
    student.eval().zero_grad(set_to_none=True)
    embedding = student(probe)
    with torch.no_grad():
        expected = teacher_encoder(probe).shape
    if embedding.shape != expected:
        raise ValueError(f"student embeddings are {list(embedding.shape)}, the teacher's {list(expected)}; "
                         "use encoders of the same image size")
    embedding.sum().backward()
    for parameter in student.parameters():
        if parameter.grad is None:
            parameter.requires_grad_(False)
    student.zero_grad(set_to_none=True)
    student.train()


def _teacher_store(config: DistillConfig, teacher: LoadedCheckpoint, splits: list[SegmentationDataset]
                   ) -> EmbeddingStore | None:
    if not config.teacher_embeddings:
        return None
    store = EmbeddingStore.open(config.teacher_embeddings)
    store.check_encoder(encoder_fingerprint(teacher.model.state_dict()), f"teacher {config.teacher}")
    if store.header.input_mode != "squash":
        raise ValueError(f"{store.root} holds letterboxed embeddings; distillation squashes images (precompute "
                         "with --input-mode squash)")
    for dataset in splits:
        store.check_covers(dataset.split, [f.key for f in dataset.frames])
    return store


def distill(config: DistillConfig, overwrite: bool = False) -> Path:
    """Run (or resume) encoder distillation; returns the output folder (checkpoint.pth and friends).

    An --out holding a previous run is refused unless `config.resume` or `overwrite` (see `claim_run_folder`).
    """
    if not config.teacher:
        raise ValueError("no teacher checkpoint given (--teacher)")
    resuming = claim_run_folder(Path(config.out), RUN_OUTPUTS, config.resume, overwrite)
    ctx = init_distributed(config.device)
    if config.batch_size % ctx.world_size:
        raise ValueError(f"batch_size {config.batch_size} must be divisible by the {ctx.world_size} processes")
    torch.manual_seed(config.seed)
    out = Path(config.out)
    teacher = load_checkpoint(config.teacher)
    if teacher.config.encoder == "mobilesam":
        raise ValueError(f"teacher {config.teacher} has a MobileSAM encoder; the teacher is a SAM ViT model")
    train_set = open_dataset(config.dataset, config.data, config.split, require_labels=False)
    val_set = open_dataset(config.dataset, config.data, config.val_split, require_labels=False) \
        if config.val_every else None
    store = _teacher_store(config, teacher, [d for d in (train_set, val_set) if d is not None])
    teacher_encoder = teacher.model.image_encoder.to(ctx.device).eval().requires_grad_(False)
    student, student_config = _student(config, teacher)
    student = student.to(ctx.device).train()
    img_size = teacher.config.img_size
    _freeze_unused(student, teacher_encoder, img_size, ctx.device)
    optimizer = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=config.lr,
                                  weight_decay=config.weight_decay)

    identity = {"kind": "distill", "teacher_fingerprint": encoder_fingerprint(teacher.model.state_dict()),
                "seed": config.seed, "batch_size": config.batch_size, "n_train_images": len(train_set)}
    state_path = out / STATE_FILE
    progress = LoopProgress()
    if resuming:
        state = load_state(state_path)
        check_resumable(state, identity, state_path)
        student.load_state_dict(state["student"])
        optimizer.load_state_dict(state["optimizer"])
        progress = LoopProgress(state["step"], state["best_metric"], state["best_step"])
        if ctx.is_main:
            print(f"resuming {out} at step {progress.step}", file=sys.stderr)
    if ctx.is_main:
        if not resuming:
            clear_run_folder(out, RUN_OUTPUTS)
        save_config(config, out / CONFIG_FILE)

    trained = DistributedDataParallel(student) if ctx.distributed else student
    per_epoch = steps_per_epoch(len(train_set), config.batch_size)
    settings = LoopSettings(
        total_steps=config.max_steps if config.max_steps is not None else config.epochs * per_epoch,
        steps_per_epoch=per_epoch, log_every=config.log_every, save_every=config.save_every,
        val_every=config.val_every, metric="val_mse", higher_is_better=False, progress=config.progress,
        tensorboard=config.tensorboard,
    )
    train_items = DistillItems(train_set, img_size, store)

    def targets(batch: dict[str, torch.Tensor], images: torch.Tensor) -> torch.Tensor:
        if store is not None:
            return batch["target"].to(ctx.device)
        with torch.no_grad():
            return teacher_encoder(images)

    def batches(epoch: int, first_step: int, n_steps: int) -> DataLoader:
        steps = epoch_batches(len(train_set), config.batch_size, config.seed, epoch, ctx.rank, ctx.world_size,
                              first_step)
        return DataLoader(train_items, batch_sampler=steps[:n_steps], num_workers=config.num_workers)

    def train_step(batch: dict[str, torch.Tensor]) -> float:
        images = batch["image"].to(ctx.device)
        loss = F.mse_loss(trained(images), targets(batch, images))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    def validate(step: int) -> float:
        n_val = len(val_set) if config.val_images is None else min(config.val_images, len(val_set))
        items = DistillItems(val_set, img_size, store, list(range(ctx.rank, n_val, ctx.world_size)))
        student.eval()
        totals = np.zeros(2)
        with torch.no_grad():
            for batch in DataLoader(items, batch_size=config.batch_size, num_workers=config.num_workers):
                images = batch["image"].to(ctx.device)
                squared = (student(images) - targets(batch, images)).pow(2)
                totals += [float(squared.mean(dim=(1, 2, 3)).sum()), len(images)]
        student.train()
        total, count = ctx.sum(totals)
        return total / count

    def on_best(p: LoopProgress) -> None:
        model = FPSegModel(student, teacher.model.prompt_encoder, teacher.model.mask_decoder, img_size)
        names = teacher.bank.names if teacher.bank is not None else [
            f"class_{i}" for i in range(student_config.n_classes)]
        save_checkpoint(model, student_config, names, out / CHECKPOINT_FILE)

    def save(p: LoopProgress) -> None:
        save_state(state_path, {**identity, "step": p.step, "best_metric": p.best, "best_step": p.best_step,
                                "student": student.state_dict(), "optimizer": optimizer.state_dict()})

    progress = run_training_loop(settings, ctx, out, progress, batches, train_step,
                                 validate if val_set is not None else None, on_best, save)
    if ctx.is_main:
        best = f" (best validation MSE {progress.best:.6g} at step {progress.best_step})" \
            if progress.best is not None else ""
        print(f"wrote {out / CHECKPOINT_FILE}{best}", file=sys.stderr)
    return out
