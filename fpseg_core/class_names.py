"""Class-name lists as people type them: on the command line, in launch arguments, in YAML (no torch import)."""

from __future__ import annotations


def parse_class_list(text: str | None) -> list[str] | None:
    """'road,person' or '[road, person]' -> ['road', 'person']; None stays None (all classes)."""
    if text is None:
        return None
    return [name.strip() for name in text.strip().strip("[]").split(",") if name.strip()]
