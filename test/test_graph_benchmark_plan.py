"""The graph benchmark's plan (ROS-free): which node processes each configuration starts, with which command
line, and which topics the benchmark publishes to and listens on."""

from __future__ import annotations

import pytest
import yaml

from fpseg_core.graph_benchmark.plan import CONFIGURATIONS, NodeLaunch, configurations, ros_value


@pytest.mark.parametrize("value", ["true", "1e-3", "", "it's", "~/model.pth", "null", "012"])
def test_string_parameters_stay_strings_when_read_back_as_yaml(value: str) -> None:
    assert yaml.safe_load(ros_value(value)) == value


def test_values_of_other_types_read_back_as_themselves() -> None:
    for value in (True, False, 3, 0.25, ["front", "rear"], ["true", "1"]):
        assert yaml.safe_load(ros_value(value)) == value


def test_the_three_configurations_and_their_topics() -> None:
    chosen = configurations(CONFIGURATIONS, {"checkpoint": "/m.pth"})
    streams = {c.name: [(s.camera, s.image_topic, s.labels_topic, s.stats_topic) for s in c.streams]
               for c in chosen}
    assert streams["one-camera"] == [("fpseg_bench_0", "/fpseg_bench_0/image", "/fpseg_bench_0/fpseg/labels",
                                      "/fpseg_bench_0/fpseg/stats")]
    assert [s[1:3] for s in streams["two-cameras"]] == [
        ("/fpseg_bench_0/front/image", "/fpseg_bench_0/fpseg/front/labels"),
        ("/fpseg_bench_0/rear/image", "/fpseg_bench_0/fpseg/rear/labels")]
    assert [s[1] for s in streams["two-nodes"]] == ["/fpseg_bench_0/image", "/fpseg_bench_1/image"]
    assert [len(c.nodes) for c in chosen] == [1, 1, 2]
    with pytest.raises(ValueError, match=r"unknown configuration.*choose from one-camera"):
        configurations(["three-cameras"], {})


def test_the_node_command_line_passes_every_parameter_typed() -> None:
    node = NodeLaunch("/ns", ("front", "rear"), {"checkpoint": "/m.pth", "classes": ["road", "on"],
                                                 "publish_color": False})
    command = node.command("python3")
    assert command[:7] == ["python3", "-m", "fpseg_ros.node", "--ros-args", "-r", "__ns:=/ns", "-r"]
    parameters = dict(arg.split(":=", 1) for arg in command[command.index("-p") + 1::2])
    assert {name: yaml.safe_load(value) for name, value in parameters.items()} == {
        "checkpoint": "/m.pth", "classes": ["road", "on"], "publish_color": False, "cameras": ["front", "rear"]}

