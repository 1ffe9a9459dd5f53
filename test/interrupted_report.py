"""Helper of test_stream_report.py: write a stream report, then the final one while the test sends SIGINTs.

    python interrupted_report.py OUT_DIR guarded|unguarded

Scores FRAMES frames with a partial report every PARTIAL_EVERY, then writes the final report as fpseg_eval
does at shutdown (inside DeferredSignals when `guarded`). The final write stops before its first file,
prints READY and waits for a line on stdin, so that the test's signals arrive while the write is under way.
At the end it prints the signals the guard deferred, as JSON.
"""

from __future__ import annotations

import contextlib
import json
import signal
import sys

import numpy as np

from fpseg_core.cityscapes_labels import CLASS_BY_NAME
from fpseg_core.replay import evaluator as evaluator_module
from fpseg_core.replay.evaluator import StreamEvaluator, StreamReport
from fpseg_core.runtime.shutdown import DeferredSignals

FRAMES = 5
PARTIAL_EVERY = 2
READY = "READY"
CLASS_MAP = [(0, "none"), (1, "road"), (2, "car")]


def main(out_dir: str, mode: str) -> int:
    signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal, even in a background job
    evaluator = StreamEvaluator()
    evaluator.set_class_map(CLASS_MAP)
    report = StreamReport(evaluator, out_dir, "interrupted", every=PARTIAL_EVERY)
    gt = np.full((4, 6), CLASS_BY_NAME["road"].label_id, dtype=np.uint8)
    for stamp in range(FRAMES):
        evaluator.add_ground_truth(stamp, gt)
        evaluator.add_labels(stamp, np.ones_like(gt))
        report.write_if_due()

    write_report = evaluator_module.write_report

    def write_report_slowly(*args: object, **kwargs: object) -> object:
        print(READY, flush=True)
        sys.stdin.readline()  # the test signals this process, then sends a line
        return write_report(*args, **kwargs)

    evaluator_module.write_report = write_report_slowly
    guard = DeferredSignals(redeliver=False)
    with guard if mode == "guarded" else contextlib.nullcontext():
        report.write(final=True)
    print(json.dumps(guard.received), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
