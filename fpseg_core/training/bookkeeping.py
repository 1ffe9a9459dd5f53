"""What every training loop shares: deterministic batches, resumable state files, CSV / TensorBoard logs."""

from __future__ import annotations

import csv
import math
import pickle
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from ..files import OutputExistsError, atomic_write
from ..jobs.distributed import DistContext

STATE_FORMAT = "fpseg-train-state/1"
# File names every training command writes in its output folder.
CHECKPOINT_FILE = "checkpoint.pth"
STATE_FILE = "state.pt"
CONFIG_FILE = "config.yaml"
TRAIN_LOG_FILE = "train_log.csv"
VAL_LOG_FILE = "val_log.csv"
TENSORBOARD_DIR = "tensorboard"
# What run_training_loop and the commands' shared code write: a folder holding any of them holds a run.
RUN_OUTPUTS = (CONFIG_FILE, STATE_FILE, CHECKPOINT_FILE, TRAIN_LOG_FILE, VAL_LOG_FILE, TENSORBOARD_DIR)


def steps_per_epoch(n_items: int, batch_size: int) -> int:
    return max(1, math.ceil(n_items / batch_size))


def epoch_batches(n_items: int, batch_size: int, seed: int, epoch: int, rank: int = 0, world_size: int = 1,
                  first_step: int = 0) -> list[list[int]]:
    """This process's item indices for each step of an epoch, from step `first_step` on.

    The epoch's order is a permutation seeded by (seed, epoch); a step takes the next `batch_size` items
    (wrapping around, so every batch is full) and process r gets items r, r + world_size, ... of it.
    Same arguments, same batches: a resumed run sees exactly the data it would have seen.
    """
    if batch_size % world_size:
        raise ValueError(f"batch_size {batch_size} must be divisible by the number of processes {world_size}")
    order = np.random.default_rng([seed, epoch]).permutation(n_items)
    batches = []
    for step in range(first_step, steps_per_epoch(n_items, batch_size)):
        items = order[(step * batch_size + np.arange(batch_size)) % n_items]
        batches.append(items[rank::world_size].tolist())
    return batches


def save_state(path: Path, state: dict[str, Any]) -> Path:
    """Write a resume state (tensors and plain containers only, so weights_only loading reads it)."""
    return atomic_write(path, lambda tmp: torch.save({"format": STATE_FORMAT, **state}, tmp))


def load_state(path: Path) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as exc:
        raise ValueError(f"resume state {path} is unreadable ({exc}); delete it to start over") from exc
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise ValueError(f"{path} is not an fpseg training state; delete it or choose another --out")
    return state


def check_resumable(state: dict[str, Any], expected: dict[str, Any], path: Path) -> None:
    """Refuse to resume a state saved for another run (other classes, model or prompt size)."""
    differences = [f"{k}: saved {state.get(k)!r}, now {v!r}"
                   for k, v in expected.items() if state.get(k) != v]
    if differences:
        raise ValueError(
            f"cannot resume from {path}: it belongs to a different run ({'; '.join(differences)}); "
            "use another --out folder, or drop --resume to start over there"
        )


def claim_run_folder(out: Path, outputs: Sequence[str], resume: bool, overwrite: bool) -> bool:
    """Decide, before any work, what a run does with `out`; True when it resumes the run saved there.

    `outputs` are the names (files or folders) a run writes into `out`. A folder holding any of them holds
    a previous run: with `resume` and its state file that run continues; with `overwrite` it is replaced
    (see `clear_run_folder`); otherwise it is refused, so a finished run is never silently overwritten.
    """
    if resume and overwrite:
        raise ValueError("--resume continues the run in --out and --overwrite starts it over: give only one")
    if resume and (out / STATE_FILE).is_file():
        return True
    previous = [name for name in outputs if (out / name).exists()]
    if previous and not overwrite:
        hint = "pass --resume to continue it, " if (out / STATE_FILE).is_file() else ""
        raise OutputExistsError(f"{out} holds the outputs of a previous run ({', '.join(previous)}); {hint}"
                                "pass --overwrite to start over there (they are deleted), or choose another --out")
    return False


def clear_run_folder(out: Path, outputs: Sequence[str]) -> None:
    """Delete a previous run's `outputs` from `out`, so that a new run does not append to its logs."""
    for name in outputs:
        path = out / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


class MetricLog:
    """Rows appended to a CSV file (and, optionally, scalars to TensorBoard)."""

    def __init__(self, path: Path, columns: list[str], tensorboard_dir: Path | None = None) -> None:
        self.path = path
        self.columns = columns
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists() or path.stat().st_size == 0:
            with open(path, "w", newline="") as f:
                csv.writer(f).writerow(columns)
        self._writer = None
        if tensorboard_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as exc:
                raise ValueError("tensorboard logging needs the tensorboard package (pip install "
                                 "tensorboard), or set tensorboard: false (CSV logs are always "
                                 "written)") from exc
            self._writer = SummaryWriter(str(tensorboard_dir))
        self._start = time.perf_counter()

    def log(self, step: int, **values: float) -> None:
        row = {"step": step, "elapsed_s": round(time.perf_counter() - self._start, 3), **values}
        with open(self.path, "a", newline="") as f:
            csv.writer(f).writerow([row.get(c, "") for c in self.columns])
        if self._writer is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)) and key != "epoch":
                    self._writer.add_scalar(f"{self.path.stem}/{key}", value, step)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


def read_log(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@dataclass
class LoopSettings:
    """The schedule of a training loop (steps count over all processes: one step = one global batch)."""

    total_steps: int
    steps_per_epoch: int
    log_every: int
    save_every: int  # 0: save the state at epoch ends (and validations) only
    val_every: int  # epochs; 0: never validate
    metric: str  # name of the validation metric in val_log.csv
    higher_is_better: bool
    progress: bool = True
    tensorboard: bool = False


@dataclass
class LoopProgress:
    """Where a run stands; saved in the resume state."""

    step: int = 0
    best: float | None = None
    best_step: int = -1

    def improves(self, value: float, higher_is_better: bool) -> bool:
        if math.isnan(value):
            return False
        return self.best is None or (value > self.best if higher_is_better else value < self.best)


def run_training_loop(
    settings: LoopSettings,
    ctx: DistContext,
    out: Path,
    progress: LoopProgress,
    batches: Callable[[int, int, int], Iterable[Any]],
    train_step: Callable[[Any], float],
    validate: Callable[[int], float] | None,
    on_best: Callable[[LoopProgress], None],
    save: Callable[[LoopProgress], None],
) -> LoopProgress:
    """Epochs of steps with logging, validation, best-checkpoint keeping and resume states.

    batches(epoch, first_step, n_steps): this process's batches of an epoch from `first_step` on, at most
    n_steps of them. train_step(batch) -> this process's loss. validate(step) -> metric (all processes
    call it; it sums over them). on_best / save run on rank 0 only. Without validation the final state
    counts as best. Logs: out/train_log.csv and out/val_log.csv (rank 0).
    """
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        tensorboard_dir = out / TENSORBOARD_DIR if settings.tensorboard else None
        train_log = MetricLog(out / TRAIN_LOG_FILE, ["step", "epoch", "loss", "elapsed_s"], tensorboard_dir)
        val_log = MetricLog(out / VAL_LOG_FILE, ["step", "epoch", settings.metric, f"best_{settings.metric}",
                                                 "elapsed_s"])
    total = settings.total_steps
    bar = tqdm(total=total, initial=progress.step, desc="train", unit="step",
               disable=not (settings.progress and ctx.is_main))
    losses: list[float] = []
    while progress.step < total:
        epoch, first = divmod(progress.step, settings.steps_per_epoch)
        for batch in batches(epoch, first, total - progress.step):
            losses.append(train_step(batch))
            progress.step += 1
            bar.update(1)
            if progress.step % settings.log_every == 0 or progress.step == total:
                loss_sum, count = ctx.sum(np.array([sum(losses), len(losses)], dtype=np.float64))
                losses.clear()
                if ctx.is_main:
                    train_log.log(progress.step, epoch=epoch, loss=loss_sum / count)
                    bar.set_postfix(loss=f"{loss_sum / count:.4f}")
            if settings.save_every and progress.step % settings.save_every == 0 and ctx.is_main:
                save(progress)
        epoch_done = progress.step % settings.steps_per_epoch == 0
        if validate is not None and settings.val_every and (
                progress.step == total or (epoch_done and (epoch + 1) % settings.val_every == 0)):
            value = float(validate(progress.step))  # a plain float: the resume state must load weights_only
            if progress.improves(value, settings.higher_is_better):
                progress.best, progress.best_step = value, progress.step
                if ctx.is_main:
                    on_best(progress)
            if ctx.is_main:
                val_log.log(progress.step, epoch=epoch, **{settings.metric: value,
                                                           f"best_{settings.metric}": progress.best})
        if ctx.is_main:
            save(progress)
    bar.close()
    if ctx.is_main:
        if validate is None or not settings.val_every:
            on_best(progress)
        train_log.close()
    ctx.barrier()
    return progress
