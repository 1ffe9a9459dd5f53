"""The ROS package around the node, checked without ROS: package.xml, CMakeLists.txt, interfaces, config,
launch arguments, and the parameter table they all rely on."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import os
import re
import sys
from pathlib import Path

import pytest
import yaml

from fpseg_core.cityscapes import BANK33
from fpseg_core.runtime.controller import FrameStats, PromptUpdate, SegmentationController
from fpseg_core.runtime.parameters import PARAMETERS, RUNTIME_PARAMETERS

ROOT = Path(__file__).resolve().parents[1]
# Python modules that are not ROS packages, with the rosdep key that provides them (None: installed with
# pip, see README "Running on a robot").
PYTHON_DEPENDENCIES = {
    "numpy": "python3-numpy", "PIL": "python3-pil", "yaml": "python3-yaml", "tqdm": "python3-tqdm",
    "pytest": "python3-pytest", "torch": None, "safetensors": None, "hypothesis": None,
}
LOCAL_MODULES = {"fpseg_core", "fpseg_ros", "conftest", "ros_fakes"}
ROS_TEST_MODULES = {"rclpy", "launch", "launch_ros", "launch_testing"}
MSG_TYPES = {"uint64": "int", "uint32": "int", "float32": "float", "string": "str", "string[]": "list[str]"}


def _python_files(*patterns: str) -> list[Path]:
    files = [path for pattern in patterns for path in sorted(ROOT.glob(pattern))]
    assert files, patterns
    return files


def _imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "importorskip" and node.args
              and isinstance(node.args[0], ast.Constant)):
            names.add(node.args[0].value.split(".")[0])
    return names - set(sys.stdlib_module_names) - LOCAL_MODULES - {"__future__"}


@pytest.fixture(scope="module")
def package():
    catkin_pkg = pytest.importorskip("catkin_pkg.package", reason="catkin_pkg validates package.xml as colcon does")
    return catkin_pkg.parse_package(str(ROOT / "package.xml"))  # raises InvalidPackage (bad e-mail, ...)


def test_package_xml_is_a_valid_ament_cmake_interface_package(package) -> None:
    assert package.name == "fpseg_ros" and package.package_format == 3
    assert [e.content for e in package.exports if e.tagname == "build_type"] == ["ament_cmake"]
    assert [g.name for g in package.member_of_groups] == ["rosidl_interface_packages"]
    build = {d.name for d in package.buildtool_depends}
    assert {"ament_cmake", "ament_cmake_python", "rosidl_default_generators"} <= build
    assert "rosidl_default_runtime" in {d.name for d in package.exec_depends}


def test_every_imported_dependency_is_declared(package) -> None:
    runtime = {d.name for d in package.exec_depends} | {d.name for d in package.build_depends}
    tests = runtime | {d.name for d in package.test_depends}
    scripts = [p for p in _python_files("scripts/*") if p.read_text().startswith("#!/usr/bin/env python3")]
    for files, declared, kind in [
        ([*_python_files("fpseg_ros/*.py", "launch/*.py"), *scripts], runtime, "exec_depend"),
        ([p for p in _python_files("test/test_*.py") if ROS_TEST_MODULES & _imported_packages(p)], tests,
         "test_depend"),
    ]:
        for path in files:
            for module in _imported_packages(path):
                key = PYTHON_DEPENDENCIES.get(module, module)
                if module in PYTHON_DEPENDENCIES and key is None:
                    continue
                assert key in declared, f"{path.relative_to(ROOT)} imports {module}: add <{kind}>{key}</{kind}>"


def _msg_fields(path: Path) -> list[tuple[str, str]]:
    fields = []
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line and line != "---":
            field_type, name = line.split()
            fields.append((field_type, name))
        elif line == "---":
            fields.append(("---", "---"))
    return fields


def test_stats_message_matches_the_controllers_frame_stats() -> None:
    fields = _msg_fields(ROOT / "msg/SegmentationStats.msg")
    assert fields[0] == ("std_msgs/Header", "header")
    annotations = {f.name: f.type for f in dataclasses.fields(FrameStats)}
    assert [name for _, name in fields[1:]] == list(annotations)
    for field_type, name in fields[1:]:
        assert MSG_TYPES[field_type] == annotations[name], name


def test_load_prompts_service_matches_the_controller() -> None:
    fields = _msg_fields(ROOT / "srv/LoadPrompts.srv")
    split = fields.index(("---", "---"))
    request, response = fields[:split], fields[split + 1:]
    parameters = list(inspect.signature(SegmentationController.load_prompts).parameters)[1:]
    assert [name for _, name in request] == parameters == ["path", "classes", "replace", "activate"]
    assert [name for _, name in response] == [f.name for f in dataclasses.fields(PromptUpdate)]


def _cmake() -> str:
    return re.sub(r"#.*", "", (ROOT / "CMakeLists.txt").read_text())


def test_cmake_generates_every_interface_and_installs_the_python_code() -> None:
    cmake = _cmake()
    generated = re.search(r"rosidl_generate_interfaces\(\$\{PROJECT_NAME\}(.*?)DEPENDENCIES", cmake, re.S).group(1)
    interfaces = sorted(p.relative_to(ROOT).as_posix() for p in [*ROOT.glob("msg/*.msg"), *ROOT.glob("srv/*.srv")])
    assert sorted(re.findall(r'"([^"]+)"', generated)) == interfaces
    # rosidl already registers a Python package named fpseg_ros: installing it again fails at configure time.
    assert not re.search(r"ament_python_install_package\((\$\{PROJECT_NAME\}|fpseg_ros)\b", cmake)
    assert "ament_python_install_package(fpseg_core)" in cmake
    assert re.search(r'install\(DIRECTORY \$\{PROJECT_NAME\}/\s+DESTINATION "\$\{PYTHON_INSTALL_DIR\}', cmake)


def test_installed_programs_and_registered_tests_exist() -> None:
    cmake = _cmake()
    programs = re.search(r"install\(PROGRAMS (.*?) DESTINATION", cmake).group(1).split()
    assert "scripts/fpseg_node" in programs
    for program in programs:
        path = ROOT / program
        assert path.is_file() and os.access(path, os.X_OK), program
    registered = re.findall(r"add_launch_test\((\S+)", cmake)
    registered += re.search(r"foreach\(test_file(.*?)\)", cmake, re.S).group(1).split()
    assert "test/test_node_launch.py" in registered
    ros_tests = {f"test/{p.name}" for p in ROOT.glob("test/test_*.py") if p.name.startswith("test_ros_")
                 or ROS_TEST_MODULES & _imported_packages(p)}
    assert ros_tests <= set(registered)
    for test in registered:
        assert (ROOT / test).is_file(), test


def test_config_sets_every_parameter_with_a_valid_value() -> None:
    config = yaml.safe_load((ROOT / "config/fpseg.yaml").read_text())
    values = config["/**"]["ros__parameters"]
    assert list(values) == [spec.name for spec in PARAMETERS]
    for spec in PARAMETERS:
        value = values[spec.name]
        expected_type = type(spec.default) if spec.default is not None else list
        assert type(value) is expected_type, spec.name
        assert spec.check_choice(value) is None
        if spec.integer_range:
            assert spec.integer_range[0] <= value <= spec.integer_range[1]
        if spec.float_range:
            assert spec.float_range[0] <= value <= spec.float_range[1]
    assert values["classes"] and set(values["classes"]) <= set(BANK33)  # the Cityscapes bank's names


def test_parameter_descriptions_say_when_a_change_applies() -> None:
    for spec in PARAMETERS:
        assert spec.description.endswith(".")
        if spec.read_only:
            assert "restart" in spec.description, spec.name
        else:
            assert "next frame" in spec.description, spec.name
    assert set(RUNTIME_PARAMETERS) == {"classes", "fusion", "score_threshold", "publish_color", "stats_window"}
    assert [spec.name for spec in PARAMETERS if spec.dynamic_typing] == ["classes"]


def test_launch_file_declares_the_documented_arguments() -> None:
    tree = ast.parse((ROOT / "launch/segment.launch.py").read_text())
    declared = {
        node.args[0].value for node in ast.walk(tree)
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "DeclareLaunchArgument"
    }
    assert declared == {"image", "params_file", "backend", "checkpoint", "prompts", "classes", "namespace"}


def test_fpseg_core_imports_nothing_from_ros(package) -> None:
    """fpseg_core is the ROS-free half: no ROS package (nor the node package) may be imported in it."""
    ros_packages = {d.name for d in (*package.exec_depends, *package.build_depends, *package.test_depends)
                    if not d.name.startswith("python3-")} | {"fpseg_ros", "rclpy", "rcl_interfaces"}
    for path in (ROOT / "fpseg_core").rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                    for alias in node.names}
        imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                     if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module}
        assert not imported & ros_packages, f"{path.relative_to(ROOT)} imports {sorted(imported & ros_packages)}"
