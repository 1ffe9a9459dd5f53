"""Small helpers the graph benchmark's modules share: units and the NaN-free number rule of its JSON."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

MIB = 2**20  # bytes per MiB
NS_PER_S = 1_000_000_000
NS_PER_MS = 1_000_000


def finite_or_none(value: float | None) -> float | None:
    """`value` as a plain float, or None where it is undefined (None, NaN or infinite): JSON has no NaN."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def json_safe(value: Any) -> Any:
    """`value` with every non-finite float replaced by None and numpy scalars / tuples made plain JSON types."""
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        return [json_safe(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if hasattr(value, "item") and callable(value.item):  # numpy scalar
        value = value.item()
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return finite_or_none(value)
    return value
