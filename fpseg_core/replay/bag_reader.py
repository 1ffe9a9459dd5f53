"""Read rosbag2 folders (mcap or sqlite3, as written by `fpseg bag-from-cityscapes` or `ros2 bag record`)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from rosbags.interfaces import MessageDefinitionFormat
from rosbags.rosbag2 import Reader
from rosbags.rosbag2.errors import ReaderError
from rosbags.typesys import get_types_from_msg
from rosbags.typesys.store import Typestore
from tqdm import tqdm

from .messages import BagError, new_typestore


class BagReader:
    """A rosbag2 opened for reading, deserializing with ROS 2 Humble types, vision_msgs/LabelInfo,
    fpseg_ros/SegmentationStats and any other type whose definition the bag itself carries.

    Use as a context manager: `with BagReader(path) as bag: for topic, t, msg in bag.messages([...]): ...`.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not (self.path / "metadata.yaml").is_file():
            raise BagError(
                f"{self.path} is not a rosbag2 folder (no metadata.yaml); pass the folder that "
                "`ros2 bag record -o` or `fpseg bag-from-cityscapes --out` created"
            )
        try:
            self._reader = Reader(self.path)
        except ReaderError as exc:
            raise BagError(f"cannot read bag {self.path}: {exc}") from exc
        self.typestore: Typestore = new_typestore()

    def __enter__(self) -> BagReader:
        try:
            self._reader.open()
        except ReaderError as exc:
            raise BagError(f"cannot open bag {self.path}: {exc}") from exc
        self._register_bag_types()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self._reader.close()

    def _register_bag_types(self) -> None:
        types = {}
        for connection in self._reader.connections:
            known = connection.msgtype in self.typestore.fielddefs or connection.msgtype in types
            definition = connection.msgdef
            if not known and definition.format == MessageDefinitionFormat.MSG and definition.data:
                types.update(get_types_from_msg(definition.data, connection.msgtype))
        self.typestore.register(types)

    @property
    def topics(self) -> dict[str, tuple[str, int]]:
        """topic -> (message type, message count)."""
        return {name: (info.msgtype or "?", info.msgcount) for name, info in self._reader.topics.items()}

    def require(self, topics: Sequence[str], hint: str = "") -> None:
        """Raise BagError naming the missing topics and the bag's topics unless all of `topics` are there."""
        missing = [topic for topic in topics if topic not in self.topics]
        if missing:
            present = ", ".join(f"{t} ({m})" for t, (m, _) in self.topics.items()) or "none"
            raise BagError(f"bag {self.path} has no topic {', '.join(missing)}; its topics: {present}"
                           + (f". {hint}" if hint else ""))

    def messages(self, topics: Sequence[str], progress: bool = False) -> Iterator[tuple[str, int, Any]]:
        """(topic, receive time in ns, deserialized message) of `topics` in receive-time order."""
        self.require(topics)
        connections = [c for c in self._reader.connections if c.topic in topics]
        unknown = sorted({c.msgtype for c in connections if c.msgtype not in self.typestore.fielddefs})
        if unknown:
            raise BagError(f"bag {self.path} carries no definition of {', '.join(unknown)} and it is not a "
                           "built-in ROS 2 type; record it with the mcap storage (which stores definitions)")
        total = sum(self.topics[t][1] for t in topics)
        stream = self._reader.messages(connections=connections)
        for connection, timestamp, data in tqdm(stream, total=total, unit="msg", desc=self.path.name,
                                                disable=not progress):
            yield connection.topic, timestamp, self.typestore.deserialize_cdr(data, connection.msgtype)
