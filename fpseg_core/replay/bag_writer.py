"""Cityscapes folder -> rosbag2 (mcap or sqlite3) that `ros2 bag play` replays, written without ROS.

Per frame, all with the same header stamp and frame id `camera`:
  /camera/image_raw    sensor_msgs/Image rgb8 (step = width * 3), the leftImg8bit PNG's pixels
  /camera/camera_info  sensor_msgs/CameraInfo (intrinsics from camera/<split>/<city>/<stem>_camera.json when
                       that file exists, else K = P = 0, the "uncalibrated" convention of camera_info_manager)
  /camera/gt_labels    sensor_msgs/Image mono8, the gtFine labelIds PNG (only with with_gt)
Frames are in sorted (city, file name) order; frame i is stamped START_TIME_NS + i / rate seconds, which is
also its bag receive time: the same folder always gives the same messages, and `ros2 bag play` replays them
at `rate` Hz.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rosbags.rosbag2 import StoragePlugin, Writer
from tqdm import tqdm

from ..data.base import read_rgb
from ..data.cityscapes_dataset import CityscapesDataset, read_label_ids
from ..errors import FPSegError
from ..files import OutputExistsError, apply_default_mode
from .conventions import (
    CAMERA_INFO_TOPIC,
    CAMERA_INFO_TYPE,
    DEFAULT_RATE_HZ,
    FRAME_ID,
    GT_TOPIC,
    IMAGE_TOPIC,
    IMAGE_TYPE,
    MAX_RATE_HZ,
    START_TIME_NS,
    frame_stamp,
)
from .messages import header, image_message, serialize, typestore

STORAGES = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}
# Version 8 stores QoS profiles as a YAML string, which Humble's rosbag2 reads; version 9's list it does not.
BAG_VERSION = 8
CAMERA_DIR = "camera"
CAMERA_SUFFIX = "_camera.json"


@dataclass(frozen=True)
class CityscapesFrame:
    """One leftImg8bit image and, where they exist, its gtFine labelIds and camera calibration files."""

    city: str
    stem: str  # e.g. "frankfurt_000000_000294"
    image: Path
    gt: Path | None
    camera: Path | None


@dataclass
class BagSummary:
    path: Path
    storage: str
    frames: int
    messages_per_topic: dict[str, int]
    duration_s: float

    def lines(self) -> list[str]:
        width = max(len(topic) for topic in self.messages_per_topic)
        return [
            f"wrote {self.path} ({self.storage}): {self.frames} frames over {self.duration_s:.2f} s",
            *(f"  {topic:<{width}}  {count} messages" for topic, count in self.messages_per_topic.items()),
        ]


def list_cityscapes_frames(
    root: str | Path, split: str, cities: Sequence[str] | None = None, need_gt: bool = False
) -> list[CityscapesFrame]:
    """Frames of `root/leftImg8bit/<split>/<city>/*_leftImg8bit.png`, sorted by city then file name.

    `cities` restricts the frames to those cities (the order stays sorted). With `need_gt` every frame must
    have its `gtFine/<split>/<city>/<stem>_gtFine_labelIds.png`; a missing one is an error naming it.
    """
    dataset = CityscapesDataset(root, split, require_labels=need_gt)
    available = sorted({frame.key.split("/")[0] for frame in dataset.frames})
    unknown = sorted(set(cities or ()) - set(available))
    if unknown:
        raise ValueError(f"no city {', '.join(unknown)} in split {split!r} of {root}; "
                         f"available: {', '.join(available)}")
    frames = []
    for index, frame in enumerate(dataset.frames):
        city, stem = frame.key.split("/")
        if cities and city not in cities:
            continue
        gt = dataset.label_path(index)
        camera = Path(root) / CAMERA_DIR / split / city / f"{stem}{CAMERA_SUFFIX}"
        frames.append(CityscapesFrame(city, stem, frame.image, gt if gt.is_file() else None,
                                      camera if camera.is_file() else None))
    return frames


def camera_info_message(frame: CityscapesFrame, height: int, width: int, stamp: int) -> Any:
    """CameraInfo of a rectified Cityscapes image: no distortion, R = I, K and P from the camera json or 0."""
    store = typestore()
    k = np.zeros(9)
    p = np.zeros(12)
    if frame.camera is not None:
        try:
            intrinsic = json.loads(frame.camera.read_text())["intrinsic"]
            fx, fy, cx, cy = (float(intrinsic[key]) for key in ("fx", "fy", "u0", "v0"))
        except (ValueError, KeyError, TypeError) as exc:
            raise FPSegError(f"{frame.camera} is not a Cityscapes camera file with intrinsic fx, fy, u0, v0 "
                             f"({type(exc).__name__}: {exc}); fix or remove it") from None
        k[:] = [fx, 0, cx, 0, fy, cy, 0, 0, 1]
        p[:] = [fx, 0, cx, 0, 0, fy, cy, 0, 0, 0, 1, 0]
    roi = store.types["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0,
                                                          do_rectify=False)
    return store.types[CAMERA_INFO_TYPE](
        header=header(stamp, FRAME_ID), height=height, width=width, distortion_model="plumb_bob",
        d=np.zeros(5), k=k, r=np.eye(3).reshape(-1), p=p, binning_x=0, binning_y=0, roi=roi,
    )


def _check_destination(out: Path, overwrite: bool) -> None:
    if out.exists() and not overwrite:
        raise OutputExistsError(f"{out} exists; choose another --out or pass --overwrite to replace it")
    if not out.parent.is_dir():
        raise FileNotFoundError(f"folder {out.parent} for the bag does not exist")


def _move_into_place(staged: Path, out: Path, staging: Path) -> None:
    """Replace `out` by the finished bag; an existing `out` is only removed once the new bag is complete."""
    old = staging / "replaced"
    if out.exists():
        out.rename(old)
    try:
        staged.rename(out)
    except BaseException:
        if old.exists():
            old.rename(out)
        raise


def write_cityscapes_bag(
    frames: Sequence[CityscapesFrame],
    out: str | Path,
    storage: str = "mcap",
    rate: float = DEFAULT_RATE_HZ,
    with_gt: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> BagSummary:
    """Write `frames` into a new rosbag2 folder `out` (see the module docstring for topics and stamps).

    The bag is written into a hidden sibling folder (`.<name>.partial-*`) and renamed to `out` only after the
    writer has closed it, so an interrupted or failed run leaves no complete-looking bag (and keeps an
    existing `out` when `overwrite` is set). Refuses an existing `out` unless `overwrite`. The bag's files get
    the mode a plain file gets under the umask, whatever mode the storage library created them with.
    """
    out = Path(out)
    if storage not in STORAGES:
        raise ValueError(f"storage must be one of {', '.join(STORAGES)}, got {storage!r}")
    if not 0 < rate <= MAX_RATE_HZ:
        raise ValueError(f"rate must be in (0, {MAX_RATE_HZ:g}] Hz, got {rate}")
    if not frames:
        raise ValueError("no frames to write")
    if with_gt and any(frame.gt is None for frame in frames):
        missing = next(frame for frame in frames if frame.gt is None)
        raise FileNotFoundError(f"frame {missing.stem} has no gtFine labelIds file; drop --with-gt or add it")
    _check_destination(out, overwrite)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    staged = staging / out.name
    try:
        counts = _write(frames, staged, storage, rate, with_gt, progress)
        for written in staged.iterdir():  # the storage libraries choose their own file modes
            apply_default_mode(written)
        _move_into_place(staged, out, staging)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    duration = (frame_stamp(len(frames) - 1, rate) - START_TIME_NS) / 1e9
    return BagSummary(out, storage, len(frames), counts, duration)


def _write(frames: Sequence[CityscapesFrame], path: Path, storage: str, rate: float, with_gt: bool,
           progress: bool) -> dict[str, int]:
    store = typestore()
    with Writer(path, version=BAG_VERSION, storage_plugin=STORAGES[storage]) as writer:
        connections = {
            IMAGE_TOPIC: writer.add_connection(IMAGE_TOPIC, IMAGE_TYPE, typestore=store),
            CAMERA_INFO_TOPIC: writer.add_connection(CAMERA_INFO_TOPIC, CAMERA_INFO_TYPE, typestore=store),
        }
        if with_gt:
            connections[GT_TOPIC] = writer.add_connection(GT_TOPIC, IMAGE_TYPE, typestore=store)
        counts = dict.fromkeys(connections, 0)
        for index, frame in enumerate(tqdm(frames, unit="frame", desc="writing bag", disable=not progress)):
            stamp = frame_stamp(index, rate)
            rgb = read_rgb(frame.image)
            messages = {
                IMAGE_TOPIC: image_message(rgb, stamp, FRAME_ID),
                CAMERA_INFO_TOPIC: camera_info_message(frame, rgb.shape[0], rgb.shape[1], stamp),
            }
            if with_gt:
                gt = read_label_ids(frame.gt)
                if gt.ndim != 2:
                    raise FPSegError(f"{frame.gt} has several channels; a *_labelIds.png is single-channel")
                if gt.shape != rgb.shape[:2]:
                    raise FPSegError(f"{frame.gt} is {gt.shape[1]}x{gt.shape[0]} but {frame.image} is "
                                     f"{rgb.shape[1]}x{rgb.shape[0]}; ground truth must match its image")
                messages[GT_TOPIC] = image_message(gt, stamp, FRAME_ID)
            for topic, msg in messages.items():
                writer.write(connections[topic], stamp, serialize(msg))
                counts[topic] += 1
    return counts
