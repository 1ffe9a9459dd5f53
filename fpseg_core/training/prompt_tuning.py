"""`fpseg train`: prompt tuning on precomputed embeddings (and prompt transfer: new classes for a deployed bank).

The recipe of the FPSeg paper: class-wise binary samples (p_neg_max), BCE with logits at the encoder input
size, AdamW (lr 0.01 for the prompts, 1e-4 for the decoder when it is tuned too), batch 64, the checkpoint
with the best validation binary IoU kept.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from ..checkpoint import load_checkpoint, save_checkpoint
from ..data import open_dataset
from ..data.base import SegmentationDataset
from ..data.embeddings import EmbeddingStore, encoder_fingerprint
from ..data.sampling import P_NEG_MAX, ClassWiseSamples, draw_pairs
from ..evaluation.binary import evaluate_binary_iou, upsample_logits
from ..evaluation.metrics import write_report
from ..jobs.distributed import DistContext, init_distributed
from ..jobs.options import doc, option, save_config
from ..modeling.build import FPSegConfig
from ..modeling.fpseg import FPSegModel
from ..prompt_bank import PromptBank, decoder_fingerprint
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

VALIDATION_STREAM = 1_000_003  # seeds the fixed validation sample, apart from the training epochs' seeds
PROMPT_INIT_STD = 0.02
BANK_FILE = "prompts.safetensors"
VALIDATION_DIR = "validation"  # the report of the latest validation
OUTPUTS = (*RUN_OUTPUTS, BANK_FILE, VALIDATION_DIR)


@dataclass
class TrainConfig:
    data: str = option("", "dataset root (Cityscapes layout, or a custom images/ + masks/ folder)")
    dataset: str = option("cityscapes", "dataset kind: cityscapes or custom")
    embeddings: str = option("embeddings", "folder written by `fpseg precompute` (same checkpoint)")
    split: str = option("train", "training split")
    val_split: str = option("val", "validation split (needs embeddings too)")
    checkpoint: str = option("", "frozen model: SAM / MobileSAM / FPSeg / fpseg_ros checkpoint")
    encoder: str | None = option(None, "refuse a checkpoint of another encoder")
    classes: list[str] | None = field(default=None, metadata=doc(
        "classes to tune; Cityscapes: names, bank33 (default) or train19; custom: mask folder names "
        "(default: all)"))
    new_classes: list[str] | None = field(default=None, metadata=doc(
        "prompt transfer: tune only these classes and merge them into --bank (decoder stays frozen)"))
    bank: str | None = option(None, "prompt transfer: the deployed prompt bank to extend")
    prompt_size: int = option(64, "prompt tokens per class (published: 64; prompt transfer: the bank's)")
    train_decoder: bool = option(False, "also fine-tune the mask decoder (writes a full checkpoint)")
    lr: float = option(0.01, "AdamW learning rate of the prompts")
    decoder_lr: float = option(1e-4, "AdamW learning rate of the decoder (with train_decoder)")
    weight_decay: float = option(0.01, "AdamW weight decay")
    batch_size: int = option(64, "samples per step, over all processes (divisible by their number)")
    epochs: int = option(10, "epochs; one epoch draws samples_per_class samples of every class")
    max_steps: int | None = option(None, "stop after this many steps in total (overrides epochs)")
    samples_per_class: int | None = option(None, "samples of each class per epoch (default: training images)")
    p_neg_max: float = option(P_NEG_MAX, "at most this share of a class's samples lack the class")
    val_every: int = option(1, "validate every this many epochs (0: never; the last state is kept)")
    val_samples_per_class: int = option(500, "validation examples per class (the paper: 500)")
    log_every: int = option(10, "log the mean training loss every this many steps")
    save_every: int = option(0, "also save the resume state every this many steps (0: at epoch ends)")
    seed: int = option(0, "seed of prompt initialisation and sampling (same seed, same run)")
    resume: bool = option(False, "continue the run saved in --out (state.pt)")
    out: str = option("runs/train", "output folder: prompts.safetensors, state.pt, logs")
    device: str = option("cpu", "cpu, cuda or cuda:N (under torchrun each process uses cuda:LOCAL_RANK)")
    num_workers: int = option(4, "data-loading worker processes (0: in the main process)")
    tensorboard: bool = option(False, "also log to TensorBoard (needs the tensorboard package)")
    progress: bool = option(True, "show a progress bar")


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


@dataclass
class _Run:
    """Everything a training run works with, resolved from the configuration."""

    config: TrainConfig
    ctx: DistContext
    out: Path
    model: FPSegModel
    model_config: FPSegConfig
    frozen_fingerprint: str
    base_bank: PromptBank | None
    train_set: SegmentationDataset
    val_set: SegmentationDataset | None
    store: EmbeddingStore
    presence: np.ndarray
    n_per_class: int


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


def _presence(dataset: SegmentationDataset, store: EmbeddingStore, ctx: DistContext, progress: bool) -> np.ndarray:
    if ctx.is_main:
        presence = dataset.presence(cache_dir=store.root, progress=progress)
    ctx.barrier()
    if not ctx.is_main:
        presence = dataset.presence(cache_dir=store.root, progress=False)  # reads rank 0's cache
    return presence


def _prepare(config: TrainConfig, ctx: DistContext) -> _Run:
    loaded = load_checkpoint(config.checkpoint, encoder=config.encoder)
    model = loaded.model
    frozen_fingerprint = decoder_fingerprint(model.state_dict())
    store = EmbeddingStore.open(config.embeddings)
    store.check_encoder(encoder_fingerprint(model.state_dict()), config.checkpoint)
    base_bank = None
    class_names = config.classes
    if config.new_classes:
        base_bank = PromptBank.load(config.bank)
        base_bank.check_fits(frozen_fingerprint)
        clash = [n for n in config.new_classes if n in base_bank.names]
        if clash:
            raise ValueError(f"class(es) {', '.join(clash)} are already in {config.bank}; prompt transfer adds "
                             "new classes (remove them from the bank first to retrain them)")
        class_names = config.new_classes
    train_set = open_dataset(config.dataset, config.data, config.split, class_names)
    val_set = open_dataset(config.dataset, config.data, config.val_split, train_set.class_names) \
        if config.val_every else None
    if store.header.input_mode != "squash":
        raise ValueError(f"{store.root} holds {store.header.input_mode} embeddings; FPSeg tunes prompts on "
                         "squashed images: precompute with --input-mode squash")
    for dataset in filter(None, (train_set, val_set)):
        store.check_covers(dataset.split, [f.key for f in dataset.frames])
    presence = _presence(train_set, store, ctx, config.progress)
    absent = [n for n, present in zip(train_set.class_names, presence.any(axis=0), strict=True) if not present]
    if absent and ctx.is_main:
        print(f"warning: no {config.split} image contains {', '.join(absent)}; their prompts only learn "
              "'absent'", file=sys.stderr)
    return _Run(config, ctx, Path(config.out), model, loaded.config, frozen_fingerprint, base_bank, train_set,
                val_set, store, presence, config.samples_per_class or len(train_set))


def _validation_samples(run: _Run) -> ClassWiseSamples | None:
    if run.val_set is None:
        return None
    val_presence = _presence(run.val_set, run.store, run.ctx, run.config.progress)
    pairs = draw_pairs(val_presence, run.config.val_samples_per_class, run.config.p_neg_max,
                       np.random.default_rng([run.config.seed, VALIDATION_STREAM]))
    return ClassWiseSamples(run.val_set, run.store, pairs, run.store.header.img_size)


def _resume_identity(run: _Run, prompt_size: int) -> dict:
    c = run.config
    return {"kind": "prompt_tuning", "classes": list(run.train_set.class_names),
            "frozen_fingerprint": run.frozen_fingerprint, "prompt_size": prompt_size,
            "train_decoder": c.train_decoder, "seed": c.seed, "batch_size": c.batch_size,
            "samples_per_class": run.n_per_class, "p_neg_max": c.p_neg_max}


def _bank(run: _Run, tuner: PromptTuner, extra: dict[str, str]) -> PromptBank:
    """The tuned classes as a prompt bank (merged into the deployed bank for prompt transfer)."""
    fingerprint = decoder_fingerprint(run.model.state_dict())
    bank = PromptBank(run.train_set.class_names, tuner.prompts.detach().cpu().clone(), run.model_config.encoder,
                      fingerprint, source=f"fpseg train ({run.out.name})", extra=extra)
    return run.base_bank.merge(bank) if run.base_bank is not None else bank


def _save_best(run: _Run, tuner: PromptTuner, extra: dict[str, str]) -> None:
    bank = _bank(run, tuner, extra)
    bank.save(run.out / BANK_FILE)
    if run.config.train_decoder:
        config = replace(run.model_config, n_classes=len(bank), prompt_size=bank.prompt_size)
        save_checkpoint(run.model, config, bank.names, run.out / CHECKPOINT_FILE)


def train(config: TrainConfig, overwrite: bool = False) -> Path:
    """Run (or resume) prompt tuning; returns the output folder (prompts.safetensors and friends).

    An --out holding a previous run is refused unless `config.resume` (continue it) or `overwrite` (delete
    its outputs and start over); see `claim_run_folder`.
    """
    _check_config(config)
    resuming = claim_run_folder(Path(config.out), OUTPUTS, config.resume, overwrite)
    ctx = init_distributed(config.device)
    if config.batch_size % ctx.world_size:
        raise ValueError(f"batch_size {config.batch_size} must be divisible by the {ctx.world_size} processes")
    torch.manual_seed(config.seed)
    run = _prepare(config, ctx)
    prompt_size = run.base_bank.prompt_size if run.base_bank is not None else config.prompt_size
    class_names = run.train_set.class_names
    init = torch.randn(len(class_names), prompt_size, run.model.prompt_encoder.embed_dim,
                       generator=torch.Generator().manual_seed(config.seed)) * PROMPT_INIT_STD
    tuner = PromptTuner(run.model, init, config.train_decoder).to(ctx.device)
    groups = [{"params": [tuner.prompts], "lr": config.lr}]
    if config.train_decoder:
        groups.append({"params": list(tuner.mask_decoder.parameters()), "lr": config.decoder_lr})
    optimizer = torch.optim.AdamW(groups, weight_decay=config.weight_decay)

    state_path = run.out / STATE_FILE
    identity = _resume_identity(run, prompt_size)
    progress = LoopProgress()
    if resuming:
        state = load_state(state_path)
        check_resumable(state, identity, state_path)
        with torch.no_grad():
            tuner.prompts.copy_(state["prompts"])
        if config.train_decoder:
            tuner.mask_decoder.load_state_dict(state["decoder"])
        optimizer.load_state_dict(state["optimizer"])
        progress = LoopProgress(state["step"], state["best_metric"], state["best_step"])
        if ctx.is_main:
            print(f"resuming {run.out} at step {progress.step}", file=sys.stderr)
    elif config.resume and ctx.is_main:
        print(f"no {state_path} to resume from; starting a new run", file=sys.stderr)
    if ctx.is_main:
        if not resuming:
            clear_run_folder(run.out, OUTPUTS)
        save_config(config, run.out / CONFIG_FILE)

    trained = DistributedDataParallel(tuner) if ctx.distributed else tuner
    size = run.store.header.img_size
    n_items = run.n_per_class * len(class_names)
    per_epoch = steps_per_epoch(n_items, config.batch_size)
    settings = LoopSettings(
        total_steps=config.max_steps if config.max_steps is not None else config.epochs * per_epoch,
        steps_per_epoch=per_epoch, log_every=config.log_every, save_every=config.save_every,
        val_every=config.val_every, metric="binary_iou", higher_is_better=True, progress=config.progress,
        tensorboard=config.tensorboard,
    )

    def batches(epoch: int, first_step: int, n_steps: int) -> DataLoader:
        pairs = draw_pairs(run.presence, run.n_per_class, config.p_neg_max,
                           np.random.default_rng([config.seed, epoch, 1]))
        steps = epoch_batches(n_items, config.batch_size, config.seed, epoch, ctx.rank, ctx.world_size,
                              first_step)
        return DataLoader(ClassWiseSamples(run.train_set, run.store, pairs, size),
                          batch_sampler=steps[:n_steps], num_workers=config.num_workers)

    def train_step(batch: dict[str, torch.Tensor]) -> float:
        logits = trained(batch["embedding"].to(ctx.device), batch["class_index"].to(ctx.device))
        loss = F.binary_cross_entropy_with_logits(upsample_logits(logits, size), batch["target"].to(ctx.device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    val_samples = _validation_samples(run)

    def validate(step: int) -> float:
        metric = evaluate_binary_iou(tuner, val_samples, len(class_names), config.batch_size // ctx.world_size,
                                     ctx, config.num_workers)
        if ctx.is_main:
            write_report({"binary_iou": metric.result(class_names)}, run.out / VALIDATION_DIR,
                         f"validation at step {step} ({config.val_split})")
        value = metric.mean()
        return 0.0 if math.isnan(value) else value

    def on_best(p: LoopProgress) -> None:
        extra = {"step": str(p.step)}
        if p.best is not None:
            extra["best_binary_iou"] = f"{p.best:.6f}"
        _save_best(run, tuner, extra)

    def save(p: LoopProgress) -> None:
        save_state(state_path, {
            **identity, "step": p.step, "best_metric": p.best, "best_step": p.best_step,
            "prompts": tuner.prompts.detach().cpu(),
            "decoder": tuner.mask_decoder.state_dict() if config.train_decoder else {},
            "optimizer": optimizer.state_dict(), "torch_rng": torch.get_rng_state(),
        })

    progress = run_training_loop(settings, ctx, run.out, progress, batches, train_step,
                                 validate if val_samples is not None else None, on_best, save)
    if ctx.is_main:
        best = f" (best validation binary IoU {progress.best:.4f} at step {progress.best_step})" \
            if progress.best is not None else ""
        print(f"wrote {run.out / BANK_FILE}{best}", file=sys.stderr)
    return run.out
