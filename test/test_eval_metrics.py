"""Metrics: Cityscapes mIoU against cityscapesScripts' own evaluation, binary IoU, label mappings, reports."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from synthetic_data import make_synthetic_cityscapes

from fpseg_core.cityscapes_labels import BANK33, CLASS_BY_NAME, TRAIN_ID_NAMES
from fpseg_core.cli.main import main
from fpseg_core.evaluation.metrics import (
    BinaryIoU,
    CityscapesConfusion,
    bank_labels_to_label_ids,
    evaluate_label_dirs,
    find_predictions,
    label_ids_to_train_ids,
    write_report,
)

cs_eval = pytest.importorskip("cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling")


@pytest.fixture(scope="module")
def predictions(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[str], list[str]]:
    """Synthetic ground truth and noisy labelId predictions named as cityscapesScripts expects them.

    Predictions hold the ground truth with a fifth of the pixels replaced by random ids 0..33 (void ids
    included, so the ignored-label rules matter) and one class swapped for another in places."""
    root = make_synthetic_cityscapes(tmp_path_factory.mktemp("cs"), splits=("val",), n_images=3, size=(96, 48),
                                     seed=3)
    pred_dir = root / "results"
    rng = np.random.default_rng(7)
    gt_files, pred_files = [], []
    for gt_path in sorted((root / "gtFine" / "val").glob("*/*_gtFine_labelIds.png")):
        gt = np.array(Image.open(gt_path))
        pred = np.where(rng.random(gt.shape) < 0.2, rng.integers(0, 34, gt.shape), gt).astype(np.uint8)
        pred[(gt == CLASS_BY_NAME["car"].label_id) & (rng.random(gt.shape) < 0.5)] = CLASS_BY_NAME["truck"].label_id
        stem = "_".join(gt_path.name.split("_")[:3])
        out = pred_dir / gt_path.parent.name / f"{stem}_leftImg8bit_pred.png"
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pred).save(out)
        gt_files.append(str(gt_path))
        pred_files.append(str(out))
    return root, pred_dir, gt_files, pred_files


def official_scores(pred_files: list[str], gt_files: list[str]) -> dict:
    """cityscapesScripts' evaluateImgLists on the same files (no instance scores, quiet, no JSON file)."""
    cs_eval.args.evalInstLevelScore = False
    cs_eval.args.JSONOutput = False
    cs_eval.args.quiet = True
    return cs_eval.evaluateImgLists(pred_files, gt_files, cs_eval.args)


def assert_same_scores(ours: dict[str, float | None], theirs: dict[str, float]) -> None:
    for name, value in ours.items():
        if math.isnan(theirs[name]):
            assert value is None, name
        else:
            assert value == pytest.approx(theirs[name], abs=1e-12), name


def test_eval_labels_matches_cityscapes_scripts(predictions, tmp_path: Path) -> None:
    root, pred_dir, gt_files, pred_files = predictions
    official = official_scores(pred_files, gt_files)

    result = evaluate_label_dirs(root, pred_dir, "val", progress=False)
    assert result["miou"] == pytest.approx(official["averageScoreClasses"], abs=1e-12)
    assert_same_scores(result["class_iou"], official["classScores"])
    assert result["category_miou"] == pytest.approx(official["averageScoreCategories"], abs=1e-12)
    assert_same_scores(result["category_iou"], official["categoryScores"])
    assert result["confusion_label_ids"] == np.asarray(official["confMatrix"]).astype(int).tolist()
    assert result["n_images"] == 6
    # the noisy predictions are neither perfect nor useless, so the comparison is not trivial
    assert 0.2 < result["miou"] < 0.9, result["miou"]

    # the CLI writes the same numbers to results.json (+ Markdown and the confusion-matrix PNG)
    out = tmp_path / "report"
    assert main(["eval-labels", "--gt", str(root), "--pred", str(pred_dir), "--out", str(out),
                 "--no-progress"]) == 0
    saved = json.loads((out / "results.json").read_text())
    assert saved["miou"] == pytest.approx(official["averageScoreClasses"], abs=1e-12)
    assert_same_scores(saved["class_iou"], official["classScores"])
    assert "| car |" in (out / "results.md").read_text()
    with Image.open(out / "confusion.png") as png:
        assert png.size[0] > 200 and png.size[1] > 200


def test_eval_labels_reports_missing_and_duplicate_predictions(predictions, tmp_path: Path) -> None:
    root, _, _, pred_files = predictions
    partial = tmp_path / "partial"
    partial.mkdir()
    for path in pred_files[1:]:
        (partial / Path(path).name).write_bytes(Path(path).read_bytes())
    missing_stem = "_".join(Path(pred_files[0]).name.split("_")[:3])
    with pytest.raises(ValueError, match=f"no prediction for 1 of 6.*{missing_stem}.*_pred_labelIds.png"):
        evaluate_label_dirs(root, partial, "val", progress=False)
    (partial / f"{missing_stem}_a.png").write_bytes(Path(pred_files[0]).read_bytes())
    (partial / f"{missing_stem}_b.png").write_bytes(Path(pred_files[0]).read_bytes())
    with pytest.raises(ValueError, match="several predictions match"):
        evaluate_label_dirs(root, partial, "val", progress=False)
    assert main(["eval-labels", "--gt", str(root), "--pred", str(partial), "--split", "test"]) == 2


def test_find_predictions_uses_the_cityscapes_pattern(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    Image.fromarray(np.zeros((2, 2), np.uint8)).save(tmp_path / "sub" / "ulm_000001_000019_anything.png")
    Image.fromarray(np.zeros((2, 2), np.uint8)).save(tmp_path / "ulm_000001_000190.png")  # another frame
    found = find_predictions(tmp_path, ["ulm_000001_000019", "ulm_000001_000190"])
    assert found["ulm_000001_000019"].name == "ulm_000001_000019_anything.png"
    assert found["ulm_000001_000190"].name == "ulm_000001_000190.png"


def test_confusion_rules_on_a_hand_made_example() -> None:
    road, car, ego = CLASS_BY_NAME["road"].label_id, CLASS_BY_NAME["car"].label_id, 1
    gt = np.array([[road, road, car, ego]], dtype=np.uint8)
    pred = np.array([[road, car, car, car]], dtype=np.uint8)
    confusion = CityscapesConfusion()
    confusion.update(pred, gt)
    result = confusion.result()
    # road: tp 1, fn 1 (predicted car); car: tp 1, fp 1 from the road pixel; the car on "ego vehicle"
    # ground truth is ignored
    assert result["class_iou"]["road"] == pytest.approx(0.5)
    assert result["class_iou"]["car"] == pytest.approx(0.5)
    assert result["class_iou"]["person"] is None
    assert result["miou"] == pytest.approx(0.5)
    assert result["n_evaluated_pixels"] == 3

    twice = CityscapesConfusion().merge(confusion).merge(confusion)
    assert twice.n_images == 2 and (twice.matrix == 2 * confusion.matrix).all()
    with pytest.raises(ValueError, match="predict at the ground-truth resolution"):
        confusion.update(pred[:, :2], gt)
    with pytest.raises(ValueError, match=r"labelIds are 0\.\.33.*not trainIds"):
        confusion.update(np.full_like(gt, 255), gt)


def test_label_id_mappings() -> None:
    label_ids = np.array([[7, 26, 0, 9, 33]], dtype=np.uint8)
    assert label_ids_to_train_ids(label_ids).tolist() == [[0, 13, 255, 255, 18]]

    bank = ["road", "flat", "car", "my new class"]
    labels = np.array([[0, 1, 2, 3, 4]], dtype=np.uint8)
    assert bank_labels_to_label_ids(labels, bank).tolist() == [[0, 7, 0, 26, 0]]
    assert bank_labels_to_label_ids(np.arange(34, dtype=np.uint8), BANK33)[1:].tolist() == [
        CLASS_BY_NAME[n].label_id if n in CLASS_BY_NAME else 0 for n in BANK33]
    with pytest.raises(ValueError, match="only 4 entries"):
        bank_labels_to_label_ids(np.array([[5]], dtype=np.uint8), bank)


def test_binary_iou_sums_over_examples_of_a_class() -> None:
    metric = BinaryIoU(2)
    pred = np.zeros((3, 2, 2), bool)
    target = np.zeros((3, 2, 2), bool)
    pred[0, 0] = True        # class 0: I 2, U 2
    target[0, 0] = True
    pred[1, :, 0] = True     # class 0: I 0, U 2 -> class 0 IoU 2 / 4 (not the mean of 1 and 0 per example)
    target[2] = True         # class 1: I 0, U 4
    metric.update(pred, target, np.array([0, 0, 1]))
    assert metric.ious().tolist() == [0.5, 0.0]
    other = BinaryIoU(2)
    other.update(target[2:], target[2:], np.array([1]))  # class 1 perfect: I 4, U 4
    assert metric.merge(other).ious().tolist() == [0.5, 0.5]
    result = metric.result(["a", "b"])
    assert result["mean"] == 0.5 and result["samples_per_class"] == {"a": 2, "b": 2}


def test_write_report_of_binary_only_results(tmp_path: Path) -> None:
    metric = BinaryIoU(len(TRAIN_ID_NAMES[:2]))
    metric.update(np.ones((1, 2, 2), bool), np.ones((1, 2, 2), bool), np.array([0]))
    written = write_report({"binary_iou": metric.result(list(TRAIN_ID_NAMES[:2]))}, tmp_path, "binary")
    assert [p.name for p in written] == ["results.json", "results.md"]
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["binary_iou"]["per_class"] == {"road": 1.0, "sidewalk": None}
    assert "| road | 100.00 | 1 |" in (tmp_path / "results.md").read_text()
