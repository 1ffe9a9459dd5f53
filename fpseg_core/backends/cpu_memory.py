"""Keep freed CPU memory for reuse (glibc), instead of returning it to the OS after every large tensor.

glibc serves allocations above its mmap threshold (at most 32 MB, dynamically adjusted) with fresh mmap'ed
pages and unmaps them on free, and trims the heap top when more than its trim threshold is free. An FPSeg
forward pass allocates and frees gigabytes of such tensors, so every image pays for page faults: on the
2-core development VM about a million minor faults and 2 s of kernel time per 1024 x 2048 image, more than
the MobileSAM encoder's own arithmetic. Raising both thresholds makes the freed memory stay in the heap for
the next image (the process keeps its peak footprint, under 1 GB for MobileSAM), which is what ONNX
Runtime's arena and TensorRT do anyway. Set FPSEG_KEEP_FREED_MEMORY=0 to leave glibc's defaults alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys

LOGGER = logging.getLogger("fpseg")
ENV_SWITCH = "FPSEG_KEEP_FREED_MEMORY"
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD = 1 << 30
_TRIM_THRESHOLD = (1 << 31) - 1
_state: dict[str, bool] = {}


def keep_freed_memory() -> bool:
    """Apply the glibc settings once per process; True when they are in effect."""
    if "active" not in _state:
        _state["active"] = _apply()
    return _state["active"]


def _apply() -> bool:
    if os.environ.get(ENV_SWITCH, "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False  # not glibc (e.g. musl): nothing to tune
    applied = mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD) == 1 and mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD) == 1
    if applied:
        LOGGER.info("CPU memory: freed memory is kept for reuse (glibc mallopt; %s=0 to disable)", ENV_SWITCH)
    return applied
