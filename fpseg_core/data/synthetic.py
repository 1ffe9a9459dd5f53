"""Synthetic images made without any download: "natural-statistics" images and a textured segmentation set.

Two generators, both plain numpy + PIL and fully determined by a `numpy.random.Generator`:

- `dead_leaves_image`: the dead-leaves model of natural images (Matheron; Lee, Mumford & Huang 2001): opaque
  discs of random colour, radii drawn from the scale-invariant density p(r) ~ r^-3 between `LEAF_MIN_RADIUS`
  (1 px) and a third of the image's shorter side, stacked in random depth order until every pixel is covered.
  Each disc carries a mild linear shading and the image a little pixel noise, so it is not piecewise constant.
  Its radially averaged power spectrum falls about as 1/f^2, like photographs'. For quantization calibration
  and embedding-error measurement.
- `textured_scene`: a dead-leaves background with 1-4 polygons, rectangles and ellipses on it, each painted
  with the texture of its class (`TEXTURES`: each kind has its own pattern and its own pair of colours), and
  the label map that says which class each pixel shows.

`write_natural_images` and `write_texture_dataset` write them as PNG files: seeded (the same arguments give
byte-identical files; each image has its own random stream derived from the seed, the split and its index),
atomically (`fpseg_core.files.atomic_path`), refusing existing outputs unless `overwrite=True`. The texture
set is in the custom dataset layout that `MaskFolderDataset` reads (`fpseg train / eval --dataset custom`).
"""

from __future__ import annotations

import fnmatch
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from ..files import OutputExistsError, atomic_path

# --- dead leaves ---------------------------------------------------------------------------------------------
LEAF_MIN_RADIUS = 1.0  # px
LEAF_MAX_RADIUS_FRACTION = 1 / 3  # of the shorter image side
LEAF_COVERAGE_PER_LAYER = 3.0  # expected disc area per layer / image area: a layer leaves ~e^-3 = 5% uncovered
LEAF_MAX_LAYERS = 12  # layers are added behind the previous ones until no pixel is uncovered
LEAF_SMALL_RADII = (2.0, 4.0, 8.0, 16.0)  # buckets of discs rasterised together (vectorised); larger one by one
LEAF_LUMINANCE = (0.05, 0.95)  # range of a disc's grey level (0..1)
LEAF_CHROMA_STD = 0.12  # per-channel colour deviation from the grey level
LEAF_SHADING = 0.12  # at most this much brighter on one edge of a disc than at its centre (0..1 scale)
PIXEL_NOISE_STD = 1.5  # grey levels (0..255) of i.i.d. pixel noise, on leaves and textures alike

# --- textures ------------------------------------------------------------------------------------------------
TEXTURES: tuple[str, ...] = (
    "stripes_horizontal",  # horizontal bands
    "stripes_vertical",  # vertical bands
    "stripes_diagonal",  # bands at about 45 degrees
    "checkerboard",  # squares of the two colours
    "dots",  # round dots on a square grid
    "rings",  # concentric rings about a random centre
    "blobs",  # smooth noise: soft blobs of one colour fading into the other
    "grain",  # fine per-pixel noise between the two colours
    "grid",  # thin lines of a square grid
    "waves",  # wavy horizontal bands
)
# The two colours of each kind (RGB 0..255): every pixel of a texture lies (up to pixel noise) on the segment
# between them. The pairs were chosen (hand-picked hues, then nudged by a small search) so that any two
# kinds' segments are at least 52 grey levels apart: colour alone tells the classes apart, and so does pattern.
TEXTURE_COLORS: Mapping[str, tuple[tuple[int, int, int], tuple[int, int, int]]] = {
    "stripes_horizontal": ((255, 15, 95), (105, 5, 155)),
    "stripes_vertical": ((215, 247, 13), (18, 132, 0)),
    "stripes_diagonal": ((0, 208, 197), (80, 0, 32)),
    "checkerboard": ((200, 255, 214), (8, 65, 0)),
    "dots": ((255, 103, 213), (30, 82, 165)),
    "rings": ((230, 124, 16), (9, 10, 184)),
    "blobs": ((168, 229, 86), (178, 80, 128)),
    "grain": ((253, 225, 90), (119, 110, 0)),
    "grid": ((255, 205, 160), (210, 45, 67)),
    "waves": ((36, 175, 245), (234, 188, 225)),
}
TEXTURE_PERIOD_FRACTION = 1 / 24  # pattern period, as a fraction of the shorter image side ...
TEXTURE_MIN_PERIOD = 6.0  # ... but at least this many pixels
TEXTURE_SCALE_JITTER = (0.8, 1.25)  # the period of each texture instance is scaled by a factor in this range
TEXTURE_ANGLE_JITTER = 10.0  # degrees the bands / squares / grid of an instance are turned, at most
TEXTURE_EDGE_SHARPNESS = 3.0  # square waves are clip(0.5 + k * sin): k = 3 gives bands with soft edges

# --- scenes --------------------------------------------------------------------------------------------------
SCENE_SHAPES = (1, 4)  # shapes per scene, inclusive
SHAPE_SIZE_FRACTION = (1 / 8, 1 / 2)  # a shape's extent, as a fraction of the shorter image side
SHAPE_KINDS = ("rectangle", "ellipse", "polygon")
POLYGON_VERTICES = (3, 6)  # inclusive; triangles included
ELLIPSE_VERTICES = 64
MAX_SHAPE_TRIES = 20  # a shape too thin to cover a single pixel is drawn again

# --- files ---------------------------------------------------------------------------------------------------
CLASS_PREFIX = "texture_"  # class names are texture_<kind>, e.g. texture_checkerboard
SCENE_NAME = "scene_{index:05d}"
SCENE_GLOB = "scene_*.png"
NATURAL_NAME = "natural_{index:04d}.png"
NATURAL_GLOB = "natural_*.png"
MASK_ON = 255
PNG_COMPRESS_LEVEL = 1  # zlib level: 3x faster than the default 6 on noisy images, for ~10% more bytes


# =============================================================================================================
# Dead leaves
# =============================================================================================================

def _leaf_radii(rng: np.random.Generator, count: int, r_max: float) -> np.ndarray:
    """`count` radii with density ~ r^-3 on [LEAF_MIN_RADIUS, r_max] (inverse-CDF sampling)."""
    lo, hi = LEAF_MIN_RADIUS ** -2, r_max ** -2
    return (lo - rng.random(count) * (lo - hi)) ** -0.5


@dataclass(frozen=True)
class _Leaves:
    """One layer of discs: centres and radii (float64 arrays of one length)."""

    cy: np.ndarray
    cx: np.ndarray
    radius: np.ndarray


def _leaf_layer(rng: np.random.Generator, uncovered: np.ndarray, r_max: float) -> _Leaves:
    """A layer of discs covering each pixel `LEAF_COVERAGE_PER_LAYER` times on average, less the discs whose
    bounding box holds no pixel of `uncovered` (H x W bool: those would be hidden by the layers in front).

    Centres are uniform over the image grown by `r_max` on every side, so that a disc near the border is cut
    by it like any other (the model is stationary: corners are covered as often as the middle).
    """
    height, width = uncovered.shape
    mean_area = 2 * np.pi * np.log(r_max / LEAF_MIN_RADIUS) / (1 - (r_max / LEAF_MIN_RADIUS) ** -2)
    count = max(1, int(LEAF_COVERAGE_PER_LAYER * (height + 2 * r_max) * (width + 2 * r_max) / mean_area))
    radius = _leaf_radii(rng, count, r_max)
    cy = rng.uniform(-0.5 - r_max, height - 0.5 + r_max, count)
    cx = rng.uniform(-0.5 - r_max, width - 0.5 + r_max, count)
    near = (np.abs(cy - (height - 1) / 2) < radius + height / 2) & (np.abs(cx - (width - 1) / 2) < radius + width / 2)
    cy, cx, radius = cy[near], cx[near], radius[near]
    # Bounding boxes [y0, y1) x [x0, x1) of the pixels each disc can cover, clipped to the image.
    y0, y1 = np.clip(np.ceil(cy - radius), 0, height).astype(np.int64), np.clip(np.floor(cy + radius) + 1, 0, height)
    x0, x1 = np.clip(np.ceil(cx - radius), 0, width).astype(np.int64), np.clip(np.floor(cx + radius) + 1, 0, width)
    y1, x1 = y1.astype(np.int64), x1.astype(np.int64)
    keep = (y0 < y1) & (x0 < x1)
    if not uncovered.all():
        table = np.zeros((height + 1, width + 1), dtype=np.int32)  # summed-area table of `uncovered`
        table[1:, 1:] = uncovered.cumsum(0, dtype=np.int32).cumsum(1, dtype=np.int32)
        keep &= table[y1, x1] - table[y0, x1] - table[y1, x0] + table[y0, x0] > 0
    return _Leaves(cy[keep], cx[keep], radius[keep])


def _rasterise(leaves: _Leaves, height: int, width: int) -> np.ndarray:
    """H*W int32: for each pixel the index of the frontmost disc covering it (a higher index lies in front),
    -1 where none does.

    Small discs are rasterised all at once on a (2k+1)^2 stencil per radius bucket (`LEAF_SMALL_RADII`); the
    few larger ones (0.4% of them) one by one on their bounding box.
    """
    cy, cx, radius = leaves.cy, leaves.cx, leaves.radius
    ids = np.arange(len(radius), dtype=np.int32)
    owner = np.full(height * width, -1, dtype=np.int32)
    lower = 0.0
    for upper in LEAF_SMALL_RADII:
        pick = (radius > lower) & (radius <= upper)
        lower = upper
        if not pick.any():
            continue
        offsets = np.arange(-int(np.ceil(upper)), int(np.ceil(upper)) + 1)
        py = np.rint(cy[pick]).astype(np.int64)[:, None, None] + offsets[None, :, None]
        px = np.rint(cx[pick]).astype(np.int64)[:, None, None] + offsets[None, None, :]
        inside = (py - cy[pick, None, None]) ** 2 + (px - cx[pick, None, None]) ** 2 <= radius[pick, None, None] ** 2
        inside &= (py >= 0) & (py < height) & (px >= 0) & (px < width)
        np.maximum.at(owner, (py * width + px)[inside], np.broadcast_to(ids[pick, None, None], inside.shape)[inside])
    grid = owner.reshape(height, width)
    for i in np.flatnonzero(radius > LEAF_SMALL_RADII[-1]):
        r = radius[i]
        y0, y1 = max(0, int(cy[i] - r)), min(height, int(cy[i] + r) + 2)
        x0, x1 = max(0, int(cx[i] - r)), min(width, int(cx[i] + r) + 2)
        if y0 >= y1 or x0 >= x1:
            continue
        yy = np.arange(y0, y1)[:, None] - cy[i]
        xx = np.arange(x0, x1)[None, :] - cx[i]
        box = grid[y0:y1, x0:x1]
        np.maximum(box, np.where(yy * yy + xx * xx <= r * r, ids[i], -1), out=box)
    return owner


def _leaf_colors(rng: np.random.Generator, count: int) -> np.ndarray:
    """count x 3 float32 disc colours on a 0..1 scale: a uniform grey level plus a little chroma."""
    grey = rng.uniform(*LEAF_LUMINANCE, count)[:, None]
    return np.clip(grey + rng.normal(0.0, LEAF_CHROMA_STD, (count, 3)), 0.0, 1.0).astype(np.float32)


def _pixel_noise(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """float32 Gaussian noise of `PIXEL_NOISE_STD` grey levels."""
    return rng.standard_normal(shape, dtype=np.float32) * np.float32(PIXEL_NOISE_STD)


def dead_leaves_image(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A dead-leaves image: uint8 array of shape (height, width, 3), RGB.

    Layers of opaque discs (radii ~ r^-3 from 1 px to a third of the shorter side, uniform centres, random
    colours) are dropped, each layer behind the ones before, until every pixel is covered (after at most
    `LEAF_MAX_LAYERS` layers a pixel still uncovered, which in practice does not happen, takes the colour of
    the last disc). It is rendered at full resolution (no upscaling): for 1024 x 1024 about 100 000 visible
    discs in the first layer and 4-5 layers in all, of which the later ones keep only the discs that reach a
    pixel still uncovered; about 0.5 s of one CPU core. Each disc is shaded linearly (brighter towards a random side,
    by up to `LEAF_SHADING` at its edge) and Gaussian pixel noise of `PIXEL_NOISE_STD` grey levels is added.
    """
    _check_size(height, width)
    r_max = max(LEAF_MIN_RADIUS * 1.5, min(height, width) * LEAF_MAX_RADIUS_FRACTION)
    owner = np.full(height * width, -1, dtype=np.int64)  # index into the discs of all layers, concatenated
    layers: list[_Leaves] = []
    total = 0
    for _ in range(LEAF_MAX_LAYERS):
        layer = _leaf_layer(rng, (owner < 0).reshape(height, width), r_max)
        front = _rasterise(layer, height, width)
        fill = (owner < 0) & (front >= 0)  # a later layer lies behind: it shows only where nothing is yet
        owner[fill] = front[fill] + total
        layers.append(layer)
        total += len(layer.radius)
        if (owner >= 0).all():
            break
    owner[owner < 0] = total - 1
    cy, cx, radius = (np.concatenate([getattr(leaves, name) for leaves in layers]) for name in ("cy", "cx", "radius"))
    colors = _leaf_colors(rng, total)
    angle = rng.uniform(0.0, 2 * np.pi, total)
    slope = rng.uniform(0.0, LEAF_SHADING, total) / radius  # brightness change per pixel along `angle`
    gy, gx = (np.sin(angle) * slope).astype(np.float32), (np.cos(angle) * slope).astype(np.float32)
    ys, xs = np.divmod(np.arange(height * width, dtype=np.int64), width)
    shade = (ys - cy[owner]).astype(np.float32) * gy[owner] + (xs - cx[owner]).astype(np.float32) * gx[owner]
    image = (colors[owner] + shade[:, None]) * 255.0 + _pixel_noise(rng, (height * width, 3))
    return _to_uint8(image.reshape(height, width, 3))


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _check_size(height: int, width: int) -> None:
    if int(height) < 1 or int(width) < 1:
        raise ValueError(f"image size must be at least 1 x 1 pixels, got {width} x {height} (width x height)")


# =============================================================================================================
# Textures
# =============================================================================================================

def _square_wave(phase: np.ndarray) -> np.ndarray:
    """0..1 bands with soft edges: clip(0.5 + k sin(phase)) (k = `TEXTURE_EDGE_SHARPNESS`)."""
    return np.clip(0.5 + TEXTURE_EDGE_SHARPNESS * np.sin(phase), 0.0, 1.0)


@dataclass(frozen=True)
class _Frame:
    """What a pattern is drawn on: rotated pixel coordinates u (along) and v (across), float32 H x W arrays, the
    period in pixels and two random phases (radians)."""

    u: np.ndarray
    v: np.ndarray
    period: float
    phase: tuple[float, float]


def _stripes_horizontal(rng: np.random.Generator, f: _Frame) -> np.ndarray:
    return _square_wave(2 * np.pi * f.v / f.period + f.phase[0])


def _stripes_vertical(rng: np.random.Generator, f: _Frame) -> np.ndarray:
    return _square_wave(2 * np.pi * f.u / f.period + f.phase[0])


def _stripes_diagonal(rng: np.random.Generator, f: _Frame) -> np.ndarray:
    return _square_wave(2 * np.pi * (f.u + f.v) / (np.sqrt(2) * f.period) + f.phase[0])


def _checkerboard(rng: np.random.Generator, f: _Frame) -> np.ndarray:
    product = np.sin(np.pi * f.u / f.period + f.phase[0]) * np.sin(np.pi * f.v / f.period + f.phase[1])
    return _square_wave(np.arcsin(np.clip(4 * product, -1.0, 1.0)))  # squares of side `period`


def _dots(rng: np.random.Generator, f: _Frame) -> np.ndarray:
    du = np.mod(f.u / f.period + f.phase[0] / (2 * np.pi), 1.0) - 0.5
    dv = np.mod(f.v / f.period + f.phase[1] / (2 * np.pi), 1.0) - 0.5
    return np.clip(0.5 + (0.3 - np.hypot(du, dv)) * f.period, 0.0, 1.0)  # dots of radius 0.3 period, 1 px edge


def _rings(rng: np.random.Generator, f: _Frame) -> np.ndarray:
    height, width = f.u.shape
    cy, cx = rng.uniform(0, height), rng.uniform(0, width)
    y, x = np.ogrid[:height, :width]
    return _square_wave(2 * np.pi * np.hypot(y - cy, x - cx) / f.period + f.phase[0])


def _blobs(rng: np.random.Generator, f: _Frame) -> np.ndarray:
    height, width = f.u.shape
    cell = 2 * f.period  # one random value per 2 periods, interpolated bicubically
    rows, cols = int(np.ceil(height / cell)) + 3, int(np.ceil(width / cell)) + 3  # a margin of one cell and more
    coarse = Image.fromarray(rng.standard_normal((rows, cols)).astype(np.float32))  # mode F
    grown = np.asarray(coarse.resize((round(cols * cell), round(rows * cell)), Image.Resampling.BICUBIC))
    margin = round(cell)
    smooth = grown[margin:margin + height, margin:margin + width]
    return 0.5 + 0.5 * np.tanh(1.5 * smooth / max(float(smooth.std()), 1e-6))


def _grain(rng: np.random.Generator, f: _Frame) -> np.ndarray:
    return rng.random(f.u.shape, dtype=np.float32)


def _grid(rng: np.random.Generator, f: _Frame) -> np.ndarray:
    half_width = max(0.75, 0.06 * f.period)  # lines of 12% of the period, at least 1.5 px
    distance = [f.period * np.abs(np.mod(c / f.period + p / (2 * np.pi) + 0.5, 1.0) - 0.5)
                for c, p in ((f.u, f.phase[0]), (f.v, f.phase[1]))]
    return np.clip(0.5 + half_width - np.minimum(*distance), 0.0, 1.0)


def _waves(rng: np.random.Generator, f: _Frame) -> np.ndarray:
    bend = 0.5 * f.period * np.sin(np.pi * f.u / f.period + f.phase[1])  # wavelength 2 periods along the bands
    return _square_wave(2 * np.pi * (f.v + bend) / f.period + f.phase[0])


_PATTERNS: Mapping[str, Callable[[np.random.Generator, _Frame], np.ndarray]] = {
    "stripes_horizontal": _stripes_horizontal,
    "stripes_vertical": _stripes_vertical,
    "stripes_diagonal": _stripes_diagonal,
    "checkerboard": _checkerboard,
    "dots": _dots,
    "rings": _rings,
    "blobs": _blobs,
    "grain": _grain,
    "grid": _grid,
    "waves": _waves,
}
assert tuple(_PATTERNS) == TEXTURES == tuple(TEXTURE_COLORS)


def texture(kind: str, rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """An instance of texture `kind` (one of `TEXTURES`): uint8 array of shape (height, width, 3), RGB.

    Every call draws a new period (the base period, min(height, width) * `TEXTURE_PERIOD_FRACTION` but at least
    `TEXTURE_MIN_PERIOD` px, times a factor in `TEXTURE_SCALE_JITTER`), phase and small rotation (up to
    `TEXTURE_ANGLE_JITTER` degrees), so instances differ; the colours are always the kind's pair in
    `TEXTURE_COLORS`: each pixel is a mix of the two plus `PIXEL_NOISE_STD` of noise.
    """
    if kind not in _PATTERNS:
        raise ValueError(f"unknown texture kind {kind!r}; choose one of {', '.join(TEXTURES)}")
    _check_size(height, width)
    base = max(TEXTURE_MIN_PERIOD, min(height, width) * TEXTURE_PERIOD_FRACTION)
    period = base * rng.uniform(*TEXTURE_SCALE_JITTER)
    angle = np.deg2rad(rng.uniform(-TEXTURE_ANGLE_JITTER, TEXTURE_ANGLE_JITTER))
    phase = (float(rng.uniform(0, 2 * np.pi)), float(rng.uniform(0, 2 * np.pi)))
    y, x = np.mgrid[:height, :width].astype(np.float32)
    cos, sin = np.float32(np.cos(angle)), np.float32(np.sin(angle))
    frame = _Frame(x * cos + y * sin, y * cos - x * sin, float(period), phase)
    mix = _PATTERNS[kind](rng, frame).astype(np.float32)[..., None]
    first, second = (np.asarray(c, dtype=np.float32) for c in TEXTURE_COLORS[kind])
    return _to_uint8(first + mix * (second - first) + _pixel_noise(rng, (height, width, 3)))


# =============================================================================================================
# Scenes
# =============================================================================================================

def texture_class_names(n_classes: int) -> list[str]:
    """The class names of a scene set of `n_classes` classes: texture_<kind> for the first `n_classes` kinds."""
    _check_classes(n_classes)
    return [f"{CLASS_PREFIX}{kind}" for kind in TEXTURES[:n_classes]]


def _check_classes(n_classes: int) -> None:
    if not 1 <= int(n_classes) <= len(TEXTURES):
        raise ValueError(f"the number of classes must be between 1 and {len(TEXTURES)} (one per texture kind), "
                         f"got {n_classes}")


def _shape_outline(rng: np.random.Generator, height: int, width: int) -> list[tuple[float, float]]:
    """The (x, y) vertices of a random rectangle, ellipse or polygon (3-6 vertices) somewhere on the image, of
    extent `SHAPE_SIZE_FRACTION` of the shorter side, turned by a random angle."""
    extent = min(height, width) * rng.uniform(*SHAPE_SIZE_FRACTION)
    cy, cx = rng.uniform(0, height), rng.uniform(0, width)
    kind = SHAPE_KINDS[int(rng.integers(len(SHAPE_KINDS)))]
    ry, rx = extent / 2 * rng.uniform(0.4, 1.0), extent / 2
    if kind == "rectangle":
        angles = np.array([0.25, 0.75, 1.25, 1.75]) * np.pi
        reach = np.full(4, np.sqrt(2))
    elif kind == "ellipse":
        angles = np.linspace(0, 2 * np.pi, ELLIPSE_VERTICES, endpoint=False)
        reach = np.ones(ELLIPSE_VERTICES)
    else:
        count = int(rng.integers(POLYGON_VERTICES[0], POLYGON_VERTICES[1] + 1))
        angles = np.sort(rng.uniform(0, 2 * np.pi, count))
        reach = rng.uniform(0.6, 1.0, count)
    # A point at angle a on the (rx, ry) ellipse (the rectangle's corners: on its circumscribed one), turned.
    px, py = rx * reach * np.cos(angles), ry * reach * np.sin(angles)
    turn = rng.uniform(0, np.pi)
    xs = cx + px * np.cos(turn) - py * np.sin(turn)
    ys = cy + px * np.sin(turn) + py * np.cos(turn)
    return list(zip(xs.tolist(), ys.tolist(), strict=True))


def _shape_mask(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """H x W bool mask of a random shape that covers at least one pixel (redrawn up to `MAX_SHAPE_TRIES` times;
    then the pixel under the last shape's first vertex, clipped to the image, is used)."""
    for _ in range(MAX_SHAPE_TRIES):
        outline = _shape_outline(rng, height, width)
        canvas = Image.new("L", (width, height), 0)
        ImageDraw.Draw(canvas).polygon(outline, fill=1)
        mask = np.asarray(canvas, dtype=bool)
        if mask.any():
            return mask
    mask = np.zeros((height, width), dtype=bool)
    x, y = outline[0]
    mask[int(np.clip(y, 0, height - 1)), int(np.clip(x, 0, width - 1))] = True
    return mask


def textured_scene(rng: np.random.Generator, height: int, width: int,
                   n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """A scene of textured shapes on a dead-leaves background, and its label map.

    Returns (image, label): image uint8 (height, width, 3) RGB; label uint8 (height, width) with 0 for the
    background and k (1..n_classes) where the image shows class k - 1, painted with texture TEXTURES[k - 1]
    (a fresh instance per shape). 1-4 shapes (rectangles, ellipses, polygons; extent 1/8 to 1/2 of the
    shorter side; classes drawn at random) are painted in turn, a later one hiding an earlier one where they
    overlap; every shape covers at least one pixel, so the label always has foreground.
    Raises ValueError unless 1 <= n_classes <= len(TEXTURES).
    """
    _check_classes(n_classes)
    image = dead_leaves_image(rng, height, width)
    label = np.zeros((height, width), dtype=np.uint8)
    for _ in range(int(rng.integers(SCENE_SHAPES[0], SCENE_SHAPES[1] + 1))):
        class_index = int(rng.integers(n_classes))
        mask = _shape_mask(rng, height, width)
        image[mask] = texture(TEXTURES[class_index], rng, height, width)[mask]
        label[mask] = class_index + 1
    return image, label


# =============================================================================================================
# Writing
# =============================================================================================================

_Files = list[tuple[Path, np.ndarray]]  # what one image's job writes: (path, uint8 array) pairs


def image_rng(seed: int, stream: str, index: int) -> np.random.Generator:
    """The generator the writers draw image `index` of `stream` from: "natural" for `write_natural_images`,
    "textures/<split>" for `write_texture_dataset` (image i of split s is `textured_scene(image_rng(seed,
    f"textures/{s}", i), height, width, n_classes)`). Streams and indices are independent of one another."""
    return np.random.default_rng([seed, zlib.crc32(stream.encode("utf-8")), index])


def _check_seed_and_size(seed: int, size: tuple[int, int]) -> tuple[int, int]:
    """(width, height) of `size`, after checking it and `seed` (a non-negative int)."""
    if int(seed) < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    width, height = (int(v) for v in size)
    _check_size(height, width)
    return width, height


def _save_png(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG", compress_level=PNG_COMPRESS_LEVEL)


def _refuse_existing(existing: list[Path], where: Path, what: str, overwrite: bool) -> None:
    if existing and not overwrite:
        raise OutputExistsError(f"{where} already holds {what} ({len(existing)} file(s), e.g. {existing[0]}); choose "
                                "another folder or pass --overwrite to replace them")


def _write_all(jobs: list[Callable[[], _Files]], desc: str, progress: bool) -> set[Path]:
    """Run each job (one image) and write the files it returns; returns every path written."""
    written: set[Path] = set()
    for job in tqdm(jobs, desc=desc, unit="img", disable=not progress):
        for path, array in job():
            _save_png(path, array)
            written.add(path)
    return written


def _remove_stale(stale: Iterable[Path], written: set[Path]) -> None:
    """With overwrite: remove the files of a previous output that this one did not write again."""
    for path in stale:
        if path not in written:
            path.unlink(missing_ok=True)


def write_natural_images(folder: str | Path, count: int, size: tuple[int, int] = (1024, 1024), seed: int = 0,
                         overwrite: bool = False, progress: bool = True) -> list[Path]:
    """Write `count` dead-leaves images `folder`/natural_0000.png, ... (RGB PNG, `size` = (width, height)).

    The same arguments give byte-identical files. Refuses (OutputExistsError, a FileExistsError) a folder that
    already holds natural_*.png files unless `overwrite`; then the images are replaced and natural_*.png
    files beyond `count` removed, so that the folder holds exactly this set. Returns the paths, in order.
    """
    width, height = _check_seed_and_size(seed, size)
    if int(count) < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    folder = Path(folder)
    existing = sorted(p for p in folder.glob(NATURAL_GLOB) if p.is_file()) if folder.is_dir() else []
    _refuse_existing(existing, folder, "natural images", overwrite)
    paths = [folder / NATURAL_NAME.format(index=i) for i in range(int(count))]

    def job(index: int) -> Callable[[], _Files]:
        return lambda: [(paths[index], dead_leaves_image(image_rng(seed, "natural", index), height, width))]

    written = _write_all([job(i) for i in range(len(paths))], "natural images", progress)
    _remove_stale(existing, written)
    return paths


def _is_scene_file(root: Path, path: Path) -> bool:
    """Whether `path` is where `write_texture_dataset` puts an image (images/<split>/scene_*.png) or a mask
    (masks/<split>/texture_<kind>/scene_*.png)."""
    parts = path.relative_to(root).parts
    scene = fnmatch.fnmatch(parts[-1], SCENE_GLOB)
    return scene and ((len(parts) == 3 and parts[0] == "images")
                      or (len(parts) == 4 and parts[0] == "masks" and parts[2].startswith(CLASS_PREFIX)))


def write_texture_dataset(root: str | Path, n_classes: int, splits: Mapping[str, int],
                          size: tuple[int, int] = (512, 512), seed: int = 0, overwrite: bool = False,
                          progress: bool = True) -> Path:
    """Write a dataset of `textured_scene`s in the custom layout `MaskFolderDataset` reads; returns `root`.

    root/images/<split>/scene_00000.png              RGB image, `size` = (width, height)
    root/masks/<split>/texture_<kind>/scene_00000.png  uint8 0/255 mask of that class, written only where the
                                                      class is present (a missing mask = class absent)
    Every split has a mask folder for each of the `n_classes` classes (`texture_class_names`), even an empty
    one, so the class list read from the folders is complete. `splits` maps split names to image counts (0
    gives empty folders). Image i of split s is drawn from its own stream (seed, s, i): the same arguments
    give byte-identical files, and a split's images do not depend on the other splits' counts.
    Refuses (OutputExistsError, a FileExistsError) a root whose images/ or masks/ already hold files unless
    `overwrite`; then the files this call does not write again are removed, so root holds exactly this set.
    Files that are not a previous run's (other names, other folders) are refused even with `overwrite`: they are
    never removed.
    """
    width, height = _check_seed_and_size(seed, size)
    names = texture_class_names(n_classes)
    counts = {str(split): int(n) for split, n in splits.items()}
    for split, n in counts.items():
        if not split or split in (".", "..") or "/" in split or "\\" in split:
            raise ValueError(f"split name {split!r} is not a folder name")
        if n < 0:
            raise ValueError(f"split {split}: the number of images must be at least 0, got {n}")
    if sum(counts.values()) < 1:
        raise ValueError("no images to write: give at least one split a count of 1 or more")
    root = Path(root)
    trees = [root / "images", root / "masks"]
    existing = sorted(p for tree in trees if tree.is_dir() for p in tree.rglob("*") if p.is_file())
    foreign = [p for p in existing if not _is_scene_file(root, p)]
    if foreign:  # never removed, even with overwrite: they may be a real dataset's images
        raise OutputExistsError(f"{root} holds files this command did not write ({len(foreign)}, e.g. {foreign[0]}); "
                                "choose an empty folder (--overwrite replaces only scene_*.png files of a previous "
                                "run)")
    _refuse_existing(existing, root, "a dataset in images/ and masks/", overwrite)
    for split in counts:
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        for name in names:
            (root / "masks" / split / name).mkdir(parents=True, exist_ok=True)

    def job(split: str, index: int) -> Callable[[], _Files]:
        def render() -> _Files:
            image, label = textured_scene(image_rng(seed, f"textures/{split}", index), height, width, n_classes)
            file_name = f"{SCENE_NAME.format(index=index)}.png"
            files = [(root / "images" / split / file_name, image)]
            files += [(root / "masks" / split / name / file_name, np.where(label == k + 1, MASK_ON, 0).astype(np.uint8))
                      for k, name in enumerate(names) if (label == k + 1).any()]
            return files
        return render

    jobs = [job(split, i) for split, n in counts.items() for i in range(n)]
    written = _write_all(jobs, "textured scenes", progress)
    _remove_stale(existing, written)
    keep = {root / tree / split for tree in ("images", "masks") for split in counts}
    keep |= {root / "masks" / split / name for split in counts for name in names}
    for tree in trees:  # folders a previous dataset left empty (other splits / classes), deepest first
        for folder in sorted((p for p in tree.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
            if folder not in keep and not any(folder.iterdir()):
                folder.rmdir()
    return root
