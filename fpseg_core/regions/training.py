"""`fpseg train-regions`: RoofSAM's class decoder trained on annotated regions, with the published recipe.

Data (see `regions.dataset` for the formats): images in root/images/<split>/ and their polygons with class
names, either one JSON file {"<image>": [{"class": name, "polygon": [[x, y], ...]}, ...]} or a folder of
per-image GeoJSON FeatureCollections (properties.class, Polygon / MultiPolygon geometry, pixel coordinates).
Embeddings: `--embeddings` from `fpseg precompute --dataset custom` with the same SAM checkpoint, or the split
is encoded into <out>/embeddings first.

Recipe: one polygon is one sample; classes with fewer than min_samples polygons become "other"; an 80/20
train / validation split of the regions (seeded); K points per region sampled anew every epoch; cross-entropy
over every point weighted by inverse class frequency w_c = N / (C * N_c); Adam on the decoder only (the
encoder and SAM's prompt encoder stay frozen), starting from SAM's mask decoder (class_pred_mlp random); the
epoch with the best validation region macro F1 is kept.

Writes decoder.pt (RoofSAM format: the decoder's plain state dict), decoder.classes.json, state.pt (resume),
config.yaml, train_log.csv, val_log.csv and validation/ (latest validation report) to --out.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from ..data.embeddings import EmbeddingStore
from ..jobs.distributed import DistContext, init_distributed
from ..preprocess import Geometry
from ..prompt_bank import weights_fingerprint
from ..training.bookkeeping import (
    RUN_OUTPUTS,
    LoopProgress,
    ResumableJob,
    claim_run_folder,
    run_job,
    steps_per_epoch,
)
from .config import RegionTrainConfig
from .dataset import RegionDataset, class_names_for, open_region_dataset, split_regions
from .evaluation import score_regions, write_region_report
from .loader import DECODER_PREFIX, PROMPT_PREFIX, classes_path, read_sam_state, sam_class_decoder, save_decoder
from .sampling import sample_points, to_encoder_frame
from .store import embedded_classifier, region_store

DECODER_FILE = "decoder.pt"
VALIDATION_DIR = "validation"  # the report of the latest validation
VALIDATION_STREAM = 1_000_003  # seeds the validation points, apart from the training epochs' seeds
OUTPUTS = (*RUN_OUTPUTS, DECODER_FILE, classes_path(DECODER_FILE).name, VALIDATION_DIR)


def class_weights(targets: np.ndarray, n_classes: int) -> torch.Tensor:
    """RoofSAM's inverse-frequency weights w_c = N / (C * N_c) over the training regions (0 for an absent class)."""
    counts = np.bincount(targets, minlength=n_classes).astype(np.float64)
    with np.errstate(divide="ignore"):
        weights = np.where(counts > 0, len(targets) / (n_classes * counts), 0.0)
    return torch.tensor(weights, dtype=torch.float32)


class RegionSamples(Dataset):
    """Items {"embedding": [256, h, w], "points": [K, 2] (encoder frame), "target": class index} of some regions,
    their points drawn for one epoch (seeded by (seed, epoch, region): a resumed run draws the same)."""

    def __init__(self, dataset: RegionDataset, store: EmbeddingStore, indices: list[int], targets: np.ndarray,
                 k: int, seed: int, epoch: int) -> None:
        self.dataset, self.store, self.indices, self.targets = dataset, store, indices, targets
        self.k, self.seed, self.epoch = k, seed, epoch

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> dict[str, torch.Tensor]:
        index = self.indices[position]
        region = self.dataset.regions[index]
        height, width = self.dataset.sizes[region.frame]
        rng = np.random.default_rng([self.seed, self.epoch, index])
        points = sample_points(region.polygon, self.k, rng, width, height)
        geometry = Geometry.for_image(height, width, self.store.header.img_size, self.store.header.input_mode)
        assert points is not None, "regions with nothing inside their image are left out when the dataset opens"
        return {
            "embedding": self.store.read(self.dataset.split, self.dataset.frames[region.frame].key),
            "points": torch.from_numpy(to_encoder_frame(points, geometry)).float(),
            "target": torch.tensor(int(self.targets[index])),
        }


def _check_config(config: RegionTrainConfig) -> None:
    for key in ("checkpoint", "annotations"):
        if not getattr(config, key):
            raise ValueError(f"no {key} given (--{key})")
    for key in ("batch_size", "epochs", "log_every", "min_samples", "points_per_region", "val_points_per_region"):
        if getattr(config, key) < 1:
            raise ValueError(f"{key} must be at least 1, got {getattr(config, key)}")
    if config.val_every < 0 or config.save_every < 0:
        raise ValueError("val_every and save_every must be 0 (off) or positive")
    if config.val_every and config.val_fraction == 0:
        raise ValueError("val_fraction 0 leaves no region to validate on; set val_every 0 (the last state is kept)")


class RegionTrainingJob(ResumableJob[RegionTrainConfig]):
    """One train-regions run: the regions and their embeddings, the class decoder being trained (SAM's
    prompt encoder frozen) and what the training loop asks of them."""

    outputs = OUTPUTS

    def __init__(self, config: RegionTrainConfig, ctx: DistContext, store: EmbeddingStore) -> None:
        super().__init__(config, ctx)
        self.store = store
        self.dataset = open_region_dataset(config.data, config.split, config.annotations)
        self.class_names, mapping = class_names_for([r.label for r in self.dataset.regions], config.min_samples)
        self.train_regions, self.val_regions = split_regions(len(self.dataset.regions), config.val_fraction,
                                                             config.seed)
        if not self.train_regions:
            raise ValueError(f"{config.annotations}: no region is left for training; lower val_fraction")
        labels = [mapping[r.label] for r in self.dataset.regions]
        self.targets = np.array([self.class_names.index(label) for label in labels], dtype=np.int64)
        self.weights = class_weights(self.targets[self.train_regions], len(self.class_names)).to(ctx.device)
        sam_path = Path(config.checkpoint)
        sam_state = read_sam_state(sam_path)
        decoder = sam_class_decoder(sam_state, sam_path, len(self.class_names))
        self.classifier = embedded_classifier(sam_state, sam_path, store, self.dataset, decoder, self.class_names,
                                              str(ctx.device))
        self.decoder = self.classifier.head.decoder
        self.classifier.head.requires_grad_(False)
        self.decoder.requires_grad_(True)
        for module in self.decoder.layout_only_modules():
            module.requires_grad_(False)
        self.optimizer = torch.optim.Adam([p for p in self.decoder.parameters() if p.requires_grad], lr=config.lr)
        self.trained = self.parallel(self.classifier.head)
        c = config
        self.identity = {"kind": "regions", "classes": list(self.class_names), "seed": c.seed,
                         "sam_fingerprint": weights_fingerprint(sam_state, (PROMPT_PREFIX, DECODER_PREFIX)),
                         "n_regions": len(self.dataset.regions), "val_fraction": c.val_fraction,
                         "batch_size": c.batch_size, "points_per_region": c.points_per_region}
        self.settings = self.loop_settings(steps_per_epoch(len(self.train_regions), c.batch_size), "macro_f1", True)
        if ctx.is_main:
            counts = np.bincount(self.targets, minlength=len(self.class_names))
            print("classes: " + ", ".join(f"{n} ({k})" for n, k in zip(self.class_names, counts, strict=True))
                  + f"; {len(self.train_regions)} training / {len(self.val_regions)} validation regions",
                  file=sys.stderr)

    def batches(self, epoch: int, first_step: int, n_steps: int) -> DataLoader:
        c = self.config
        samples = RegionSamples(self.dataset, self.store, self.train_regions, self.targets, c.points_per_region,
                                c.seed, epoch)
        return self.loader(samples, epoch, first_step, n_steps)

    def train_step(self, batch: dict[str, torch.Tensor]) -> float:
        device = self.ctx.device
        logits = self.trained(batch["embedding"].to(device), batch["points"].to(device))  # [B, C, K]
        target = batch["target"].to(device)[:, None].expand(-1, logits.shape[-1])
        return self.optimizer_step(F.cross_entropy(logits, target, weight=self.weights))

    def validate(self, step: int) -> float:
        c = self.config
        confusion = score_regions(self.classifier, self.store, self.dataset, self.val_regions, self.targets,
                                  c.val_points_per_region, VALIDATION_STREAM + c.seed, self.ctx)
        if self.ctx.is_main:
            write_region_report(confusion.result(self.class_names), self.out / VALIDATION_DIR,
                                f"validation at step {step} ({len(self.val_regions)} regions)")
        value = confusion.macro_f1()
        return 0.0 if math.isnan(value) else value

    def on_best(self, progress: LoopProgress) -> None:
        save_decoder(self.decoder, self.class_names, self.out / DECODER_FILE)

    def state_tensors(self) -> dict[str, Any]:
        return {"decoder": self.decoder.state_dict()}

    def load_state_tensors(self, state: dict[str, Any]) -> None:
        self.decoder.load_state_dict(state["decoder"])


def train_regions(config: RegionTrainConfig, overwrite: bool = False) -> Path:
    """Run (or resume) region-classifier training; returns the output folder (decoder.pt and friends).

    An --out holding a previous run is refused unless `config.resume` or `overwrite` (see `claim_run_folder`).
    """
    _check_config(config)
    resuming = claim_run_folder(Path(config.out), OUTPUTS, config.resume, overwrite)
    store = region_store(config, Path(config.out))
    ctx = init_distributed(config.device)
    return run_job(RegionTrainingJob(config, ctx, store), ctx, resuming, DECODER_FILE, "macro F1")
