"""The direction dependencies run in fpseg_core (README "Repository layout"; shared/design/LAYERS.md).

Imports are read with `ast`, including those inside functions: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "fpseg_core"

# Each part of fpseg_core (a top-level module or a subpackage) and its layer: a part imports only from its
# own layer or below.
LAYERS = {
    "_version": 0, "errors": 0, "constants": 0, "files": 0, "cityscapes_labels": 0, "jobs": 0, "class_names": 0,
    "weights": 0,
    "modeling": 1,
    "preprocess": 2, "fast_labels": 2, "fusion": 2, "visualize": 2, "prompt_bank": 2, "checkpoint": 2,
    "artifacts": 2, "image_io": 2,
    "backends": 3, "predictor": 3, "export": 3,
    "data": 4, "training": 4, "evaluation": 4, "replay": 4, "runtime": 4, "regions": 4,
    "graph_benchmark": 4,
    "cli": 5,
}
MODELING_MAY_IMPORT = {"modeling", "errors"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> list[str]:
    """Absolute names of the fpseg_core modules `path` imports (relative imports resolved)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # `from . import x` / `from .pkg import module` name submodules, not the package's own names
            submodules = [f"{target}.{a.name}" for a in node.names if _is_module(f"{target}.{a.name}")]
            found += submodules if len(submodules) == len(node.names) else [target, *submodules]
    return [m for m in found if m == "fpseg_core" or m.startswith("fpseg_core.")]


def _is_module(name: str) -> bool:
    path = REPO.joinpath(*name.split("."))
    return path.is_dir() or path.with_suffix(".py").is_file()


def _part(module: str) -> str | None:
    parts = module.split(".")
    if len(parts) < 2:
        return None
    candidate = PACKAGE / parts[1]
    if candidate.is_dir() or candidate.with_suffix(".py").is_file():
        return parts[1]
    return None


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = defaultdict(set)
    for path in PACKAGE.rglob("*.py"):
        source = _part(_module_name(path))
        if source is None:
            continue
        graph[source] |= {p for p in map(_part, _imports(path)) if p is not None and p != source}
    return graph


def test_every_part_has_a_layer() -> None:
    parts = {p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    parts |= {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    assert parts - LAYERS.keys() == set(), "add new parts of fpseg_core to LAYERS (and to the README's layering)"


def test_no_cycle_between_parts() -> None:
    graph = _graph()
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycle = trail[trail.index(nxt):] if nxt in trail else trail
                pytest.fail("import cycle: " + " -> ".join([*cycle, nxt]))
            if nxt not in state:
                visit(nxt, [*trail, nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])


def test_imports_only_look_down() -> None:
    upward = sorted(f"{source} (layer {LAYERS[source]}) imports {target} (layer {LAYERS[target]})"
                    for source, targets in _graph().items() for target in targets
                    if LAYERS.get(target, 99) > LAYERS.get(source, -1))
    assert upward == []


def test_modeling_imports_nothing_else_but_errors() -> None:
    for path in (PACKAGE / "modeling").rglob("*.py"):
        others = {_part(m) for m in _imports(path)} - MODELING_MAY_IMPORT
        assert others == set(), f"{path.relative_to(REPO)} imports {sorted(others)}"


def test_export_never_imports_a_backend() -> None:
    for path in (PACKAGE / "export").rglob("*.py"):
        assert "backends" not in {_part(m) for m in _imports(path)}, path


def test_nothing_imports_the_package_root() -> None:
    for path in [*PACKAGE.rglob("*.py"), *(REPO / "fpseg_ros").glob("*.py")]:
        if path == PACKAGE / "__init__.py":
            continue
        assert "fpseg_core" not in _imports(path), f"{path.relative_to(REPO)} imports the package root"


def _launch_imports() -> list[str]:
    modules = set()
    for path in (REPO / "launch").glob("*.py"):
        modules |= {m for m in _imports(path) if _part(m) is not None}
    return sorted(modules)


def test_light_path_imports_without_torch() -> None:
    """The launch files' fpseg_core imports, the node's parameter table and the Cityscapes names: no torch."""
    modules = ["fpseg_core", "fpseg_core.runtime.parameters", "fpseg_core.cityscapes_labels", *_launch_imports()]
    code = ("import importlib, sys\n"
            f"for name in {modules!r}:\n"
            "    try:\n"
            "        importlib.import_module(name)\n"
            "    except ModuleNotFoundError:\n"
            "        importlib.import_module(name.rpartition('.')[0])\n"
            "heavy = sorted(m for m in ('torch', 'numpy', 'PIL', 'safetensors') if m in sys.modules)\n"
            "print(','.join(heavy))\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "torch" not in result.stdout.strip().split(","), f"imported: {result.stdout.strip()} for {modules}"


def test_launch_files_import_without_torch_where_launch_exists() -> None:
    pytest.importorskip("launch_ros", reason="launch_ros is not installed (ROS 2 is needed for launch files)")
    code = ("import runpy, sys\n"
            + "".join(f"runpy.run_path({str(p)!r})\n" for p in sorted((REPO / "launch").glob("*.py")))
            + "print('torch' in sys.modules)\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
