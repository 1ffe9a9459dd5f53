"""The embeddings regions are classified on: `fpseg precompute` output, or the split encoded into the run's
folder first; and the classifier that reads them (SAM's point prompt encoder + a class decoder)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from ..data.embeddings import EmbeddingStore
from ..data.precompute import PrecomputeConfig, precompute
from ..modeling.class_decoder import ClassDecoder
from ..prompt_bank import weights_fingerprint
from .classifier import RegionClassifier
from .config import RegionDataOptions
from .dataset import RegionDataset
from .loader import ENCODER_PREFIX, sam_point_prompt_encoder
from .network import RegionHead

EMBEDDINGS_DIR = "embeddings"  # where a command encodes the split when no --embeddings are given


def region_store(options: RegionDataOptions, out: Path) -> EmbeddingStore:
    """The given embeddings, or the split encoded into out/embeddings (resumable, as `fpseg precompute`)."""
    if options.embeddings:
        return EmbeddingStore.open(options.embeddings)
    return precompute(PrecomputeConfig(
        data=options.data, dataset="custom", splits=[options.split], checkpoint=options.checkpoint,
        out=str(out / EMBEDDINGS_DIR), input_mode=options.input_mode, num_workers=options.num_workers,
        device=options.device, progress=options.progress))


def embedded_classifier(sam_state: Mapping[str, torch.Tensor], sam_path: Path, store: EmbeddingStore,
                        dataset: RegionDataset, decoder: ClassDecoder, class_names: list[str], device: str
                        ) -> RegionClassifier:
    """A classifier without image encoder for `store`'s embeddings of `dataset`: SAM's point prompt encoder
    (from the SAM checkpoint whose encoder must be the one that computed them) and `decoder`."""
    store.check_encoder(weights_fingerprint(sam_state, (ENCODER_PREFIX,)), str(sam_path))
    store.check_covers(dataset.split, [f.key for f in dataset.frames])
    header = store.header
    head = RegionHead(sam_point_prompt_encoder(sam_state, sam_path, header.img_size), decoder)
    return RegionClassifier(None, head, class_names, header.img_size, header.input_mode, device)
