"""What every training loop shares: deterministic batches, resumable state files, CSV / TensorBoard logs, and
the loop itself, which drives a command's job (its data, model and files; see `TrainingJob`)."""

from __future__ import annotations

import csv
import math
import pickle
import shutil
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ..files import OutputExistsError, atomic_write
from ..jobs.distributed import DistContext
from ..jobs.options import save_config

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


class TrainingJob(Protocol):
    """What `run_training_loop` asks of a training command's job."""

    def batches(self, epoch: int, first_step: int, n_steps: int) -> Iterable[Any]:
        """This process's batches of `epoch` from step `first_step` on, at most `n_steps` of them."""

    def train_step(self, batch: Any) -> float:
        """One optimisation step on `batch`; this process's loss."""

    def validate(self, step: int) -> float:
        """The validation metric after `step` steps (every process calls it; it sums over them)."""

    def on_best(self, progress: LoopProgress) -> None:
        """Keep the model as it is now as the run's result (rank 0)."""

    def save(self, progress: LoopProgress) -> None:
        """Write the resume state (rank 0)."""


class RunOptions(Protocol):
    """The options every training command has (see fpseg_core/training/config.py)."""

    out: str
    resume: bool
    seed: int
    batch_size: int
    epochs: int
    max_steps: int | None
    val_every: int
    log_every: int
    save_every: int
    num_workers: int
    tensorboard: bool
    progress: bool


OptionsT = TypeVar("OptionsT", bound=RunOptions)


class ResumableJob(Generic[OptionsT]):
    """What the training commands' jobs share: options, seed, batches, optimiser steps and the resume state.

    A subclass builds its data and model, and sets `optimizer`, `identity` (what a saved state must match to
    be resumed) and `settings`; `state_tensors` / `load_state_tensors` say what else its state holds.
    """

    outputs: tuple[str, ...] = RUN_OUTPUTS  # what a new run in `out` deletes first
    optimizer: torch.optim.Optimizer
    identity: dict[str, Any]
    settings: LoopSettings

    def __init__(self, config: OptionsT, ctx: DistContext) -> None:
        if config.batch_size % ctx.world_size:
            raise ValueError(f"batch_size {config.batch_size} must be divisible by the {ctx.world_size} processes")
        torch.manual_seed(config.seed)
        self.config = config
        self.ctx = ctx
        self.out = Path(config.out)

    def state_tensors(self) -> dict[str, Any]:
        """What the resume state holds besides the progress and the optimiser (the trained weights)."""
        raise NotImplementedError

    def load_state_tensors(self, state: dict[str, Any]) -> None:
        """Restore what `state_tensors` saved."""
        raise NotImplementedError

    def loop_settings(self, steps_in_epoch: int, metric: str, higher_is_better: bool) -> LoopSettings:
        c = self.config
        return LoopSettings(
            total_steps=c.max_steps if c.max_steps is not None else c.epochs * steps_in_epoch,
            steps_per_epoch=steps_in_epoch, log_every=c.log_every, save_every=c.save_every, val_every=c.val_every,
            metric=metric, higher_is_better=higher_is_better, progress=c.progress, tensorboard=c.tensorboard,
        )

    def parallel(self, module: nn.Module) -> nn.Module:
        """`module` as the training steps call it: under DistributedDataParallel when there are processes."""
        return DistributedDataParallel(module) if self.ctx.distributed else module

    def loader(self, items: Dataset, epoch: int, first_step: int, n_steps: int) -> DataLoader:
        """This process's batches of `items` for an epoch (see `epoch_batches`), at most `n_steps` of them."""
        c = self.config
        steps = epoch_batches(len(items), c.batch_size, c.seed, epoch, self.ctx.rank, self.ctx.world_size,
                              first_step)
        return DataLoader(items, batch_sampler=steps[:n_steps], num_workers=c.num_workers)

    def optimizer_step(self, loss: torch.Tensor) -> float:
        """Step the optimiser on `loss`; its value."""
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())

    def resume_or_start(self, resuming: bool) -> LoopProgress:
        """Continue the run saved in `out` (`resuming`: see `claim_run_folder`) or start a new one there (its
        previous outputs deleted); the progress the loop starts from. Rank 0 writes the configuration."""
        path = self.out / STATE_FILE
        progress = LoopProgress()
        if resuming:
            state = load_state(path)
            check_resumable(state, self.identity, path)
            self.load_state_tensors(state)
            self.optimizer.load_state_dict(state["optimizer"])
            progress = LoopProgress(state["step"], state["best_metric"], state["best_step"])
            if self.ctx.is_main:
                print(f"resuming {self.out} at step {progress.step}", file=sys.stderr)
        elif self.config.resume and self.ctx.is_main:
            print(f"no {path} to resume from; starting a new run", file=sys.stderr)
        if self.ctx.is_main:
            if not resuming:
                clear_run_folder(self.out, self.outputs)
            save_config(self.config, self.out / CONFIG_FILE)
        return progress

    def save(self, progress: LoopProgress) -> None:
        save_state(self.out / STATE_FILE, {
            **self.identity, "step": progress.step, "best_metric": progress.best, "best_step": progress.best_step,
            **self.state_tensors(), "optimizer": self.optimizer.state_dict(),
        })


def run_training_loop(settings: LoopSettings, ctx: DistContext, out: Path, progress: LoopProgress,
                      job: TrainingJob) -> LoopProgress:
    """Epochs of `job`'s steps with logging, validation, best-checkpoint keeping and resume states.

    Validation (settings.val_every) calls job.validate on every process; job.on_best and job.save run on
    rank 0 only. Without validation the final state counts as best. Logs: out/train_log.csv and
    out/val_log.csv (rank 0).
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
        for batch in job.batches(epoch, first, total - progress.step):
            losses.append(job.train_step(batch))
            progress.step += 1
            bar.update(1)
            if progress.step % settings.log_every == 0 or progress.step == total:
                loss_sum, count = ctx.sum(np.array([sum(losses), len(losses)], dtype=np.float64))
                losses.clear()
                if ctx.is_main:
                    train_log.log(progress.step, epoch=epoch, loss=loss_sum / count)
                    bar.set_postfix(loss=f"{loss_sum / count:.4f}")
            if settings.save_every and progress.step % settings.save_every == 0 and ctx.is_main:
                job.save(progress)
        epoch_done = progress.step % settings.steps_per_epoch == 0
        if settings.val_every and (
                progress.step == total or (epoch_done and (epoch + 1) % settings.val_every == 0)):
            value = float(job.validate(progress.step))  # a plain float: the resume state must load weights_only
            if progress.improves(value, settings.higher_is_better):
                progress.best, progress.best_step = value, progress.step
                if ctx.is_main:
                    job.on_best(progress)
            if ctx.is_main:
                val_log.log(progress.step, epoch=epoch, **{settings.metric: value,
                                                           f"best_{settings.metric}": progress.best})
        if ctx.is_main:
            job.save(progress)
    bar.close()
    if ctx.is_main:
        if not settings.val_every:
            job.on_best(progress)
        train_log.close()
    ctx.barrier()
    return progress


def run_job(job: ResumableJob, ctx: DistContext, resuming: bool, result: str, metric: str) -> Path:
    """Run (or, with `resuming`, resume) `job`'s training loop; rank 0 then says which `result` file in the
    run folder holds the outcome and the best validation `metric` (words for messages). Returns the folder."""
    progress = run_training_loop(job.settings, ctx, job.out, job.resume_or_start(resuming), job)
    if ctx.is_main:
        best = f" (best validation {metric} {progress.best:.6g} at step {progress.best_step})" \
            if progress.best is not None else ""
        print(f"wrote {job.out / result}{best}", file=sys.stderr)
    return job.out
