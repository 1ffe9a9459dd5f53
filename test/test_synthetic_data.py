"""Synthetic data made by the product (fpseg_core.data.synthetic, `fpseg synthetic-data`): dead-leaves images
with natural-image statistics, distinct textures, textured scenes and their label maps, and the two writers
(the custom dataset layout MaskFolderDataset reads, natural_*.png) with their seeding and overwrite rules."""

from __future__ import annotations

import hashlib
import itertools
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fpseg_core.cli.main import main
from fpseg_core.data import MaskFolderDataset
from fpseg_core.data.synthetic import (
    TEXTURE_COLORS,
    TEXTURES,
    dead_leaves_image,
    image_rng,
    texture,
    texture_class_names,
    textured_scene,
    write_natural_images,
    write_texture_dataset,
)
from fpseg_core.files import OutputExistsError

SIZE = (64, 48)  # (width, height) of the written test images
COLOR_TOLERANCE = 20.0  # grey levels: pixel noise is 1.5, the kinds' colour segments are >= 52 apart


def rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def digests(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def read_png(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image)


def segment_distance(pixels: np.ndarray, kind: str) -> np.ndarray:
    """Distance (grey levels) of each RGB pixel (N x 3) from the segment between `kind`'s two colours."""
    first, second = (np.asarray(c, dtype=np.float64) for c in TEXTURE_COLORS[kind])
    along = second - first
    t = np.clip((pixels.astype(np.float64) - first) @ along / (along @ along), 0.0, 1.0)
    return np.linalg.norm(pixels - (first + t[:, None] * along), axis=-1)


def spectrum_slope(image: np.ndarray) -> float:
    """Slope of the radially averaged power spectrum of the grey image in log-log, over 4..N/4 cycles/image."""
    grey = image.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    n = grey.shape[0]
    window = np.hanning(n)[:, None] * np.hanning(n)[None, :]
    power = np.abs(np.fft.fftshift(np.fft.fft2((grey - grey.mean()) * window))) ** 2
    y, x = np.indices(power.shape)
    radius = np.hypot(y - n // 2, x - n // 2).astype(int).ravel()
    radial = np.bincount(radius, power.ravel()) / np.bincount(radius)
    f = np.arange(len(radial))
    band = (f >= 4) & (f <= n // 4)
    return float(np.polyfit(np.log(f[band]), np.log(radial[band]), 1)[0])


def pattern_descriptor(image: np.ndarray) -> np.ndarray:
    """Colour-blind: the shares of the standardised grey image's power in 5 frequency and 4 orientation bands."""
    grey = image.astype(np.float64).mean(-1)
    grey = (grey - grey.mean()) / grey.std()
    n = grey.shape[0]
    power = np.abs(np.fft.fftshift(np.fft.fft2(grey))) ** 2
    power /= power.sum()
    fy, fx = np.indices(power.shape) - n // 2
    radius, angle = np.hypot(fy, fx), np.mod(np.arctan2(fy, fx), np.pi)
    radial = [power[(radius >= lo) & (radius < hi)].sum() for lo, hi in ((0, 4), (4, 8), (8, 16), (16, 32), (32, n))]
    turned = [np.abs(np.mod(angle - a + np.pi / 2, np.pi) - np.pi / 2) < np.pi / 8 for a in np.arange(4) * np.pi / 4]
    return np.array(radial + [power[(radius >= 2) & t].sum() for t in turned])


# --- dead leaves ---------------------------------------------------------------------------------------------

def test_dead_leaves_is_an_rgb_image_determined_by_the_generator() -> None:
    image = dead_leaves_image(rng(0), 48, 64)
    assert image.shape == (48, 64, 3) and image.dtype == np.uint8
    assert np.array_equal(image, dead_leaves_image(rng(0), 48, 64))
    assert not np.array_equal(image, dead_leaves_image(rng(1), 48, 64))


def test_dead_leaves_spectrum_falls_like_natural_images() -> None:
    slopes = [spectrum_slope(dead_leaves_image(rng(seed), 256, 256)) for seed in range(4)]
    assert all(-3.5 < s < -1.5 for s in slopes), slopes
    white = rng(0).integers(0, 256, (256, 256, 3)).astype(np.uint8)  # the estimator's control: a flat spectrum
    assert abs(spectrum_slope(white)) < 0.3


def test_dead_leaves_has_shaded_leaves_of_many_sizes_and_no_flat_areas() -> None:
    image = dead_leaves_image(rng(3), 256, 256).astype(np.int16)
    # Pixel noise and shading: neighbours are almost never equal in all three channels (flat discs would be).
    assert (image[:, 1:] == image[:, :-1]).all(-1).mean() < 0.05
    # Occlusion edges: many large steps between neighbours, but most neighbours are alike (inside a leaf).
    step = np.abs(np.diff(image, axis=1)).max(-1)
    assert 0.05 < (step > 30).mean() < 0.5 and np.median(step) < 10
    assert len(np.unique(image.reshape(-1, 3) // 32, axis=0)) > 100  # many colours, not a few flat ones


def test_dead_leaves_rejects_an_empty_size() -> None:
    with pytest.raises(ValueError, match="at least 1 x 1"):
        dead_leaves_image(rng(0), 0, 10)


# --- textures ------------------------------------------------------------------------------------------------

def test_there_are_at_least_eight_texture_kinds_each_with_its_own_colours() -> None:
    assert len(TEXTURES) >= 8 and len(set(TEXTURES)) == len(TEXTURES)
    assert set(TEXTURE_COLORS) == set(TEXTURES)
    assert len({pair for pair in TEXTURE_COLORS.values()}) == len(TEXTURES)


@pytest.mark.parametrize("kind", TEXTURES)
def test_a_texture_is_its_colour_pair_and_varies_per_call(kind: str) -> None:
    generator = rng(0)
    first, second = texture(kind, generator, 64, 80), texture(kind, generator, 64, 80)
    assert first.shape == (64, 80, 3) and first.dtype == np.uint8
    assert np.array_equal(first, texture(kind, rng(0), 64, 80))  # seeded
    assert not np.array_equal(first, second)  # a new phase / scale every call
    assert (segment_distance(first.reshape(-1, 3), kind) < COLOR_TOLERANCE).mean() > 0.999
    assert first.reshape(-1, 3).astype(float).std(0).max() > 20  # a pattern, not a flat colour


def test_every_texture_differs_from_every_other_in_colour_and_pattern() -> None:
    for seed in range(3):
        generator = rng(seed)
        images = {kind: texture(kind, generator, 128, 128) for kind in TEXTURES}
        for a, b in itertools.combinations(TEXTURES, 2):
            # Colour: most of b's pixels are far off a's colour segment (and the other way round).
            assert (segment_distance(images[b].reshape(-1, 3), a) < COLOR_TOLERANCE).mean() < 0.05, (a, b)
            assert (segment_distance(images[a].reshape(-1, 3), b) < COLOR_TOLERANCE).mean() < 0.05, (a, b)
            # Pattern, colour aside: the distribution of power over frequencies and orientations.
            distance = np.abs(pattern_descriptor(images[a]) - pattern_descriptor(images[b])).sum()
            assert distance > 0.2, (seed, a, b, distance)


def test_an_unknown_texture_is_refused_naming_the_kinds() -> None:
    with pytest.raises(ValueError, match="unknown texture kind 'plaid'; choose one of stripes_horizontal"):
        texture("plaid", rng(0), 8, 8)


# --- scenes --------------------------------------------------------------------------------------------------

def test_scenes_label_only_their_classes_and_always_have_foreground() -> None:
    for seed in range(40):
        image, label = textured_scene(rng(seed), 40, 56, 3)
        assert image.shape == (40, 56, 3) and image.dtype == np.uint8
        assert label.shape == (40, 56) and label.dtype == np.uint8
        assert set(np.unique(label).tolist()) <= {0, 1, 2, 3}
        assert (label > 0).any(), seed
    image, label = textured_scene(rng(7), 40, 56, 3)
    again = textured_scene(rng(7), 40, 56, 3)
    assert np.array_equal(image, again[0]) and np.array_equal(label, again[1])
    assert not np.array_equal(image, textured_scene(rng(8), 40, 56, 3)[0])


def test_each_labelled_pixel_shows_its_class_texture() -> None:
    n_classes = len(TEXTURES)
    seen: set[int] = set()
    for seed in range(12):
        image, label = textured_scene(rng(seed), 96, 128, n_classes)
        pixels, values = image.reshape(-1, 3), label.ravel()
        distance = np.stack([segment_distance(pixels, kind) for kind in TEXTURES], axis=1)
        for value in set(np.unique(values).tolist()) - {0}:
            seen.add(value)
            own = distance[values == value]
            # The pixels of class k lie on texture k's colour segment, and nearer to it than to any other kind's.
            assert (own[:, value - 1] < COLOR_TOLERANCE).mean() > 0.99, (seed, value)
            assert (own.argmin(1) == value - 1).mean() > 0.99, (seed, value)
        # The dead-leaves background is not made of texture colours.
        background = distance[values == 0]
        assert (background.min(1) < COLOR_TOLERANCE).mean() < 0.5, seed
    assert len(seen) >= n_classes // 2  # many classes were drawn, not always the same


@pytest.mark.parametrize("n_classes", [0, -1, len(TEXTURES) + 1])
def test_a_class_count_out_of_range_is_refused(n_classes: int) -> None:
    with pytest.raises(ValueError, match=f"between 1 and {len(TEXTURES)}"):
        textured_scene(rng(0), 16, 16, n_classes)
    with pytest.raises(ValueError, match=f"between 1 and {len(TEXTURES)}"):
        write_texture_dataset(Path("/nonexistent/never/written"), n_classes, {"train": 1}, progress=False)


# --- the texture dataset -------------------------------------------------------------------------------------

def test_the_texture_dataset_reads_back_through_mask_folder_dataset(tmp_path: Path) -> None:
    root = write_texture_dataset(tmp_path / "ds", 3, {"train": 3, "val": 2}, size=SIZE, seed=5, progress=False)
    names = texture_class_names(3)
    assert names == ["texture_stripes_horizontal", "texture_stripes_vertical", "texture_stripes_diagonal"]
    for split, count in (("train", 3), ("val", 2)):
        assert sorted(p.name for p in (root / "masks" / split).iterdir()) == sorted(names)  # even empty ones
        dataset = MaskFolderDataset(root, split)
        assert len(dataset.frames) == count and sorted(dataset.class_names) == sorted(names)
        for index, frame in enumerate(dataset.frames):
            expected_image, label = textured_scene(image_rng(5, f"textures/{split}", index), SIZE[1], SIZE[0], 3)
            assert np.array_equal(read_png(frame.image), expected_image)
            for class_index, name in enumerate(dataset.class_names):
                value = names.index(name) + 1
                assert np.array_equal(dataset.class_mask(index, class_index), label == value)
                path = dataset.mask_path(index, name)
                if (label == value).any():
                    mask = read_png(path)
                    assert mask.dtype == np.uint8 and set(np.unique(mask).tolist()) <= {0, 255}
                    assert np.array_equal(mask == 255, label == value)
                else:
                    assert not path.exists()  # absent class: no mask file
            assert set(dataset.present_values(index)) == {names[v - 1] for v in np.unique(label) if v}
    assert not (root / "classes.json").exists() and sorted(p.name for p in root.iterdir()) == ["images", "masks"]


def test_the_same_arguments_write_the_same_bytes_and_splits_are_independent(tmp_path: Path) -> None:
    first = write_texture_dataset(tmp_path / "a", 2, {"train": 2, "val": 2}, size=SIZE, seed=1, progress=False)
    second = write_texture_dataset(tmp_path / "b", 2, {"train": 2, "val": 2}, size=SIZE, seed=1, progress=False)
    assert digests(first) == digests(second)
    other_seed = write_texture_dataset(tmp_path / "c", 2, {"train": 2, "val": 2}, size=SIZE, seed=2, progress=False)
    assert digests(other_seed)["images/train/scene_00000.png"] != digests(first)["images/train/scene_00000.png"]
    val_only = write_texture_dataset(tmp_path / "d", 2, {"val": 2}, size=SIZE, seed=1, progress=False)
    assert digests(val_only) == {k: v for k, v in digests(first).items() if "/val/" in k}
    assert digests(first)["images/train/scene_00000.png"] != digests(first)["images/val/scene_00000.png"]


def test_an_existing_dataset_is_refused_unless_overwrite(tmp_path: Path) -> None:
    root = write_texture_dataset(tmp_path / "ds", 3, {"train": 3, "val": 1}, size=SIZE, progress=False)
    before = digests(root)
    with pytest.raises(FileExistsError, match="--overwrite") as refused:
        write_texture_dataset(root, 3, {"train": 3, "val": 1}, size=SIZE, seed=9, progress=False)
    assert len(str(refused.value).splitlines()) == 1
    assert digests(root) == before  # nothing written, nothing removed
    write_texture_dataset(root, 3, {"train": 3, "val": 1}, size=SIZE, overwrite=True, progress=False)
    assert digests(root) == before  # the same arguments again: the same bytes
    # A smaller dataset replaces it: the previous images, masks, splits and classes are gone.
    write_texture_dataset(root, 2, {"train": 2}, size=SIZE, seed=4, overwrite=True, progress=False)
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_dir()) == [
        "images", "images/train", "masks", "masks/train", "masks/train/texture_stripes_horizontal",
        "masks/train/texture_stripes_vertical"]
    assert len(MaskFolderDataset(root, "train").frames) == 2
    assert not any(p.name.endswith(".tmp") for p in root.rglob("*"))


def test_bad_splits_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least 0"):
        write_texture_dataset(tmp_path / "x", 2, {"train": -1}, size=SIZE, progress=False)
    with pytest.raises(ValueError, match="no images to write"):
        write_texture_dataset(tmp_path / "x", 2, {"train": 0}, size=SIZE, progress=False)
    with pytest.raises(ValueError, match="not a folder name"):
        write_texture_dataset(tmp_path / "x", 2, {"../up": 1}, size=SIZE, progress=False)
    assert not (tmp_path / "x").exists()


# --- natural images ------------------------------------------------------------------------------------------

def test_natural_images_are_seeded_and_refuse_to_overwrite(tmp_path: Path) -> None:
    paths = write_natural_images(tmp_path / "n", 3, size=SIZE, seed=2, progress=False)
    assert [p.name for p in paths] == ["natural_0000.png", "natural_0001.png", "natural_0002.png"]
    assert all(read_png(p).shape == (SIZE[1], SIZE[0], 3) for p in paths)
    assert np.array_equal(read_png(paths[1]), dead_leaves_image(image_rng(2, "natural", 1), SIZE[1], SIZE[0]))
    again = write_natural_images(tmp_path / "m", 3, size=SIZE, seed=2, progress=False)
    assert digests(tmp_path / "n") == digests(tmp_path / "m") and len(again) == 3
    assert digests(tmp_path / "n") != digests(write_natural_images(tmp_path / "o", 3, size=SIZE, seed=3,
                                                                   progress=False)[0].parent)
    before = digests(tmp_path / "n")
    with pytest.raises(FileExistsError, match="--overwrite"):
        write_natural_images(tmp_path / "n", 1, size=SIZE, progress=False)
    assert digests(tmp_path / "n") == before
    (tmp_path / "n" / "notes.txt").write_text("mine")
    write_natural_images(tmp_path / "n", 2, size=SIZE, seed=2, overwrite=True, progress=False)
    assert sorted(digests(tmp_path / "n")) == ["natural_0000.png", "natural_0001.png", "notes.txt"]
    assert digests(tmp_path / "n")["natural_0001.png"] == before["natural_0001.png"]


# --- the command ---------------------------------------------------------------------------------------------

def test_the_command_writes_both_kinds(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "tex"
    assert main(["synthetic-data", "textures", "--out", str(out), "--classes", "2", "--train", "2", "--val", "1",
                 "--test", "0", "--size", "48x64", "--seed", "3", "--no-progress"]) == 0
    printed = capsys.readouterr().out.strip()
    assert len(printed.splitlines()) == 1
    assert f"fpseg precompute --dataset custom --data {out} --splits train val --checkpoint" in printed
    assert len(MaskFolderDataset(out, "train").frames) == 2 and len(MaskFolderDataset(out, "val").frames) == 1
    assert not (out / "images" / "test").exists()
    assert read_png(out / "images" / "train" / "scene_00000.png").shape == (48, 64, 3)  # HEIGHTxWIDTH
    written = tmp_path / "api"
    write_texture_dataset(written, 2, {"train": 2, "val": 1}, size=(64, 48), seed=3, progress=False)
    assert digests(out) == digests(written)  # the command is the function

    nat = tmp_path / "nat"
    assert main(["synthetic-data", "natural", "--out", str(nat), "--count", "2", "--size", "24x40",
                 "--no-progress"]) == 0
    assert "--calibration" in capsys.readouterr().out
    assert sorted(p.name for p in nat.iterdir()) == ["natural_0000.png", "natural_0001.png"]
    assert read_png(nat / "natural_0000.png").shape == (24, 40, 3)

    assert main(["synthetic-data", "natural", "--out", str(nat), "--count", "2", "--size", "24x40",
                 "--no-progress"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("fpseg synthetic-data: error:") and "--overwrite" in error
    assert main(["synthetic-data", "natural", "--out", str(nat), "--count", "2", "--size", "24x40",
                 "--no-progress", "--overwrite"]) == 0


@pytest.mark.parametrize(("kind", "option"), [("textures", "--count"), ("natural", "--classes"),
                                              ("natural", "--train"), ("natural", "--test")])
def test_an_option_of_the_other_kind_is_refused(kind: str, option: str, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["synthetic-data", kind, "--out", str(tmp_path / "out"), option, "3", "--no-progress"]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("fpseg synthetic-data: error:") and option in error[0]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("size", ["512", "0x10", "axb", "10x"])
def test_a_bad_size_is_a_usage_error(size: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["synthetic-data", "natural", "--out", str(tmp_path / "out"), "--size", size])
    assert exited.value.code == 2 and "--size" in capsys.readouterr().err


def test_a_class_count_out_of_range_is_refused_by_the_command(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["synthetic-data", "textures", "--out", str(tmp_path / "out"), "--classes", "0"]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and f"between 1 and {len(TEXTURES)}" in error[0]
    assert not (tmp_path / "out").exists()


def test_overwrite_never_removes_files_it_did_not_write(tmp_path: Path) -> None:
    root = write_texture_dataset(tmp_path / "ds", 2, {"train": 2}, size=SIZE, progress=False)
    own = root / "images" / "train" / "my_photo.jpg"
    own.write_bytes(b"not ours")
    with pytest.raises(OutputExistsError, match="holds files this command did not write"):
        write_texture_dataset(root, 2, {"train": 1}, size=SIZE, overwrite=True, progress=False)
    assert own.read_bytes() == b"not ours"
    assert (root / "images" / "train" / "scene_00001.png").is_file()  # nothing was touched
