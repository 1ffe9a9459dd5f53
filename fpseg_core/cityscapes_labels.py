"""Cityscapes label definitions (as cityscapesScripts' labels.py) and the 33-entry bank of the published weights."""

from __future__ import annotations

from dataclasses import dataclass

IGNORE_TRAIN_ID = 255


@dataclass(frozen=True)
class CityscapesClass:
    name: str
    label_id: int
    train_id: int
    category: str
    color: tuple[int, int, int]


CLASSES: tuple[CityscapesClass, ...] = (
    CityscapesClass("road", 7, 0, "flat", (128, 64, 128)),
    CityscapesClass("sidewalk", 8, 1, "flat", (244, 35, 232)),
    CityscapesClass("parking", 9, 255, "flat", (250, 170, 160)),
    CityscapesClass("rail track", 10, 255, "flat", (230, 150, 140)),
    CityscapesClass("building", 11, 2, "construction", (70, 70, 70)),
    CityscapesClass("wall", 12, 3, "construction", (102, 102, 156)),
    CityscapesClass("fence", 13, 4, "construction", (190, 153, 153)),
    CityscapesClass("guard rail", 14, 255, "construction", (180, 165, 180)),
    CityscapesClass("bridge", 15, 255, "construction", (150, 100, 100)),
    CityscapesClass("tunnel", 16, 255, "construction", (150, 120, 90)),
    CityscapesClass("pole", 17, 5, "object", (153, 153, 153)),
    CityscapesClass("polegroup", 18, 255, "object", (153, 153, 153)),
    CityscapesClass("traffic light", 19, 6, "object", (250, 170, 30)),
    CityscapesClass("traffic sign", 20, 7, "object", (220, 220, 0)),
    CityscapesClass("vegetation", 21, 8, "nature", (107, 142, 35)),
    CityscapesClass("terrain", 22, 9, "nature", (152, 251, 152)),
    CityscapesClass("sky", 23, 10, "sky", (70, 130, 180)),
    CityscapesClass("person", 24, 11, "human", (220, 20, 60)),
    CityscapesClass("rider", 25, 12, "human", (255, 0, 0)),
    CityscapesClass("car", 26, 13, "vehicle", (0, 0, 142)),
    CityscapesClass("truck", 27, 14, "vehicle", (0, 0, 70)),
    CityscapesClass("bus", 28, 15, "vehicle", (0, 60, 100)),
    CityscapesClass("caravan", 29, 255, "vehicle", (0, 0, 90)),
    CityscapesClass("trailer", 30, 255, "vehicle", (0, 0, 110)),
    CityscapesClass("train", 31, 16, "vehicle", (0, 80, 100)),
    CityscapesClass("motorcycle", 32, 17, "vehicle", (0, 0, 230)),
    CityscapesClass("bicycle", 33, 18, "vehicle", (119, 11, 32)),
)
CLASS_BY_NAME = {c.name: c for c in CLASSES}

# Display colours for the categories (cityscapesScripts defines none); each is its first member's colour.
CATEGORY_COLORS: dict[str, tuple[int, int, int]] = {}
for _cls in CLASSES:
    CATEGORY_COLORS.setdefault(_cls.category, _cls.color)

TRAIN_ID_NAMES: tuple[str, ...] = tuple(
    c.name for c in sorted((c for c in CLASSES if c.train_id != IGNORE_TRAIN_ID), key=lambda c: c.train_id)
)


def _bank33() -> tuple[str, ...]:
    """Walk label ids 7..33, adding each class and, the first time it appears, its category."""
    ordered: list[str] = []
    for cls in CLASSES:
        ordered.append(cls.name)
        if cls.category not in ordered:
            ordered.append(cls.category)
    return tuple(ordered)


BANK33: tuple[str, ...] = _bank33()
CATEGORIES: tuple[str, ...] = tuple(dict.fromkeys(c.category for c in CLASSES))


def label_ids(name: str) -> frozenset[int]:
    """Cityscapes label ids a bank entry covers: a class its own id, a category the union of its members."""
    if name in CLASS_BY_NAME:
        return frozenset({CLASS_BY_NAME[name].label_id})
    members = frozenset(c.label_id for c in CLASSES if c.category == name)
    if not members:
        raise KeyError(f"{name!r} is neither a Cityscapes class nor a category")
    return members


def color(name: str) -> tuple[int, int, int]:
    """Cityscapes display colour of a class or category name."""
    if name in CLASS_BY_NAME:
        return CLASS_BY_NAME[name].color
    return CATEGORY_COLORS[name]
