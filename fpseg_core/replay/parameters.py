"""The `fpseg_eval` node's parameters, declared from this one table (no rclpy or torch import)."""

from __future__ import annotations

from ..runtime.parameters import ParameterSpec
from .pairing import DEFAULT_MAX_PENDING

MAX_PENDING_RANGE = (1, 10_000)
REPORT_EVERY_RANGE = (0, 1_000_000)

EVAL_PARAMETERS: tuple[ParameterSpec, ...] = (
    ParameterSpec("report_dir", "fpseg_eval",
                  "Folder for results.json, results.md and confusion.png ('~' is expanded; relative to the "
                  "working directory). Read-only.", read_only=True),
    ParameterSpec("title", "fpseg node on Cityscapes", "Title of the report. Read-only.", read_only=True),
    ParameterSpec("max_pending", DEFAULT_MAX_PENDING,
                  "Frames that may wait for their partner (labels or ground truth); beyond that the oldest "
                  "is counted as unmatched. Read-only.", read_only=True, integer_range=MAX_PENDING_RANGE),
    ParameterSpec("report_on_shutdown", True, "Write the final report when the node shuts down. Read-only.",
                  read_only=True),
    ParameterSpec("report_every", 100,
                  "Rewrite the report, marked partial, every N matched frames, so that a run that is killed "
                  "still leaves a valid report; 0 = only on ~/write_report and at shutdown. Read-only.",
                  read_only=True, integer_range=REPORT_EVERY_RANGE),
)
