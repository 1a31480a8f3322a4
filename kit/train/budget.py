"""A time budget for one training run: `train.budget_minutes` / `kit train --budget MINUTES`.

A budgeted run keeps `train.epochs` (the number of validations, with `train.val_every`) and
chooses `train.steps_per_epoch` so that setup, training and validations fit the budget:

1. `calibrate(trainer)`, at setup once the model and optimizer exist: a few real optimiser
   steps on real loader batches (the first excluded as warm-up), one stitched prediction of a
   slice of a held-out region of at least `infer.batch_size` tiles (per-tile cost, scaled to the
   held-out tiles each validation predicts), the normalisation statistics and threshold search a
   validation repeats, and one `last.pt` save. Afterwards the model, RNG states, optimizer,
   scheduler, scaler, EMA, augmentation generator and embedding cache are exactly as before, so
   a budgeted run trains identically to an unbudgeted one of the same resolved length.
2. `budget_steps(...)`: the arithmetic, a pure function.
3. `fit_budget(trainer)`: writes the resolved `steps_per_epoch` and `warmup_steps` (capped at
   10 % of the steps) into the run's config (hence config.yaml and every checkpoint), prints one
   line and returns the record that run.json keeps under "budget".
4. `refit_budget(trainer)`: halfway through the first epoch (`refit_step`) the run times
   its own steps, as they run beside whatever else shares the machine (calibration's few steps
   can be faster or slower than that), and re-fits the length to the time left
   (`refit_steps`): a new `steps_per_epoch` for every epoch (the first ends no earlier than
   now), the LR schedule's total with it (warmup unchanged), written like the first fit. Only
   the steps before it differ from an unbudgeted run of the final length (their tiles and
   learning rates were drawn for the calibrated length).
5. `cut_final_epoch(trainer, ...)`: when the second-last epoch has trained, a run that fell
   behind (the machine slowed down after the re-fit) cuts its last epoch to the steps the
   budget still holds at that epoch's pace (`final_epoch_steps`): `train.final_epoch_steps`
   and the LR schedule's total. It never lengthens the run (the re-fit does that).

A resumed or rerun budgeted run never re-calibrates, re-fits or cuts: `resolved_config` takes
the length from the config saved in its `last.pt` (when that run had the same budget); the
re-fit and the cut save `last.pt` at once (the cut with the epoch's end), so a run killed after
them resumes with their length.
"""

from __future__ import annotations

import dataclasses
import math
import random
import time
from dataclasses import dataclass

import numpy as np
import torch

from kit.config import Config
from kit.train import ddp

CALIBRATION_STEPS = 6  # optimiser steps timed at setup; the first is warm-up, not counted
REFIT_MIN_STEPS = 4  # a first epoch shorter than 2 × this is not re-fitted (too few to time)


@dataclass(frozen=True)
class Timings:
    """What calibration measured, in seconds."""

    setup: float  # process start to the end of calibration (data, model, calibration itself)
    step: float  # one optimiser step, loading included (+ its share of mid-epoch checkpoints)
    validation: float  # one validation: predictions, statistics, threshold search, best.pt
    epoch: float  # per epoch besides its steps: loader start and the last.pt save


def budget_steps(
    budget_s: float,
    *,
    step_s: float,
    validation_s: float,
    n_validations: int,
    setup_s: float,
    epochs: int,
    epoch_s: float = 0.0,
) -> int:
    """Total optimiser steps that fit `budget_s`, a multiple of `epochs` (at least one per epoch):
    epochs × floor(free / (epochs × step_s)), where the time left for steps is
    free = budget_s − setup_s − n_validations × validation_s − epochs × epoch_s.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {epochs}")
    if step_s <= 0:
        raise ValueError(f"step_s must be positive, got {step_s}")
    free = budget_s - setup_s - n_validations * validation_s - epochs * epoch_s
    per_epoch = math.floor(free / (epochs * step_s)) if free > 0 else 0
    return max(per_epoch, 1) * epochs


def refit_steps(
    budget_s: float,
    *,
    elapsed_s: float,
    done: int,
    step_s: float,
    validation_s: float,
    n_validations: int,
    epochs: int,
    epoch_s: float = 0.0,
) -> int:
    """Total steps of a run re-fitted `elapsed_s` after it began, with `done` steps of its first
    epoch trained at `step_s` each: `budget_steps` with everything but those steps counted as
    setup, and at least `done` steps per epoch (the first epoch is already that long). Every
    validation and epoch overhead is still ahead."""
    steps = budget_steps(
        budget_s, step_s=step_s, validation_s=validation_s, n_validations=n_validations,
        setup_s=elapsed_s - done * step_s, epochs=epochs, epoch_s=epoch_s,
    )  # fmt: skip
    return max(steps, done * epochs)


def final_epoch_steps(
    budget_s: float,
    *,
    elapsed_s: float,
    step_s: float,
    validation_s: float,
    n_validations: int,
    epoch_s: float,
    steps_per_epoch: int,
) -> int:
    """Steps of the last epoch that fit what is left of `budget_s` after `elapsed_s`, with the
    `n_validations` still ahead and its epoch overhead: `budget_steps` of one epoch with the
    time so far as setup, at most a whole epoch."""
    fits = budget_steps(
        budget_s, step_s=step_s, validation_s=validation_s, n_validations=n_validations,
        setup_s=elapsed_s, epochs=1, epoch_s=epoch_s,
    )  # fmt: skip
    return min(fits, steps_per_epoch)


def refit_due(record: dict | None, step: int) -> bool:
    """Whether a run with this budget `record` (run.json's; None: not calibrated in this
    invocation) re-fits after `step`: at `refit_step` of its calibrated length, once."""
    return (
        record is not None
        and "refit" not in record
        and (step == refit_step(record["steps_per_epoch"]))
    )


def refit_step(steps_per_epoch: int) -> int | None:
    """The step at which a budgeted run re-fits: halfway through its first epoch; None when the
    epoch is too short to time."""
    half = steps_per_epoch // 2
    return half if half >= REFIT_MIN_STEPS else None


def budget_warmup(warmup_steps: int, steps: int) -> int:
    """The configured warmup, capped at 10 % of the run's steps."""
    return max(0, min(warmup_steps, steps // 10))


def n_validations(epochs: int, val_every: int) -> int:
    """Validations of a full run: every `val_every` epochs, and once more at the end if needed."""
    return -(-epochs // max(val_every, 1))


def with_length(config: Config, **length: int) -> Config:
    """`config` with the run-length fields `length` (steps_per_epoch, warmup_steps,
    final_epoch_steps) replaced."""
    return dataclasses.replace(config, train=dataclasses.replace(config.train, **length))


def resolved_config(config: Config, saved: dict | None) -> Config:
    """`config` with the length an earlier run of the same budget resolved (`saved` = the config
    dict stored in its checkpoint): its steps_per_epoch and warmup_steps. Unchanged without a
    budget, without `saved`, or when `saved` had another budget (then it is another run)."""
    budget = config.train.budget_minutes
    train = (saved or {}).get("train") or {}
    if budget <= 0 or train.get("budget_minutes") != budget:
        return config
    keys = ("steps_per_epoch", "warmup_steps", "final_epoch_steps")
    length = {k: int(train[k]) for k in keys if k in train}
    return with_length(config, **length)


def fit_budget(trainer) -> dict:
    """Calibrate, resolve the run's length into `trainer.config`, rebuild the optimisation state
    for it, print the budget line and return the run.json record."""
    config = trainer.config
    t = config.train
    timings = calibrate(trainer)
    n_val = n_validations(t.epochs, t.val_every)
    budget_s = t.budget_minutes * 60
    steps = budget_steps(
        budget_s, step_s=timings.step, validation_s=timings.validation, n_validations=n_val,
        setup_s=timings.setup, epochs=t.epochs, epoch_s=timings.epoch,
    )  # fmt: skip
    per_epoch = steps // t.epochs
    warmup = budget_warmup(t.warmup_steps, steps)
    trainer.config = with_length(config, steps_per_epoch=per_epoch, warmup_steps=warmup)
    trainer.stepper.reset(trainer.config)  # fresh optimizer, scheduler, scaler, EMA, generator
    fixed = timings.setup + n_val * timings.validation + t.epochs * timings.epoch
    note = ""
    if fixed + steps * timings.step > budget_s * 1.1:
        note = (
            f" (too small: setup and validations alone take ~{fixed:.0f} s; "
            "raise the budget or lower train.epochs)"
        )
    trainer._say(
        f"budget {t.budget_minutes:g} min: setup {timings.setup:.1f} s, "
        f"{timings.step:.3g} s/step, validation ~{timings.validation:.1f} s x {n_val}, "
        f"{timings.epoch:.2g} s/epoch -> {steps} steps ({t.epochs} epochs x {per_epoch}), "
        f"warmup {warmup}{note}"
    )
    return {
        "minutes": t.budget_minutes,
        "setup_seconds": round(timings.setup, 3),
        "step_seconds": round(timings.step, 5),
        "validation_seconds": round(timings.validation, 3),
        "validations": n_val,
        "epoch_seconds": round(timings.epoch, 4),
        "steps": steps,
        "steps_per_epoch": per_epoch,
        "warmup_steps": warmup,
    }


def pace(trainer) -> tuple[float, float]:
    """(seconds per step of the current epoch, seconds since the job began): what a re-fit and
    a cut go by. The epoch's first step, which paid for the loader's start (and the run's first
    also for warm-up), is left out (the trainer marks `paced_from` after it)."""
    first, mark = trainer.paced_from
    if trainer.device.type == "cuda":  # the steps queued so far, not just launched
        torch.cuda.synchronize(trainer.device)
    step_s = (time.perf_counter() - mark) / max(trainer.state.step - first, 1)
    return step_s, time.monotonic() - trainer.started


def refit_budget(trainer) -> dict:
    """Re-fit `trainer.config`'s length at its current step (in the first epoch) from its
    `pace`: the new steps_per_epoch into `trainer.config` (the trainer's `_relength` passes it
    on to the LR schedule and the run's files); print one line and return the record run.json keeps under budget["refit"]. Under DDP rank 0's clock and
    pace decide for every rank."""
    config, record = trainer.config, trainer.budget
    t, done = config.train, trainer.state.step
    step_s, elapsed = ddp.broadcast_floats(trainer.info, list(pace(trainer)))
    steps = refit_steps(
        t.budget_minutes * 60, elapsed_s=elapsed, done=done, step_s=step_s,
        validation_s=record["validation_seconds"], n_validations=record["validations"],
        epochs=t.epochs, epoch_s=record["epoch_seconds"],
    )  # fmt: skip
    per_epoch = steps // t.epochs
    trainer.config = with_length(config, steps_per_epoch=per_epoch)
    trainer._say(
        f"budget re-fit at step {done}, {elapsed:.1f} s in: {step_s:.3g} s/step measured "
        f"({record['step_seconds']:.3g} calibrated) -> {steps} steps ({t.epochs} epochs x "
        f"{per_epoch}), was {record['steps']}"
    )
    return {
        "at_step": done,
        "elapsed_seconds": round(elapsed, 3),
        "step_seconds": round(step_s, 5),
        "steps": steps,
        "steps_per_epoch": per_epoch,
    }


def cut_final_epoch(trainer, *, validations: int) -> dict | None:
    """When `trainer`'s second-last epoch has trained (its validation, if any, and the last
    one among the `validations` still ahead): if a whole last epoch no longer fits the budget
    at the pace of this epoch's steps, cut it (train.final_epoch_steps in `trainer.config`, as
    the re-fit), print one line and return the record run.json keeps under budget["cut"]; else
    None."""
    config, record = trainer.config, trainer.budget
    t = config.train
    step_s, elapsed = ddp.broadcast_floats(trainer.info, list(pace(trainer)))
    steps = final_epoch_steps(
        t.budget_minutes * 60, elapsed_s=elapsed, step_s=step_s,
        validation_s=record["validation_seconds"], n_validations=validations,
        epoch_s=record["epoch_seconds"], steps_per_epoch=t.steps_per_epoch,
    )  # fmt: skip
    if steps >= t.steps_per_epoch:
        return None
    trainer.config = with_length(config, final_epoch_steps=steps)
    total = trainer.config.train.total_steps
    trainer._say(
        f"budget: behind at step {trainer.state.step}, {elapsed:.1f} s in ({step_s:.3g} s/step "
        f"lately): the last epoch cut to {steps} of {t.steps_per_epoch} steps, {total} in all"
    )
    return {
        "at_step": trainer.state.step,
        "elapsed_seconds": round(elapsed, 3),
        "step_seconds": round(step_s, 5),
        "final_epoch_steps": steps,
        "steps": total,
    }


def calibrate(trainer, *, steps: int = CALIBRATION_STEPS) -> Timings:
    """Time real steps, a partial validation and a checkpoint save; leave the model and RNG
    states as they were. The caller rebuilds the optimizer, scheduler, scaler, EMA and
    augmentation generator (`Stepper.reset`), which these steps moved on.
    Under DDP every rank takes part in the steps, rank 0's timings are broadcast."""
    from kit.train.dataset import TileDataset, tile_loader
    from kit.train.sampler import epoch_tiles

    tr, t = trainer, trainer.config.train
    cuda = tr.device.type == "cuda"

    def now() -> float:
        if cuda:
            torch.cuda.synchronize(tr.device)
        return time.perf_counter()

    weights = {k: v.detach().to("cpu", copy=True) for k, v in tr.stepper.model.state_dict().items()}
    rng = (torch.get_rng_state(), np.random.get_state(), random.getstate(),
           torch.cuda.get_rng_state(tr.device) if cuda else None)  # fmt: skip
    per_step = tr._tiles_per_step()
    tiles = epoch_tiles(
        tr.candidates, epoch=0, seed=t.seed, ink_fraction=t.ink_fraction,
        jitter=t.jitter and not tr.hooks.plain_tiles, count=steps * per_step * tr.info.world_size,
    )  # fmt: skip
    tiles = ddp.shard(tiles, tr.info)
    dataset = TileDataset(
        tr.data.train, tr.data.train_labels, tr.stats, tiles, tr.config.data,
        ignore=tr.data.train_ignore, skip_image=tr._skip_images(tiles),
    )  # fmt: skip
    loader = tile_loader(dataset, batch_size=per_step, num_workers=t.num_workers, device=tr.device)
    start = now()
    batches = iter(loader)
    batch = next(batches)
    first_batch = now() - start
    tr.stepper.step(batch)  # warm-up
    durations, mark = [], now()
    for batch in batches:
        tr.stepper.step(batch)
        durations.append(now() - mark)
        mark = now()
    step = float(np.mean(durations)) if durations else now() - start
    validation = save = 0.0
    if tr.info.is_main:
        validation = _validation_seconds(tr)
        save = _save_seconds(tr)
    tr.stepper.model.load_state_dict(weights)
    torch.set_rng_state(rng[0])
    np.random.set_state(rng[1])
    random.setstate(rng[2])
    if cuda:
        torch.cuda.set_rng_state(rng[3], tr.device)
    tr.hooks.reset()  # e.g. cached embeddings: the run encodes its tiles itself
    if t.checkpoint_every > 0:
        step += save / t.checkpoint_every
    measured = [time.monotonic() - tr.started, step, validation + save, first_batch + save]
    return Timings(*ddp.broadcast_floats(tr.info, measured))


def _validation_seconds(tr) -> float:
    """One validation's cost, estimated on rank 0 without writing anything: the per-tile cost
    of a stitched prediction over at least `infer.batch_size` tiles of the largest held-out
    region (after a warm-up prediction), times the held-out tiles; plus the per-region
    normalisation statistics, the labels and threshold search, as `_validate` does them."""
    from kit.data.preprocess import fragment_stats
    from kit.infer.stitch import plan_tiles, predict_fragment
    from kit.metrics import best_threshold

    config, device = tr.config, str(tr.device)
    model = tr.stepper.inference_model()
    regions = [
        (f, r) for f, ranges in zip(tr.data.val, tr.data.val_rows, strict=True) for r in ranges
    ]
    counts = [plan_tiles(config, f, r).n_tiles for f, r in regions]
    if not sum(counts):
        return 0.0
    fragment, (r0, r1) = regions[int(np.argmax(counts))]
    stride = config.infer.stride or config.data.stride
    wanted = max(1, config.infer.batch_size)
    end = min(r1, r0 + config.data.tile)
    while end < r1 and plan_tiles(config, fragment, (r0, end)).n_tiles < wanted:
        end = min(r1, end + stride)
    probe = plan_tiles(config, fragment, (r0, end)).n_tiles
    first = min(r1, r0 + config.data.tile)
    predict_fragment(model, config, fragment, rows=(r0, first), device=device, progress=False)
    stats = {}
    for f, _ in regions:
        if f.id not in stats:
            begin = time.perf_counter()
            fragment_stats(f, config.data)
            stats[f.id] = time.perf_counter() - begin
    begin = time.perf_counter()
    predict_fragment(model, config, fragment, rows=(r0, end), device=device, progress=False)
    per_tile = max(time.perf_counter() - begin - stats[fragment.id], 0.0) / max(probe, 1)
    begin = time.perf_counter()
    probs, targets = [], []
    for f, ranges in zip(tr.data.val, tr.data.val_rows, strict=True):
        keep = np.zeros(f.shape[0], dtype=bool)
        for a, b in ranges:
            keep[a:b] = True
        inside = f.scored() & keep[:, None]
        targets.append(f.labels()[inside])
        probs.append(np.zeros(f.shape, dtype=np.uint8)[inside])
    best_threshold(np.concatenate(probs), np.concatenate(targets))
    scoring = time.perf_counter() - begin
    return per_tile * sum(counts) + sum(stats[f.id] for f, _ in regions) + scoring


def _save_seconds(tr) -> float:
    """Seconds one last.pt save takes (written to a scratch file in the run's checkpoints/)."""
    last = tr.last_path
    scratch = last.with_name(".budget-calibration.pt")
    scratch.parent.mkdir(parents=True, exist_ok=True)
    tr.last_path = scratch
    try:
        begin = time.perf_counter()
        tr._save_last()
        return time.perf_counter() - begin
    finally:
        tr.last_path = last
        scratch.unlink(missing_ok=True)
