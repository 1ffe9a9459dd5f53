"""Metrics (Cityscapes mIoU as cityscapesScripts computes it, the paper's class-wise binary IoU), reports."""

from .metrics import (
    BinaryIoU,
    CityscapesConfusion,
    bank_labels_to_label_ids,
    evaluate_label_dirs,
    label_ids_to_train_ids,
    write_report,
)

__all__ = [
    "BinaryIoU",
    "CityscapesConfusion",
    "bank_labels_to_label_ids",
    "evaluate_label_dirs",
    "label_ids_to_train_ids",
    "write_report",
]
