"""The options of `fpseg train-regions` and `fpseg eval-regions` (one YAML key and one flag each)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..jobs.options import doc, option

SUBSETS = ("all", "train", "val")


@dataclass
class RegionDataOptions:
    """Where the annotated images, their embeddings and the SAM model come from (both commands)."""

    data: str = option("", "dataset root: images in root/images/<split>/ (see `fpseg train-regions --help`)")
    split: str = option("train", "the images' split folder")
    annotations: str = option("", "JSON file (image -> regions) or folder of per-image GeoJSON FeatureCollections")
    checkpoint: str = option("", "official SAM checkpoint (vit_b/l/h; MobileSAM untested with published decoders)")
    embeddings: str | None = option(None, "embeddings from `fpseg precompute --dataset custom` with the same "
                                          "checkpoint (default: encode the split into <out>/embeddings)")
    input_mode: str = option("squash", "when encoding here: squash (FPSeg) or letterbox (SAM) the images")
    val_fraction: float = option(0.2, "share of the regions held out for validation (RoofSAM: 0.2)")
    seed: int = option(0, "seed of the train / validation split and of the points")
    device: str = option("cpu", "cpu, cuda or cuda:N (under torchrun each process uses cuda:LOCAL_RANK)")
    num_workers: int = option(0, "data-loading worker processes (0: in the main process)")
    progress: bool = option(True, "show progress bars")


@dataclass
class RegionTrainConfig(RegionDataOptions):
    """`fpseg train-regions`: RoofSAM's class decoder trained on annotated regions (published recipe)."""

    min_samples: int = option(10, "classes with fewer regions than this become 'other'")
    points_per_region: int = option(10, "points sampled in each training region (a new draw every epoch)")
    val_points_per_region: int = option(4, "points per region when validating (RoofSAM tests with 4)")
    lr: float = option(1e-4, "Adam learning rate of the decoder")
    batch_size: int = option(16, "regions per step, over all processes (divisible by their number)")
    epochs: int = option(20, "passes over the training regions")
    max_steps: int | None = option(None, "stop after this many steps in total (overrides epochs)")
    val_every: int = option(1, "validate every this many epochs (0: never; the last state is kept)")
    log_every: int = option(10, "log the mean training loss every this many steps")
    save_every: int = option(0, "also save the resume state every this many steps (0: at epoch ends)")
    resume: bool = option(False, "continue the run saved in --out (state.pt)")
    out: str = option("runs/regions", "output folder: decoder.pt, decoder.classes.json, state.pt, logs")
    tensorboard: bool = option(False, "also log to TensorBoard (needs the tensorboard package)")


@dataclass
class RegionEvalConfig(RegionDataOptions):
    """`fpseg eval-regions`: accuracy, macro F1, per-class F1 and confusion matrix of a region classifier."""

    decoder: str = option("", "RoofSAM decoder file (e.g. decoder.pt of `fpseg train-regions`)")
    class_names: list[str] | None = field(default=None, metadata=doc(
        "the decoder's class names in order (default: its <decoder stem>.classes.json)"))
    subset: str = option("all", "regions to score: all, or the train / val part of train-regions' split")
    points_per_region: int = option(4, "points sampled in each region (RoofSAM tests with 4)")
    out: str = option("runs/eval_regions", "report folder: results.json, results.md, confusion.png")
