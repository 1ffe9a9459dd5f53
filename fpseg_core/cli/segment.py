"""`fpseg segment`: label, colour and overlay PNGs for image files, with per-stage timings."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from ..class_names import parse_class_list
from ..evaluation.metrics import write_png
from ..files import check_output
from ..image_io import read_image
from ..visualize import blend, colorize, palette
from .common import add_model_arguments, add_overwrite_argument, check_output_folder, load_model

OUTPUT_KINDS = ("labels", "color", "overlay")  # each image gives <stem>_<kind>.png


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "segment", help="segment image files into label / colour / overlay PNGs",
        description="Writes <stem>_labels.png, <stem>_color.png and <stem>_overlay.png to --out for each IMAGE. "
                    "When two images share a file stem (a/frame.png, b/frame.png), every image's folder is "
                    "mirrored under --out instead, relative to the images' common parent (out/a/frame_labels.png, "
                    "out/b/frame_labels.png), so no result replaces another. Existing outputs are refused "
                    "before anything is computed, unless --overwrite.")
    parser.add_argument("images", nargs="+", type=Path, metavar="IMAGE")
    add_model_arguments(parser)
    parser.add_argument("--classes", help="comma-separated class names in priority order (default: all)")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    add_overwrite_argument(parser)
    parser.set_defaults(func=run)


def output_paths(images: Sequence[Path], out: Path) -> list[dict[str, Path]]:
    """Per image, its output file of each kind (OUTPUT_KINDS): out/<stem>_<kind>.png, or, when two images
    share a stem, out/<folder>/<stem>_<kind>.png with the image's folder relative to the images' common parent.
    Raises ValueError where two images would still write the same files (the same image twice, or a.png and
    a.jpg in one folder)."""
    stems = [image.stem for image in images]
    if len(set(stems)) == len(stems):
        prefixes = [out / stem for stem in stems]
    else:
        folders = [Path(os.path.abspath(image.parent)) for image in images]  # normalised: no ".." under out
        common = os.path.commonpath(folders)
        prefixes = [out / folder.relative_to(common) / image.stem
                    for folder, image in zip(folders, images, strict=True)]
    first: dict[Path, Path] = {}
    for image, prefix in zip(images, prefixes, strict=True):
        if prefix in first:
            raise ValueError(f"{first[prefix]} and {image} would both write {prefix}_labels.png; give each image "
                             "once, or rename one of them")
        first[prefix] = image
    return [{kind: prefix.with_name(f"{prefix.name}_{kind}.png") for kind in OUTPUT_KINDS} for prefix in prefixes]


def run(args: argparse.Namespace) -> int:
    outputs = output_paths(args.images, check_output_folder(args.out))
    for paths in outputs:
        for path in paths.values():
            check_output(path, args.overwrite, inputs=args.images)
    model = load_model(args)
    classes = parse_class_list(args.classes)
    model.resolve_classes(classes)
    colours = palette(model.classes)
    print(f"backend: {model.backend_name}, classes: {', '.join(classes or model.classes)}")
    progress = tqdm(args.images, unit="img", disable=len(args.images) < 2)
    for path, paths in zip(progress, outputs, strict=True):
        rgb = read_image(path)
        result = model.segment(rgb, classes)
        colour = colorize(result.labels, colours)
        for kind, picture in zip(OUTPUT_KINDS, (result.labels, colour, blend(rgb, colour)), strict=True):
            write_png(paths[kind], picture)
        t = result.timings_ms
        progress.write(
            f"{path.name}: encoder {t['encoder']:.1f} ms, decoder {t['decoder']:.1f} ms, "
            f"post-processing {t['postprocess']:.1f} ms, total {t['total']:.1f} ms "
            f"({len(result.classes)} classes)"
        )
    return 0
