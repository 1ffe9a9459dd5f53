"""`fpseg bag-from-cityscapes`: bags read back by independent readers (the mcap package, sqlite3)."""

from __future__ import annotations

import itertools
import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("rosbags", reason="the replay tools need rosbags: pip install 'fpseg_ros[bag]'")
make_reader = pytest.importorskip("mcap.reader", reason="the mcap reader checks mcap bags").make_reader

from synthetic_data import make_synthetic_cityscapes  # noqa: E402

from fpseg_core.cli.main import main  # noqa: E402
from fpseg_core.errors import FPSegError  # noqa: E402
from fpseg_core.replay import bag_writer  # noqa: E402
from fpseg_core.replay.bag_reader import BagReader  # noqa: E402
from fpseg_core.replay.bag_writer import list_cityscapes_frames, write_cityscapes_bag  # noqa: E402
from fpseg_core.replay.conventions import (  # noqa: E402
    CAMERA_INFO_TOPIC,
    GT_TOPIC,
    IMAGE_TOPIC,
    START_TIME_NS,
)
from fpseg_core.replay.messages import BagError, typestore  # noqa: E402
from fpseg_core.runtime.image_codec import decode_image  # noqa: E402

CAMERA = {"extrinsic": {"baseline": 0.21},
          "intrinsic": {"fx": 2262.5, "fy": 2265.3, "u0": 1096.9, "v0": 513.1}}
TYPES = {IMAGE_TOPIC: "sensor_msgs/msg/Image", CAMERA_INFO_TOPIC: "sensor_msgs/msg/CameraInfo",
         GT_TOPIC: "sensor_msgs/msg/Image"}


@pytest.fixture(scope="module")
def cityscapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """val split, 2 cities x 3 frames of 64 x 32; the first bremen frame has a camera calibration file."""
    root = make_synthetic_cityscapes(tmp_path_factory.mktemp("cs"), splits=("val",), n_images=3,
                                     size=(64, 32))
    camera = root / "camera" / "val" / "bremen" / "bremen_000000_000000_camera.json"
    camera.parent.mkdir(parents=True)
    camera.write_text(json.dumps(CAMERA))
    return root


def mcap_messages(bag: Path) -> dict[str, list[tuple[int, bytes]]]:
    """topic -> [(log time, CDR bytes)] in file order, read with the mcap package (not rosbags)."""
    by_topic: dict[str, list[tuple[int, bytes]]] = {}
    (file,) = bag.glob("*.mcap")
    with file.open("rb") as stream:
        for schema, channel, message in make_reader(stream).iter_messages(log_time_order=False):
            assert schema.name == TYPES[channel.topic] and schema.encoding == "ros2msg"
            assert channel.message_encoding == "cdr"
            by_topic.setdefault(channel.topic, []).append((message.log_time, bytes(message.data)))
    return by_topic


def sqlite_messages(bag: Path) -> dict[str, list[tuple[int, bytes]]]:
    """topic -> [(timestamp, CDR bytes)] in insertion order, read with sqlite3 from the rosbag2 schema."""
    (file,) = bag.glob("*.db3")
    with sqlite3.connect(file) as db:
        topics = {tid: (name, kind) for tid, name, kind in db.execute("SELECT id, name, type FROM topics")}
        rows = db.execute("SELECT topic_id, timestamp, data FROM messages ORDER BY id").fetchall()
    assert {name: kind for name, kind in topics.values()} == TYPES
    by_topic: dict[str, list[tuple[int, bytes]]] = {}
    for topic_id, timestamp, data in rows:
        by_topic.setdefault(topics[topic_id][0], []).append((timestamp, bytes(data)))
    return by_topic


def check_against_source(by_topic: dict[str, list[tuple[int, bytes]]], root: Path, rate: float,
                         stems: list[str]) -> None:
    store = typestore()
    assert sorted(by_topic) == sorted(TYPES)
    for topic, messages in by_topic.items():
        assert len(messages) == len(stems), topic
        times = [t for t, _ in messages]
        assert all(a < b for a, b in itertools.pairwise(times)), f"{topic}: stamps not increasing"
        assert times == [START_TIME_NS + round(i * 1e9 / rate) for i in range(len(stems))]
    for i, stem in enumerate(stems):
        city = stem.split("_")[0]
        image = store.deserialize_cdr(by_topic[IMAGE_TOPIC][i][1], "sensor_msgs/msg/Image")
        info = store.deserialize_cdr(by_topic[CAMERA_INFO_TOPIC][i][1], "sensor_msgs/msg/CameraInfo")
        gt = store.deserialize_cdr(by_topic[GT_TOPIC][i][1], "sensor_msgs/msg/Image")
        for msg in (image, info, gt):
            assert msg.header.frame_id == "camera"
            stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
            assert stamp == by_topic[IMAGE_TOPIC][i][0]
        source = np.asarray(Image.open(root / "leftImg8bit" / "val" / city / f"{stem}_leftImg8bit.png"))
        labels = np.asarray(Image.open(root / "gtFine" / "val" / city / f"{stem}_gtFine_labelIds.png"))
        height, width = source.shape[:2]
        assert (image.encoding, image.height, image.width, image.step) == ("rgb8", height, width, width * 3)
        assert bytes(image.data) == source.tobytes()
        assert (gt.encoding, gt.height, gt.width, gt.step) == ("mono8", height, width, width)
        assert bytes(gt.data) == labels.tobytes()
        assert (info.height, info.width) == (height, width)
        np.testing.assert_array_equal(info.r, np.eye(3).ravel())
        if stem == "bremen_000000_000000":
            intrinsic = CAMERA["intrinsic"]
            np.testing.assert_array_equal(info.k, [intrinsic["fx"], 0, intrinsic["u0"], 0, intrinsic["fy"],
                                                   intrinsic["v0"], 0, 0, 1])
            assert info.p[0] == intrinsic["fx"] and info.p[6] == intrinsic["v0"]
        else:
            assert not np.any(info.k) and not np.any(info.p)


def source_stems(root: Path, cities: tuple[str, ...]) -> list[str]:
    return sorted(p.name[: -len("_leftImg8bit.png")] for city in cities
                  for p in (root / "leftImg8bit" / "val" / city).glob("*.png"))


@pytest.mark.parametrize(("storage", "reader"), [("mcap", mcap_messages), ("sqlite3", sqlite_messages)])
def test_bag_matches_source_frames_when_read_by_independent_reader(cityscapes: Path, tmp_path: Path,
                                                                   storage: str, reader) -> None:
    frames = list_cityscapes_frames(cityscapes, "val", need_gt=True)
    summary = write_cityscapes_bag(frames, tmp_path / "bag", storage=storage, rate=4.0, with_gt=True,
                                   progress=False)
    assert summary.messages_per_topic == {IMAGE_TOPIC: 6, CAMERA_INFO_TOPIC: 6, GT_TOPIC: 6}
    assert (tmp_path / "bag" / "metadata.yaml").is_file()
    stems = source_stems(cityscapes, ("aachen", "bremen"))
    check_against_source(reader(tmp_path / "bag"), cityscapes, 4.0, stems)


def test_conversion_is_deterministic(cityscapes: Path, tmp_path: Path) -> None:
    frames = list_cityscapes_frames(cityscapes, "val", need_gt=True)
    for name in ("a", "b"):
        write_cityscapes_bag(frames, tmp_path / name, with_gt=True, progress=False)
    assert mcap_messages(tmp_path / "a") == mcap_messages(tmp_path / "b")


def test_cli_writes_selected_cities_and_prints_summary(cityscapes: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "bremen_bag"
    assert main(["bag-from-cityscapes", str(cityscapes), "--split", "val", "--cities", "bremen", "--out",
                 str(out), "--storage", "sqlite3", "--rate", "10", "--with-gt"]) == 0
    printed = capsys.readouterr().out
    assert f"{IMAGE_TOPIC}    3 messages" in printed and f"{GT_TOPIC}    3 messages" in printed
    check_against_source(sqlite_messages(out), cityscapes, 10.0, source_stems(cityscapes, ("bremen",)))


def test_cli_limit_and_bad_rate(cityscapes: Path, tmp_path: Path) -> None:
    assert main(["bag-from-cityscapes", str(cityscapes), "--limit", "2", "--out", str(tmp_path / "bag")]) == 0
    assert len(mcap_messages(tmp_path / "bag")[IMAGE_TOPIC]) == 2
    frames = list_cityscapes_frames(cityscapes, "val")
    with pytest.raises(ValueError, match="rate must be in"):
        write_cityscapes_bag(frames, tmp_path / "bad", rate=0.0, progress=False)
    assert not (tmp_path / "bad").exists()


def test_without_gt_there_is_no_gt_topic(cityscapes: Path, tmp_path: Path) -> None:
    frames = list_cityscapes_frames(cityscapes, "val", cities=["aachen"])
    write_cityscapes_bag(frames[:2], tmp_path / "bag", progress=False)
    counts = {topic: len(messages) for topic, messages in mcap_messages(tmp_path / "bag").items()}
    assert counts == {IMAGE_TOPIC: 2, CAMERA_INFO_TOPIC: 2}


def test_unknown_city_is_an_error_listing_the_available_ones(cityscapes: Path, tmp_path: Path,
                                                             capsys) -> None:
    out = tmp_path / "b"
    assert main(["bag-from-cityscapes", str(cityscapes), "--cities", "paris", "--out", str(out)]) == 2
    assert "paris" in capsys.readouterr().err and not (tmp_path / "b").exists()
    with pytest.raises(ValueError, match="available: aachen, bremen"):
        list_cityscapes_frames(cityscapes, "val", cities=["paris"])


def test_existing_bag_is_refused_unless_overwrite(cityscapes: Path, tmp_path: Path) -> None:
    frames = list_cityscapes_frames(cityscapes, "val")
    out = tmp_path / "bag"
    write_cityscapes_bag(frames[:1], out, progress=False)
    with pytest.raises(FileExistsError, match="--overwrite"):
        write_cityscapes_bag(frames, out, progress=False)
    assert len(mcap_messages(out)[IMAGE_TOPIC]) == 1
    write_cityscapes_bag(frames, out, overwrite=True, progress=False)
    assert len(mcap_messages(out)[IMAGE_TOPIC]) == len(frames)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bag"]


@pytest.mark.parametrize("overwrite", [False, True])
def test_interrupted_conversion_leaves_no_bag_and_keeps_the_old_one(cityscapes: Path, tmp_path: Path,
                                                                    monkeypatch, overwrite: bool) -> None:
    frames = list_cityscapes_frames(cityscapes, "val")
    out = tmp_path / "bag"
    if overwrite:
        write_cityscapes_bag(frames[:1], out, progress=False)
    real_read = bag_writer.read_rgb
    calls = []

    def read_then_interrupt(path: Path) -> np.ndarray:
        calls.append(path)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_read(path)

    monkeypatch.setattr(bag_writer, "read_rgb", read_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        write_cityscapes_bag(frames, out, overwrite=overwrite, progress=False)
    assert len(calls) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == (["bag"] if overwrite else [])
    if overwrite:
        assert len(mcap_messages(out)[IMAGE_TOPIC]) == 1


def test_bag_reader_round_trip(cityscapes: Path, tmp_path: Path) -> None:
    frames = list_cityscapes_frames(cityscapes, "val", need_gt=True)
    write_cityscapes_bag(frames, tmp_path / "bag", storage="sqlite3", with_gt=True, progress=False)
    with BagReader(tmp_path / "bag") as bag:
        assert bag.topics[GT_TOPIC] == ("sensor_msgs/msg/Image", len(frames))
        images = [decode_image(msg) for topic, _, msg in bag.messages([IMAGE_TOPIC]) if topic == IMAGE_TOPIC]
        with pytest.raises(BagError, match=r"no topic /fpseg/labels.*--with"):
            bag.require(["/fpseg/labels"], hint="convert with --with-gt")
    assert [image.color_order for image in images] == ["rgb"] * len(frames)
    for image, frame in zip(images, frames, strict=True):
        np.testing.assert_array_equal(image.pixels, np.asarray(Image.open(frame.image)))


def test_reader_refuses_a_folder_that_is_no_bag(tmp_path: Path) -> None:
    with pytest.raises(BagError, match=r"no metadata\.yaml"):
        BagReader(tmp_path)


def test_broken_camera_file_is_named_and_no_bag_is_left(tmp_path: Path) -> None:
    root = make_synthetic_cityscapes(tmp_path / "cs", splits=("val",), cities=("aachen",), n_images=1,
                                     size=(16, 8))
    camera = root / "camera" / "val" / "aachen" / "aachen_000000_000000_camera.json"
    camera.parent.mkdir(parents=True)
    camera.write_text('{"intrinsic": {"fx": 1.0}}')
    with pytest.raises(FPSegError, match=r"aachen_000000_000000_camera\.json.*fy"):
        write_cityscapes_bag(list_cityscapes_frames(root, "val"), tmp_path / "bag", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cs"]
