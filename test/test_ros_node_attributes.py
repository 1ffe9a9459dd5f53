"""Our rclpy node classes must not overwrite rclpy's own attributes: a `self._subscriptions = [...]` in a Node
subclass replaced the list rclpy's executor serves (seen in a real Jazzy graph: the /clock subscription of
use_sim_time was never served, the detections subscription was listed twice). Needs rclpy; skipped without."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

rclpy = pytest.importorskip("rclpy", reason="needs a ROS 2 install (source /opt/ros/<distro>/setup.bash)")

from rclpy.lifecycle import LifecycleNode  # noqa: E402
from rclpy.node import Node  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
NODE_BASES = {"Node", "LifecycleNode"}


def _assigned_attributes() -> dict[str, set[str]]:
    """`self.<name>` assigned anywhere in each Node subclass of fpseg_ros/, by 'file:class'."""
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / "fpseg_ros").glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for cls in (n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)):
            if not {getattr(base, "id", getattr(base, "attr", "")) for base in cls.bases} & NODE_BASES:
                continue
            names = {target.attr for node in ast.walk(cls) if isinstance(node, (ast.Assign, ast.AnnAssign))
                     for target in (node.targets if isinstance(node, ast.Assign) else [node.target])
                     if isinstance(target, ast.Attribute) and getattr(target.value, "id", "") == "self"}
            found[f"{path.name}:{cls.name}"] = names
    return found


def test_no_node_class_overwrites_an_rclpy_attribute() -> None:
    rclpy.init()
    try:
        plain, managed = Node("fpseg_attribute_probe"), LifecycleNode("fpseg_attribute_probe_lc")
        taken = set(vars(plain)) | set(vars(managed)) | set(dir(LifecycleNode))
        plain.destroy_node()
        managed.destroy_node()
    finally:
        rclpy.shutdown()
    classes = _assigned_attributes()
    assert {"node.py:FPSegNode", "eval_node.py:EvalNode", "graph_benchmark.py:Probe"} <= set(classes)
    clashes = {name: sorted(attrs & taken) for name, attrs in classes.items() if attrs & taken}
    assert not clashes, f"these attributes replace rclpy's own (rename them): {clashes}"
