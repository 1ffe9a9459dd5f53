"""Names and limits shared by the library, the CLI and the node, defined once (no torch import).

The model's own widths (the 256-wide embedding) are facts of the network and live in `modeling/`.
"""

from __future__ import annotations

import re
from typing import Literal

# Label images are uint8: 0 = none of the active classes, 1 + bank index for each class. vision_msgs'
# LabelInfo reserves class id 255 for "unlabeled", so at most 254 classes ever carry a label value.
UNLABELED_CLASS_ID = 255
MAX_CLASSES = UNLABELED_CLASS_ID - 1
NONE_LABEL = 0

# How overlapping classes become one label (see fusion.py).
FUSIONS = ("argmax", "priority")
Fusion = Literal["argmax", "priority"]

# How an image reaches the square encoder input (see preprocess.py).
INPUT_MODES = ("squash", "letterbox")
InputMode = Literal["squash", "letterbox"]

# Where the network runs (see backends/); 'auto' picks what can run here.
BACKENDS = ("auto", "torch", "onnxruntime", "tensorrt", "openvino")

# Numeric precisions of the torch backend.
DTYPE_NAMES = ("fp32", "bf16", "fp16")
QUANTIZED_DTYPES = ("int8",)  # precisions of an `fpseg quantize` folder, which OpenVINO runs
# Every precision some backend runs: `--dtype` of `fpseg eval`, `benchmark` and `compare-precision`.
RUNTIME_DTYPES = (*DTYPE_NAMES, *QUANTIZED_DTYPES)

# Devices the library runs on: 'auto' takes a CUDA GPU where torch can use one, else the CPU.
DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?|mps")
DEVICE_FORMS = "auto, cpu, cuda, cuda:N (N = GPU index, e.g. cuda:0) or mps"


def choice_error(name: str, value: object, choices: tuple[str, ...]) -> str | None:
    """The one message for a value outside its choices ('fusion must be one of argmax, priority, got ...')."""
    if value in choices:
        return None
    return f"{name} must be one of {', '.join(choices)}, got {value!r}"


def require_choice(name: str, value: str, choices: tuple[str, ...]) -> str:
    """`value` if it is one of `choices`, else ValueError with `choice_error`'s message."""
    reason = choice_error(name, value, choices)
    if reason:
        raise ValueError(reason)
    return value
