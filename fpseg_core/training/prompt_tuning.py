"""`fpseg train`: prompt tuning on precomputed embeddings (and prompt transfer: new classes for a deployed bank).

The recipe of the FPSeg paper: class-wise binary samples (p_neg_max), BCE with logits at the encoder input
size, AdamW (lr 0.01 for the prompts, 1e-4 for the decoder when it is tuned too), batch 64, the checkpoint
with the best validation binary IoU kept.
"""

from __future__ import annotations

import math
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from ..checkpoint import load_checkpoint, save_checkpoint
from ..data import open_dataset
from ..data.base import SegmentationDataset
from ..data.embeddings import EmbeddingStore, encoder_fingerprint
from ..data.sampling import ClassWiseSamples, draw_pairs
from ..evaluation.binary import evaluate_binary_iou, upsample_logits
from ..evaluation.metrics import write_report
from ..jobs.distributed import DistContext, init_distributed
from ..modeling.fpseg import FPSegModel
from ..prompt_bank import PromptBank, decoder_fingerprint
from .bookkeeping import (
    CHECKPOINT_FILE,
    RUN_OUTPUTS,
    LoopProgress,
    ResumableJob,
    claim_run_folder,
    run_job,
    steps_per_epoch,
)
from .config import TrainConfig

VALIDATION_STREAM = 1_000_003  # seeds the fixed validation sample, apart from the training epochs' seeds
PROMPT_INIT_STD = 0.02
BANK_FILE = "prompts.safetensors"
VALIDATION_DIR = "validation"  # the report of the latest validation
OUTPUTS = (*RUN_OUTPUTS, BANK_FILE, VALIDATION_DIR)


class PromptTuner(nn.Module):
    """The trainable part of FPSeg: the prompt tokens being tuned and the mask decoder (frozen unless
    `train_decoder`). The tokens become the model's prompt bank, so the model can be saved as is.

    forward(embeddings [B, 256, h, w], class indices [B]) -> low-resolution logits [B, 4h, 4w].
    """

    def __init__(self, model: FPSegModel, prompts: torch.Tensor, train_decoder: bool) -> None:
        super().__init__()
        model.requires_grad_(False)
        model.prompt_encoder.prompt_embeddings = nn.Parameter(prompts)
        model.mask_decoder.requires_grad_(train_decoder)
        self.prompt_encoder = model.prompt_encoder
        self.mask_decoder = model.mask_decoder

    @property
    def prompts(self) -> nn.Parameter:
        return self.prompt_encoder.prompt_embeddings

    def forward(self, embeddings: torch.Tensor, class_index: torch.Tensor) -> torch.Tensor:
        pe = self.prompt_encoder
        return self.mask_decoder.forward_pairs(embeddings, pe.get_dense_pe(), pe.dense_embedding(),
                                               self.prompts[class_index])


def _check_config(config: TrainConfig) -> None:
    if not config.checkpoint:
        raise ValueError("no checkpoint given (--checkpoint): prompts are tuned against its frozen decoder")
    if config.new_classes and not config.bank:
        raise ValueError("--new-classes needs --bank: the deployed prompt bank the new classes are added to")
    if config.bank and not config.new_classes:
        raise ValueError("--bank is for prompt transfer; name the classes to add with --new-classes")
    if config.new_classes and config.train_decoder:
        raise ValueError("prompt transfer keeps the deployed decoder frozen; drop --train-decoder")
    if config.new_classes and config.classes:
        raise ValueError("give either --classes (a new bank) or --new-classes (prompt transfer), not both")
    for key in ("batch_size", "epochs", "val_samples_per_class", "log_every", "prompt_size"):
        if getattr(config, key) < 1:
            raise ValueError(f"{key} must be at least 1, got {getattr(config, key)}")
    if config.val_every < 0 or config.save_every < 0:
        raise ValueError("val_every and save_every must be 0 (off) or positive")
    if not (math.isfinite(config.pos_weight) and config.pos_weight > 0):
        raise ValueError(f"pos_weight must be a positive number (1: plain BCE), got {config.pos_weight}")


def _deployed_bank(config: TrainConfig, frozen_fingerprint: str) -> PromptBank | None:
    """Prompt transfer: the deployed bank the new classes join (checked against the frozen decoder)."""
    if not config.new_classes:
        return None
    bank = PromptBank.load(config.bank)
    bank.check_fits(frozen_fingerprint)
    clash = [n for n in config.new_classes if n in bank.names]
    if clash:
        raise ValueError(f"class(es) {', '.join(clash)} are already in {config.bank}; prompt transfer adds "
                         "new classes (remove them from the bank first to retrain them)")
    return bank


class PromptTuningJob(ResumableJob[TrainConfig]):
    """One prompt-tuning run: the frozen model, the embeddings and class-wise samples it is tuned on, the
    prompts (and decoder) being tuned, and what the training loop asks of them."""

    outputs = OUTPUTS

    def __init__(self, config: TrainConfig, ctx: DistContext) -> None:
        super().__init__(config, ctx)
        loaded = load_checkpoint(config.checkpoint, encoder=config.encoder)
        self.model, self.model_config = loaded.model, loaded.config
        self.frozen_fingerprint = decoder_fingerprint(self.model.state_dict())
        self.store = EmbeddingStore.open(config.embeddings)
        self.store.check_encoder(encoder_fingerprint(self.model.state_dict()), config.checkpoint)
        self.base_bank = _deployed_bank(config, self.frozen_fingerprint)
        # data: the training split, which classes its images show, the fixed validation sample
        self.train_set, val_set = self._open_splits()
        self.presence = self._presence(self.train_set)
        self._warn_absent_classes()
        self.n_per_class = config.samples_per_class or len(self.train_set)
        self.val_samples = self._validation_samples(val_set) if val_set is not None else None
        # model: fresh prompts (the deployed bank's size for prompt transfer), the tuner and its optimiser
        self.prompt_size = self.base_bank.prompt_size if self.base_bank is not None else config.prompt_size
        self.tuner = self._tuner()
        self.optimizer = self._optimizer()
        self.trained = self.parallel(self.tuner)
        c = config
        self.identity = {"kind": "prompt_tuning", "classes": list(self.class_names),
                         "frozen_fingerprint": self.frozen_fingerprint, "prompt_size": self.prompt_size,
                         "train_decoder": c.train_decoder, "seed": c.seed, "batch_size": c.batch_size,
                         "samples_per_class": self.n_per_class, "p_neg_max": c.p_neg_max,
                         "pos_weight": c.pos_weight}
        n_items = self.n_per_class * len(self.class_names)
        self.settings = self.loop_settings(steps_per_epoch(n_items, c.batch_size), "binary_iou", True)

    @property
    def class_names(self) -> list[str]:
        return self.train_set.class_names

    def _open_splits(self) -> tuple[SegmentationDataset, SegmentationDataset | None]:
        """The training split and (unless val_every is 0) the validation split, both covered by the store."""
        c = self.config
        train_set = open_dataset(c.dataset, c.data, c.split, c.new_classes or c.classes)
        val_set = open_dataset(c.dataset, c.data, c.val_split, train_set.class_names) if c.val_every else None
        if self.store.header.input_mode != "squash":
            raise ValueError(f"{self.store.root} holds {self.store.header.input_mode} embeddings; FPSeg tunes "
                             "prompts on squashed images: precompute with --input-mode squash")
        for dataset in filter(None, (train_set, val_set)):
            self.store.check_covers(dataset.split, [f.key for f in dataset.frames])
        return train_set, val_set

    def _presence(self, dataset: SegmentationDataset) -> np.ndarray:
        """Which images of `dataset` show which class: rank 0 scans them (cached beside the embeddings)."""
        if self.ctx.is_main:
            presence = dataset.presence(cache_dir=self.store.root, progress=self.config.progress)
        self.ctx.barrier()
        if not self.ctx.is_main:
            presence = dataset.presence(cache_dir=self.store.root, progress=False)  # reads rank 0's cache
        return presence

    def _warn_absent_classes(self) -> None:
        absent = [n for n, present in zip(self.class_names, self.presence.any(axis=0), strict=True) if not present]
        if absent and self.ctx.is_main:
            print(f"warning: no {self.config.split} image contains {', '.join(absent)}; their prompts only learn "
                  "'absent'", file=sys.stderr)

    def _validation_samples(self, val_set: SegmentationDataset) -> ClassWiseSamples:
        c = self.config
        pairs = draw_pairs(self._presence(val_set), c.val_samples_per_class, c.p_neg_max,
                           np.random.default_rng([c.seed, VALIDATION_STREAM]))
        return ClassWiseSamples(val_set, self.store, pairs, self.store.header.img_size)

    def _tuner(self) -> PromptTuner:
        init = torch.randn(len(self.class_names), self.prompt_size, self.model.prompt_encoder.embed_dim,
                           generator=torch.Generator().manual_seed(self.config.seed)) * PROMPT_INIT_STD
        return PromptTuner(self.model, init, self.config.train_decoder).to(self.ctx.device)

    def _optimizer(self) -> torch.optim.Optimizer:
        """AdamW: the prompts at lr, the decoder (with train_decoder) at decoder_lr."""
        c = self.config
        groups = [{"params": [self.tuner.prompts], "lr": c.lr}]
        if c.train_decoder:
            groups.append({"params": list(self.tuner.mask_decoder.parameters()), "lr": c.decoder_lr})
        return torch.optim.AdamW(groups, weight_decay=c.weight_decay)

    def batches(self, epoch: int, first_step: int, n_steps: int) -> DataLoader:
        pairs = draw_pairs(self.presence, self.n_per_class, self.config.p_neg_max,
                           np.random.default_rng([self.config.seed, epoch, 1]))
        samples = ClassWiseSamples(self.train_set, self.store, pairs, self.store.header.img_size)
        return self.loader(samples, epoch, first_step, n_steps)

    def train_step(self, batch: dict[str, torch.Tensor]) -> float:
        device = self.ctx.device
        logits = self.trained(batch["embedding"].to(device), batch["class_index"].to(device))
        pos_weight = None if self.config.pos_weight == 1 else torch.tensor(self.config.pos_weight, device=device)
        return self.optimizer_step(F.binary_cross_entropy_with_logits(
            upsample_logits(logits, self.store.header.img_size), batch["target"].to(device), pos_weight=pos_weight))

    def validate(self, step: int) -> float:
        assert self.val_samples is not None, "validation is off (val_every 0)"
        c = self.config
        metric = evaluate_binary_iou(self.tuner, self.val_samples, len(self.class_names),
                                     c.batch_size // self.ctx.world_size, self.ctx, c.num_workers)
        if self.ctx.is_main:
            write_report({"binary_iou": metric.result(self.class_names)}, self.out / VALIDATION_DIR,
                         f"validation at step {step} ({c.val_split})")
        value = metric.mean()
        return 0.0 if math.isnan(value) else value

    def on_best(self, progress: LoopProgress) -> None:
        """Write the tuned bank (and, with train_decoder, the full checkpoint)."""
        extra = {"step": str(progress.step)}
        if progress.best is not None:
            extra["best_binary_iou"] = f"{progress.best:.6f}"
        bank = self.bank(extra)
        bank.save(self.out / BANK_FILE)
        if self.config.train_decoder:
            config = replace(self.model_config, n_classes=len(bank), prompt_size=bank.prompt_size)
            save_checkpoint(self.model, config, bank.names, self.out / CHECKPOINT_FILE)

    def bank(self, extra: dict[str, str]) -> PromptBank:
        """The tuned classes as a prompt bank (merged into the deployed bank for prompt transfer)."""
        fingerprint = decoder_fingerprint(self.model.state_dict())
        bank = PromptBank(self.class_names, self.tuner.prompts.detach().cpu().clone(), self.model_config.encoder,
                          fingerprint, source=f"fpseg train ({self.out.name})", extra=extra)
        return self.base_bank.merge(bank) if self.base_bank is not None else bank

    def state_tensors(self) -> dict[str, Any]:
        return {"prompts": self.tuner.prompts.detach().cpu(),
                "decoder": self.tuner.mask_decoder.state_dict() if self.config.train_decoder else {},
                "torch_rng": torch.get_rng_state()}

    def load_state_tensors(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            self.tuner.prompts.copy_(state["prompts"])
        if self.config.train_decoder:
            self.tuner.mask_decoder.load_state_dict(state["decoder"])


def train(config: TrainConfig, overwrite: bool = False) -> Path:
    """Run (or resume) prompt tuning; returns the output folder (prompts.safetensors and friends).

    An --out holding a previous run is refused unless `config.resume` (continue it) or `overwrite` (delete
    its outputs and start over); see `claim_run_folder`.
    """
    _check_config(config)
    # every process decides before any joins the process group, so before rank 0 clears or writes anything
    resuming = claim_run_folder(Path(config.out), OUTPUTS, config.resume, overwrite)
    ctx = init_distributed(config.device)
    return run_job(PromptTuningJob(config, ctx), ctx, resuming, BANK_FILE, "binary IoU")
