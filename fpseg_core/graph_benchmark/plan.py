"""What a graph benchmark runs: the node processes of each configuration, their command lines, and the streams
(input topic -> output topic) the benchmark publishes to and listens on. No ROS import.

Three standard configurations (`CONFIGURATIONS`):

- `one-camera`: one node, one camera (`image` in, `~/labels` out): today's deployment.
- `two-cameras`: one node with `cameras: [front, rear]` (one model in memory, batched encoder passes).
- `two-nodes`: two single-camera nodes, i.e. what every comparable package does for two cameras.

Each node runs in its own namespace (`/fpseg_bench_<i>`) under the name `fpseg`, so its topics are
`/fpseg_bench_<i>/image` (or `/fpseg_bench_<i>/<camera>/image`) in and `/fpseg_bench_<i>/fpseg/labels` (or
`.../fpseg/<camera>/labels`) out.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

NODE_NAME = "fpseg"
NAMESPACE_PREFIX = "/fpseg_bench_"
TWO_CAMERAS = ("front", "rear")


@dataclass(frozen=True)
class Stream:
    """One camera stream: where the benchmark publishes frames and where the node's labels and stats come out."""

    camera: str  # the name in the report
    image_topic: str
    labels_topic: str
    stats_topic: str


@dataclass(frozen=True)
class NodeLaunch:
    """One fpseg node process: namespace, cameras ('' = the single-camera node) and its parameters."""

    namespace: str
    cameras: tuple[str, ...] = ()
    parameters: Mapping[str, Any] = field(default_factory=dict)

    def streams(self) -> list[Stream]:
        """The node's input -> output topics, one per camera."""
        node = f"{self.namespace}/{NODE_NAME}"
        if not self.cameras:
            return [Stream(self.namespace.lstrip("/"), f"{self.namespace}/image", f"{node}/labels", f"{node}/stats")]
        return [Stream(f"{self.namespace.lstrip('/')}/{camera}", f"{self.namespace}/{camera}/image",
                       f"{node}/{camera}/labels", f"{node}/{camera}/stats") for camera in self.cameras]

    def command(self, python: str = sys.executable) -> list[str]:
        """The command line that starts the node (`python -m fpseg_ros.node --ros-args ...`)."""
        parameters = dict(self.parameters)
        if self.cameras:
            parameters["cameras"] = list(self.cameras)
        args = [python, "-m", "fpseg_ros.node", "--ros-args", "-r", f"__ns:={self.namespace}",
                "-r", f"__node:={NODE_NAME}"]
        for name, value in parameters.items():
            args += ["-p", f"{name}:={ros_value(value)}"]
        return args


@dataclass(frozen=True)
class Configuration:
    """A named set of node processes; `streams` are all their cameras."""

    name: str
    nodes: tuple[NodeLaunch, ...]

    @property
    def streams(self) -> list[Stream]:
        return [stream for node in self.nodes for stream in node.streams()]


def ros_value(value: Any) -> str:
    """A parameter value as `--ros-args -p name:=value` reads it (as YAML): bools and numbers plain, lists as
    [a, b], strings single-quoted so that YAML never reads them as something else ('true', '1e-3', '')."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(ros_value(item) for item in value) + "]"
    return "'" + str(value).replace("'", "''") + "'"


def configurations(names: Sequence[str], parameters: Mapping[str, Any]) -> list[Configuration]:
    """The standard configurations named (see the module docstring), every node with `parameters`."""
    known = {
        "one-camera": lambda: (NodeLaunch(f"{NAMESPACE_PREFIX}0", (), parameters),),
        "two-cameras": lambda: (NodeLaunch(f"{NAMESPACE_PREFIX}0", TWO_CAMERAS, parameters),),
        "two-nodes": lambda: (NodeLaunch(f"{NAMESPACE_PREFIX}0", (), parameters),
                              NodeLaunch(f"{NAMESPACE_PREFIX}1", (), parameters)),
    }
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ValueError(f"unknown configuration(s) {', '.join(unknown)}; choose from {', '.join(known)}")
    return [Configuration(name, known[name]()) for name in names]


CONFIGURATIONS = ("one-camera", "two-cameras", "two-nodes")
