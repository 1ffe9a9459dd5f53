"""The evaluator's ROS-free core: stamp pairing, unmatched counting, label-info id mapping, latency, report."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from ros_fakes import image_message

from fpseg_core.cityscapes_labels import BANK33, CLASS_BY_NAME
from fpseg_core.evaluation.metrics import CityscapesConfusion
from fpseg_core.replay.evaluator import LatencyStats, StreamEvaluator, stats_timings, write_stream_report
from fpseg_core.replay.pairing import StampPairer, bank_names_from_class_map

ROAD, CAR, SKY = (CLASS_BY_NAME[n].label_id for n in ("road", "car", "sky"))
# The node's label map for a bank [road, car, sky]: value 0 = none, 1 + bank index = class.
CLASS_MAP = [(0, "none"), (1, "road"), (2, "car"), (3, "sky")]


def image_msg(pixels: np.ndarray, stamp: int, encoding: str = "mono8") -> SimpleNamespace:
    sec, nanosec = divmod(stamp, 1_000_000_000)
    return image_message(pixels, encoding, sec=sec, nanosec=nanosec)


def test_pairs_equal_stamps_whichever_stream_comes_first() -> None:
    pairer: StampPairer[str, str] = StampPairer(max_pending=10)
    assert pairer.add_prediction(1, "p1") is None
    assert pairer.add_ground_truth(1, "g1") == (1, "p1", "g1")
    assert pairer.add_ground_truth(2, "g2") is None
    assert pairer.add_ground_truth(3, "g3") is None
    assert pairer.add_prediction(3, "p3") == (3, "p3", "g3")
    assert (pairer.pending_predictions, pairer.pending_ground_truth) == (0, 1)
    counts = pairer.finish()
    assert counts.as_dict() == {"matched": 2, "unmatched_predictions": 0, "unmatched_ground_truth": 1,
                                "duplicate_predictions": 0, "duplicate_ground_truth": 0}
    assert pairer.pending_ground_truth == 0


def test_full_buffer_evicts_oldest_stamp_as_unmatched_and_duplicates_are_counted() -> None:
    pairer: StampPairer[str, str] = StampPairer(max_pending=2)
    for stamp in (30, 10, 20):  # 10 is the oldest stamp, evicted when 20 makes three waiting
        pairer.add_ground_truth(stamp, f"g{stamp}")
    assert pairer.counts.unmatched_ground_truth == 1
    assert pairer.add_prediction(10, "p10") is None  # its ground truth was evicted
    assert pairer.add_ground_truth(20, "again") is None
    assert pairer.counts.duplicate_ground_truth == 1
    assert pairer.add_prediction(20, "p20") == (20, "p20", "g20")
    assert pairer.add_prediction(10, "p10 again") is None
    assert pairer.counts.duplicate_predictions == 1
    counts = pairer.finish()
    assert (counts.matched, counts.unmatched_ground_truth, counts.unmatched_predictions) == (1, 2, 1)
    with pytest.raises(ValueError, match="at least 1"):
        StampPairer(max_pending=0)


def test_class_map_to_bank_names() -> None:
    assert bank_names_from_class_map(CLASS_MAP) == ["road", "car", "sky"]
    # Only some values listed (and out of order): the gaps get a name no Cityscapes class has.
    assert bank_names_from_class_map([(3, "sky"), (1, "road")]) == ["road", "", "sky"]
    assert bank_names_from_class_map([(0, "none")]) == []
    with pytest.raises(ValueError, match="listed twice"):
        bank_names_from_class_map([(1, "road"), (1, "car")])
    with pytest.raises(ValueError, match=r"outside the label range 0\.\.254"):
        bank_names_from_class_map([(255, "road")])


def test_evaluator_maps_node_values_to_label_ids_and_scores_like_cityscapes_confusion() -> None:
    rng = np.random.default_rng(0)
    evaluator = StreamEvaluator()
    evaluator.set_class_map(CLASS_MAP)
    expected = CityscapesConfusion()
    lut = np.array([0, ROAD, CAR, SKY], dtype=np.uint8)
    for stamp in range(5):
        labels = rng.integers(0, 4, size=(6, 8), dtype=np.uint8)
        gt = rng.choice([0, ROAD, CAR, SKY, CLASS_BY_NAME["person"].label_id], size=(6, 8)).astype(np.uint8)
        evaluator.add_ground_truth(stamp, gt)
        evaluator.add_labels(stamp, labels)
        expected.update(lut[labels], gt)
    result = evaluator.result(final=True)
    reference = expected.result()
    assert {key: result[key] for key in reference} == reference
    assert result["frames"]["scored"] == result["frames"]["matched"] == 5


def test_pairs_before_label_info_wait_for_it() -> None:
    evaluator = StreamEvaluator(max_pending=2)
    gt = np.full((2, 2), CAR, dtype=np.uint8)
    for stamp in range(3):
        evaluator.add_labels(stamp, np.full((2, 2), 2, dtype=np.uint8))
        evaluator.add_ground_truth(stamp, gt)
    assert evaluator.result()["frames"]["waiting_for_label_info"] == 2
    evaluator.set_class_map(CLASS_MAP)
    result = evaluator.result(final=True)
    assert result["frames"]["dropped_without_label_info"] == 1  # the oldest of three, buffer holds two
    assert result["frames"]["scored"] == 2 and result["class_iou"]["car"] == 1.0


def test_unusable_frames_are_counted_with_reasons_and_evaluation_goes_on() -> None:
    evaluator = StreamEvaluator()
    evaluator.set_class_map(CLASS_MAP)
    gt = np.full((4, 4), ROAD, dtype=np.uint8)
    evaluator.add_ground_truth(1, gt)
    evaluator.add_labels(1, np.full((4, 4), 9, dtype=np.uint8))  # value 9: not in the label info
    evaluator.add_ground_truth(2, gt)
    evaluator.add_labels(2, np.ones((3, 4), dtype=np.uint8))  # wrong size
    assert evaluator.on_labels(image_msg(np.zeros((4, 4, 3), dtype=np.uint8), 3, "rgb8")) is not None
    bad = image_msg(np.ones((4, 4), dtype=np.uint8), 4)
    bad.step = 3
    assert "step" in evaluator.on_ground_truth(bad)
    assert evaluator.on_labels(image_msg(np.ones((4, 4), dtype=np.uint8), 5)) is None
    assert evaluator.on_ground_truth(image_msg(gt, 5)) is None
    result = evaluator.result(final=True)
    frames = result["frames"]
    assert (frames["matched"], frames["scored"], frames["invalid"], frames["rejected_messages"]) == (3, 1, 2, 2)
    assert result["class_iou"]["road"] == 1.0
    errors = " ".join(result["frame_errors"])
    assert "value 9" in errors and "mono8" in errors and "step" in errors


def test_label_info_message_and_bank33_ids() -> None:
    evaluator = StreamEvaluator()
    info = SimpleNamespace(class_map=[SimpleNamespace(class_id=i + 1, class_name=n) for i, n in enumerate(BANK33)])
    evaluator.on_label_info(info)
    vehicle = BANK33.index("vehicle") + 1  # a category: covers several label ids, so "no prediction"
    labels = np.array([[BANK33.index("car") + 1, vehicle]], dtype=np.uint8)
    evaluator.add_labels(7, labels)
    evaluator.add_ground_truth(7, np.array([[CAR, CAR]], dtype=np.uint8))
    result = evaluator.result(final=True)
    assert result["class_iou"]["car"] == 0.5


def test_latency_summary() -> None:
    stats = LatencyStats()
    for value in (1.0, 2.0, 3.0, 4.0, float("nan")):
        stats.add({"encoder": value})
    summary = stats.summary()["encoder"]
    assert summary["count"] == 4 and summary["mean"] == 2.5 and summary["max"] == 4.0
    assert summary["p50"] == 2.5
    message = SimpleNamespace(latency_ms=10.0, inference_ms=8.0, preprocess_ms=1.0, encoder_ms=5.0,
                              decoder_ms=1.5, postprocess_ms=0.5, throughput_hz=3.0)
    assert stats_timings(message) == {"latency": 10.0, "inference": 8.0, "preprocess": 1.0, "encoder": 5.0,
                                      "decoder": 1.5, "postprocess": 0.5}


def test_report_has_metrics_frames_and_latency(tmp_path: Path) -> None:
    evaluator = StreamEvaluator()
    evaluator.set_class_map(CLASS_MAP)
    evaluator.add_labels(1, np.full((2, 2), 1, dtype=np.uint8))
    evaluator.add_ground_truth(1, np.full((2, 2), ROAD, dtype=np.uint8))
    evaluator.add_ground_truth(2, np.full((2, 2), ROAD, dtype=np.uint8))
    evaluator.on_stats(SimpleNamespace(latency_ms=12.0, inference_ms=9.0, preprocess_ms=1.0, encoder_ms=6.0,
                                       decoder_ms=1.0, postprocess_ms=1.0))
    paths = write_stream_report(evaluator.result(final=True), tmp_path, "node on test bag")
    assert {p.name for p in paths} >= {"results.json", "results.md"}
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["title"] == "node on test bag" and data["class_iou"]["road"] == 1.0
    assert data["frames"]["unmatched_ground_truth"] == 1
    assert data["latency_ms"]["latency"]["mean"] == 12.0
    markdown = (tmp_path / "results.md").read_text()
    assert "| unmatched ground truth | 1 |" in markdown and "| encoder | 1 | 6.00 |" in markdown


def test_report_written_while_running_keeps_pending_frames_pending(tmp_path: Path) -> None:
    evaluator = StreamEvaluator()
    evaluator.add_ground_truth(5, np.zeros((2, 2), dtype=np.uint8))
    write_stream_report(evaluator.result(), tmp_path, "so far")
    frames = json.loads((tmp_path / "results.json").read_text())["frames"]
    assert frames["pending_ground_truth"] == 1 and frames["unmatched_ground_truth"] == 0
    assert evaluator.result(final=True)["frames"]["unmatched_ground_truth"] == 1
