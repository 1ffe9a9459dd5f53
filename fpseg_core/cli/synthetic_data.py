"""`fpseg synthetic-data textures|natural --out DIR`: synthetic images made on the spot (no download).

textures: a segmentation dataset of textured shapes on dead-leaves backgrounds, in the custom layout
(`--dataset custom`), to tune prompts with `fpseg train` and score them with `fpseg eval`.
natural: dead-leaves images with natural-image statistics, e.g. calibration images for `fpseg quantize`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..data.synthetic import TEXTURES, texture_class_names, write_natural_images, write_texture_dataset
from ..jobs.options import image_size_type
from .common import add_overwrite_argument, check_output_folder

KINDS = ("textures", "natural")
# Each option that applies to one kind only, its default (a default is filled in only for its own kind).
TEXTURE_DEFAULTS = {"classes": 5, "train": 200, "val": 50, "test": 100, "size": (512, 512)}
NATURAL_DEFAULTS = {"count": 300, "size": (1024, 1024)}
SPLITS = ("train", "val", "test")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "synthetic-data", help="write synthetic images: a textured segmentation dataset or natural-statistics images",
        description="Writes synthetic images, made on the spot from --seed (the same arguments give the same "
                    "files). textures: scenes of 1-4 shapes on a dead-leaves background, each shape painted with "
                    f"the texture and colours of its class (texture_<kind>; kinds: {', '.join(TEXTURES)}), as a "
                    "custom dataset (DIR/images/<split>/*.png, DIR/masks/<split>/<class>/*.png) for `fpseg "
                    "precompute / train / eval --dataset custom --data DIR`. natural: dead-leaves images "
                    "(random discs with radii ~ r^-3: the power spectrum of photographs), DIR/natural_0000.png "
                    "..., e.g. calibration images for `fpseg quantize`.")
    parser.add_argument("kind", choices=KINDS, help="textures: a segmentation dataset; natural: plain images")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--size", type=image_size_type,
                        help="HEIGHTxWIDTH of the images (default: 512x512 for textures, 1024x1024 for natural)")
    parser.add_argument("--seed", type=int, default=0, help="seed of everything drawn (default 0)")
    textures = parser.add_argument_group("textures only")
    textures.add_argument("--classes", type=int,
                          help=f"number of classes, 1 to {len(TEXTURES)}: the first N texture kinds "
                               f"(default {TEXTURE_DEFAULTS['classes']})")
    for split in SPLITS:
        textures.add_argument(f"--{split}", type=int,
                              help=f"images in the {split} split (default {TEXTURE_DEFAULTS[split]}; 0: no {split} "
                                   "split)")
    natural = parser.add_argument_group("natural only")
    natural.add_argument("--count", type=int, help=f"number of images (default {NATURAL_DEFAULTS['count']})")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_overwrite_argument(parser, "replace the images of a previous run in --out, and remove those it does not "
                                   "write again (default: refuse it, exit code 2)")
    parser.set_defaults(func=run)


def _options(args: argparse.Namespace) -> dict:
    """The kind's options with their defaults filled in; an option of the other kind is refused."""
    own, other = (TEXTURE_DEFAULTS, NATURAL_DEFAULTS) if args.kind == "textures" else (NATURAL_DEFAULTS,
                                                                                       TEXTURE_DEFAULTS)
    given = [name for name in other if name not in own and getattr(args, name) is not None]
    if given:
        flags = ", ".join(f"--{name}" for name in given)
        allowed = ", ".join(f"--{name}" for name in own)
        verb = "does" if len(given) == 1 else "do"
        raise ValueError(f"{flags} {verb} not apply to `synthetic-data {args.kind}` (its options: {allowed}, --seed)")
    return {name: default if getattr(args, name) is None else getattr(args, name) for name, default in own.items()}


def run(args: argparse.Namespace) -> int:
    options = _options(args)
    check_output_folder(args.out)
    height, width = options["size"]
    if args.kind == "natural":
        paths = write_natural_images(args.out, options["count"], (width, height), seed=args.seed,
                                     overwrite=args.overwrite, progress=not args.no_progress)
        print(f"wrote {len(paths)} natural-statistics image(s) of {height}x{width} to {args.out} ({paths[0].name} "
              f"... {paths[-1].name}); e.g. calibrate with `fpseg quantize --onnx ONNX_DIR --calibration "
              f"{args.out}/natural_*.png --out INT8_DIR`")
        return 0
    splits = {split: options[split] for split in SPLITS if options[split] != 0}
    names = texture_class_names(options["classes"])
    write_texture_dataset(args.out, options["classes"], splits, (width, height), seed=args.seed,
                          overwrite=args.overwrite, progress=not args.no_progress)
    counts = ", ".join(f"{split}: {n}" for split, n in splits.items())
    print(f"wrote {sum(splits.values())} scene(s) of {height}x{width} with {len(names)} classes "
          f"({', '.join(names)}) to {args.out} ({counts}); next: `fpseg precompute --dataset custom --data "
          f"{args.out} --splits {' '.join(splits)} --checkpoint CHECKPOINT --out EMBEDDINGS`")
    return 0
