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

from fpseg_core.cityscapes_labels import BANK33
from fpseg_core.runtime.controller import FrameStats, PromptUpdate, SegmentationController
from fpseg_core.runtime.parameters import PARAMETERS, RUNTIME_PARAMETERS
from fpseg_core.runtime.regions import RegionQueries, RegionReply
from fpseg_core.weights import REGISTRY

ROOT = Path(__file__).resolve().parents[1]
# Python modules that are not ROS packages, with the rosdep key that provides them; package.xml must declare it.
ROSDEP_KEYS = {
    "numpy": "python3-numpy", "PIL": "python3-pil", "yaml": "python3-yaml", "tqdm": "python3-tqdm",
    "matplotlib": "python3-matplotlib", "pytest": "python3-pytest", "hypothesis": "python3-hypothesis",
    "catkin_pkg": "python3-catkin-pkg", "psutil": "python3-psutil",
}
# Modules installed with pip (no rosdep key, or one the project does not use), and why: what needs them and how
# to get them. A test that needs one skips without it, so none may be skipped on at module level (see below).
PIP_ONLY = {
    "torch": "the network; pip install torch (README 'Running on a robot': the distributions' python3-torch lags)",
    "safetensors": "prompt banks; no rosdep key: pip install safetensors",
    "onnx": "the ONNX export; no rosdep key: pip install '.[onnx]'",
    "onnxruntime": "the ONNX backend; only a pip rosdep key, and useless without onnx: pip install '.[onnx]'",
    "openvino": "the OpenVINO backend (not run by colcon); pip install '.[openvino]'",
    "nncf": "int8 quantization for OpenVINO (not run by colcon); pip install '.[openvino]'",
    "rosbags": "the bag replay tools (not run by colcon); pip install '.[bag]'",
    "mcap": "checks of written bags (not run by colcon); pip install '.[bag]'",
    "cityscapesscripts": "the reference Cityscapes evaluation (not run by colcon); pip install '.[test]'",
    "segment_anything": "the official SAM model as a test oracle (not run by colcon); pip install '.[test]'",
    "torchvision": "needed by the official SAM / MobileSAM oracles (not run by colcon); pip install '.[test]'",
}
LOCAL_MODULES = {path.stem for path in (ROOT / "test").glob("*.py")} | {"fpseg_core", "fpseg_ros"}
ROS_TEST_MODULES = {"rclpy", "launch", "launch_ros", "launch_testing"}
MSG_TYPES = {"uint64": "int", "uint32": "int", "float32": "float", "float64": "float", "string": "str",
             "string[]": "list[str]"}
INTERFACE_FILES = ("msg/*.msg", "srv/*.srv")


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


def _module_level_skips(path: Path) -> set[str]:
    """Modules a file skips on entirely: `pytest.importorskip("x")` in the module body, outside any function."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    calls = [node.value for node in tree.body if isinstance(node, (ast.Expr, ast.Assign))]
    calls = [call.value if isinstance(call, ast.Attribute) else call for call in calls]  # importorskip(...).x
    return {call.args[0].value.split(".")[0] for call in calls
            if isinstance(call, ast.Call) and getattr(call.func, "attr", "") == "importorskip" and call.args
            and isinstance(call.args[0], ast.Constant)}


def _registered_tests() -> list[str]:
    """The test files CMakeLists.txt registers with ament (what `colcon test` runs)."""
    cmake = _cmake()
    pytest_files = re.search(r"foreach\(test_file(.*?)\)", cmake, re.S).group(1).split()
    return [*re.findall(r"add_launch_test\((\S+)", cmake), *pytest_files]


def test_every_imported_dependency_is_declared(package) -> None:
    """Each third-party module the node or any test file imports is a declared ROS package, the rosdep key of
    ROSDEP_KEYS that package.xml declares, or a PIP_ONLY module."""
    runtime = {d.name for d in package.exec_depends} | {d.name for d in package.build_depends}
    tests = runtime | {d.name for d in package.test_depends}
    scripts = [p for p in _python_files("scripts/*") if p.read_text().startswith("#!/usr/bin/env python3")]
    for files, declared, kind in [
        ([*_python_files("fpseg_ros/*.py", "launch/*.py"), *scripts], runtime, "exec_depend"),
        (_python_files("test/*.py"), tests, "test_depend"),
    ]:
        for path in files:
            for module in _imported_packages(path) - set(PIP_ONLY):
                key = ROSDEP_KEYS.get(module, module)
                assert key in declared, (f"{path.relative_to(ROOT)} imports {module}: add <{kind}>{key}</{kind}> "
                                         "(or list it in PIP_ONLY with the reason)")


def test_no_test_run_by_colcon_skips_whole_on_a_pip_only_module(package) -> None:
    """ament counts a pytest file whose every test skipped (exit code 5) as a failure, so a file colcon runs may
    skip on at module level only on what package.xml declares."""
    declared = {d.name for d in (*package.exec_depends, *package.build_depends, *package.test_depends)}
    declared.add(package.name)  # its generated messages exist once colcon has built it
    for test in _registered_tests():
        for module in _module_level_skips(ROOT / test):
            key = ROSDEP_KEYS.get(module, module)
            assert module not in PIP_ONLY and key in declared, (
                f"{test} skips entirely without {module}: declare <test_depend>{key}</test_depend>, or skip inside "
                "the tests that need it")


def test_pip_only_modules_say_how_to_install_them() -> None:
    for module, reason in PIP_ONLY.items():
        assert "pip install" in reason, module
    assert not set(PIP_ONLY) & set(ROSDEP_KEYS)


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


def test_classify_regions_service_matches_the_region_queries() -> None:
    fields = _msg_fields(ROOT / "srv/ClassifyRegions.srv")
    split = fields.index(("---", "---"))
    request, response = fields[:split], fields[split + 1:]
    assert request == [("geometry_msgs/Polygon[]", "polygons"), ("builtin_interfaces/Time", "stamp"),
                       ("uint32", "points_per_region")]
    # The node passes the request's fields to RegionQueries.answer (the stamp in nanoseconds).
    parameters = list(inspect.signature(RegionQueries.answer).parameters)[1:]
    assert sorted(parameters) == sorted("stamp_ns" if name == "stamp" else name for _, name in request)
    assert [name for _, name in response] == [
        "stamp" if f.name == "stamp_ns" else f.name for f in dataclasses.fields(RegionReply)]
    assert dict((name, kind) for kind, name in response) == {
        "success": "bool", "message": "string", "class_names": "string[]", "confidences": "float32[]",
        "stamp": "builtin_interfaces/Time"}


def _cmake() -> str:
    return re.sub(r"#.*", "", (ROOT / "CMakeLists.txt").read_text())


def test_interface_dependencies_are_declared(package) -> None:
    """Each package whose types msg/ and srv/ use is in rosidl's DEPENDENCIES and a <depend> of package.xml."""
    used = {field_type.split("/")[0] for pattern in INTERFACE_FILES for path in ROOT.glob(pattern)
            for field_type, _ in _msg_fields(path) if "/" in field_type}
    assert {"std_msgs", "builtin_interfaces", "geometry_msgs"} <= used
    listed = re.search(r"DEPENDENCIES([^)]*)\)", _cmake()).group(1).split()
    depends = {d.name for d in package.build_depends} & {d.name for d in package.exec_depends}
    for name in used:
        assert name in listed, f"add {name} to rosidl_generate_interfaces DEPENDENCIES"
        assert name in depends, f"add <depend>{name}</depend> to package.xml"
        assert re.search(rf"find_package\({name} REQUIRED\)", _cmake()), name


def test_cmake_generates_every_interface_and_installs_the_python_code() -> None:
    cmake = _cmake()
    generated = re.search(r"rosidl_generate_interfaces\(\$\{PROJECT_NAME\}(.*?)DEPENDENCIES", cmake, re.S).group(1)
    interfaces = sorted(p.relative_to(ROOT).as_posix() for pattern in INTERFACE_FILES for p in ROOT.glob(pattern))
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
    registered = _registered_tests()
    assert "test/test_node_launch.py" in registered
    ros_tests = {f"test/{p.name}" for p in ROOT.glob("test/test_*.py") if p.name.startswith("test_ros_")
                 or ROS_TEST_MODULES & _imported_packages(p)}
    assert ros_tests <= set(registered)
    for test in registered:
        assert (ROOT / test).is_file(), test


def test_config_sets_every_parameter_with_a_valid_value() -> None:
    """In table order; a parameter unset by default (None) may instead be shown commented out, with an example."""
    text = (ROOT / "config/fpseg.yaml").read_text()
    values = yaml.safe_load(text)["/**"]["ros__parameters"]
    commented = [spec.name for spec in PARAMETERS if spec.default is None and spec.name not in values]
    for name in commented:
        assert re.search(rf"^ +# {name}: \[.+\]$", text, re.M), f"config/fpseg.yaml: show {name} commented out"
    assert list(values) == [spec.name for spec in PARAMETERS if spec.name not in commented]
    for spec in (spec for spec in PARAMETERS if spec.name in values):
        value = values[spec.name]
        expected_type = type(spec.default) if spec.default is not None else list
        assert type(value) is expected_type, spec.name
        assert spec.check_choice(value) is None
        if spec.integer_range:
            assert spec.integer_range[0] <= value <= spec.integer_range[1]
        if spec.float_range:
            assert spec.float_range[0] <= value <= spec.float_range[1]
    assert values["classes"] and set(values["classes"]) <= set(BANK33)  # the Cityscapes bank's names
    assert values["checkpoint"] in REGISTRY  # cached weights by name: runs after `fpseg weights fetch NAME`


def test_parameter_descriptions_say_when_a_change_applies() -> None:
    for spec in PARAMETERS:
        assert spec.description.endswith(".")
        if spec.read_only:
            assert "restart" in spec.description, spec.name
        else:
            assert "next frame" in spec.description or "next diagnostics update" in spec.description, spec.name
    assert set(RUNTIME_PARAMETERS) == {"classes", "fusion", "score_threshold", "publish_color", "publish_confidence",
                                       "latency_budget_ms", "expected_input_hz", "latency_warn_ms", "stats_window"}
    assert [spec.name for spec in PARAMETERS if spec.dynamic_typing] == ["cameras", "region_class_names", "classes"]


def test_launch_file_declares_the_documented_arguments() -> None:
    tree = ast.parse((ROOT / "launch/segment.launch.py").read_text())
    declared = {
        node.args[0].value for node in ast.walk(tree)
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "DeclareLaunchArgument"
    }
    assert declared == {"image", "params_file", "backend", "checkpoint", "prompts", "classes", "cameras", "namespace",
                        "respawn", "autostart"}


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


def test_interface_comments_hold_no_backslash() -> None:
    """rosidl_adapter turns comments into IDL strings through 'unicode_escape': a backslash at the end of a line
    stops `colcon build` (seen on Jazzy: "UnicodeDecodeError ... \\ at end of string"), one elsewhere changes
    the text."""
    for path in sorted([*ROOT.glob("msg/*.msg"), *ROOT.glob("srv/*.srv")]):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            assert "\\" not in line, f"{path.relative_to(ROOT)}:{number}: remove the backslash"
