"""Import the official SAM (`segment_anything`) and MobileSAM (`mobile_sam`) code as test oracles.

Both packages import torchvision at package import time (and mobile_sam imports timm, which imports
torchvision too). No torchvision build matches the CPU torch used here, and the modeling code we compare
against never calls it, so a stand-in module is installed for it before the import.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types
from typing import ClassVar
from unittest import mock

import pytest


class _StandInModule(types.ModuleType):
    """A module whose every attribute is a MagicMock, so `from torchvision.x import Y` succeeds."""

    __path__: ClassVar[list[str]] = []

    def __getattr__(self, name: str) -> object:
        if name.startswith("__"):
            raise AttributeError(name)
        value = mock.MagicMock(name=f"{self.__name__}.{name}")
        setattr(self, name, value)
        return value


class _StandInFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path=None, target=None):
        if fullname == "torchvision" or fullname.startswith("torchvision."):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        return _StandInModule(spec.name)

    def exec_module(self, module):
        module.__version__ = "0.0.0+stand-in"


def _install_torchvision_stand_in() -> None:
    try:
        import torchvision  # noqa: F401  (a real one, if ever installed, is used as it is)
    except ImportError:
        sys.meta_path.insert(0, _StandInFinder())


def _require(module: str, how: str) -> None:
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed: {how}")


def segment_anything():
    """The official `segment_anything` package (modeling + build_sam), or skip if it is not installed."""
    _require("segment_anything", "pip install -e .[test]")
    _install_torchvision_stand_in()
    return importlib.import_module("segment_anything")


def mobile_sam():
    """The official MobileSAM package (`mobilesam-mirror`), or skip if it or timm is missing."""
    _require("mobile_sam", "pip install -e .[test]")
    _require("timm", "pip install --no-deps timm==0.6.13 (see .ci/run)")
    _install_torchvision_stand_in()
    return importlib.import_module("mobile_sam")
