"""Stream reports that survive: partial ones every N matched frames, and a final one that two SIGINTs during
the write (Ctrl-C under `ros2 launch`) do not cut short. ROS-free: what fpseg_eval runs at shutdown."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from fpseg_core.cityscapes_labels import CLASS_BY_NAME
from fpseg_core.replay.evaluator import StreamEvaluator, StreamReport, write_stream_report

HELPER = Path(__file__).with_name("interrupted_report.py")
ROAD = CLASS_BY_NAME["road"].label_id
TIMEOUT_S = 120.0  # the helper imports fpseg_core (torch) before it writes anything


def _report(tmp_path: Path) -> dict:
    return json.loads((tmp_path / "results.json").read_text())


def _match(evaluator: StreamEvaluator, stamp: int) -> None:
    gt = np.full((2, 3), ROAD, dtype=np.uint8)
    evaluator.add_ground_truth(stamp, gt)
    evaluator.add_labels(stamp, np.ones_like(gt))


def test_a_partial_report_every_n_matched_frames_then_the_final_one(tmp_path: Path) -> None:
    evaluator = StreamEvaluator()
    evaluator.set_class_map([(1, "road")])
    report = StreamReport(evaluator, tmp_path, "every two", every=2)
    summaries = []
    for stamp in range(5):
        _match(evaluator, stamp)
        summaries.append(report.write_if_due())
        if stamp == 0:
            assert not (tmp_path / "results.json").exists()
        else:
            assert _report(tmp_path)["frames"]["scored"] == 2 * ((stamp + 1) // 2)
    assert [s is not None for s in summaries] == [False, True, False, True, False]
    assert summaries[1].startswith("partial report: mIoU 100.00 over 2 frames")
    evaluator.add_ground_truth(99, np.full((2, 3), ROAD, dtype=np.uint8))  # never labelled
    partial = _report(tmp_path)
    assert partial["partial"] is True and partial["title"] == "every two"
    assert "**Partial report**" in (tmp_path / "results.md").read_text()

    assert report.write(final=True).startswith("final report: mIoU 100.00 over 5 frames")
    final = _report(tmp_path)
    assert final["partial"] is False and final["frames"]["unmatched_ground_truth"] == 1
    markdown = (tmp_path / "results.md").read_text()
    assert "Final report" in markdown and "Partial" not in markdown
    assert markdown.count("## Frames") == 1
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left behind


def test_no_partial_report_when_the_interval_is_zero(tmp_path: Path) -> None:
    evaluator = StreamEvaluator()
    evaluator.set_class_map([(1, "road")])
    report = StreamReport(evaluator, tmp_path, "off")
    for stamp in range(3):
        _match(evaluator, stamp)
        assert report.write_if_due() is None
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="0 \\(off\\) or a positive number"):
        StreamReport(evaluator, tmp_path, "bad", every=-1)


def test_a_report_written_while_running_is_partial(tmp_path: Path) -> None:
    evaluator = StreamEvaluator()
    _match(evaluator, 1)
    assert evaluator.result()["partial"] is True and evaluator.result(final=True)["partial"] is False
    write_stream_report(evaluator.result(), tmp_path, "so far")
    assert _report(tmp_path)["partial"] is True


def _interrupt_final_write(tmp_path: Path, mode: str) -> tuple[int, str, str]:
    """Run the helper; once its final write has begun, send it SIGINT twice (as Ctrl-C under launch does)."""
    process = subprocess.Popen([sys.executable, str(HELPER), str(tmp_path), mode], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "READY", process.stderr.read()
        assert _report(tmp_path)["partial"] is True  # the partial report of frames 1..4 is there
        for _ in range(2):
            os.kill(process.pid, signal.SIGINT)
            time.sleep(0.2)
        with contextlib.suppress(BrokenPipeError):  # unguarded, the first SIGINT has ended the process
            process.stdin.write("go\n")
            process.stdin.flush()
        stdout, stderr = process.communicate(timeout=TIMEOUT_S)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return process.returncode, stdout, stderr


def test_two_sigints_during_the_final_write_do_not_lose_the_report(tmp_path: Path) -> None:
    returncode, stdout, stderr = _interrupt_final_write(tmp_path, "guarded")
    assert returncode == 0, stderr
    assert json.loads(stdout) == [signal.SIGINT, signal.SIGINT]  # both deferred, none lost the write
    final = _report(tmp_path)
    assert final["partial"] is False and final["frames"]["scored"] == 5 and final["class_iou"]["road"] == 1.0
    assert "Final report" in (tmp_path / "results.md").read_text()
    assert "KeyboardInterrupt" not in stderr


def test_without_the_guard_the_same_sigint_loses_the_final_report(tmp_path: Path) -> None:
    """The control: the signals do arrive mid-write, and unguarded they abort it."""
    returncode, _, stderr = _interrupt_final_write(tmp_path, "unguarded")
    assert returncode != 0 and "KeyboardInterrupt" in stderr
    assert _report(tmp_path)["partial"] is True
