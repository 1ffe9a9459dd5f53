"""`fpseg segment`: label, colour and overlay PNGs for image files, with per-stage timings."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from ..visualize import blend, colorize, palette
from .common import add_model_arguments, load_model, parse_class_list


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("segment", help="segment image files into label / colour / overlay PNGs")
    parser.add_argument("images", nargs="+", type=Path, metavar="IMAGE")
    add_model_arguments(parser)
    parser.add_argument("--classes", help="comma-separated class names in priority order (default: all)")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.set_defaults(func=run)


def read_image(path: Path) -> np.ndarray:
    if not path.is_file():
        raise FileNotFoundError(f"image {path} does not exist")
    with Image.open(path) as image:
        return np.array(image.convert("RGB"))


def run(args: argparse.Namespace) -> int:
    model = load_model(args)
    classes = parse_class_list(args.classes)
    model.resolve_classes(classes)
    args.out.mkdir(parents=True, exist_ok=True)
    colours = palette(model.classes)
    print(f"backend: {model.backend_name}, classes: {', '.join(classes or model.classes)}")
    progress = tqdm(args.images, unit="img", disable=len(args.images) < 2)
    for path in progress:
        rgb = read_image(path)
        result = model.segment(rgb, classes)
        colour = colorize(result.labels, colours)
        Image.fromarray(result.labels).save(args.out / f"{path.stem}_labels.png")
        Image.fromarray(colour).save(args.out / f"{path.stem}_color.png")
        Image.fromarray(blend(rgb, colour)).save(args.out / f"{path.stem}_overlay.png")
        t = result.timings_ms
        progress.write(
            f"{path.name}: encoder {t['encoder']:.1f} ms, decoder {t['decoder']:.1f} ms, "
            f"post-processing {t['postprocess']:.1f} ms, total {t['total']:.1f} ms "
            f"({len(result.classes)} classes)"
        )
    return 0
