"""Issue 9, "no output is lost": every writing command refuses existing outputs unless --overwrite.

For each command: a first run writes its outputs; the same run again exits 2 naming --overwrite and leaves
every output byte for byte as it was; with --overwrite it succeeds. Plus the cases the issue reported:
`prompts extract X -o X` and `segment a/frame.png b/frame.png`.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from training_workspace import QUICK_TRAIN, Workspace, fpseg, make_workspace, read_log, tiny_checkpoint

Case = tuple[list[object], list[Path]]  # argv, the outputs it writes (files or folders)


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    return make_workspace(tmp_path_factory.mktemp("overwrite"))


def digests(outputs: list[Path]) -> dict[str, str]:
    """sha256 of every file of `outputs` (folders: every file under them, recursively)."""
    files = [f for p in outputs for f in ([p] if p.is_file() else sorted(p.rglob("*"))) if f.is_file()]
    return {str(f): hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


def image(path: Path, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (20, 28, 3), dtype=np.uint8)).save(path)
    return path


def segment(ws: Workspace, tmp: Path) -> Case:
    return ["segment", image(tmp / "frame.png", 0), "--random-weights", "--out", tmp / "seg"], [tmp / "seg"]


def prompts(ws: Workspace, tmp: Path) -> Case:
    return ["prompts", "extract", ws.checkpoint, "-o", tmp / "bank.safetensors"], [tmp / "bank.safetensors"]


def eval_labels(ws: Workspace, tmp: Path) -> Case:
    predictions = tmp / "predictions"
    for gt in (ws.data / "gtFine" / "val").glob("*/*_gtFine_labelIds.png"):
        predictions.mkdir(exist_ok=True)
        shutil.copy(gt, predictions / gt.name.replace("_gtFine_labelIds", "_pred_labelIds"))
    return ["eval-labels", "--gt", ws.data, "--pred", predictions, "--out", tmp / "report", "--no-progress"], \
        [tmp / "report"]


def eval_model(ws: Workspace, tmp: Path) -> Case:
    return ["eval", "--data", ws.data, "--checkpoint", ws.checkpoint, "--embeddings", ws.embeddings,
            "--samples-per-class", "2", "--out", tmp / "eval", "--num-workers", "0", "--no-progress"], [tmp / "eval"]


def eval_bag(ws: Workspace, tmp: Path) -> Case:
    pytest.importorskip("rosbags", reason="the replay tools need rosbags: pip install 'fpseg_ros[bag]'")
    from fpseg_core.replay.bag_writer import list_cityscapes_frames, write_cityscapes_bag

    bag = tmp / "bag"
    write_cityscapes_bag(list_cityscapes_frames(ws.data, "val", need_gt=True)[:2], bag, with_gt=True,
                         progress=False)
    return ["eval-bag", bag, "--checkpoint", ws.checkpoint, "--classes", "road,car", "--out", tmp / "bag_eval"], \
        [tmp / "bag_eval"]


def bag_from_cityscapes(ws: Workspace, tmp: Path) -> Case:
    pytest.importorskip("rosbags", reason="the replay tools need rosbags: pip install 'fpseg_ros[bag]'")
    return ["bag-from-cityscapes", ws.data, "--limit", "1", "--out", tmp / "bag"], [tmp / "bag"]


def train(ws: Workspace, tmp: Path) -> Case:
    return ["train", "--data", ws.data, "--checkpoint", ws.checkpoint, "--embeddings", ws.embeddings,
            "--classes", "road", "car", "--max-steps", "1", "--val-every", "0", *QUICK_TRAIN, "--out", tmp / "train"], \
        [tmp / "train"]


def distill(ws: Workspace, tmp: Path) -> Case:
    teacher = tiny_checkpoint(tmp / "teacher.pth", encoder="vit_b", seed=4)
    return ["distill", "--data", ws.data, "--teacher", teacher, "--student", ws.checkpoint, "--max-steps", "1",
            "--val-every", "0", "--batch-size", "2", "--num-workers", "0", "--no-progress", "--out",
            tmp / "distill"], [tmp / "distill"]


def benchmark(ws: Workspace, tmp: Path) -> Case:
    outputs = [tmp / "bench.json", tmp / "bench.png"]
    return ["benchmark", "--tiny", "--classes", "1", "--prompt-sizes", "4", "--height", "16", "--width", "16",
            "--repeats", "1", "--warmup", "0", "--no-baseline", "--json", outputs[0], "--plot", outputs[1]], outputs


def compare_precision(ws: Workspace, tmp: Path) -> Case:
    outputs = [tmp / "precision.json", tmp / "precision.png"]
    return ["compare-precision", image(tmp / "frame.png", 1), "--random-weights", "--dtype", "bf16", "--json",
            outputs[0], "--plot", outputs[1]], outputs


def synthetic_data(ws: Workspace, tmp: Path) -> Case:
    return ["synthetic-data", "textures", "--out", tmp / "proxy", "--classes", "2", "--train", "1", "--val", "1",
            "--test", "0", "--size", "24x32", "--no-progress"], [tmp / "proxy"]


CASES: dict[str, Callable[[Workspace, Path], Case]] = {f.__name__: f for f in (
    segment, prompts, eval_labels, eval_model, eval_bag, bag_from_cityscapes, train, distill, benchmark,
    compare_precision, synthetic_data)}


@pytest.mark.parametrize("name", CASES)
def test_second_run_is_refused_unless_overwrite(name: str, ws: Workspace, tmp_path: Path, capsys) -> None:
    argv, outputs = CASES[name](ws, tmp_path)
    assert fpseg(*argv) == 0
    first = digests(outputs)
    assert first, f"{name} wrote nothing"
    capsys.readouterr()
    assert fpseg(*argv) == 2
    error = capsys.readouterr().err
    assert f"fpseg {argv[0]}: error:" in error and "--overwrite" in error
    assert digests(outputs) == first  # nothing written, nothing removed
    assert fpseg(*argv, "--overwrite") == 0
    assert set(digests(outputs)) == set(first)


def test_train_overwrite_starts_over_and_resume_still_continues(ws: Workspace, tmp_path: Path, capsys) -> None:
    argv, (out,) = train(ws, tmp_path)
    assert fpseg(*argv) == 0
    assert fpseg(*argv, "--overwrite") == 0
    assert [int(r["step"]) for r in read_log(out / "train_log.csv")] == [1]  # the old log was not appended to
    assert fpseg(*argv[:-2], "--max-steps", "2", "--out", out, "--resume") == 0
    assert [int(r["step"]) for r in read_log(out / "train_log.csv")] == [1, 2]
    capsys.readouterr()
    assert fpseg(*argv, "--resume", "--overwrite") == 2
    assert "give only one" in capsys.readouterr().err
    (out / "state.pt").unlink()  # outputs without a state are still a previous run: not resumable, not reusable
    before = digests([out])
    assert fpseg(*argv, "--resume") == 2
    assert "--overwrite" in capsys.readouterr().err and digests([out]) == before


def test_extracting_a_checkpoint_onto_itself_is_always_refused(ws: Workspace, tmp_path: Path, capsys) -> None:
    checkpoint = Path(shutil.copy(ws.checkpoint, tmp_path / "victim.pth"))
    before = digests([checkpoint])
    for extra in ([], ["--overwrite"]):
        assert fpseg("prompts", "extract", checkpoint, "-o", checkpoint, *extra) == 2
        assert "is also an input" in capsys.readouterr().err
    assert digests([checkpoint]) == before


def test_segment_keeps_inputs_with_the_same_file_name_apart(tmp_path: Path, capsys) -> None:
    inputs = [image(tmp_path / "a" / "frame.png", 1), image(tmp_path / "b" / "frame.png", 2)]
    out = tmp_path / "out"
    assert fpseg("segment", *inputs, "--random-weights", "--out", out) == 0
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*.png"))
    assert written == [f"{folder}/frame_{kind}.png" for folder in "ab" for kind in ("color", "labels", "overlay")]
    overlays = [np.asarray(Image.open(out / folder / "frame_overlay.png"), dtype=float) for folder in "ab"]
    sources = [np.asarray(Image.open(path), dtype=float) for path in inputs]
    for own, other in ((0, 1), (1, 0)):  # each overlay shows its own image, not the other one
        assert np.abs(overlays[own] - sources[own]).mean() < np.abs(overlays[own] - sources[other]).mean()

    capsys.readouterr()
    assert fpseg("segment", inputs[0], inputs[0], "--random-weights", "--out", tmp_path / "twice") == 2
    assert "would both write" in capsys.readouterr().err and not (tmp_path / "twice").exists()


@pytest.mark.parametrize("command", ["segment", "eval_model", "train"])
def test_out_naming_a_file_is_a_clear_error(command: str, ws: Workspace, tmp_path: Path, capsys) -> None:
    argv, _ = CASES[command](ws, tmp_path)
    taken = tmp_path / "taken"
    taken.write_text("not a folder")
    argv[argv.index("--out") + 1] = taken
    assert fpseg(*argv) == 2
    assert "is a file, but a folder is expected" in capsys.readouterr().err
    assert taken.read_text() == "not a folder"
