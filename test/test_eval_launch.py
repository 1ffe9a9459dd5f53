"""launch/eval.launch.py builds: the segmentation launch included with the 19 Cityscapes classes, plus fpseg_eval."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("launch_ros", reason="launch_ros is not installed (ROS 2 is needed for launch files)")

from launch.actions import DeclareLaunchArgument, IncludeLaunchDescription
from launch_ros.actions import Node, SetParameter

from fpseg_core.cityscapes_labels import TRAIN_ID_NAMES

LAUNCH_FILE = Path(__file__).resolve().parents[1] / "launch" / "eval.launch.py"


def test_eval_launch_description() -> None:
    spec = importlib.util.spec_from_file_location("eval_launch", LAUNCH_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    entities = module.generate_launch_description().entities
    defaults = {e.name: "".join(s.text for s in e.default_value) for e in entities
                if isinstance(e, DeclareLaunchArgument)}
    assert defaults["classes"] == ",".join(TRAIN_ID_NAMES)
    assert defaults["image"] == "/camera/image_raw" and defaults["gt"] == "/camera/gt_labels"
    assert defaults["use_sim_time"] == "true" and defaults["report_every"] == "100"
    assert sum(isinstance(e, IncludeLaunchDescription) for e in entities) == 1
    assert sum(isinstance(e, SetParameter) for e in entities) == 1
    (evaluator,) = [e for e in entities if isinstance(e, Node)]
    assert evaluator.node_package == "fpseg_ros" and evaluator.node_executable == "fpseg_eval"
