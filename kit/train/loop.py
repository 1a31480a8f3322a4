"""Fine-tune one fold: `train_fold(config, data_dir=..., fold=K, out=RUN_DIR)`.

One optimiser step = one loader batch of `batch_size × accumulate` tiles per rank (step.py:
normalised and augmented on the device, micro-batches whose gradients accumulate). The k-th step
of an epoch always sees the same tiles (the sampler is seeded by seed+epoch), and `last.pt`
carries every RNG state (resume.py), so `--resume` replays the exact next batch. Validation
(validate.py) stitches the held-out regions and keeps the best checkpoint.

The run directory's files are kit.run.RunDir's (docs/interface.md). Whether a run starts, resumes
or is already done is decided by its provenance (kit/train/rerun.py). An epoch's last.pt is
written before its validation, so a kill during validation loses no step.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from kit.checkpoint import load_checkpoint, save_checkpoint
from kit.config import Config, config_to_dict, save_config, unresolved
from kit.data.fragment import Fragment
from kit.data.preprocess import fragment_stats
from kit.errors import KitError
from kit.models import build_model, check_model_config, load_pretrained, training_hooks
from kit.progress import progress_bar
from kit.run import RunDir
from kit.train import ddp
from kit.train.board import Board
from kit.train.budget import (
    cut_final_epoch,
    fit_budget,
    refit_budget,
    refit_due,
    resolved_config,
)
from kit.train.dataset import TileDataset, tile_loader
from kit.train.rerun import checked_prior, finished_message, plan, total_steps
from kit.train.resume import TrainState, check_disk, check_resumable, restore, save_last
from kit.train.sampler import epoch_tiles, tile_candidates
from kit.train.step import Stepper, lr_factor
from kit.train.validate import validate, write_previews

__all__ = [
    "FoldData",
    "TrainState",
    "load_fold_data",
    "lr_factor",
    "total_steps",
    "train_fold",
]

METRIC_FIELDS = ["epoch", "step", "loss", "lr", "f05", "threshold", "val_loss", "tiles_per_s",
                 "seconds"]  # fmt: skip


@dataclass
class FoldData:
    """Everything the run reads from the dataset, once."""

    train: list[Fragment]
    train_labels: list[np.ndarray]
    train_rows: list[list[tuple[int, int]]]
    train_ignore: list[np.ndarray | None]  # pixels no loss counts (None: the fragment has none)
    val: list[Fragment]
    val_rows: list[list[tuple[int, int]]]
    regions: list  # kit.data.folds.Region held out in this fold
    notes: list[str] = field(default_factory=list)  # warnings for the terminal


class LossLog:
    """The loss parts (device tensors) of the steps since the last log point: a training step
    never waits for the device; `flush` reads them all back at once, at `train.log_every` steps,
    checkpoints and epoch ends."""

    def __init__(self) -> None:
        self.pending: list[dict[str, torch.Tensor]] = []

    def add(self, parts: dict[str, torch.Tensor]) -> None:
        self.pending.append(parts)

    def flush(self, sums: dict[str, float]) -> dict[str, float] | None:
        """Add each pending step's parts to `sums` (in step order, as Python floats); return
        their means, None when no step is pending."""
        if not self.pending:
            return None
        keys = list(self.pending[0])
        rows = torch.stack([torch.stack([p[k] for k in keys]) for p in self.pending]).tolist()
        self.pending = []
        for row in rows:
            for k, v in zip(keys, row, strict=True):
                sums[k] = sums.get(k, 0.0) + v
        columns = zip(*rows, strict=True)
        return {k: sum(column) / len(rows) for k, column in zip(keys, columns, strict=True)}


def train_fold(
    config: Config,
    *,
    data_dir: Path,
    fold: int,
    folds_csv: Path,
    out: Path,
    max_steps: int | None = None,
    resume: bool = False,
    overwrite: bool = False,
    log_images: bool = False,
    device: str | None = None,
    progress: bool = True,
    started: float | None = None,
    prior_dir: Path | None = None,
) -> dict:
    """Train (or resume) one fold; returns {"step", "best_f05", "threshold", "finished"}.

    `out` holding a run of other inputs is refused unless `overwrite` (kit/train/rerun.py).
    `started` (time.monotonic()) is when the job began, for `train.budget_minutes` (default now).
    `prior_dir`: first-stage maps (kit.run.PredictionDir) for a member that needs a prior
    (kit.models.needs_prior), read for every fragment it trains on and holds out; others ignore it.
    """
    started = time.monotonic() if started is None else started
    info = ddp.init_distributed()
    try:
        return _Trainer(
            config, data_dir=Path(data_dir), fold=fold, folds_csv=Path(folds_csv), out=Path(out),
            max_steps=max_steps, resume=resume, overwrite=overwrite, log_images=log_images,
            info=info,
            device=ddp.device_for(info, device), progress=progress and info.is_main,
            started=started, prior_dir=prior_dir,
        ).run()  # fmt: skip
    finally:
        ddp.cleanup(info)


def load_fold_data(data_dir: Path, fold: int, folds_csv: Path, *, progress: bool) -> FoldData:
    """Fragments, labels and absolute row ranges for the training and held-out regions of `fold`.
    Every fragment it needs is checked here, before the first step: a held-out fragment without
    labels would otherwise fail at the first validation, after the training."""
    from kit.data.folds import fold_fragments, training_regions, validation_regions

    regions, fragments = fold_fragments(data_dir, fold, folds_csv)
    held_out = validation_regions(regions, fold)

    def grouped(rs) -> dict[str, list[tuple[int, int]]]:
        out: dict[str, list[tuple[int, int]]] = {}
        for r in rs:
            out.setdefault(r.fragment, []).append(r.rows(fragments[r.fragment].shape[0]))
        return out

    train_rows, val_rows = grouped(training_regions(regions, fold)), grouped(held_out)
    if not train_rows:
        raise KitError(f"{folds_csv}: fold {fold} leaves no training region")
    for name in sorted(val_rows):
        if not fragments[name].has_labels:
            raise KitError(
                f"{fragments[name].files.labels} is missing: fold {fold} holds out rows of "
                f"fragment {name} and cannot score them; label it or leave it out of {folds_csv}"
            )
    names = sorted(train_rows)
    labels = []
    for name in progress_bar(names, desc="labels", enabled=progress, leave=False):
        label = fragments[name].labels()
        if label is None:
            raise KitError(f"{fragments[name].files.labels} is missing: cannot train")
        labels.append(label)
    ink = sum(int(fragments[n].labels()[r0:r1].any()) for n in val_rows for r0, r1 in val_rows[n])
    notes = [] if ink else [
        f"warning: the rows fold {fold} holds out ({folds_csv}) contain no ink, so its F0.5 is 0 "
        f"whatever the model learns; write folds with ink in each: python -m kit folds --data "
        f"{data_dir}"
    ]  # fmt: skip
    return FoldData(
        train=[fragments[n] for n in names], train_labels=labels,
        train_rows=[train_rows[n] for n in names],
        train_ignore=[fragments[n].ignore() if fragments[n].files.has_ignore else None
                      for n in names], val=[fragments[n] for n in sorted(val_rows)],
        val_rows=[val_rows[n] for n in sorted(val_rows)], regions=held_out, notes=notes,
    )  # fmt: skip


def attach_priors(data: FoldData, prior_dir: Path) -> None:
    """Attach each training and held-out fragment's prior (kit.run.PredictionDir.read_prior:
    checked against the fragment, covering the rows the run reads) to `data`, in place."""
    from kit.run import PredictionDir

    priors = PredictionDir(prior_dir)
    data.train = [f.with_prior(priors.read_prior(f, rows))
                  for f, rows in zip(data.train, data.train_rows, strict=True)]  # fmt: skip
    data.val = [f.with_prior(priors.read_prior(f, rows))
                for f, rows in zip(data.val, data.val_rows, strict=True)]  # fmt: skip


def describe_fold(config: Config, data: FoldData, n_tiles: int) -> list[str]:
    """What a training log (and `train --dry-run`) starts with: the rows it trains on and holds
    out, its tile count, and the settings that shape the run."""
    d, t = config.data, config.train

    def rows(fragments, ranges) -> str:
        return "; ".join(f"{f.id} rows {', '.join(f'{r0}..{r1}' for r0, r1 in rs)}"
                         for f, rs in zip(fragments, ranges, strict=True))  # fmt: skip

    window = "auto (probed on the training rows when it starts)" if d.unresolved else (
        f"{d.z_start}..{d.z_end - 1}{' reversed' if d.reverse is True else ''}"
        f"{f' along the surface (at {d.surface_depth:g})' if d.flatten is True else ''}")  # fmt: skip
    steps = f"{t.epochs} epochs × {t.steps_per_epoch} steps"
    if t.budget_minutes > 0:
        steps += f" (steps per epoch fitted to {t.budget_minutes:g} min when it starts)"
    return [
        f"trains on: {rows(data.train, data.train_rows)} ({n_tiles} candidate tiles)",
        f"holds out: {rows(data.val, data.val_rows)}",
        f"config {config.name}: slices {window}, tile {d.tile} stride {d.stride}, "
        f"batch {t.batch_size}×{t.accumulate}, {steps}, lr {t.lr:g} (warmup {t.warmup_steps}), "
        f"amp {t.amp}, ema {t.ema:g}, seed {t.seed}",
    ]


class _Trainer:
    """The state of one training run; `run()` is the whole job."""

    def __init__(self, config: Config, *, data_dir, fold, folds_csv, out, max_steps, resume,
                 log_images, info, device, progress, overwrite=False, started=None,
                 prior_dir=None):  # fmt: skip
        self.config, self.data_dir, self.fold, self.folds_csv = config, data_dir, fold, folds_csv
        # time.monotonic() when the job began (train.budget_minutes); default: now
        self.started = time.monotonic() if started is None else started
        self.budget: dict | None = None  # the budget calibration's record (run.json)
        # (step, time.perf_counter()) after the current epoch's first step: budget.pace
        self.paced_from: tuple[int, float] | None = None
        self.writer = None
        self.board = Board(None)  # TensorBoard's validation pictures and hparams (rank 0)
        self.data: FoldData | None = None
        self.probe: dict | None = None  # the window the run's "auto" data fields came from
        self.init_record: dict | None = None  # what model.init_from loaded and skipped
        self.out, self.max_steps, self.resume, self.log_images = out, max_steps, resume, log_images
        self.overwrite = overwrite
        self.prior_dir = checked_prior(config, prior_dir)
        self.info, self.device, self.progress = info, device, progress
        self.run_dir = RunDir(out)
        self.last_path = self.run_dir.last  # the budget calibration points it at a scratch file
        self.provenance: dict | None = None
        self.seconds_before = 0.0  # wall time of the invocations this one resumes (run.json)
        self.state = TrainState()
        self.last_tiles = np.zeros((0, 3), dtype=np.int64)  # this rank's tiles of the epoch

    # -- setup ---------------------------------------------------------------------------------
    def run(self) -> dict:
        run = self.run_dir
        decision, self.provenance = plan(
            self.config, data_dir=self.data_dir, fold=self.fold, folds_csv=self.folds_csv,
            run=run, resume=self.resume, overwrite=self.overwrite, max_steps=self.max_steps,
            prior_dir=self.prior_dir,
        )  # fmt: skip
        if decision == "done":
            self._say(finished_message(run))
            trained = run.record()["trained"]
            return self._summary(trained["steps"], trained["best_f05"], trained["threshold"], True)
        if self.info.is_main:
            if decision == "overwrite":
                self._say(f"{self.out}: --overwrite: its run of other inputs is deleted")
                run.clear()
            for path in run.remove_temporaries():
                self._say(f"removed {path}, left by a killed write")
        ddp.barrier(self.info)
        if unresolved(self.config):  # before resuming: the resolved config is the run's
            self._resolve_auto()
        resume_state = self._load_last() if decision == "resume" else None
        if resume_state is not None:
            self.seconds_before = float(run.record().get("trained", {}).get("seconds", 0.0))
        if resume_state is not None:  # a budgeted run keeps the length it resolved
            self.config = resolved_config(self.config, resume_state["config"])
            check_resumable(self.config, resume_state, self.last_path)
        self._setup(resume_state)
        self._train()
        self.board.hparams(self.config, self.state.step, self.state.best_score)
        self.board.close()
        ddp.barrier(self.info)
        return self._summary(
            self.state.step, self.state.best_score, self.state.best_threshold, True
        )

    def _resolve_auto(self) -> None:
        """Resolve every "auto" field from this fold's training rows only (held-out labels never
        choose the window): data.z_start/z_end/reverse by the probe, then model.input_gain from
        the contrast of tiles in that window."""
        from kit.data import probe as p

        self._load_data()
        fd, record = self.data, {}
        if self.config.data.unresolved:
            probe = p.probe_fragments(fd.train, fd.train_labels, fd.train_rows)
            self.config = p.resolve_auto(self.config, probe)
            d = self.config.data
            record = {"window": list(probe.window), "reverse": probe.reverse,
                      "flatten": probe.flatten, "surface_depth": probe.surface_depth,
                      "notes": probe.notes}  # fmt: skip
            self._say(f"probe (training rows of fold {self.fold}): {p.describe(probe)}; "
                      f"data.z_start={d.z_start} z_end={d.z_end} reverse={d.reverse} "
                      f"flatten={d.flatten}")  # fmt: skip
        if self.config.model.input_gain == "auto":
            contrast = p.tile_contrast(fd.train, fd.train_rows, self.config.data)
            self.config = p.resolve_input_gain(self.config, contrast)
            record["tile_contrast"] = contrast
            self._say(
                f"tile contrast {contrast:.4f}: model.input_gain={self.config.model.input_gain}"
            )
        self.probe = record

    def _load_data(self) -> None:
        self.data = load_fold_data(self.data_dir, self.fold, self.folds_csv, progress=self.progress)
        for note in self.data.notes:
            self._say(note)

    def _load_last(self) -> dict:
        """last.pt, or a KitError naming it and the way back (last.prev.pt) if it is damaged."""
        from kit.checkpoint import CheckpointError

        run = self.run_dir
        try:
            return load_checkpoint(run.last)
        except CheckpointError as exc:
            back = (
                f"resume from the checkpoint before it (mv {run.last_prev} {run.last}, then "
                "--resume), or start over with --overwrite"
                if run.last_prev.is_file()
                else "start over with --overwrite"
            )
            raise KitError(f"{exc}; {back}") from None

    def _setup(self, saved: dict | None) -> None:
        config, t = self.config, self.config.train
        check_model_config(config)
        if self.device.type == "cpu" and t.cpu_threads > 0:
            torch.set_num_threads(t.cpu_threads)
        torch.manual_seed(t.seed)
        random.seed(t.seed)
        np.random.seed(t.seed)
        if self.data is None:
            self._load_data()
        if self.prior_dir is not None:  # after resolving "auto": the probe reads slices only
            attach_priors(self.data, self.prior_dir)
        self.stats = torch.stack(
            [fragment_stats(f, config.data).as_tensor() for f in self.data.train]
        )
        self.candidates = tile_candidates(
            self.data.train, self.data.train_labels, self.data.train_rows, config.data
        )
        model = build_model(config)
        if config.model.pretrained and saved is None:
            load_pretrained(model, config)
        if config.model.init_from and saved is None:
            from kit.checkpoint import init_from

            self.init_record = init_from(model, config, config.model.init_from)
            r = self.init_record
            skipped = "; ".join(r["skipped"]) or "none"
            self._say(f"init from {r['checkpoint']}: {r['loaded']} tensors; skipped: {skipped}")
        if self.info.is_main:
            check_disk(self.run_dir, model)
        model = model.to(self.device)
        self._header(model)
        self.hooks = training_hooks(
            config, model, fragments=[f.id for f in self.data.train],
            n_tiles=len(self.candidates), device=self.device,
        )  # fmt: skip
        for note in self.hooks.notes():
            self._say(note)
        self.stepper = Stepper(
            config, model, self.hooks, info=self.info, device=self.device, on_oom=self._oom
        )
        if saved is not None:
            restore(saved, stepper=self.stepper, state=self.state)
            self._say(f"resuming {self.out} at step {self.state.step}")
        self.stepper.distribute()
        if saved is None and self.config.train.budget_minutes > 0:
            self.budget = fit_budget(self)  # resolves train.steps_per_epoch and warmup_steps
        if self.info.is_main:
            self._write_run_files()
        self.writer = None
        if self.info.is_main:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.run_dir.tensorboard))
        self.board = Board(self.writer)

    def _write_run_files(self) -> None:
        before = self.run_dir.record()
        record = {"data": str(self.data_dir.resolve()), "fold": self.fold,
                  "folds_csv": str(self.folds_csv.resolve()), "provenance": self.provenance}  # fmt: skip
        if self.prior_dir is not None:
            record["prior"] = str(self.prior_dir.resolve())
        budget = self.budget
        if budget is None and self.config.train.budget_minutes > 0:  # resumed: keep the record
            budget = before.get("budget")
        for key, value in (("budget", budget), ("probe", self.probe),
                           ("init_from", self.init_record), ("trained", before.get("trained"))):  # fmt: skip
            if value is not None:
                record[key] = value
        self.run_dir.start(self.config, record, self.data.regions)

    def _save_last(self) -> None:
        """last.pt (the previous one kept as last.prev.pt), then run.json's progress."""
        s = self.state
        save_last(self.last_path, config=self.config, stepper=self.stepper, state=s,
                  previous=self.run_dir.last_prev if self.last_path == self.run_dir.last else None)  # fmt: skip
        if self.last_path == self.run_dir.last:  # not the budget calibration's scratch save
            validated = bool(s.history) and s.history[-1]["step"] == s.step and s.pending is None
            # seconds: the run's own wall time (setup, training, validation) over all its
            # invocations, so a report after a rerun still tells how long training took
            seconds = self.seconds_before + time.monotonic() - self.started
            self.run_dir.update_record(trained={"steps": s.step, "validated": validated,
                                                "best_f05": s.best_score,
                                                "threshold": s.best_threshold,
                                                "seconds": round(seconds, 1)})  # fmt: skip

    # -- training ------------------------------------------------------------------------------
    def _tiles_per_step(self) -> int:
        return self.config.train.batch_size * self.config.train.accumulate

    def _skip_images(self, tiles: np.ndarray) -> np.ndarray | None:
        """bool (N,): tiles the loader need not read (the hooks cached them), None: read all;
        --log-images reads all, its preview shows the input."""
        return None if self.log_images else self.hooks.cached(tiles)

    def _train(self) -> None:
        t, s = self.config.train, self.state
        target = total_steps(self.config, self.max_steps)
        bar = progress_bar(total=target, initial=s.step, desc=f"train fold {self.fold}",
                           unit="step", enabled=self.progress)  # fmt: skip
        if s.pending is not None:  # killed during this epoch's validation: validate it now
            self._end_epoch(s.pending, validate=True)
        per_step = self._tiles_per_step()
        while s.step < target:
            epoch, first = divmod(s.step, t.steps_per_epoch)
            tiles = epoch_tiles(
                self.candidates, epoch=epoch, seed=t.seed, ink_fraction=t.ink_fraction,
                jitter=t.jitter and not self.hooks.plain_tiles,
                count=t.steps_per_epoch * per_step * self.info.world_size,
            )  # fmt: skip
            tiles = ddp.shard(tiles, self.info)[first * per_step :]
            self.last_tiles = tiles
            dataset = TileDataset(
                self.data.train, self.data.train_labels, self.stats, tiles, self.config.data,
                ignore=self.data.train_ignore, skip_image=self._skip_images(tiles),
            )  # fmt: skip
            loader = tile_loader(
                dataset, batch_size=per_step, num_workers=t.num_workers, device=self.device
            )
            if first == 0:  # else: resumed mid-epoch with the saved totals
                s.epoch_sums, s.epoch_steps, s.epoch_tiles, s.epoch_seconds = {}, 0, 0, 0.0
            start = time.perf_counter() - s.epoch_seconds
            losses = LossLog()
            for batch in loader:
                losses.add(self.stepper.step(batch))
                s.step += 1
                s.epoch_steps += 1
                s.epoch_tiles += per_step * self.info.world_size
                bar.update(1)
                last = s.step >= target
                save = not last and self._mid_epoch_checkpoint_due()
                if last or save or s.step % t.log_every == 0:
                    self._log(bar, losses, start)
                if last:
                    break
                if refit_due(self.budget, s.step):  # the length changes: a loader for it
                    target = self._relength("refit", refit_budget(self), bar)
                    t = self.config.train
                    break
                if s.epoch_steps == 1:  # the first paid for the loader's start (and warm-up)
                    self.paced_from = (s.step, time.perf_counter())
                if save:  # a SIGKILL loses < checkpoint_every steps
                    self._save_last()
            self._log(bar, losses, start)  # the epoch's steps since the last log point
            if s.step % t.steps_per_epoch and s.step < target:  # re-fitted mid-epoch
                continue
            seconds = s.epoch_seconds
            epoch_end = s.step % t.steps_per_epoch == 0
            row = {"epoch": epoch + 1, "step": s.step, "lr": self.stepper.head_lr(),
                   "tiles_per_s": s.epoch_tiles / max(seconds, 1e-9), "seconds": seconds}  # fmt: skip
            row.update(
                {
                    ("loss" if k == "total" else f"loss_{k}"): v / max(s.epoch_steps, 1)
                    for k, v in s.epoch_sums.items()
                }
            )
            validate = s.step >= target or (epoch_end and (epoch + 1) % t.val_every == 0)
            last_epoch = (t.epochs - 1) * t.steps_per_epoch
            if self.budget is not None and 0 < s.step == last_epoch < target:  # behind?
                cut = cut_final_epoch(self, validations=1 + validate)
                if cut is not None:  # last.pt: _end_epoch saves it next
                    target = self._relength("cut", cut, bar, save=False)
                    t = self.config.train
            self._end_epoch(row, validate=validate)
        bar.close()

    def _relength(self, key: str, record: dict, bar, *, save: bool = True) -> int:
        """After a budget re-fit or cut (kit.train.budget) changed the run's length: `record`
        into run.json's budget[key], config.yaml and (`save`) last.pt (a kill resumes with
        it), the LR schedule's total and the progress bar's; returns the new target step."""
        self.budget = {**self.budget, key: record}
        self.stepper.relength(self.config)
        if self.info.is_main:
            save_config(self.config, self.run_dir.config_yaml)
            self.run_dir.update_record(budget=self.budget)
            if save:
                self._save_last()
        target = total_steps(self.config, self.max_steps)
        bar.total = target
        bar.refresh()
        return target

    def _log(self, bar: tqdm, losses: LossLog, start: float) -> None:
        """Read the steps' losses back into the epoch sums (waiting for the device), then the
        progress bar and TensorBoard: their mean since the last log point, rate, lr."""
        s = self.state
        means = losses.flush(s.epoch_sums)
        if means is None:
            return
        s.epoch_seconds = time.perf_counter() - start
        rate = s.epoch_tiles / max(s.epoch_seconds, 1e-9)
        lr = self.stepper.head_lr()
        bar.set_postfix(loss=f"{means['total']:.4f}", lr=f"{lr:.2e}", tiles_s=f"{rate:.1f}")
        if self.writer is not None:
            for k, v in means.items():
                self.writer.add_scalar(f"train/{k}", v, s.step)
            self.writer.add_scalar("train/lr", lr, s.step)

    def _end_epoch(self, row: dict, *, validate: bool) -> None:
        """Checkpoint, validate (a kill during it resumes with it: the row is saved as pending
        in last.pt first), then the epoch's metrics row and the checkpoint again."""
        s = self.state
        if validate:
            s.pending = row
            if self.info.is_main:
                self._save_last()
            row = {**row, **self._validate(row["epoch"])}
            s.pending = None
        if self.info.is_main:
            s.history.append(row)
            self._save_last()
            self.run_dir.write_metrics(s.history, METRIC_FIELDS)
        ddp.barrier(self.info)

    def _mid_epoch_checkpoint_due(self) -> bool:
        """Rank 0, every train.checkpoint_every steps, except at epoch ends (saved anyway)."""
        every, step = self.config.train.checkpoint_every, self.state.step
        mid_epoch = step % self.config.train.steps_per_epoch != 0
        return self.info.is_main and every > 0 and step % every == 0 and mid_epoch

    def _oom(self, msg: str) -> None:
        if self.writer is not None:
            self.writer.add_text("oom", msg, self.state.step)

    # -- validation ----------------------------------------------------------------------------
    def _validate(self, epoch: int) -> dict[str, float]:
        """Held-out F0.5 and loss (rank 0); a better score writes best.pt and the OOF maps."""
        if not self.info.is_main:
            return {}
        model = self.stepper.inference_model()
        v = validate(model, self.config, self.data, device=str(self.device))
        s = self.state
        if v.score > s.best_score:
            s.best_score, s.best_threshold = v.score, v.threshold
            for name, full in v.maps.items():
                self.run_dir.write_oof(name, full)
            save_checkpoint(self.run_dir.best, {
                "config": config_to_dict(self.config), "model": model.state_dict(),
                "step": s.step, "epoch": epoch, "score": v.score, "threshold": v.threshold,
            })  # fmt: skip
        self.board.validation(s.step, v, self.config, self.data)
        if self.log_images:
            write_previews(
                self.run_dir.report, epoch, config=self.config, data=self.data, maps=v.maps,
                model=self.stepper.model, batch=self.stepper.last_batch, hooks=self.hooks,
            )  # fmt: skip
        # a message, not progress: printed with --no-progress too (above a terminal's bar)
        tqdm.write(f"epoch {epoch} step {s.step}: held-out F0.5 {v.score:.4f} at threshold "
                   f"{v.threshold:.3f} (best {s.best_score:.4f})")  # fmt: skip
        return {"f05": v.score, "threshold": v.threshold, "val_loss": v.loss["total"]}

    # -- output --------------------------------------------------------------------------------
    def _header(self, model: torch.nn.Module) -> None:
        """The training log's first lines: who trains what, where, on which rows, with which
        settings (the full config is config.yaml)."""
        from kit import __version__
        from kit.precision import autocast_dtype
        from kit.run import MemberId

        n = torch.get_num_threads()
        threads = f", {n} thread{'s' * (n > 1)}" if self.device.type == "cpu" else ""
        total = sum(p.numel() for p in model.parameters())
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        m = self.config.model
        self._say(f"inkkit {__version__} train {MemberId.of(self.config)} fold {self.fold} -> "
                  f"{self.out} (full config: {self.run_dir.config_yaml})")  # fmt: skip
        dtype = autocast_dtype(self.config.train.amp, self.device)
        precision = "float32" if dtype is None else f"autocast {str(dtype).removeprefix('torch.')}"
        self._say(f"device {self.device}{threads}, {precision} (train.amp "
                  f"{self.config.train.amp}), torch {torch.__version__}, world size "
                  f"{self.info.world_size}; model {total / 1e6:.2f} M parameters, "
                  f"{trainable / 1e6:.2f} M trainable ({m.train_mode})")  # fmt: skip
        for line in describe_fold(self.config, self.data, len(self.candidates)):
            self._say(line)

    def _say(self, msg: str) -> None:
        if self.info.is_main:
            print(msg, flush=True)

    def _summary(self, step, score, threshold, finished) -> dict:
        return {"step": step, "best_f05": score, "threshold": threshold, "finished": finished}
