"""`fpseg train-regions`: train RoofSAM's region classifier (class decoder) on annotated polygons."""

from __future__ import annotations

import argparse

from ..jobs.options import add_config_arguments
from ..regions.config import RegionTrainConfig
from ..regions.training import DECODER_FILE, train_regions
from .common import RUN_OVERWRITE_HELP, add_overwrite_argument, run_training_command


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train-regions", help="train a region classifier (RoofSAM) on images with class-labelled polygons",
        description="Train RoofSAM's class decoder with the published recipe: points sampled in each polygon, "
                    "inverse-frequency weighted cross-entropy, Adam on the decoder (SAM frozen), an 80/20 split, "
                    "best validation macro F1 kept. Images: root/images/<split>/; annotations: a JSON file "
                    "{\"<image>\": [{\"class\": name, \"polygon\": [[x, y], ...]}]} or a folder of per-image "
                    "GeoJSON FeatureCollections (properties.class). Uses --embeddings from `fpseg precompute "
                    "--dataset custom`, or encodes the split into <out>/embeddings. Writes decoder.pt (RoofSAM "
                    "format), decoder.classes.json, state.pt (for --resume), config.yaml and CSV logs to --out; "
                    "an --out holding a previous run is refused unless --resume or --overwrite. Runs under torchrun.",
    )
    add_config_arguments(parser, RegionTrainConfig)
    add_overwrite_argument(parser, RUN_OVERWRITE_HELP)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    return run_training_command(args, RegionTrainConfig, train_regions, DECODER_FILE)
