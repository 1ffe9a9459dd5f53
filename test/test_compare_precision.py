"""`fpseg compare-precision` (issue 13's accuracy protocol): the decision margin, the accumulated figures
checked against a straightforward per-image computation, and the command on real ONNX Runtime and OpenVINO
int8 folders of a tiny model."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_CLASSES, make_bank
from PIL import Image

from fpseg_core import FPSeg, tiny_config
from fpseg_core.cli.main import main as fpseg_main
from fpseg_core.evaluation.precision import CURVE_DELTAS, PrecisionComparison, decision_margin
from fpseg_core.export.onnx_export import export_onnx
from fpseg_core.fusion import fuse

CONFIG = tiny_config("mobilesam", n_classes=len(TINY_CLASSES), prompt_size=4, img_size=128)


def test_margin_of_handmade_logits() -> None:
    # three pixels, two classes: (2, 1), (-1, -2), (0.5, -3) at threshold 0
    logits = torch.tensor([[[2.0, -1.0, 0.5]], [[1.0, -2.0, -3.0]]])
    assert decision_margin(logits, "argmax", 0.0).flatten().tolist() == [1.0, 1.0, 0.5]
    # priority: (2, 5) -> class 0 decides alone; (-1, 3) -> both decide; (-1, -0.5) -> none, both decide
    logits = torch.tensor([[[2.0, -1.0, -1.0]], [[5.0, 3.0, -0.5]]])
    assert decision_margin(logits, "priority", 0.0).flatten().tolist() == [2.0, 1.0, 0.5]
    assert decision_margin(logits, "priority", 1.0).flatten().tolist() == [1.0, 2.0, 1.5]


@pytest.mark.parametrize("fusion", ["argmax", "priority"])
@pytest.mark.parametrize("threshold", [0.0, 0.7])
def test_noise_below_half_the_margin_never_changes_a_label(fusion: str, threshold: float) -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 64, 64, generator=generator) * 2
    margin = decision_margin(logits, fusion, threshold)
    assert (margin >= 0).all()
    direction = torch.rand(logits.shape, generator=generator) * 2 - 1  # |direction| <= 1
    labels = fuse(logits, list(range(5)), fusion, threshold)
    assert torch.equal(fuse(logits + 0.49 * margin * direction, list(range(5)), fusion, threshold), labels)
    # and the margin is tight: moving by a little more than it changes some labels
    flipped = fuse(logits + 1.01 * margin * torch.sign(direction), list(range(5)), fusion, threshold)
    assert not torch.equal(flipped, labels)


def images(count: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (48 + 8 * i, 80, 3), dtype=np.uint8) for i in range(count)]


def pipelines(random_model: FPSeg, dtype: str) -> tuple[FPSeg, FPSeg]:
    bank = make_bank(random_model, TINY_CLASSES, seed=2)
    reference = FPSeg(random_model.model, bank)
    return reference, FPSeg(random_model.model, bank, backend="torch", dtype=dtype)


def test_a_runtime_against_itself_agrees_everywhere(random_model: FPSeg) -> None:
    reference, candidate = pipelines(random_model, "fp32")
    comparison = PrecisionComparison(reference, candidate)
    for i, image in enumerate(images(2)):
        assert comparison.add(f"image_{i}", image) == 1.0
    report = comparison.report()
    assert report["images"] == 2 and report["classes"] == TINY_CLASSES
    assert report["embedding"]["rel_l2_max"] == 0.0 and report["embedding"]["cosine_min"] == pytest.approx(1.0)
    assert report["low_res_logits"]["rel_l2_max"] == 0.0 and report["labels"]["agreement"] == 1.0
    assert all(v in (None, 1.0) for v in report["labels"]["class_iou"].values())
    assert all(row["agreement"] in (None, 1.0) for row in report["curve"])


def test_bf16_figures_equal_a_straightforward_computation(random_model: FPSeg) -> None:
    reference, candidate = pipelines(random_model, "bf16")
    ids = [2, 0, 3]
    comparison = PrecisionComparison(reference, candidate, ids, deltas=[0.05, 0.3])
    equal_all, margins_all, rel_errors = [], [], []
    inter, union = np.zeros(len(ids)), np.zeros(len(ids))
    for i, image in enumerate(images(3)):
        comparison.add(f"image_{i}", image)
        ref, cand = reference.network_outputs(image, ids), candidate.network_outputs(image, ids)
        ref_labels, cand_labels = fuse(ref.logits, ids), fuse(cand.logits, ids)
        equal_all.append((ref_labels == cand_labels).flatten())
        for k, bank_id in enumerate(ids):
            a, b = (ref_labels == bank_id + 1).numpy(), (cand_labels == bank_id + 1).numpy()
            inter[k] += (a & b).sum()
            union[k] += (a | b).sum()
        margins_all.append(decision_margin(ref.logits, "argmax", 0.0).flatten())
        rel_errors.append(float((cand.embedding - ref.embedding).norm() / ref.embedding.norm()))
    report = comparison.report()
    equal, margin = torch.cat(equal_all), torch.cat(margins_all)
    assert 0 < report["embedding"]["rel_l2_mean"] == pytest.approx(np.mean(rel_errors), rel=1e-5)
    assert report["labels"]["agreement"] == pytest.approx(float(equal.double().mean()))
    assert report["labels"]["agreement"] < 1.0  # bf16 changes some labels of this random network
    assert report["classes"] == [TINY_CLASSES[i] for i in ids]
    for k, bank_id in enumerate(ids):
        expected = inter[k] / union[k] if union[k] else None
        assert report["labels"]["class_iou"][TINY_CLASSES[bank_id]] == pytest.approx(expected)
    for row in report["confident"] + report["curve"]:
        kept = margin > row["delta"]
        assert row["pixel_fraction"] == pytest.approx(float(kept.double().mean()))
        if kept.any():
            assert row["agreement"] == pytest.approx(float(equal[kept].double().mean()))
    assert [row["delta"] for row in report["confident"]] == [0.05, 0.3]
    assert [row["delta"] for row in report["curve"]] == list(CURVE_DELTAS)
    worst_name, ref_labels, cand_labels = comparison.worst
    assert (ref_labels == cand_labels).mean() == pytest.approx(report["labels"]["agreement_min_image"])
    assert report["labels"]["worst_image"] == worst_name


def test_comparisons_that_mean_nothing_are_refused(random_model: FPSeg) -> None:
    reference, candidate = pipelines(random_model, "fp32")
    other = FPSeg(random_model.model, make_bank(random_model, TINY_CLASSES, seed=9))
    with pytest.raises(ValueError, match="different prompt banks"):
        PrecisionComparison(reference, other)
    with pytest.raises(ValueError, match="fuse labels differently"):
        PrecisionComparison(reference, FPSeg(random_model.model, reference.bank, fusion="priority"))
    for deltas in ([-0.1], [math.inf]):
        with pytest.raises(ValueError, match="finite logit margins >= 0"):
            PrecisionComparison(reference, candidate, deltas=deltas)
    with pytest.raises(ValueError, match="compared twice"):
        PrecisionComparison(reference, candidate, [1, 1])
    with pytest.raises(ValueError, match="letterboxes differently"):
        PrecisionComparison(reference, FPSeg(random_model.model, reference.bank, input_mode="letterbox"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        network = FPSeg.random(tiny_config("mobilesam", n_classes=4, prompt_size=4, img_size=128), seed=11)
    with pytest.raises(ValueError, match="different networks"):
        PrecisionComparison(reference, FPSeg(network.model, reference.bank, force_bank=True))
    with pytest.raises(ValueError, match="no image was compared"):
        PrecisionComparison(reference, candidate).report()


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny random network `--random-weights` loads, its fp32 export, an int8 folder and a few images."""
    pytest.importorskip("openvino", reason="the int8 folder needs openvino: pip install 'fpseg_ros[openvino]'")
    pytest.importorskip("nncf", reason="the int8 folder needs nncf: pip install 'fpseg_ros[openvino]'")
    root = tmp_path_factory.mktemp("compare_precision")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        model = FPSeg.random(tiny_config("mobilesam"))  # what load_model builds for --random-weights
    export_onnx(model.model, tiny_config("mobilesam"), root / "export")
    image_dir = root / "images"
    image_dir.mkdir()
    for i, image in enumerate(images(3, seed=4)):
        Image.fromarray(image).save(image_dir / f"frame_{i}.png")
    assert fpseg_main(["quantize", "--onnx", str(root / "export"), "--calibration", *map(str, image_dir.iterdir()),
                       "--out", str(root / "int8"), "--decoder", "int8"]) == 0
    return {"root": root, "export": root / "export", "int8": root / "int8", "images": image_dir}


def compare(folders: dict[str, Path], name: str, *options: str) -> int:
    out = folders["root"] / name
    return fpseg_main(["compare-precision", str(folders["images"]), "--random-weights", "--json", f"{out}.json",
                       "--plot", f"{out}.png", *options])


def test_onnxruntime_against_torch_agrees(folders: dict[str, Path]) -> None:
    assert compare(folders, "ort", "--backend", "onnxruntime", "--engine-dir", str(folders["export"])) == 0
    report = json.loads((folders["root"] / "ort.json").read_text())
    assert report["candidate"] == {"backend": "onnxruntime", "dtype": "fp32", "engine_dir": str(folders["export"])}
    assert report["reference"]["backend"] == "torch" and report["images"] == 3
    assert report["embedding"]["rel_l2_max"] < 1e-4 and report["labels"]["agreement"] > 0.999


def test_int8_against_onnxruntime_fp32(folders: dict[str, Path], capsys: pytest.CaptureFixture) -> None:
    assert compare(folders, "int8", "--backend", "openvino", "--dtype", "int8", "--engine-dir",
                   str(folders["int8"]), "--reference", "onnxruntime", "--reference-engine-dir",
                   str(folders["export"]), "--deltas", "0.2,1") == 0
    report = json.loads((folders["root"] / "int8.json").read_text())
    assert report["candidate"]["precision"] == {"encoder": "int8", "decoder": "int8"}
    assert report["reference"] == {"backend": "onnxruntime", "dtype": "fp32", "engine_dir": str(folders["export"])}
    assert report["embedding"]["rel_l2_mean"] > 1e-3  # quantization is not free
    assert [row["delta"] for row in report["confident"]] == [0.2, 1.0]
    out = capsys.readouterr().out
    assert "openvino int8 against onnxruntime fp32 on 3 image(s)" in out and "where the reference's margin > 1" in out
    with Image.open(folders["root"] / "int8.png") as plot:
        assert plot.format == "PNG" and plot.width > 600


def test_outputs_and_arguments_are_checked_before_any_work(folders: dict[str, Path],
                                                           capsys: pytest.CaptureFixture) -> None:
    existing = folders["root"] / "existing.json"
    existing.write_text("keep me")
    assert fpseg_main(["compare-precision", str(folders["images"]), "--random-weights", "--dtype", "bf16",
                       "--json", str(existing)]) == 2
    assert "exists" in capsys.readouterr().err and existing.read_text() == "keep me"
    cases = [
        (["--reference", "openvino"], "needs --reference-engine-dir"),
        (["--deltas", "0.1,x"], "--deltas must be comma-separated numbers"),
        (["--deltas", "-1"], "--deltas must list finite deltas >= 0"),
        (["--deltas", "inf"], "--deltas must list finite deltas >= 0"),
        (["--reference-engine-dir", str(folders["export"])], "--reference-engine-dir is the folder --reference"),
        (["--dtype", "fp32", "--backend", "onnxruntime", "--engine-dir", str(folders["export"]), "--reference",
          "onnxruntime", "--reference-engine-dir", str(folders["export"])], "is the reference (onnxruntime fp32)"),
        (["--plot", str(folders["root"] / "refused.json")], "--plot and --json are the same file"),
    ]
    assert compare(folders, "refused") == 2  # torch fp32 against torch fp32
    assert "is the reference (torch fp32)" in capsys.readouterr().err
    for options, message in cases:
        assert compare(folders, "refused", "--dtype", "bf16", *options) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    empty = folders["root"] / "empty"
    empty.mkdir()
    assert fpseg_main(["compare-precision", str(empty), "--random-weights", "--dtype", "bf16", "--json",
                       str(empty / "r.json")]) == 2
    assert "holds no .png/.jpg/.jpeg image" in capsys.readouterr().err
    image = next(folders["images"].iterdir())
    assert fpseg_main(["compare-precision", str(image), "--random-weights", "--dtype", "bf16", "--json",
                       str(image), "--overwrite"]) == 2
    assert "is also an input" in capsys.readouterr().err
    assert not (folders["root"] / "refused.json").exists()
