"""End to end on a synthetic Cityscapes set: precompute -> train -> eval, resume, prompt transfer, distill."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from training_workspace import (
    CLASSES,
    IMG_SIZE,
    QUICK_TRAIN,
    Workspace,
    fpseg,
    make_workspace,
    read_log,
    tiny_checkpoint,
)

from fpseg_core import FPSeg, PromptBank, decoder_fingerprint, load_checkpoint
from fpseg_core.data.base import read_rgb
from fpseg_core.data.embeddings import EmbeddingStore
from fpseg_core.preprocess import preprocess
from fpseg_core.training.bookkeeping import load_state


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    return make_workspace(tmp_path_factory.mktemp("training"))


@pytest.fixture(scope="module")
def trained(ws: Workspace) -> Path:
    """A prompt-tuning run of 9 steps (3 epochs) with validation after every epoch."""
    out = ws.root / "run"
    assert fpseg("train", "--data", ws.data, "--checkpoint", ws.checkpoint, "--embeddings", ws.embeddings,
                 "--out", out, "--classes", *CLASSES, "--epochs", "3", *QUICK_TRAIN) == 0
    return out


def losses(out: Path) -> list[float]:
    return [float(row["loss"]) for row in read_log(out / "train_log.csv")]


def test_precompute_writes_the_encoder_output_and_resumes(ws: Workspace, capsys) -> None:
    store = EmbeddingStore.open(ws.embeddings)
    assert store.header.encoder == "mobilesam" and store.header.img_size == IMG_SIZE
    assert len(store.files["train"]) == 6 and len(store.files["val"]) == 6
    key = store.files["val"][2]
    model = load_checkpoint(ws.checkpoint).model
    image = read_rgb(ws.data / "leftImg8bit" / "val" / f"{key}_leftImg8bit.png")
    with torch.no_grad():
        expected = model.encode(preprocess(image, IMG_SIZE)[0])[0]
    torch.testing.assert_close(store.read("val", key), expected)

    files = sorted(ws.embeddings.glob("*/*/*.safetensors"))
    stamps = {p: p.stat().st_mtime_ns for p in files}
    files[0].unlink()
    assert fpseg("precompute", "--data", ws.data, "--checkpoint", ws.checkpoint, "--out", ws.embeddings,
                 "--num-workers", "0", "--no-progress") == 0
    assert "5 of 6 images already encoded" in capsys.readouterr().err
    assert files[0].is_file()
    assert all(p.stat().st_mtime_ns == stamps[p] for p in files[1:])  # the others were skipped

    other = tiny_checkpoint(ws.root / "other.pth", seed=1)
    assert fpseg("precompute", "--data", ws.data, "--checkpoint", other, "--out", ws.embeddings,
                 "--no-progress") == 2
    assert "already holds embeddings computed differently" in capsys.readouterr().err


def test_training_learns_and_writes_a_bank_that_fits_the_model(ws: Workspace, trained: Path) -> None:
    history = losses(trained)
    assert len(history) == 9
    assert np.mean(history[-3:]) < np.mean(history[:3]) - 0.01
    validations = read_log(trained / "val_log.csv")
    assert [int(r["step"]) for r in validations] == [3, 6, 9]
    best = max(float(r["binary_iou"]) for r in validations)

    bank = PromptBank.load(trained / "prompts.safetensors")
    assert bank.names == CLASSES and bank.prompt_size == 4
    assert float(bank.extra["best_binary_iou"]) == pytest.approx(best, abs=1e-6)
    model = FPSeg.from_checkpoint(ws.checkpoint, prompts=bank)  # the fingerprint check passes
    assert bank.decoder_fingerprint == model.fingerprint
    labels = model.predict(read_rgb(next((ws.data / "leftImg8bit" / "val").glob("*/*.png"))))
    assert labels.shape == (32, 64)
    report = json.loads((trained / "validation" / "results.json").read_text())
    assert set(report["binary_iou"]["per_class"]) == set(CLASSES)
    state = torch.load(trained / "state.pt", weights_only=True)
    assert state["step"] == 9 and state["classes"] == CLASSES


def test_resume_continues_from_the_saved_step(ws: Workspace) -> None:
    common = ["--data", ws.data, "--checkpoint", ws.checkpoint, "--embeddings", ws.embeddings, "--classes",
              *CLASSES, "--val-every", "0", *QUICK_TRAIN]
    straight, split = ws.root / "straight", ws.root / "split"
    assert fpseg("train", *common, "--out", straight, "--max-steps", "6") == 0
    assert fpseg("train", *common, "--out", split, "--max-steps", "4") == 0  # stops mid-epoch 2
    assert load_state(split / "state.pt")["step"] == 4
    assert fpseg("train", *common, "--out", split, "--max-steps", "6") == 2  # no silent overwrite
    assert fpseg("train", *common, "--out", split, "--max-steps", "6", "--resume") == 0

    assert [int(r["step"]) for r in read_log(split / "train_log.csv")] == [1, 2, 3, 4, 5, 6]
    assert losses(split) == pytest.approx(losses(straight), rel=1e-5)
    resumed, uninterrupted = load_state(split / "state.pt"), load_state(straight / "state.pt")
    assert resumed["step"] == 6
    torch.testing.assert_close(resumed["prompts"], uninterrupted["prompts"])
    assert fpseg("train", *common[:-len(QUICK_TRAIN)], "--classes", "road", *QUICK_TRAIN, "--out", split,
                 "--resume") == 2  # another run's state is refused


def test_pos_weight_scales_the_loss_of_the_class_pixels(ws: Workspace, capsys) -> None:
    """The first step's loss (same batch, same initial prompts) is BCE + (pos_weight - 1) x the positive
    pixels' term: linear in pos_weight, and pos_weight 1 is the paper's plain BCE."""
    common = ["--data", ws.data, "--checkpoint", ws.checkpoint, "--embeddings", ws.embeddings, "--classes",
              *CLASSES, "--val-every", "0", "--max-steps", "1", *QUICK_TRAIN]
    first = {}
    for weight in ("1", "3", "5"):
        out = ws.root / f"pos_weight_{weight}"
        assert fpseg("train", *common, "--out", out, "--pos-weight", weight) == 0
        first[weight] = losses(out)[0]
    assert fpseg("train", *common, "--out", ws.root / "plain") == 0
    assert losses(ws.root / "plain")[0] == first["1"]
    assert first["3"] > first["1"] + 1e-3
    assert first["5"] - first["1"] == pytest.approx(2 * (first["3"] - first["1"]), rel=1e-4)
    capsys.readouterr()
    assert fpseg("train", *common, "--out", ws.root / "pos_weight_0", "--pos-weight", "0") == 2
    assert "pos_weight must be a positive number" in capsys.readouterr().err


def test_prompt_transfer_adds_a_class_to_a_deployed_bank(ws: Workspace, trained: Path, capsys) -> None:
    base = PromptBank.load(trained / "prompts.safetensors").subset(["road", "sky"])
    base.save(ws.root / "deployed.safetensors")
    out = ws.root / "transfer"
    assert fpseg("train", "--data", ws.data, "--checkpoint", ws.checkpoint, "--embeddings", ws.embeddings,
                 "--new-classes", "vegetation", "--bank", ws.root / "deployed.safetensors", "--out", out,
                 "--max-steps", "3", *QUICK_TRAIN) == 0
    merged = PromptBank.load(out / "prompts.safetensors")
    assert merged.names == ["road", "sky", "vegetation"]
    torch.testing.assert_close(merged.embeddings[:2], base.embeddings)  # deployed rows untouched
    assert merged.decoder_fingerprint == base.decoder_fingerprint
    model = FPSeg.from_checkpoint(ws.checkpoint, prompts=merged)
    image = read_rgb(next((ws.data / "leftImg8bit" / "val").glob("*/*.png")))
    assert set(np.unique(model.predict(image, classes=["vegetation", "road"])).tolist()) <= {0, 1, 3}

    assert fpseg("train", "--data", ws.data, "--checkpoint", ws.checkpoint, "--embeddings", ws.embeddings,
                 "--new-classes", "road", "--bank", ws.root / "deployed.safetensors", "--out", ws.root / "x") == 2
    assert "already in" in capsys.readouterr().err
    foreign = PromptBank(base.names, base.embeddings, base.encoder, "0123456789abcdef", "other decoder")
    foreign.save(ws.root / "foreign.safetensors")
    assert fpseg("train", "--data", ws.data, "--checkpoint", ws.checkpoint, "--embeddings", ws.embeddings,
                 "--new-classes", "car", "--bank", ws.root / "foreign.safetensors", "--out", ws.root / "y") == 2
    assert "was tuned for decoder 0123456789abcdef" in capsys.readouterr().err


def test_prompt_transfer_from_a_custom_mask_dataset(ws: Workspace, trained: Path) -> None:
    """New class 'parked car' from plain images + binary masks, merged into the Cityscapes bank."""
    custom = ws.root / "custom"
    for split in ("train", "val"):
        for image_path in sorted((ws.data / "leftImg8bit" / split).glob("*/*.png")):
            stem = image_path.name.replace("_leftImg8bit.png", "")
            (custom / "images" / split).mkdir(parents=True, exist_ok=True)
            shutil.copy(image_path, custom / "images" / split / f"{stem}.png")
            label = np.array(Image.open(next((ws.data / "gtFine" / split).glob(f"*/{stem}_gtFine_labelIds.png"))))
            if (label == 26).any():
                (custom / "masks" / split / "parked car").mkdir(parents=True, exist_ok=True)
                Image.fromarray(((label == 26) * 255).astype(np.uint8)).save(
                    custom / "masks" / split / "parked car" / f"{stem}.png")
    embeddings = ws.root / "custom_embeddings"
    assert fpseg("precompute", "--dataset", "custom", "--data", custom, "--checkpoint", ws.checkpoint,
                 "--out", embeddings, "--num-workers", "0", "--no-progress") == 0
    out = ws.root / "custom_transfer"
    assert fpseg("train", "--dataset", "custom", "--data", custom, "--checkpoint", ws.checkpoint,
                 "--embeddings", embeddings, "--new-classes", "parked car", "--bank", trained / "prompts.safetensors",
                 "--out", out, "--max-steps", "2", *QUICK_TRAIN) == 0
    merged = PromptBank.load(out / "prompts.safetensors")
    assert merged.names == [*CLASSES, "parked car"]
    FPSeg.from_checkpoint(ws.checkpoint, prompts=merged).predict(np.zeros((16, 16, 3), np.uint8),
                                                                  classes=["parked car"])


def test_decoder_fine_tuning_writes_a_full_checkpoint(ws: Workspace) -> None:
    out = ws.root / "decoder"
    assert fpseg("train", "--data", ws.data, "--checkpoint", ws.checkpoint, "--embeddings", ws.embeddings,
                 "--classes", "road", "car", "--train-decoder", "--max-steps", "2", "--val-every", "0", "--out", out,
                 *QUICK_TRAIN) == 0
    loaded = load_checkpoint(out / "checkpoint.pth")
    bank = PromptBank.load(out / "prompts.safetensors")
    assert loaded.bank.names == bank.names == ["road", "car"]
    torch.testing.assert_close(loaded.bank.embeddings, bank.embeddings)
    frozen = decoder_fingerprint(load_checkpoint(ws.checkpoint).model.state_dict())
    assert loaded.fingerprint == bank.decoder_fingerprint != frozen  # the decoder changed, the bank follows it
    FPSeg.from_checkpoint(out / "checkpoint.pth").predict(np.zeros((8, 8, 3), np.uint8))


def test_eval_reports_both_metrics_consistently(ws: Workspace, trained: Path) -> None:
    out = ws.root / "eval"
    assert fpseg("eval", "--data", ws.data, "--checkpoint", ws.checkpoint, "--prompts",
                 trained / "prompts.safetensors", "--embeddings", ws.embeddings, "--samples-per-class", "8",
                 "--save-predictions", "--out", out, "--num-workers", "0", "--no-progress") == 0
    result = json.loads((out / "results.json").read_text())
    assert result["n_images"] == 6 and set(result["class_iou"]) >= {"road", "car", "bicycle"}
    assert result["class_iou"]["bicycle"] is None  # not in the data: NaN, left out of the mean
    assert result["binary_iou"]["samples_per_class"] == dict.fromkeys(CLASSES, 8)
    assert (out / "confusion.png").is_file() and "binary IoU" in (out / "results.md").read_text()

    # the saved label images score the same with eval-labels (the cityscapesScripts-compatible path)
    assert fpseg("eval-labels", "--gt", ws.data, "--pred", out / "predictions", "--out", ws.root / "again",
                 "--no-progress") == 0
    again = json.loads((ws.root / "again" / "results.json").read_text())
    assert again["miou"] == pytest.approx(result["miou"]) and again["class_iou"] == result["class_iou"]

    # without --embeddings the split is encoded first; the numbers do not change
    fresh = ws.root / "eval_fresh"
    assert fpseg("eval", "--data", ws.data, "--checkpoint", ws.checkpoint, "--prompts",
                 trained / "prompts.safetensors", "--samples-per-class", "8", "--out", fresh, "--num-workers", "0",
                 "--no-progress") == 0
    fresh_result = json.loads((fresh / "results.json").read_text())
    assert fresh_result["miou"] == pytest.approx(result["miou"])
    assert fresh_result["binary_iou"]["per_class"] == pytest.approx(result["binary_iou"]["per_class"])


def test_train_refuses_missing_or_unsuitable_embeddings(ws: Workspace, tmp_path: Path, capsys) -> None:
    partial = tmp_path / "partial"
    assert fpseg("precompute", "--data", ws.data, "--checkpoint", ws.checkpoint, "--out", partial, "--splits",
                 "train", "--num-workers", "0", "--no-progress") == 0
    assert fpseg("train", "--data", ws.data, "--checkpoint", ws.checkpoint, "--embeddings", partial, "--out",
                 tmp_path / "run", *QUICK_TRAIN) == 2
    assert "6 image(s) of split 'val' have no embedding" in capsys.readouterr().err
    letterboxed = tmp_path / "letterboxed"
    assert fpseg("precompute", "--data", ws.data, "--checkpoint", ws.checkpoint, "--out", letterboxed, "--splits",
                 "train", "--input-mode", "letterbox", "--num-workers", "0", "--no-progress") == 0
    assert fpseg("train", "--data", ws.data, "--checkpoint", ws.checkpoint, "--embeddings", letterboxed, "--out",
                 tmp_path / "run", *QUICK_TRAIN) == 2
    assert "precompute with --input-mode squash" in capsys.readouterr().err
    other = tiny_checkpoint(tmp_path / "other.pth", seed=3)
    assert fpseg("train", "--data", ws.data, "--checkpoint", other, "--embeddings", ws.embeddings, "--out",
                 tmp_path / "run", *QUICK_TRAIN) == 2
    assert "precompute with the same checkpoint" in capsys.readouterr().err


def test_distillation_on_the_fly_and_from_teacher_embeddings(ws: Workspace) -> None:
    teacher = tiny_checkpoint(ws.root / "teacher.pth", encoder="vit_b", seed=4)
    student = ws.root / "tiny.pth"
    quick = ["--batch-size", "4", "--lr", "0.01", "--log-every", "1", "--num-workers", "0", "--no-progress"]
    out = ws.root / "distill"
    assert fpseg("distill", "--data", ws.data, "--teacher", teacher, "--student", student, "--out", out,
                 "--epochs", "2", *quick) == 0
    validations = read_log(out / "val_log.csv")
    assert [int(r["step"]) for r in validations] == [2, 4]
    distilled = load_checkpoint(out / "checkpoint.pth")
    assert distilled.config.encoder == "mobilesam"
    assert distilled.fingerprint == load_checkpoint(teacher).fingerprint  # teacher banks fit
    assert float(validations[-1]["val_mse"]) < float(validations[0]["val_mse"])

    teacher_embeddings = ws.root / "teacher_embeddings"
    assert fpseg("precompute", "--data", ws.data, "--checkpoint", teacher, "--out", teacher_embeddings,
                 "--num-workers", "0", "--no-progress") == 0
    out = ws.root / "distill_precomputed"
    common = ["--data", ws.data, "--teacher", teacher, "--teacher-embeddings", teacher_embeddings, "--student",
              student, "--out", out, *quick]
    assert fpseg("distill", *common, "--max-steps", "3") == 0
    assert fpseg("distill", *common, "--max-steps", "5", "--resume") == 0
    assert [int(r["step"]) for r in read_log(out / "train_log.csv")] == [1, 2, 3, 4, 5]
    assert load_state(out / "state.pt")["step"] == 5
    assert fpseg("distill", *common[:-len(quick) - 2], "--teacher-embeddings", ws.embeddings, "--out",
                 ws.root / "z", *quick) == 2  # embeddings of another encoder are refused
