"""`fpseg doctor [--strict]`: one screen of what this machine has and lacks for fpseg, each with its fix."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.metadata
import os
import platform
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np
import torch

from .._version import __version__
from ..modeling.build import tiny_config
from ..predictor import FPSeg
from ..weights import HOME_ENV, REGISTRY, cache_dir, status

# (module, distribution for its version, fix) of the Python packages fpseg cannot run without.
REQUIRED_PACKAGES = (
    ("torch", "torch", "pip install torch (CPU-only machines: pin the build, e.g. torch==2.13.0)"),
    ("numpy", "numpy", "pip install numpy"),
    ("safetensors", "safetensors", "pip install safetensors"),
    ("PIL", "pillow", "pip install pillow"),
)
# (module, distribution, what it gives, fix) of the optional inference runtimes.
OPTIONAL_PACKAGES = (
    ("onnxruntime", "onnxruntime", "the onnxruntime backend", "pip install -e '.[onnx]'"),
    ("openvino", "openvino", "Intel CPU / GPU inference", "pip install openvino"),
    ("tensorrt", "tensorrt", "the tensorrt backend (NVIDIA GPU)",
     "pip install -e '.[tensorrt]' on a machine with an NVIDIA GPU (Jetson: it comes with JetPack)"),
)
ROS_SOURCE_FIX = "source /opt/ros/<distro>/setup.bash, then <workspace>/install/setup.bash"
BUILD_FIX = "in the workspace: colcon build --packages-select fpseg_ros && source install/setup.bash"
FETCH_FIX = "fpseg weights fetch fpseg-mobilesam"
SMOKE_IMAGE_SHAPE = (240, 320, 3)
BYTES_PER_GIB = 1024 ** 3


@dataclass(frozen=True)
class Check:
    """One line of the report. `required`: --strict fails when it is not ok."""

    name: str
    ok: bool
    detail: str
    fix: str = ""
    required: bool = False

    def line(self, width: int) -> str:
        mark = "ok" if self.ok else "MISSING" if self.required else "missing"
        fix = f" -- fix: {self.fix}" if not self.ok and self.fix else ""
        return f"  {mark:<8} {self.name:<{width}}  {self.detail}{fix}"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "doctor", help="what is installed and what is missing (with the fix), and a 1-image smoke run",
        description="Python, torch, GPU, inference runtimes, cached weights, ROS 2, and one image segmented on "
                    "the best available device. Exit code 0; with --strict 1 when something required (torch, "
                    "numpy, safetensors, pillow, one cached checkpoint) is missing.",
    )
    parser.add_argument("--strict", action="store_true",
                        help="exit 1 when something required is missing (for CI and install scripts)")
    parser.set_defaults(func=run)


def _import(module: str) -> tuple[ModuleType | None, str]:
    """The module (or None) and its version, or why it cannot be imported."""
    try:
        imported = importlib.import_module(module)
    except Exception as exc:  # a broken install raises more than ImportError (OSError for a missing library)
        return None, f"not importable ({type(exc).__name__}: {exc})"
    return imported, getattr(imported, "__version__", "") or "version unknown"


def _version(module: str, distribution: str) -> tuple[ModuleType | None, str]:
    """`_import`, with the installed distribution's version where the module has no __version__."""
    imported, detail = _import(module)
    if imported is not None and detail == "version unknown":
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            detail = importlib.metadata.version(distribution)
    return imported, detail


def package_checks() -> list[Check]:
    checks = [Check("python", True, f"{platform.python_version()} ({sys.executable})")]
    for module, distribution, fix in REQUIRED_PACKAGES:
        imported, detail = _version(module, distribution)
        if module == "torch" and imported is not None:
            detail += f", CUDA {torch.version.cuda} build" if torch.version.cuda else ", CPU-only build"
        checks.append(Check(distribution, imported is not None, detail, fix, required=True))
    for module, distribution, what, fix in OPTIONAL_PACKAGES:
        imported, detail = _version(module, distribution)
        if module == "onnxruntime" and imported is not None:
            detail += f", providers {', '.join(imported.get_available_providers())}"
        ok = imported is not None
        checks.append(Check(distribution, ok, detail if ok else f"{detail}; needed for {what}", fix))
    return checks


def gpu_check() -> Check:
    if torch.cuda.is_available():
        gpus = []
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            gpus.append(f"cuda:{index} {props.name}, {props.total_memory / BYTES_PER_GIB:.1f} GiB")
        return Check("GPU", True, "; ".join(gpus))
    if torch.version.cuda is None:
        return Check("GPU", False, "torch is a CPU-only build: inference runs on the CPU (slower)",
                     "on a machine with an NVIDIA GPU, install a CUDA build of torch (https://pytorch.org/get-started/"
                     "locally/)")
    return Check("GPU", False, f"torch (CUDA {torch.version.cuda} build) sees no GPU: inference runs on the CPU",
                 "check the NVIDIA driver (nvidia-smi) and CUDA_VISIBLE_DEVICES")


def weights_checks() -> list[Check]:
    home = cache_dir()
    checks = []
    for entry in REGISTRY.values():
        state = status(entry, home)
        if state.state == "verified":
            checks.append(Check(f"weights {entry.name}", True, f"{state.path}: {state.detail}"))
        else:  # the detail of a missing, partial or bad file is the fix
            checks.append(Check(f"weights {entry.name}", False, f"{state.path} {state.state}", state.detail))
    verified = [check.name.removeprefix("weights ") for check in checks if check.ok]
    where = f"cache {home} (${HOME_ENV})" if os.environ.get(HOME_ENV) else f"cache {home}"
    checks.append(Check("checkpoint", bool(verified), f"{where}: {', '.join(verified) or 'no verified checkpoint'}",
                        FETCH_FIX, required=True))
    return checks


def ros_checks() -> list[Check]:
    rclpy, detail = _import("rclpy")
    checks = [Check("rclpy", rclpy is not None, "importable" if rclpy is not None else detail,
                    f"install ROS 2 (Humble or Jazzy) and {ROS_SOURCE_FIX}")]
    messages, detail = _import("fpseg_ros.msg")
    checks.append(Check("fpseg_ros.msg", messages is not None,
                        "interfaces generated" if messages is not None else detail, BUILD_FIX))
    distro = os.environ.get("ROS_DISTRO")
    prefixes = [p for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p]
    has_package = any((Path(p) / "share" / "fpseg_ros").is_dir() for p in prefixes)
    if distro and has_package:
        checks.append(Check("workspace", True, f"ROS_DISTRO={distro}, fpseg_ros on AMENT_PREFIX_PATH"))
    else:
        found = f"ROS_DISTRO={distro or '(unset)'}, AMENT_PREFIX_PATH " + (
            "has no fpseg_ros" if prefixes else "(unset)")
        checks.append(Check("workspace", False, f"not sourced: {found}", ROS_SOURCE_FIX))
    return checks


def smoke_check() -> Check:
    """Segment one random image on the best device: the cached FPSeg weights if verified, else a tiny random
    network (saying so)."""
    named = [e for e in REGISTRY.values() if e.bank_filename and status(e).state == "verified"]
    try:
        start = time.perf_counter()
        if named:
            model, what = FPSeg.from_pretrained(named[0].name, device="auto"), named[0].name
        else:
            with warnings.catch_warnings():  # the report says the weights are random
                warnings.simplefilter("ignore", UserWarning)
                model = FPSeg.random(tiny_config("mobilesam"), device="auto")
            what = "a tiny random network (no cached FPSeg weights; timing only)"
        loaded = time.perf_counter()
        image = np.random.default_rng(0).integers(0, 256, SMOKE_IMAGE_SHAPE, dtype=np.uint8)
        result = model.segment(image)
        done = time.perf_counter()
    except Exception as exc:  # the report names any failure instead of ending in a traceback
        return Check("smoke run", False, f"failed: {type(exc).__name__}: {exc}",
                     "fix what the lines above report; `fpseg segment --random-weights` shows the traceback")
    height, width, _ = SMOKE_IMAGE_SHAPE
    return Check("smoke run", True, f"{what} on {model.backend_name} ({model.device}): one {width}x{height} image, "
                 f"{len(result.classes)} classes in {(done - loaded) * 1e3:.0f} ms (loaded in "
                 f"{(loaded - start) * 1e3:.0f} ms)")


def run(args: argparse.Namespace) -> int:
    sections = {
        "packages": [*package_checks(), gpu_check()],
        "weights": weights_checks(),
        "ROS 2": ros_checks(),
        "smoke run": [smoke_check()],
    }
    width = max(len(check.name) for checks in sections.values() for check in checks)
    print(f"fpseg doctor (fpseg_ros {__version__})")
    for title, checks in sections.items():
        print(f"{title}:")
        print("\n".join(check.line(width) for check in checks))
    missing = [check.name for checks in sections.values() for check in checks if check.required and not check.ok]
    if missing:
        print(f"required but missing: {', '.join(missing)} (see the fixes above)")
    else:
        print("everything required is there")
    return 1 if args.strict and missing else 0
