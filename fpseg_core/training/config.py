"""The options of the training commands (`fpseg train`, `fpseg distill`); config/train.yaml and
config/distill.yaml document every key."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..data.sampling import P_NEG_MAX
from ..jobs.options import doc, option


@dataclass
class TrainConfig:
    """`fpseg train`: prompt tuning, or prompt transfer of new classes into a deployed bank."""

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
    pos_weight: float = option(1.0, "BCE weight of a class's own pixels against the others (1: the paper's "
                                    "plain BCE; above 1 for classes that cover little of their images)")
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


@dataclass
class DistillConfig:
    """`fpseg distill`: a MobileSAM encoder trained on a SAM encoder's embeddings."""

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
