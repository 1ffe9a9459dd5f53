"""`fpseg eval-bag`: the node's pipeline on a converted bag gives exactly eval-labels' numbers; --recorded."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("rosbags", reason="the replay tools need rosbags: pip install 'fpseg_ros[bag]'")

from rosbags.rosbag2 import StoragePlugin, Writer
from synthetic_data import make_synthetic_cityscapes

from fpseg_core import FPSeg, build_fpseg, save_checkpoint, tiny_config
from fpseg_core.cityscapes_labels import BANK33, CLASS_BY_NAME, TRAIN_ID_NAMES
from fpseg_core.cli.main import main
from fpseg_core.evaluation.metrics import (
    CityscapesConfusion,
    bank_labels_to_label_ids,
)
from fpseg_core.replay import messages
from fpseg_core.replay.bag_writer import list_cityscapes_frames, write_cityscapes_bag
from fpseg_core.replay.conventions import (
    GT_TOPIC,
    LABEL_INFO_TOPIC,
    LABEL_INFO_TYPE,
    LABELS_TOPIC,
    START_TIME_NS,
    STATS_TOPIC,
    STATS_TYPE,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cityscapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_synthetic_cityscapes(tmp_path_factory.mktemp("cs"), splits=("val",), n_images=2, size=(96, 48),
                                     seed=3)


@pytest.fixture(scope="module")
def cityscapes_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random model whose bank is the 19 Cityscapes benchmark classes (with a bias towards some classes
    so its predictions are not all 'none')."""
    torch.manual_seed(0)
    config = tiny_config("mobilesam", n_classes=len(TRAIN_ID_NAMES), prompt_size=4, img_size=64)
    model = build_fpseg(config)
    return save_checkpoint(model, config, list(TRAIN_ID_NAMES), tmp_path_factory.mktemp("ckpt") / "cs19.pth")


def test_stats_definition_is_the_repository_msg_file() -> None:
    assert (REPO / "msg" / "SegmentationStats.msg").read_text() == messages.SEGMENTATION_STATS_MSG


def test_eval_bag_gives_exactly_the_numbers_of_eval_labels(cityscapes: Path, cityscapes_checkpoint: Path,
                                                           tmp_path: Path) -> None:
    bag = tmp_path / "bag"
    write_cityscapes_bag(list_cityscapes_frames(cityscapes, "val", need_gt=True), bag, with_gt=True,
                         progress=False)
    assert main(["eval-bag", str(bag), "--checkpoint", str(cityscapes_checkpoint), "--out",
                 str(tmp_path / "eval_bag")]) == 0
    from_bag = json.loads((tmp_path / "eval_bag" / "results.json").read_text())

    model = FPSeg.from_checkpoint(cityscapes_checkpoint)
    predictions = tmp_path / "predictions"
    predictions.mkdir()
    for image in sorted((cityscapes / "leftImg8bit" / "val").glob("*/*.png")):
        labels = model.predict(np.array(Image.open(image).convert("RGB")), list(TRAIN_ID_NAMES))
        stem = image.name.removesuffix("_leftImg8bit.png")
        label_ids = bank_labels_to_label_ids(labels, model.classes)
        Image.fromarray(label_ids).save(predictions / f"{stem}_pred_labelIds.png")
    assert main(["eval-labels", "--gt", str(cityscapes), "--pred", str(predictions), "--split", "val", "--out",
                 str(tmp_path / "eval_labels"), "--no-progress"]) == 0
    from_files = json.loads((tmp_path / "eval_labels" / "results.json").read_text())
    del from_files["title"]

    assert from_files["n_images"] == 4 and from_files["miou"] is not None
    assert sum(1 for row in from_files["confusion"]["matrix"] for count in row if count) > 3  # not trivial
    for key, value in from_files.items():
        assert from_bag[key] == value, key
    frames = from_bag["frames"]
    assert (frames["matched"], frames["scored"], frames["unmatched_ground_truth"]) == (4, 4, 0)
    assert from_bag["latency_ms"]["encoder"]["count"] == 4


def test_eval_bag_without_ground_truth_says_how_to_convert(cityscapes: Path, cityscapes_checkpoint: Path,
                                                           tmp_path: Path, capsys) -> None:
    write_cityscapes_bag(list_cityscapes_frames(cityscapes, "val"), tmp_path / "bag", progress=False)
    assert main(["eval-bag", str(tmp_path / "bag"), "--checkpoint", str(cityscapes_checkpoint), "--out",
                 str(tmp_path / "r")]) == 2
    assert "--with-gt" in capsys.readouterr().err


def write_recorded_bag(path: Path, frames: list[tuple[int, np.ndarray, np.ndarray | None]],
                       label_info_after: int, storage: StoragePlugin) -> None:
    """A bag like `ros2 bag record` of the node's outputs: labels + stats per frame (None = the node dropped
    it), label info after `label_info_after` frames (late subscriber), ground truth for every frame."""
    store = messages.typestore()
    types = store.types
    with Writer(path, version=8, storage_plugin=storage) as writer:
        labels_conn = writer.add_connection(LABELS_TOPIC, "sensor_msgs/msg/Image", typestore=store)
        info_conn = writer.add_connection(LABEL_INFO_TOPIC, LABEL_INFO_TYPE, typestore=store)
        stats_conn = writer.add_connection(STATS_TOPIC, STATS_TYPE, typestore=store)
        gt_conn = writer.add_connection(GT_TOPIC, "sensor_msgs/msg/Image", typestore=store)
        for i, (stamp, gt, labels) in enumerate(frames):
            if i == label_info_after:
                info = types[LABEL_INFO_TYPE](
                    header=messages.header(stamp, ""), threshold=0.5,
                    class_map=[types["vision_msgs/msg/VisionClass"](class_id=v, class_name=n)
                               for v, n in [(0, "none"), *((i + 1, n) for i, n in enumerate(BANK33))]])
                writer.write(info_conn, stamp, messages.serialize(info))
            writer.write(gt_conn, stamp, messages.serialize(messages.image_message(gt, stamp, "camera")))
            if labels is None:
                continue
            receive = stamp + 50_000_000  # the node's output arrives 50 ms after the camera frame
            writer.write(labels_conn, receive, messages.serialize(messages.image_message(labels, stamp, "camera")))
            stats = types[STATS_TYPE](
                header=messages.header(stamp, "camera"), camera="", frame=i + 1, batch_size=1, classes=["road", "car"],
                skipped_classes=[],
                backend="torch", preprocess_ms=1.0, encoder_ms=20.0 + i, decoder_ms=5.0, postprocess_ms=2.0,
                inference_ms=28.0 + i, budget_ms=0.0,
                latency_ms=50.0, window=i + 1, latency_mean_ms=50.0, latency_p50_ms=50.0, latency_p95_ms=50.0,
                latency_max_ms=50.0, throughput_hz=2.0, dropped_frames=0, rejected_frames=0, failed_frames=0)
            writer.write(stats_conn, receive, messages.serialize(stats))


@pytest.mark.parametrize("storage", [StoragePlugin.MCAP, StoragePlugin.SQLITE3])
def test_eval_bag_recorded_scores_the_recorded_labels(tmp_path: Path, storage: StoragePlugin) -> None:
    rng = np.random.default_rng(1)
    road, car = CLASS_BY_NAME["road"].label_id, CLASS_BY_NAME["car"].label_id
    values = np.array([0, BANK33.index("road") + 1, BANK33.index("car") + 1], dtype=np.uint8)
    frames, expected = [], CityscapesConfusion()
    for i in range(5):
        gt = rng.choice(np.array([0, road, car], dtype=np.uint8), size=(8, 12))
        labels = None if i == 3 else values[rng.integers(0, 3, size=(8, 12))]
        frames.append((START_TIME_NS + i * 500_000_000, gt, labels))
        if labels is not None:
            expected.update(bank_labels_to_label_ids(labels, BANK33), gt)
    write_recorded_bag(tmp_path / "recorded", frames, label_info_after=1, storage=storage)

    assert main(["eval-bag", str(tmp_path / "recorded"), "--recorded", "--out", str(tmp_path / "report")]) == 0
    result = json.loads((tmp_path / "report" / "results.json").read_text())
    reference = expected.result()
    for key, value in reference.items():
        assert result[key] == value, key
    frames_count = result["frames"]
    assert (frames_count["matched"], frames_count["unmatched_ground_truth"]) == (4, 1)
    assert frames_count["dropped_without_label_info"] == 0 and frames_count["unmatched_predictions"] == 0
    assert result["latency_ms"]["encoder"]["count"] == 4
    assert result["latency_ms"]["encoder"]["max"] == 24.0
    assert result["latency_ms"]["latency"]["mean"] == 50.0


def test_eval_bag_recorded_names_missing_topics(cityscapes: Path, tmp_path: Path, capsys) -> None:
    write_cityscapes_bag(list_cityscapes_frames(cityscapes, "val", need_gt=True), tmp_path / "bag",
                         with_gt=True, progress=False)
    assert main(["eval-bag", str(tmp_path / "bag"), "--recorded", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert f"no topic {LABELS_TOPIC}, {LABEL_INFO_TOPIC}" in err and "ros2 bag record" in err
