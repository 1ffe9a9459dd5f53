"""Our Cityscapes label table against cityscapesScripts' own (cityscapesscripts.helpers.labels)."""

from __future__ import annotations

from cityscapesscripts.helpers.labels import labels as official_labels

from fpseg_core.cityscapes_labels import BANK33, CLASSES, IGNORE_TRAIN_ID, TRAIN_ID_NAMES

# Label ids below 7 (unlabeled, ego vehicle, ...) and -1 (license plate) are void: no FPSeg class.
FIRST_CLASS_ID = 7


def test_every_class_matches_cityscapes_scripts() -> None:
    official = [label for label in official_labels if label.id >= FIRST_CLASS_ID]
    ours = [(c.name, c.label_id, c.train_id, c.category, c.color) for c in CLASSES]
    theirs = [(label.name, label.id, label.trainId, label.category, label.color) for label in official]
    assert ours == theirs


def test_train_ids_and_the_published_bank_order() -> None:
    official_train = sorted((label for label in official_labels if label.trainId not in (IGNORE_TRAIN_ID, -1)),
                            key=lambda label: label.trainId)
    assert list(TRAIN_ID_NAMES) == [label.name for label in official_train]
    # the published 33-entry bank: each class by label id, its category the first time it appears
    assert len(BANK33) == 33 and BANK33[:3] == ("road", "flat", "sidewalk")
    assert set(BANK33) == {c.name for c in CLASSES} | {c.category for c in CLASSES}
