"""`fpseg train-regions` and `fpseg eval-regions` end to end on synthetic coloured polygons: learning, resume,
the RoofSAM-format output, the report, the annotation formats, and a two-process torchrun run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from region_workspace import make_region_dataset, save_tiny_sam, tiny_sam_architecture
from training_workspace import fpseg, read_log

from fpseg_core.regions.dataset import class_names_for, open_region_dataset, read_annotations
from fpseg_core.regions.loader import load_decoder
from fpseg_core.regions.training import class_weights
from fpseg_core.training.bookkeeping import load_state

REPO = Path(__file__).resolve().parent.parent
QUICK = ["--points-per-region", "4", "--batch-size", "4", "--lr", "0.001", "--log-every", "1", "--min-samples", "3",
         "--no-progress"]


class Workspace:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.annotations = make_region_dataset(root / "data")
        self.sam = save_tiny_sam(root / "sam_tiny.pth")
        self.args = ["--data", root / "data", "--annotations", self.annotations, "--checkpoint", self.sam, *QUICK]


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory):
    with tiny_sam_architecture():
        yield Workspace(tmp_path_factory.mktemp("regions"))


@pytest.fixture(scope="module")
def trained(ws: Workspace) -> Path:
    """5 epochs of 4 steps, the split encoded on the fly into <out>/embeddings."""
    out = ws.root / "run"
    assert fpseg("train-regions", *ws.args, "--out", out, "--epochs", "5") == 0
    return out


def losses(out: Path) -> list[float]:
    return [float(row["loss"]) for row in read_log(out / "train_log.csv")]


def test_training_learns_and_writes_a_roofsam_decoder(ws: Workspace, trained: Path) -> None:
    history = losses(trained)
    assert len(history) == 20
    assert np.mean(history[-4:]) < np.mean(history[:4]) - 0.05
    assert (trained / "embeddings" / "manifest.json").is_file()
    names = json.loads((trained / "decoder.classes.json").read_text())
    assert names == ["blue", "other", "red"]  # the one green polygon is rare: "other"
    decoder = load_decoder(trained / "decoder.pt")
    assert decoder.n_classes == 3
    state = torch.load(trained / "decoder.pt", weights_only=True)
    assert "class_pred_mlp.layers.2.weight" in state and not any(k.startswith("mask_decoder.") for k in state)
    validations = read_log(trained / "val_log.csv")
    assert [int(r["step"]) for r in validations] == [4, 8, 12, 16, 20]
    assert json.loads((trained / "validation" / "results.json").read_text())["n_regions"] == 4
    assert load_state(trained / "state.pt")["step"] == 20


def test_resume_continues_the_run_exactly(ws: Workspace, trained: Path) -> None:
    out = ws.root / "resumed"
    embeddings = ["--embeddings", trained / "embeddings"]
    assert fpseg("train-regions", *ws.args, *embeddings, "--out", out, "--epochs", "5", "--max-steps", "8") == 0
    assert fpseg("train-regions", *ws.args, *embeddings, "--out", out, "--epochs", "5") == 2  # refused
    assert fpseg("train-regions", *ws.args, *embeddings, "--out", out, "--epochs", "5", "--resume") == 0
    assert [int(r["step"]) for r in read_log(out / "train_log.csv")] == list(range(1, 21))
    assert losses(out) == pytest.approx(losses(trained), rel=1e-4)
    torch.testing.assert_close(torch.load(out / "decoder.pt", weights_only=True),
                               torch.load(trained / "decoder.pt", weights_only=True))


def test_eval_reports_macro_f1_and_refuses_an_existing_report(ws: Workspace, trained: Path, capsys) -> None:
    out = ws.root / "eval"
    args = ["eval-regions", "--data", ws.root / "data", "--annotations", ws.annotations, "--checkpoint", ws.sam,
            "--decoder", trained / "decoder.pt", "--embeddings", trained / "embeddings", "--subset", "val",
            "--no-progress", "--out", out]
    assert fpseg(*args) == 0
    assert "region macro F1" in capsys.readouterr().out
    result = json.loads((out / "results.json").read_text())
    assert result["n_regions"] == 4 and 0.0 <= result["macro_f1"] <= 1.0
    assert set(result["per_class_f1"]) == {"blue", "other", "red"}
    assert np.trace(result["confusion"]["matrix"]) / 4 == pytest.approx(result["accuracy"])
    assert "Macro F1" in (out / "results.md").read_text()
    assert (out / "confusion.png").is_file()
    assert fpseg(*args) == 2
    assert "exists" in capsys.readouterr().err
    assert fpseg(*args, "--subset", "all", "--overwrite") == 0
    assert json.loads((out / "results.json").read_text())["n_regions"] == 19


def test_geojson_folders_read_like_the_mapping_file(ws: Workspace, tmp_path: Path) -> None:
    mapping = json.loads(ws.annotations.read_text())
    folder = tmp_path / "geojson"
    folder.mkdir()
    for name, regions in mapping.items():
        features = [{"type": "Feature", "properties": {"class": r["class"]},
                     "geometry": {"type": "Polygon", "coordinates": [r["polygon"]]}} for r in regions]
        (folder / f"{Path(name).stem}.geojson").write_text(json.dumps({"type": "FeatureCollection",
                                                                        "features": features}))
    a = open_region_dataset(ws.root / "data", "train", ws.annotations)
    b = open_region_dataset(ws.root / "data", "train", folder)
    assert [(r.frame, r.label) for r in a.regions] == [(r.frame, r.label) for r in b.regions]
    (tmp_path / "bad.json").write_text(json.dumps({"nowhere.png": []}))
    with pytest.raises(ValueError, match="not in the split"):
        read_annotations(tmp_path / "bad.json", a.frames)


def test_rare_classes_become_other_and_weights_are_inverse_frequencies() -> None:
    names, mapping = class_names_for(["b", "a", "a", "c", "b", "a"], min_samples=2)
    assert names == ["a", "b", "other"] and mapping["c"] == "other"
    torch.testing.assert_close(class_weights(np.array([0, 0, 0, 1]), 3), torch.tensor([4 / 9, 4 / 3, 0.0]))


@pytest.mark.slow
def test_two_process_torchrun_training_completes(ws: Workspace, trained: Path) -> None:
    out = ws.root / "ddp"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    args = ["train-regions", *ws.args, "--embeddings", trained / "embeddings", "--max-steps", "2", "--out", out]
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
               "-m", "fpseg_core.cli.main", *map(str, args)]
    completed = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    assert completed.stdout.count("decoder.pt") == 1  # rank 0 reports, once
    assert load_state(out / "state.pt")["step"] == 2
    assert load_decoder(out / "decoder.pt").n_classes == 3
