"""`fpseg doctor`: what is there, what is missing (with the fix), and the exit code of --strict."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
import torch

from fpseg_core import save_checkpoint, tiny_config
from fpseg_core.cityscapes_labels import BANK33
from fpseg_core.cli import doctor
from fpseg_core.cli.main import main as fpseg_main
from fpseg_core.modeling.build import build_fpseg
from fpseg_core.weights import REGISTRY

SMOKE_LIMIT_MS = 5000


@pytest.fixture()
def bare_machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty weights cache and no sourced ROS workspace; the cache folder."""
    home = tmp_path / "cache"
    monkeypatch.setenv("FPSEG_HOME", str(home))
    monkeypatch.delenv("ROS_DISTRO", raising=False)
    monkeypatch.delenv("AMENT_PREFIX_PATH", raising=False)
    return home


def _line(out: str, name: str) -> str:
    found = [line for line in out.splitlines() if re.match(rf"\s+\S+\s+{re.escape(name)}\s", line)]
    assert len(found) == 1, f"no single line for {name!r} in:\n{out}"
    return found[0]


def _doctor(capsys: pytest.CaptureFixture[str], *flags: str) -> tuple[int, str]:
    code = fpseg_main(["doctor", *flags])
    return code, capsys.readouterr().out


def test_doctor_reports_what_is_missing_with_the_fix_and_exits_0(bare_machine: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    code, out = _doctor(capsys)
    assert code == 0
    assert _line(out, "python").split()[0] == "ok"
    assert re.search(rf"ok\s+torch\s+{re.escape(torch.__version__)}, (CPU-only|CUDA \S+) build", _line(out, "torch"))
    if not torch.cuda.is_available():
        assert re.search(r"missing\s+GPU .* -- fix: ", _line(out, "GPU"))
    assert "MISSING" in _line(out, "checkpoint")
    assert "-- fix: fpseg weights fetch fpseg-mobilesam" in _line(out, "checkpoint")
    assert "-- fix: `fpseg weights fetch sam-vit-h`" in _line(out, "weights sam-vit-h")
    assert "required but missing: checkpoint" in out
    for name in ("onnxruntime", "openvino", "tensorrt"):
        line = _line(out, name)
        assert line.split()[0] == "ok" or "-- fix: pip install" in line
    smoke = _line(out, "smoke run")
    assert re.search(r"ok\s+smoke run\s+a tiny random network \(no cached FPSeg weights; timing only\) on torch", smoke)
    took = [int(ms) for ms in re.findall(r"(\d+) ms", smoke)]
    assert len(took) == 2 and sum(took) < SMOKE_LIMIT_MS


def test_doctor_reports_ros_missing_with_the_fix(bare_machine: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if importlib.util.find_spec("rclpy") is not None:
        pytest.skip("ROS 2 is installed here: this test is for a machine without it")
    _, out = _doctor(capsys)
    assert "-- fix: install ROS 2 (Humble or Jazzy)" in _line(out, "rclpy")
    assert "-- fix: in the workspace: colcon build --packages-select fpseg_ros" in _line(out, "fpseg_ros.msg")
    assert re.search(r"missing\s+workspace\s+not sourced: ROS_DISTRO=\(unset\).* -- fix: source /opt/ros/",
                     _line(out, "workspace"))


def test_strict_fails_without_a_cached_checkpoint(bare_machine: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _ = _doctor(capsys, "--strict")
    assert code == 1


def test_strict_fails_without_a_required_package(bare_machine: Path, capsys: pytest.CaptureFixture[str],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    required = (*doctor.REQUIRED_PACKAGES, ("fpseg_no_such_module", "fpseg-no-such-dist", "pip install it"))
    monkeypatch.setattr(doctor, "REQUIRED_PACKAGES", required)
    code, out = _doctor(capsys, "--strict")
    assert code == 1
    assert re.search(r"MISSING\s+fpseg-no-such-dist\s+not importable \(ModuleNotFoundError.* -- fix: pip install it",
                     _line(out, "fpseg-no-such-dist"))


def test_strict_passes_with_cached_weights_and_smoke_runs_them(bare_machine: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """A tiny 33-class FPSeg checkpoint placed in the cache as fpseg-mobilesam (its hash recorded on first use)."""
    torch.manual_seed(0)
    config = tiny_config("mobilesam", n_classes=len(BANK33), prompt_size=4, img_size=128)
    save_checkpoint(build_fpseg(config), config, list(BANK33), bare_machine / REGISTRY["fpseg-mobilesam"].filename)
    code, out = _doctor(capsys, "--strict")
    assert code == 0, out
    assert re.search(r"ok\s+weights fpseg-mobilesam\s+.*recorded at first download", out)
    assert "everything required is there" in out
    assert re.search(r"ok\s+smoke run\s+fpseg-mobilesam on torch \((cpu|cuda:\d+)\): one 320x240 image, 33 classes",
                     _line(out, "smoke run"))
