"""`fpseg train` under torchrun: two CPU processes (gloo) train like one process with the same global batch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from training_workspace import CLASSES, QUICK_TRAIN, Workspace, fpseg, make_workspace, read_log

from fpseg_core import PromptBank
from fpseg_core.training.bookkeeping import load_state

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_two_process_torchrun_training_matches_one_process(tmp_path: Path) -> None:
    ws: Workspace = make_workspace(tmp_path)
    args = ["train", "--data", ws.data, "--checkpoint", ws.checkpoint, "--embeddings", ws.embeddings,
            "--classes", *CLASSES, "--max-steps", "4", *QUICK_TRAIN]
    ddp_out = tmp_path / "ddp"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
               "-m", "fpseg_core.cli.main", *map(str, args), "--out", str(ddp_out)]
    completed = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    assert completed.stdout.count("prompts.safetensors") == 1  # rank 0 reports, once

    written = sorted(p.name for p in ddp_out.iterdir())
    assert written == ["config.yaml", "prompts.safetensors", "state.pt", "train_log.csv", "val_log.csv",
                       "validation"]
    assert load_state(ddp_out / "state.pt")["step"] == 4
    assert [int(r["step"]) for r in read_log(ddp_out / "train_log.csv")] == [1, 2, 3, 4]

    single_out = tmp_path / "single"
    assert fpseg(*args, "--out", single_out) == 0
    ddp_losses = [float(r["loss"]) for r in read_log(ddp_out / "train_log.csv")]
    single_losses = [float(r["loss"]) for r in read_log(single_out / "train_log.csv")]
    assert ddp_losses == pytest.approx(single_losses, rel=1e-4)
    torch.testing.assert_close(load_state(ddp_out / "state.pt")["prompts"],
                               load_state(single_out / "state.pt")["prompts"], rtol=1e-4, atol=1e-4)
    assert PromptBank.load(ddp_out / "prompts.safetensors").names == CLASSES
