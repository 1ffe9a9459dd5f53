"""`fpseg eval`: score a checkpoint + prompt bank on a dataset split.

Two metrics: the paper's class-wise binary IoU (sampled examples per class, every bank class the dataset
knows) and, on Cityscapes, the standard 19-class mIoU over the whole split, computed as cityscapesScripts
does from the label images FPSeg's pipeline produces (all 19 benchmark classes requested, argmax fusion).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from ..checkpoint import load_checkpoint
from ..cityscapes_labels import BANK33, TRAIN_ID_NAMES
from ..data import open_dataset
from ..data.cityscapes_dataset import CityscapesDataset
from ..data.embeddings import EmbeddingStore, encoder_fingerprint
from ..data.precompute import create_store, encode_splits
from ..data.sampling import ClassWiseSamples, draw_pairs
from ..errors import PromptBankError
from ..fusion import fuse
from ..jobs.distributed import DistContext, init_distributed
from ..modeling.build import FPSegConfig
from ..modeling.fpseg import FPSegModel
from ..preprocess import Geometry, postprocess_logits
from ..prompt_bank import PromptBank, decoder_fingerprint
from .binary import evaluate_binary_iou
from .config import EvalConfig
from .metrics import CityscapesConfusion, bank_labels_to_label_ids, write_png, write_report

EVAL_STREAM = 2_000_003  # seeds the sampled binary-IoU examples


def _load(config: EvalConfig) -> tuple[FPSegModel, FPSegConfig, PromptBank]:
    loaded = load_checkpoint(config.checkpoint, encoder=config.encoder)
    bank = PromptBank.load(config.prompts) if config.prompts else loaded.bank
    if bank is None:
        raise PromptBankError(f"{config.checkpoint} carries no trained prompts; pass --prompts BANK.safetensors")
    bank.check_fits(decoder_fingerprint(loaded.model.state_dict()), force=config.force_prompts)
    return loaded.model, loaded.config, bank


def _store(config: EvalConfig, model: FPSegModel, model_config: FPSegConfig, ctx: DistContext) -> EmbeddingStore:
    if config.embeddings:
        store = EmbeddingStore.open(config.embeddings)
        store.check_encoder(encoder_fingerprint(model.state_dict()), config.checkpoint)
        return store
    dataset = open_dataset(config.dataset, config.data, config.split, require_labels=False)
    store = create_store(model, model_config, config.checkpoint, Path(config.out) / "embeddings",
                         config.input_mode, "float32", ctx)
    encode_splits(model, store, [dataset], ctx, config.batch_size, config.num_workers, config.progress)
    return store


def _binary_classes(config: EvalConfig, bank: PromptBank) -> list[str]:
    if config.classes:
        return list(config.classes)
    if config.dataset == "cityscapes":
        return [n for n in bank.names if n in BANK33]
    available = open_dataset(config.dataset, config.data, config.split).class_names
    return [n for n in bank.names if n in available]


@torch.no_grad()
def cityscapes_miou(model: FPSegModel, prompts: torch.Tensor, bank: PromptBank, dataset: CityscapesDataset,
                    store: EmbeddingStore, ctx: DistContext, threshold: float = 0.0, max_images: int | None = None,
                    predictions_dir: Path | None = None, progress: bool = True) -> dict[str, Any]:
    """19-class mIoU of the label images FPSeg's pipeline makes (decoder, post-processing, argmax fusion),
    from precomputed embeddings. Benchmark classes missing from the bank are never predicted."""
    requested = [n for n in TRAIN_ID_NAMES if n in bank.names]
    if not requested:
        raise ValueError(f"the prompt bank has none of the 19 Cityscapes benchmark classes ({bank.names})")
    missing = [n for n in TRAIN_ID_NAMES if n not in bank.names]
    if missing:
        print(f"warning: the bank lacks {', '.join(missing)}: they are never predicted (IoU 0 where they occur)",
              file=sys.stderr)
    ids = bank.indices(requested)
    pe = model.prompt_encoder.get_dense_pe()
    dense = model.prompt_encoder.dense_embedding()
    confusion = CityscapesConfusion()
    frames = range(len(dataset) if max_images is None else min(max_images, len(dataset)))
    for index in tqdm(frames, desc="mIoU", unit="img", disable=not progress):
        gt = dataset.read_label_ids(index)
        embedding = store.read(dataset.split, dataset.frames[index].key).to(ctx.device)[None]
        low_res = model.mask_decoder(embedding, pe, dense, prompts[ids])
        geometry = Geometry.for_image(gt.shape[0], gt.shape[1], store.header.img_size, store.header.input_mode)
        labels = fuse(postprocess_logits(low_res, geometry)[0], ids, "argmax", threshold).cpu().numpy()
        label_ids = bank_labels_to_label_ids(labels, bank.names)
        confusion.update(label_ids, gt)
        if predictions_dir is not None:
            write_png(predictions_dir / f"{dataset.frames[index].key}_pred_labelIds.png", label_ids)
    return confusion.result()


def evaluate(config: EvalConfig) -> dict[str, Any]:
    """Both metrics for `config`; writes the report to config.out and returns the result dict."""
    if not config.checkpoint:
        raise ValueError("no checkpoint given (--checkpoint)")
    ctx = init_distributed(config.device)
    model, model_config, bank = _load(config)
    model = model.to(ctx.device).eval()
    store = _store(config, model, model_config, ctx)
    prompts = bank.embeddings.to(ctx.device, torch.float32)
    result: dict[str, Any] = {"checkpoint": str(config.checkpoint), "prompts": bank.source,
                              "split": config.split}
    if config.miou and config.dataset == "cityscapes":
        dataset = CityscapesDataset(config.data, config.split)
        store.check_covers(config.split, [f.key for f in dataset.frames[: config.max_images]])
        predictions = Path(config.out) / "predictions" if config.save_predictions else None
        result.update(cityscapes_miou(model, prompts, bank, dataset, store, ctx, config.threshold,
                                      config.max_images, predictions, config.progress))
    classes = _binary_classes(config, bank)
    if store.header.input_mode != "squash":
        print("note: letterboxed embeddings: no binary IoU (its examples are squashed, as FPSeg trains)",
              file=sys.stderr)
    elif classes:
        dataset = open_dataset(config.dataset, config.data, config.split, classes)
        store.check_covers(config.split, [f.key for f in dataset.frames])
        presence = dataset.presence(cache_dir=store.root, progress=config.progress)
        pairs = draw_pairs(presence, config.samples_per_class, config.p_neg_max,
                           np.random.default_rng([config.seed, EVAL_STREAM]))
        samples = ClassWiseSamples(dataset, store, pairs, store.header.img_size)
        rows = torch.tensor(bank.indices(dataset.class_names), device=ctx.device)
        pe = model.prompt_encoder.get_dense_pe()
        dense = model.prompt_encoder.dense_embedding()

        def decode(embeddings: torch.Tensor, class_index: torch.Tensor) -> torch.Tensor:
            return model.mask_decoder.forward_pairs(embeddings, pe, dense, prompts[rows[class_index]])

        metric = evaluate_binary_iou(decode, samples, len(classes), config.batch_size, ctx, config.num_workers)
        result["binary_iou"] = metric.result(dataset.class_names)
    else:
        print("note: no bank class has labels in this dataset; no binary IoU", file=sys.stderr)
    title = f"{Path(config.checkpoint).name} + {bank.source} on {config.split}"
    write_report(result, Path(config.out), title)
    return result
