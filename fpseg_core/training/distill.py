"""`fpseg distill`: train a MobileSAM (TinyViT) image encoder to reproduce a SAM encoder's embeddings (MSE).

The result is a project checkpoint of the student encoder with the teacher's prompt encoder and mask
decoder: the decoder fingerprint is unchanged, so prompt banks tuned for the teacher load into it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..checkpoint import LoadedCheckpoint, load_checkpoint, save_checkpoint
from ..data import open_dataset
from ..data.base import SegmentationDataset
from ..data.embeddings import EmbeddingStore, encoder_fingerprint
from ..data.sampling import ImageTensors
from ..jobs.distributed import DistContext, init_distributed
from ..modeling.build import FPSegConfig, build_image_encoder
from ..modeling.fpseg import FPSegModel
from .bookkeeping import (
    CHECKPOINT_FILE,
    RUN_OUTPUTS,
    LoopProgress,
    ResumableJob,
    claim_run_folder,
    run_job,
    steps_per_epoch,
)
from .config import DistillConfig


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


def _load_teacher(config: DistillConfig) -> LoadedCheckpoint:
    teacher = load_checkpoint(config.teacher)
    if teacher.config.encoder == "mobilesam":
        raise ValueError(f"teacher {config.teacher} has a MobileSAM encoder; the teacher is a SAM ViT model")
    return teacher


class DistillationJob(ResumableJob[DistillConfig]):
    """One distillation run: the frozen teacher, the images (and teacher embeddings), the student encoder
    being trained, and what the training loop asks of them."""

    def __init__(self, config: DistillConfig, ctx: DistContext) -> None:
        super().__init__(config, ctx)
        self.teacher = _load_teacher(config)
        self.img_size = self.teacher.config.img_size
        # data: the images, and the teacher's embeddings of them where precomputed
        self.train_set = open_dataset(config.dataset, config.data, config.split, require_labels=False)
        self.val_set = open_dataset(config.dataset, config.data, config.val_split, require_labels=False) \
            if config.val_every else None
        self.store = _teacher_store(config, self.teacher, [d for d in (self.train_set, self.val_set) if d is not None])
        self.train_items = DistillItems(self.train_set, self.img_size, self.store)
        # model: the frozen teacher encoder, the student and its optimiser
        self.teacher_encoder = self.teacher.model.image_encoder.to(ctx.device).eval().requires_grad_(False)
        student, self.student_config = _student(config, self.teacher)
        self.student = student.to(ctx.device).train()
        _freeze_unused(self.student, self.teacher_encoder, self.img_size, ctx.device)
        self.optimizer = torch.optim.AdamW([p for p in self.student.parameters() if p.requires_grad], lr=config.lr,
                                           weight_decay=config.weight_decay)
        self.trained = self.parallel(self.student)
        self.identity = {"kind": "distill", "teacher_fingerprint": encoder_fingerprint(self.teacher.model.state_dict()),
                         "seed": config.seed, "batch_size": config.batch_size, "n_train_images": len(self.train_set)}
        self.settings = self.loop_settings(steps_per_epoch(len(self.train_set), config.batch_size), "val_mse", False)

    def _targets(self, batch: dict[str, torch.Tensor], images: torch.Tensor) -> torch.Tensor:
        """The teacher's embeddings of `images`: precomputed in `batch`, or encoded now."""
        if self.store is not None:
            return batch["target"].to(self.ctx.device)
        with torch.no_grad():
            return self.teacher_encoder(images)

    def batches(self, epoch: int, first_step: int, n_steps: int) -> DataLoader:
        return self.loader(self.train_items, epoch, first_step, n_steps)

    def train_step(self, batch: dict[str, torch.Tensor]) -> float:
        images = batch["image"].to(self.ctx.device)
        return self.optimizer_step(F.mse_loss(self.trained(images), self._targets(batch, images)))

    def validate(self, step: int) -> float:
        """Mean squared error of the student's embeddings over (the first val_images of) the validation split."""
        assert self.val_set is not None, "validation is off (val_every 0)"
        c, ctx = self.config, self.ctx
        n_val = len(self.val_set) if c.val_images is None else min(c.val_images, len(self.val_set))
        items = DistillItems(self.val_set, self.img_size, self.store, list(range(ctx.rank, n_val, ctx.world_size)))
        self.student.eval()
        totals = np.zeros(2)
        with torch.no_grad():
            for batch in DataLoader(items, batch_size=c.batch_size, num_workers=c.num_workers):
                images = batch["image"].to(ctx.device)
                squared = (self.student(images) - self._targets(batch, images)).pow(2)
                totals += [float(squared.mean(dim=(1, 2, 3)).sum()), len(images)]
        self.student.train()
        total, count = ctx.sum(totals)
        return total / count

    def on_best(self, progress: LoopProgress) -> None:
        """Write the student encoder with the teacher's prompt encoder and decoder as a checkpoint."""
        teacher = self.teacher
        model = FPSegModel(self.student, teacher.model.prompt_encoder, teacher.model.mask_decoder, self.img_size)
        names = teacher.bank.names if teacher.bank is not None else [
            f"class_{i}" for i in range(self.student_config.n_classes)]
        save_checkpoint(model, self.student_config, names, self.out / CHECKPOINT_FILE)

    def state_tensors(self) -> dict[str, Any]:
        return {"student": self.student.state_dict()}

    def load_state_tensors(self, state: dict[str, Any]) -> None:
        self.student.load_state_dict(state["student"])


def distill(config: DistillConfig, overwrite: bool = False) -> Path:
    """Run (or resume) encoder distillation; returns the output folder (checkpoint.pth and friends).

    An --out holding a previous run is refused unless `config.resume` or `overwrite` (see `claim_run_folder`).
    """
    if not config.teacher:
        raise ValueError("no teacher checkpoint given (--teacher)")
    # every process decides before any joins the process group, so before rank 0 clears or writes anything
    resuming = claim_run_folder(Path(config.out), RUN_OUTPUTS, config.resume, overwrite)
    ctx = init_distributed(config.device)
    return run_job(DistillationJob(config, ctx), ctx, resuming, CHECKPOINT_FILE, "MSE")
