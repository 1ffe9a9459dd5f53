"""fpseg_core: FPSeg promptable semantic segmentation (SAM / MobileSAM), ROS-free.

`import fpseg_core` is cheap (no torch): the names below load their module on first use, so launch files,
the node's parameter table and the Cityscapes name lists can import from the package without torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from ._version import __version__

# public name -> module that defines it
_EXPORTS = {
    "CheckpointError": "errors",
    "FPSegError": "errors",
    "InputImageError": "errors",
    "PromptBankError": "errors",
    "LoadedCheckpoint": "checkpoint",
    "load_checkpoint": "checkpoint",
    "save_checkpoint": "checkpoint",
    "fuse": "fusion",
    "FPSegConfig": "modeling.build",
    "build_fpseg": "modeling.build",
    "tiny_config": "modeling.build",
    "FPSeg": "predictor",
    "Segmentation": "predictor",
    "PromptBank": "prompt_bank",
    "decoder_fingerprint": "prompt_bank",
    "blend": "visualize",
    "colorize": "visualize",
    "palette": "visualize",
}

__all__ = [*sorted(_EXPORTS), "__version__"]

def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'fpseg_core' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
