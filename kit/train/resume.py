"""Checkpoint and resume: `last.pt` carries the weights, the optimisation state, every RNG state
and the run's progress, so `--resume` continues with exactly the batch the run would have taken.

    save_last(path, config=..., stepper=..., state=...)   rank 0, at epoch ends and mid-epoch
    check_resumable(config, saved, path)                   KitError unless `saved` is this run
    check_disk(run, model)                                 KitError unless its checkpoints fit
    restore(saved, stepper=..., state=...)                 back to where `saved` left off
"""

from __future__ import annotations

import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from kit.checkpoint import save_checkpoint
from kit.config import Config, config_to_dict, with_added_defaults
from kit.errors import KitError
from kit.run import RunDir
from kit.train.rerun import RESUME_FREE
from kit.train.step import Stepper


@dataclass
class TrainState:
    step: int = 0
    best_score: float = -1.0
    best_threshold: float | None = None
    history: list[dict] = field(default_factory=list)
    # The running epoch's totals so far, saved in mid-epoch checkpoints so that a resumed
    # epoch's metrics.csv row still averages the whole epoch.
    epoch_sums: dict[str, float] = field(default_factory=dict)
    epoch_steps: int = 0
    epoch_tiles: int = 0
    epoch_seconds: float = 0.0
    # An epoch's metrics row saved before its validation ran: a run killed during validation
    # resumes with that validation, not with a lost epoch.
    pending: dict | None = None


def save_last(
    path: Path, *, config: Config, stepper: Stepper, state: TrainState, previous: Path | None
) -> None:
    """last.pt at `path`; the one it replaces is kept as `previous` (a fallback if it is ever
    damaged)."""
    s, t = state, config.train
    save_checkpoint(path, {
        "config": config_to_dict(config),
        "model": stepper.inference_model().state_dict(),
        "train_model": stepper.model.state_dict(),
        "optimizer": stepper.optimizer.state_dict(),
        "scheduler": stepper.scheduler.state_dict(),
        "scaler": stepper.scaler.state_dict(),
        "ema": stepper.ema.state_dict() if stepper.ema is not None else None,
        "rng": _rng_states(stepper),
        "step": s.step,
        "epoch": s.step // t.steps_per_epoch,
        "best_score": s.best_score,
        "best_threshold": s.best_threshold,
        "micro_batch": stepper.micro_batch,
        "accumulate": t.batch_size * t.accumulate // stepper.micro_batch,
        "history": s.history,
        "epoch_progress": {"sums": s.epoch_sums, "steps": s.epoch_steps,
                           "tiles": s.epoch_tiles, "seconds": s.epoch_seconds},
        "pending": s.pending,
    }, keep_previous=previous)  # fmt: skip


def checkpoint_bytes(model: torch.nn.Module) -> int:
    """An upper bound of what the run's checkpoints need on disk at once: last.pt (weights, two
    Adam moments and an EMA or training copy) being written while the previous last.pt,
    last.prev.pt and best.pt (weights) are still there."""
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    return 3 * 4 * weights + weights


def check_disk(run: RunDir, model: torch.nn.Module) -> None:
    """Refuse to start when the disk holding the run's checkpoints cannot take them (the ones
    already there are replaced, so they count as free)."""
    folder = run.checkpoints
    need = checkpoint_bytes(model)
    there = sum(f.stat().st_size for f in folder.glob("*.pt") if f.is_file())
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    free = shutil.disk_usage(existing).free + there
    if free < need:
        gib = 1 << 30
        raise KitError(
            f"{folder}: {free / gib:.2f} GiB free on its disk, but this run's checkpoints need "
            f"up to {need / gib:.2f} GiB ({run.last.name} being written beside the one before, "
            f"{run.last_prev.name} and {run.best.name}); free some space or give --out a "
            f"directory on another disk"
        )


def check_resumable(config: Config, saved: dict, path: Path) -> None:
    """KitError unless `saved` (the last.pt dict at `path`) was written with this config, up to
    the train.* fields in RESUME_FREE."""
    ours, theirs = config_to_dict(config), with_added_defaults(saved["config"])
    for section in ours:  # the rest defines the run
        if section == "train":
            a = {k: v for k, v in ours[section].items() if k not in RESUME_FREE}
            b = {k: v for k, v in theirs[section].items() if k not in RESUME_FREE}
        else:
            a, b = ours[section], theirs.get(section)
        if a != b:
            raise KitError(
                f"--resume: section {section!r} differs from the config in {path}; "
                "resume with the same --config/--set, or give a new --out"
            )


def restore(saved: dict, *, stepper: Stepper, state: TrainState) -> None:
    """Weights, optimisation state, RNG states and progress from the last.pt dict `saved`."""
    stepper.model.load_state_dict(saved["train_model"])
    stepper.optimizer.load_state_dict(saved["optimizer"])
    stepper.scheduler.load_state_dict(saved["scheduler"])
    stepper.scaler.load_state_dict(saved["scaler"])
    if stepper.ema is not None and saved.get("ema") is not None:
        stepper.ema.load_state_dict(saved["ema"])
        stepper.ema_updates = int(stepper.ema.n_averaged)
    _set_rng_states(saved["rng"], stepper)
    s = state
    s.step, s.best_score, s.best_threshold = (
        saved["step"],
        saved["best_score"],
        saved["best_threshold"],
    )
    stepper.micro_batch, s.history = saved["micro_batch"], list(saved.get("history", []))
    s.pending = saved.get("pending")
    if s.step % stepper.config.train.steps_per_epoch and "epoch_progress" in saved:
        p = saved["epoch_progress"]
        s.epoch_sums, s.epoch_steps = dict(p["sums"]), p["steps"]
        s.epoch_tiles, s.epoch_seconds = p["tiles"], p["seconds"]


def _rng_states(stepper: Stepper) -> dict:
    rng = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
           "python": random.getstate(), "augment": stepper.generator.get_state()}  # fmt: skip
    if stepper.device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(stepper.device)
    return rng


def _set_rng_states(rng: dict, stepper: Stepper) -> None:
    torch.set_rng_state(rng["torch"])
    np.random.set_state(rng["numpy"])
    random.setstate(rng["python"])
    stepper.generator.set_state(rng["augment"])
    if "cuda" in rng and stepper.device.type == "cuda":
        torch.cuda.set_rng_state(rng["cuda"], stepper.device)
