"""`fpseg eval`: score a checkpoint + prompt bank on a dataset split.

Two metrics: the paper's class-wise binary IoU (sampled examples per class, every bank class the dataset
knows) and, on Cityscapes, the standard 19-class mIoU over the whole split, computed as cityscapesScripts
does from the label images FPSeg's pipeline produces (all 19 benchmark classes requested, argmax fusion).

The network runs on a backend (`backend`, `engine_dir`, `dtype`, as `fpseg benchmark` takes them), so the cost of
a reduced precision or another runtime is measured on the user's data before switching. PyTorch at fp32 is
the reference and runs exactly as `fpseg eval` always did: the checkpoint's own decoder, from `--embeddings`
or from the split encoded into <out>/embeddings. Any other backend or dtype runs both passes through that
backend: it encodes the split itself, into <out>/embeddings-<backend>-<dtype>[-<export>] (<export>: a short
hash of the engine_dir's manifests, so two exports or quantizations never share a resumed folder), and
decodes the binary-IoU examples and the mIoU label images. Precomputed `--embeddings` are refused there
rather than re-encoded elsewhere: they are fp32 torch embeddings whose manifest cannot say which backend
made them, so using them would measure only the decoder, and a keyed copy beside the user's folder would be
a second, unannounced encoding job; the report folder's own, keyed store is where the backend's embeddings
live. Every report records the backend, dtype, engine_dir and per-graph precision it ran at.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from ..artifacts import ENGINE_SIDECAR, SIDECAR
from ..backends import Backend, choose_backend, create_backend
from ..checkpoint import load_checkpoint
from ..cityscapes_labels import BANK33, TRAIN_ID_NAMES
from ..constants import BACKENDS, QUANTIZED_DTYPES, RUNTIME_DTYPES, require_choice
from ..data import open_dataset
from ..data.cityscapes_dataset import CityscapesDataset
from ..data.embeddings import EmbeddingStore, encoder_fingerprint
from ..data.precompute import create_store, encode_splits
from ..data.sampling import ClassWiseSamples, draw_pairs
from ..errors import FPSegError, PromptBankError
from ..export.quantize import QUANTIZE_COMMAND
from ..fusion import fuse
from ..jobs.distributed import DistContext, init_distributed
from ..modeling.build import FPSegConfig
from ..modeling.fpseg import FPSegModel
from ..preprocess import Geometry, postprocess_logits
from ..prompt_bank import PromptBank, decoder_fingerprint
from .binary import evaluate_binary_iou
from .config import REFERENCE_BACKEND, REFERENCE_DTYPE, EvalConfig
from .metrics import CityscapesConfusion, bank_labels_to_label_ids, write_png, write_report

EVAL_STREAM = 2_000_003  # seeds the sampled binary-IoU examples


def _load(config: EvalConfig) -> tuple[FPSegModel, FPSegConfig, PromptBank]:
    loaded = load_checkpoint(config.checkpoint, encoder=config.encoder)
    bank = PromptBank.load(config.prompts) if config.prompts else loaded.bank
    if bank is None:
        raise PromptBankError(f"{config.checkpoint} carries no trained prompts; pass --prompts BANK.safetensors")
    bank.check_fits(decoder_fingerprint(loaded.model.state_dict()), force=config.force_prompts)
    return loaded.model, loaded.config, bank


# (embedding [1, 256, h, w], prompt tokens [N, P, 256]) -> low-resolution logits [1, N, 4h, 4w]
ImageDecoder = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class ReferenceNetwork:
    """The checkpoint in PyTorch at fp32, run as `fpseg eval` always ran it (its own mask decoder)."""

    def __init__(self, model: FPSegModel) -> None:
        self.model = model
        with torch.no_grad():
            self.pe = model.prompt_encoder.get_dense_pe()
            self.dense = model.prompt_encoder.dense_embedding()

    def check_prompt_size(self, prompt_size: int) -> None:
        """Any prompt size: the model's decoder takes any number of prompt tokens per class."""

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, S, S] -> [B, 256, S/16, S/16]."""
        return self.model.encode(images)

    def decode(self, embedding: torch.Tensor, prompt_tokens: torch.Tensor) -> torch.Tensor:
        """One image's embedding [1, 256, h, w] and N classes' tokens [N, P, 256] -> logits [1, N, 4h, 4w]."""
        return self.model.mask_decoder(embedding, self.pe, self.dense, prompt_tokens)

    def decode_pairs(self, embeddings: torch.Tensor, prompt_tokens: torch.Tensor) -> torch.Tensor:
        """B (embedding, class tokens) pairs [B, 256, h, w] / [B, P, 256] -> logits [B, 4h, 4w]."""
        return self.model.mask_decoder.forward_pairs(embeddings, self.pe, self.dense, prompt_tokens)


class BackendNetwork:
    """The same three passes through a `Backend` (ONNX Runtime, TensorRT, OpenVINO, or torch at bf16 / fp16).

    Backends decode one image at a time, so a batch of pairs is decoded pair by pair; graphs exported for one
    image encode a batch image by image."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    def check_prompt_size(self, prompt_size: int) -> None:
        """Refuse a bank whose prompt size the backend's exported decoder does not take (ExportError)."""
        self.backend.check_prompt_size(prompt_size)

    @torch.inference_mode()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, S, S] -> [B, 256, S/16, S/16]."""
        if self.backend.batch_encoding:
            return self.backend.encode(images)
        return torch.cat([self.backend.encode(image[None]) for image in images])

    @torch.inference_mode()
    def decode(self, embedding: torch.Tensor, prompt_tokens: torch.Tensor) -> torch.Tensor:
        """One image's embedding [1, 256, h, w] and N classes' tokens [N, P, 256] -> logits [1, N, 4h, 4w]."""
        return self.backend.decode(embedding, prompt_tokens)

    @torch.inference_mode()
    def decode_pairs(self, embeddings: torch.Tensor, prompt_tokens: torch.Tensor) -> torch.Tensor:
        """B (embedding, class tokens) pairs [B, 256, h, w] / [B, P, 256] -> logits [B, 4h, 4w]."""
        return torch.cat([self.backend.decode(embedding[None], tokens[None])[0]
                          for embedding, tokens in zip(embeddings, prompt_tokens, strict=True)])


Network = ReferenceNetwork | BackendNetwork


def check_network_options(config: EvalConfig, device: torch.device) -> bool:
    """Refuse, with one line naming the fix, options that cannot run; True for the reference (torch fp32).

    A bad engine_dir for backend auto is `choose_backend`'s error; the other backends' refusals (a missing
    or mismatched export, openvino not installed, int8 on a plain export) come when the backend is created.
    """
    require_choice("backend", config.backend, BACKENDS)
    require_choice("dtype", config.dtype, RUNTIME_DTYPES)
    if config.backend == "torch" and config.engine_dir is not None:
        raise ValueError(f"engine_dir {config.engine_dir} is run by the other backends, not by backend torch (the "
                         "checkpoint itself); pass --backend onnxruntime, tensorrt, openvino or auto, or no "
                         "--engine-dir")
    if config.dtype in QUANTIZED_DTYPES and (config.backend not in ("openvino", "auto") or not config.engine_dir):
        command = QUANTIZE_COMMAND.format(onnx="ONNX_DIR")
        raise ValueError(f"dtype {config.dtype} runs a folder written by `fpseg quantize` on OpenVINO: pass --backend "
                         f"openvino --engine-dir QUANT_DIR (written by `{command}`)")
    chosen, _ = choose_backend(config.backend, device, config.engine_dir)
    reference = chosen == REFERENCE_BACKEND and config.dtype == REFERENCE_DTYPE
    if config.embeddings and not reference:
        raise ValueError(f"--embeddings {config.embeddings} were computed by torch, but backend {chosen} dtype "
                         f"{config.dtype} must encode the split itself to be measured; drop --embeddings (the split "
                         "is then encoded into the report folder)")
    return reference


def create_network(config: EvalConfig, model: FPSegModel, device: torch.device, reference: bool
                   ) -> tuple[Network, dict[str, Any]]:
    """The network to evaluate and what the report records of it (backend, dtype, engine_dir, precision)."""
    if reference:
        return ReferenceNetwork(model), {"backend": REFERENCE_BACKEND, "dtype": REFERENCE_DTYPE, "engine_dir": None,
                                         "precision": dict.fromkeys(("encoder", "decoder"), REFERENCE_DTYPE)}
    try:
        backend = create_backend(config.backend, model, device, config.engine_dir, input_mode=config.input_mode,
                                 dtype=config.dtype)
    except ModuleNotFoundError as exc:  # onnxruntime / tensorrt; a missing openvino is the backend's FPSegError
        raise FPSegError(f"backend {config.backend} needs the {exc.name} package, which is not importable here; "
                         "install the extra for it (README \"Speed\")") from exc
    dtype = backend.dtype if backend.name == "openvino" else config.dtype  # auto runs a quantized folder at int8
    precision = getattr(backend, "precisions", None)  # OpenVINO: per graph, from a quantized folder's manifest
    if precision is None and backend.name == "tensorrt":
        precision = backend.engines["precision"]
    return BackendNetwork(backend), {"backend": backend.name, "dtype": dtype,
                                     "engine_dir": None if config.engine_dir is None else str(config.engine_dir),
                                     "precision": precision or dict.fromkeys(("encoder", "decoder"), dtype)}


def embeddings_folder(config: EvalConfig, network: dict[str, Any]) -> Path:
    """Where the split is encoded when no --embeddings are given: <out>/embeddings for the reference, else a
    folder keyed by backend, dtype and (with an engine_dir) a hash of its manifests, so that a resumed folder
    only ever holds embeddings of the same network."""
    if network["backend"] == REFERENCE_BACKEND and network["dtype"] == REFERENCE_DTYPE:
        return Path(config.out) / "embeddings"
    key = f"embeddings-{network['backend']}-{network['dtype']}"
    if network["engine_dir"] is not None:
        digest = hashlib.sha256()
        for name in (SIDECAR, ENGINE_SIDECAR):
            manifest = Path(network["engine_dir"]) / name
            if manifest.is_file():
                digest.update(manifest.read_bytes())
        key += f"-{digest.hexdigest()[:8]}"
    return Path(config.out) / key


def _store(config: EvalConfig, model: FPSegModel, model_config: FPSegConfig, network: Network, folder: Path,
           ctx: DistContext) -> EmbeddingStore:
    if config.embeddings:
        store = EmbeddingStore.open(config.embeddings)
        store.check_encoder(encoder_fingerprint(model.state_dict()), config.checkpoint)
        return store
    dataset = open_dataset(config.dataset, config.data, config.split, require_labels=False)
    store = create_store(model, model_config, config.checkpoint, folder, config.input_mode, "float32", ctx)
    # encode_splits only calls .encode(images [B, 3, S, S]) on what it is given (the reference's is the model's)
    encode_splits(network, store, [dataset], ctx, config.batch_size, config.num_workers, config.progress)
    return store


def _binary_classes(config: EvalConfig, bank: PromptBank) -> list[str]:
    if config.classes:
        return list(config.classes)
    if config.dataset == "cityscapes":
        return [n for n in bank.names if n in BANK33]
    available = open_dataset(config.dataset, config.data, config.split).class_names
    return [n for n in bank.names if n in available]


@torch.no_grad()
def cityscapes_miou(decode: ImageDecoder, prompts: torch.Tensor, bank: PromptBank, dataset: CityscapesDataset,
                    store: EmbeddingStore, ctx: DistContext, threshold: float = 0.0, max_images: int | None = None,
                    predictions_dir: Path | None = None, progress: bool = True) -> dict[str, Any]:
    """19-class mIoU of the label images FPSeg's pipeline makes (`decode`, post-processing, argmax fusion),
    from precomputed embeddings. Benchmark classes missing from the bank are never predicted."""
    requested = [n for n in TRAIN_ID_NAMES if n in bank.names]
    if not requested:
        raise ValueError(f"the prompt bank has none of the 19 Cityscapes benchmark classes ({bank.names})")
    missing = [n for n in TRAIN_ID_NAMES if n not in bank.names]
    if missing:
        print(f"warning: the bank lacks {', '.join(missing)}: they are never predicted (IoU 0 where they occur)",
              file=sys.stderr)
    ids = bank.indices(requested)
    confusion = CityscapesConfusion()
    frames = range(len(dataset) if max_images is None else min(max_images, len(dataset)))
    for index in tqdm(frames, desc="mIoU", unit="img", disable=not progress):
        gt = dataset.read_label_ids(index)
        embedding = store.read(dataset.split, dataset.frames[index].key).to(ctx.device)[None]
        low_res = decode(embedding, prompts[ids])
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
    reference = check_network_options(config, ctx.device)
    model, model_config, bank = _load(config)
    model = model.to(ctx.device).eval()
    network, recorded = create_network(config, model, ctx.device, reference)
    network.check_prompt_size(bank.prompt_size)
    store = _store(config, model, model_config, network, embeddings_folder(config, recorded), ctx)
    prompts = bank.embeddings.to(ctx.device, torch.float32)
    result: dict[str, Any] = {"checkpoint": str(config.checkpoint), "prompts": bank.source,
                              "split": config.split, **recorded}
    if config.miou and config.dataset == "cityscapes":
        dataset = CityscapesDataset(config.data, config.split)
        store.check_covers(config.split, [f.key for f in dataset.frames[: config.max_images]])
        predictions = Path(config.out) / "predictions" if config.save_predictions else None
        result.update(cityscapes_miou(network.decode, prompts, bank, dataset, store, ctx, config.threshold,
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

        def decode(embeddings: torch.Tensor, class_index: torch.Tensor) -> torch.Tensor:
            return network.decode_pairs(embeddings, prompts[rows[class_index]])

        metric = evaluate_binary_iou(decode, samples, len(classes), config.batch_size, ctx, config.num_workers)
        result["binary_iou"] = metric.result(dataset.class_names)
    else:
        print("note: no bank class has labels in this dataset; no binary IoU", file=sys.stderr)
    title = f"{Path(config.checkpoint).name} + {bank.source} on {config.split}"
    if not reference:
        title += f" ({recorded['backend']} {recorded['dtype']})"
    write_report(result, Path(config.out), title, [network_line(recorded)])
    return result


def network_line(recorded: dict[str, Any]) -> str:
    """The Markdown line of a report that says what ran the network (backend, dtype, export, per-graph precision)."""
    precision = ", ".join(f"{graph} {p}" for graph, p in recorded["precision"].items())
    where = f", engine_dir `{recorded['engine_dir']}`" if recorded["engine_dir"] else ""
    return f"Network: backend {recorded['backend']}, dtype {recorded['dtype']}{where} ({precision})."
