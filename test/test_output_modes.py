"""Issue 16: every kind of file the project writes gets the mode a plain `open(path, "w")` gives under the umask.

safetensors and `tempfile.mkstemp` create files 0600 whatever the umask, so without care a bank written under
umask 022 is unreadable to the ROS node running as another user. Each writer below runs under umask 022 and
077 and every file it leaves must have mode 0o666 & ~umask. Engines need TensorRT and a GPU, so they
are not covered here.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from synthetic_data import make_synthetic_cityscapes

from fpseg_core import PromptBank, build_fpseg, save_checkpoint, tiny_config
from fpseg_core.cli.main import main
from fpseg_core.data.embeddings import EmbeddingHeader, EmbeddingStore
from fpseg_core.evaluation.metrics import CityscapesConfusion, write_report
from fpseg_core.jobs.options import save_config
from fpseg_core.training.bookkeeping import save_state
from fpseg_core.training.config import TrainConfig

UMASKS = (0o022, 0o077)


def bank(out: Path) -> None:
    PromptBank(["road", "car"], torch.randn(2, 4, 256), "mobilesam", "abc", source="test").save(
        out / "bank.safetensors")
    assert PromptBank.load(out / "bank.safetensors").names == ["road", "car"]


def checkpoint(out: Path) -> None:
    config = tiny_config("mobilesam", n_classes=2, prompt_size=4, img_size=64)
    save_checkpoint(build_fpseg(config), config, ["road", "car"], out / "checkpoint.pth")


def training_state(out: Path) -> None:
    save_state(out / "state.pt", {"step": 3, "prompts": torch.zeros(2, 4)})
    save_config(TrainConfig(), out / "config.yaml")


def report(out: Path) -> None:
    confusion = CityscapesConfusion()
    confusion.update(np.full((4, 4), 7, np.uint8), np.full((4, 4), 7, np.uint8))
    assert {p.name for p in write_report(confusion.result(), out, "modes")} == {
        "results.json", "results.md", "confusion.png"}


def label_images(out: Path) -> None:
    image = out.parent / "frame.png"
    Image.fromarray(np.zeros((16, 24, 3), np.uint8)).save(image)
    assert main(["segment", str(image), "--random-weights", "--out", str(out)]) == 0


def embeddings(out: Path) -> None:
    store = EmbeddingStore.create(out, EmbeddingHeader("mobilesam", "abc", 64, "squash", "float16"))
    store.write("val", "city/frame", torch.ones(256, 4, 4))
    store.record("val", ["city/frame"])


def bag(out: Path) -> None:
    from fpseg_core.replay.bag_writer import list_cityscapes_frames, write_cityscapes_bag

    root = make_synthetic_cityscapes(out.parent / "cityscapes", splits=("val",), n_images=1, size=(16, 8))
    for storage in ("mcap", "sqlite3"):
        write_cityscapes_bag(list_cityscapes_frames(root, "val"), out / storage, storage, progress=False)


def benchmark(out: Path) -> None:
    assert main(["benchmark", "--tiny", "--classes", "1", "--prompt-sizes", "4", "--height", "16", "--width", "16",
                 "--repeats", "1", "--warmup", "0", "--no-baseline", "--json", str(out / "bench.json"),
                 "--plot", str(out / "bench.png")]) == 0


def onnx_export(out: Path) -> None:
    pytest.importorskip("onnx", reason="exports need onnx: pip install 'fpseg_ros[onnx]'")
    from fpseg_core.export.onnx_export import export_onnx

    config = tiny_config("mobilesam", n_classes=2, prompt_size=4, img_size=64)
    export_onnx(build_fpseg(config).eval(), config, out / "export")


WRITERS: dict[str, Callable[[Path], None]] = {f.__name__: f for f in (
    bank, checkpoint, training_state, report, label_images, embeddings, bag, benchmark, onnx_export)}


@pytest.fixture(params=UMASKS, ids=[f"umask{m:03o}" for m in UMASKS])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    previous = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(previous)


@pytest.mark.parametrize("kind", WRITERS)
def test_written_files_get_the_umask_mode(kind: str, umask: int, tmp_path: Path) -> None:
    if kind == "bag":
        pytest.importorskip("rosbags", reason="bags need rosbags: pip install 'fpseg_ros[bag]'")
    out = tmp_path / "out"
    out.mkdir()
    WRITERS[kind](out)
    files = sorted(p for p in out.rglob("*") if p.is_file())
    assert files, f"{kind} wrote nothing"
    modes = {str(p.relative_to(out)): f"{stat.S_IMODE(p.stat().st_mode):04o}" for p in files}
    assert modes == dict.fromkeys(modes, f"{0o666 & ~umask:04o}")
    assert not [p for p in files if p.name.endswith(".tmp")], "temporary files were left behind"
