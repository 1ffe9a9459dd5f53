"""Training data: Cityscapes / custom datasets, class-wise sampling, batches, embedding store, configs."""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from synthetic_data import make_synthetic_cityscapes

from fpseg_core.cityscapes_labels import BANK33, CLASS_BY_NAME, TRAIN_ID_NAMES
from fpseg_core.data import open_dataset
from fpseg_core.data.cityscapes_dataset import CityscapesDataset, frame_stem
from fpseg_core.data.embeddings import EmbeddingHeader, EmbeddingStore
from fpseg_core.data.precompute import PrecomputeConfig
from fpseg_core.data.sampling import draw_pairs, positive_probabilities, resize_mask
from fpseg_core.evaluation.config import EvalConfig
from fpseg_core.jobs.options import add_config_arguments, resolve_config
from fpseg_core.regions.config import RegionEvalConfig, RegionTrainConfig
from fpseg_core.training.bookkeeping import epoch_batches
from fpseg_core.training.config import DistillConfig, TrainConfig

CONFIG_DIR = Path(__file__).resolve().parent.parent / "config"


@pytest.fixture(scope="module")
def cityscapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_synthetic_cityscapes(tmp_path_factory.mktemp("cs"), n_images=4, size=(64, 32), seed=1)


def test_synthetic_dataset_layout_and_determinism(cityscapes: Path, tmp_path: Path) -> None:
    images = sorted((cityscapes / "leftImg8bit" / "train").glob("*/*_leftImg8bit.png"))
    labels = sorted((cityscapes / "gtFine" / "train").glob("*/*_gtFine_labelIds.png"))
    assert [p.name for p in images][:2] == ["aachen_000000_000000_leftImg8bit.png",
                                            "aachen_000000_000001_leftImg8bit.png"]
    assert len(images) == len(labels) == 8
    assert [frame_stem(p.name) for p in images] == [frame_stem(p.name) for p in labels]
    with Image.open(images[0]) as rgb, Image.open(labels[0]) as gt:
        assert rgb.mode == "RGB" and rgb.size == (64, 32) and gt.mode == "L" and gt.size == (64, 32)
    present = set(np.unique(np.concatenate([np.array(Image.open(p)).ravel() for p in labels])).tolist())
    assert {1, 7, 8, 11, 23}.issubset(present)
    assert present <= {1, 7, 8, 11, 21, 23, 24, 26}
    again = make_synthetic_cityscapes(tmp_path, n_images=4, size=(64, 32), seed=1)
    assert (again / labels[3].relative_to(cityscapes)).read_bytes() == labels[3].read_bytes()


def test_cityscapes_views_and_categories(cityscapes: Path) -> None:
    dataset = CityscapesDataset(cityscapes, "train", ["car", "vehicle", "flat", "person"])
    assert dataset.frames[0].key == "aachen/aachen_000000_000000"
    label_ids = dataset.read_label_ids(0)
    road, sidewalk, car = (CLASS_BY_NAME[n].label_id for n in ("road", "sidewalk", "car"))
    assert (dataset.class_mask(0, 2) == np.isin(label_ids, [road, sidewalk])).all()
    assert (dataset.class_mask(0, 1) == (label_ids == car)).all()  # vehicle = car + truck + ... here: car
    presence = dataset.presence(progress=False)
    assert presence.shape == (8, 4)
    assert (presence[:, 0] == presence[:, 1]).all() and presence[:, 2].all()
    assert CityscapesDataset(cityscapes, "train", "train19").class_names == list(TRAIN_ID_NAMES)
    assert CityscapesDataset(cityscapes, "train").class_names == list(BANK33)
    with pytest.raises(KeyError, match="'puddle' is not a Cityscapes class"):
        CityscapesDataset(cityscapes, "train", ["puddle"])


def test_cityscapes_errors_name_the_problem(cityscapes: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"split 'test' not found.*splits present: train, val"):
        CityscapesDataset(cityscapes, "test")
    with pytest.raises(FileNotFoundError, match="has no leftImg8bit/ folder"):
        CityscapesDataset(tmp_path, "train")
    copy = make_synthetic_cityscapes(tmp_path / "copy", splits=("val",), n_images=2, size=(32, 16))
    victim = next((copy / "gtFine" / "val").glob("bremen/*_gtFine_labelIds.png"))
    victim.unlink()
    with pytest.raises(FileNotFoundError, match=r"1 image\(s\) of split 'val' have no label file.*bremen"):
        CityscapesDataset(copy, "val")
    assert len(CityscapesDataset(copy, "val", require_labels=False)) == 4  # images alone (precompute)


def test_presence_cache_is_reused_and_refreshed(cityscapes: Path, tmp_path: Path) -> None:
    data = make_synthetic_cityscapes(tmp_path / "cs", splits=("train",), n_images=3, size=(32, 16))
    dataset = CityscapesDataset(data, "train", ["person", "sky"])
    first = dataset.presence(cache_dir=tmp_path, progress=False)
    assert (tmp_path / "presence_cityscapes_train.json").is_file()
    label_path = dataset.label_path(0)
    person = np.full((16, 32), CLASS_BY_NAME["person"].label_id, np.uint8)
    Image.fromarray(person).save(label_path)
    os.utime(label_path, ns=(1, 1))  # a different time stamp even on coarse file systems
    refreshed = dataset.presence(cache_dir=tmp_path, progress=False)
    assert refreshed[0].tolist() == [True, False]
    assert (refreshed[1:] == first[1:]).all()


def test_custom_mask_dataset(tmp_path: Path) -> None:
    (tmp_path / "images" / "train").mkdir(parents=True)
    (tmp_path / "masks" / "train" / "puddle").mkdir(parents=True)
    for i in range(3):
        Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(tmp_path / "images" / "train" / f"img{i}.jpg")
    mask = np.zeros((8, 8), np.uint8)
    mask[2:4] = 255
    Image.fromarray(mask).save(tmp_path / "masks" / "train" / "puddle" / "img1.png")
    dataset = open_dataset("custom", tmp_path, "train")
    assert dataset.class_names == ["puddle"] and [f.key for f in dataset.frames] == ["img0", "img1", "img2"]
    assert dataset.class_mask(1, 0).sum() == 16 and not dataset.class_mask(0, 0).any()  # missing mask: absent
    assert dataset.presence(progress=False)[:, 0].tolist() == [False, True, False]
    with pytest.raises(KeyError, match=r"no mask folder for class.*'lamp'.*classes present: puddle"):
        open_dataset("custom", tmp_path, "train", ["lamp"])
    with pytest.raises(FileNotFoundError, match="images/<split>"):
        open_dataset("custom", tmp_path, "val")


def test_class_wise_sampling_follows_p_neg_max() -> None:
    rng = np.random.default_rng(0)
    presence = np.zeros((100, 3), bool)
    presence[:10, 0] = True   # rare: share 0.1 -> positive with probability 0.8
    presence[:95, 1] = True   # common: share 0.95 -> 0.95
    # class 2 never present: negatives only
    assert positive_probabilities(presence, 0.2).tolist() == pytest.approx([0.8, 0.95, 0.8])
    pairs = draw_pairs(presence, 4000, 0.2, rng)
    assert pairs[:3, 1].tolist() == [0, 1, 2]  # classes interleaved
    for c, expected in ((0, 0.8), (1, 0.95), (2, 0.0)):
        frames = pairs[pairs[:, 1] == c, 0]
        assert presence[frames, c].mean() == pytest.approx(expected, abs=0.02)
    assert len(np.unique(pairs[pairs[:, 1] == 0, 0])) > 50  # negatives are drawn from all images without it


def test_epoch_batches_are_deterministic_full_and_sharded() -> None:
    single = epoch_batches(10, 4, seed=3, epoch=2)
    assert len(single) == 3 and all(len(b) == 4 for b in single)
    assert sorted([*single[0], *single[1], *single[2][:2]]) == list(range(10))  # wraps around to fill the last
    assert single == epoch_batches(10, 4, seed=3, epoch=2)
    assert single != epoch_batches(10, 4, seed=3, epoch=3)
    shards = [epoch_batches(10, 4, seed=3, epoch=2, rank=r, world_size=2) for r in range(2)]
    for step in range(3):
        assert sorted(shards[0][step] + shards[1][step]) == sorted(single[step])
    assert epoch_batches(10, 4, seed=3, epoch=2, first_step=2) == single[2:]
    with pytest.raises(ValueError, match="divisible"):
        epoch_batches(10, 5, seed=0, epoch=0, world_size=2)


def test_resize_mask_is_nearest() -> None:
    mask = np.zeros((4, 8), bool)
    mask[:, 4:] = True
    resized = resize_mask(mask, 16)
    assert resized.shape == (16, 16) and set(resized.unique().tolist()) == {0.0, 1.0}
    assert resized[:, 8:].all() and not resized[:, :8].any()


def test_embedding_store_refuses_other_encoders_and_names_missing_images(tmp_path: Path) -> None:
    header = EmbeddingHeader("mobilesam", "aaaa", 64, "squash", "float16", "a.pth")
    store = EmbeddingStore.create(tmp_path, header)
    store.write("train", "city/x", torch.ones(256, 4, 4))
    read = EmbeddingStore.open(tmp_path).read("train", "city/x")
    assert read.dtype == torch.float32 and read.shape == (256, 4, 4)
    with pytest.raises(ValueError, match=r"computed differently.*encoder_fingerprint 'aaaa' vs 'bbbb'"):
        EmbeddingStore.create(tmp_path, dataclasses.replace(header, encoder_fingerprint="bbbb"))
    with pytest.raises(FileNotFoundError, match=r"image city/y of split 'train' has no embedding.*precompute"):
        store.read("train", "city/y")
    with pytest.raises(FileNotFoundError, match=r"1 image\(s\) of split 'val' have no embedding"):
        store.check_covers("val", ["city/x"])
    with pytest.raises(ValueError, match="precompute with the same checkpoint"):
        store.check_encoder("cccc", "model.pth")
    with pytest.raises(FileNotFoundError, match="run `fpseg precompute"):
        EmbeddingStore.open(tmp_path / "nothing")


@pytest.mark.parametrize(("name", "config_cls"), [("precompute", PrecomputeConfig), ("train", TrainConfig),
                                                  ("distill", DistillConfig), ("eval", EvalConfig),
                                                  ("train_regions", RegionTrainConfig),
                                                  ("eval_regions", RegionEvalConfig)])
def test_yaml_files_document_every_key_with_its_default(name: str, config_cls: type) -> None:
    text = (CONFIG_DIR / f"{name}.yaml").read_text()
    data = yaml.safe_load(text)
    assert data == dataclasses.asdict(config_cls())
    for field in dataclasses.fields(config_cls):
        assert field.metadata["help"] in " ".join(text.split("\n# ")), field.name


def test_config_precedence_and_type_checks(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, TrainConfig)
    config_file = tmp_path / "train.yaml"
    config_file.write_text("lr: 0.5\nbatch_size: 16\nclasses: [road, car]\nepochs: 3\n")
    args = parser.parse_args(["--config", str(config_file), "--set", "batch_size=8", "--set", "epochs=4",
                              "--epochs", "5", "--no-progress", "--new-classes", "a", "b"])
    config = resolve_config(TrainConfig, args)
    assert (config.lr, config.batch_size, config.epochs, config.progress) == (0.5, 8, 5, False)
    assert config.classes == ["road", "car"] and config.new_classes == ["a", "b"]
    assert config.p_neg_max == 0.2 and config.prompt_size == 64  # untouched defaults
    with pytest.raises(ValueError, match=r"unknown configuration key.*bogus"):
        resolve_config(TrainConfig, parser.parse_args(["--set", "bogus=1"]))
    with pytest.raises(ValueError, match="batch_size must be int"):
        resolve_config(TrainConfig, parser.parse_args(["--set", "batch_size=lots"]))
