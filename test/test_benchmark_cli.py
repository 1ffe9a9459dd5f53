"""`fpseg benchmark` on a tiny random network: the sweep runs, the JSON and the PNG plot are written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from fpseg_core.cli.benchmark import per_class_cost
from fpseg_core.cli.main import main as fpseg_main

STAGES = {"preprocess", "encoder", "decoder", "postprocess", "total"}


def run_sweep(tmp_path: Path, *extra: str) -> dict:
    out_json, out_png = tmp_path / "bench.json", tmp_path / "bench.png"
    argv = ["benchmark", "--tiny", "--classes", "1,3", "--prompt-sizes", "4,8", "--height", "48", "--width", "80",
            "--repeats", "2", "--warmup", "1", "--json", str(out_json), "--plot", str(out_png), *extra]
    assert fpseg_main(argv) == 0
    with Image.open(out_png) as plot:
        assert plot.format == "PNG" and plot.size[0] > 400 and plot.size[1] > 300
    return json.loads(out_json.read_text())


def test_sweep_writes_json_and_plot_with_baseline(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    report = run_sweep(tmp_path, "--backend", "torch")
    printed = capsys.readouterr()
    assert "random weights" in printed.err and "random weights" in report["meta"]["weights"]
    assert report["meta"]["backend"] == "torch" and report["meta"]["image"] == [48, 80]
    assert [(r["prompt_size"], r["classes"]) for r in report["results"]] == [(4, 1), (4, 3), (8, 1), (8, 3)]
    for result in report["results"]:
        for pipeline in ("fast", "baseline"):
            assert set(result[pipeline]) == STAGES
            assert all(0 < v["median_ms"] <= v["p95_ms"] for v in result[pipeline].values())
        assert result["speedup"] == pytest.approx(
            result["baseline"]["total"]["median_ms"] / result["fast"]["total"]["median_ms"])
        assert 0.99 <= result["labels_equal_fraction"] <= 1.0
    assert set(report["per_class_ms"]) == {"4", "8"}
    assert "fast_over_baseline" in report["per_class_ms"]["4"]
    assert "cost of one more class" in printed.out and "fast/baseline" in printed.out


def test_sweep_without_baseline_on_onnxruntime(tmp_path: Path) -> None:
    """Random weights on ONNX Runtime: the benchmark exports the very network it times."""
    report = run_sweep(tmp_path, "--backend", "onnxruntime", "--no-baseline", "--prompt-sizes", "4")
    assert report["meta"]["backend"] == "onnxruntime" and report["meta"]["baseline"] is None
    assert all("baseline" not in r and "speedup" not in r for r in report["results"])
    assert set(report["per_class_ms"]["4"]) == {"fast"}


def test_per_class_cost_is_the_least_squares_slope() -> None:
    assert per_class_cost([1, 2, 5], [10.0, 12.0, 18.0]) == pytest.approx(2.0)
    assert per_class_cost([19], [100.0]) is None


def test_bad_class_lists_are_explained(capsys: pytest.CaptureFixture) -> None:
    assert fpseg_main(["benchmark", "--tiny", "--classes", "1,x"]) == 2
    assert "--classes must be comma-separated integers" in capsys.readouterr().err


def test_checkpoint_sweep_uses_its_bank_and_refuses_other_prompt_sizes(tiny_checkpoint: Path, tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture) -> None:
    common = ["benchmark", "--checkpoint", str(tiny_checkpoint), "--backend", "torch", "--height", "40",
              "--width", "60", "--repeats", "1", "--warmup", "0"]
    assert fpseg_main([*common, "--classes", "1,4", "--prompt-sizes", "4", "--json", str(tmp_path / "b.json")]) == 0
    report = json.loads((tmp_path / "b.json").read_text())
    assert report["meta"]["weights"] == str(tiny_checkpoint) and report["meta"]["encoder"] == "mobilesam"
    assert [r["classes"] for r in report["results"]] == [1, 4]
    assert fpseg_main([*common, "--classes", "1,5", "--prompt-sizes", "4"]) == 2
    assert "the bank has 4 classes of prompt size 4" in capsys.readouterr().err
