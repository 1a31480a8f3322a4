"""Whether `kit train` into a run directory starts, resumes, or has nothing to do.

    plan(config, data_dir=..., fold=..., folds_csv=..., run=..., ...) -> (Decision, provenance)
    decide(run, provenance, resume=..., overwrite=..., max_steps=...) -> Decision

A run directory remembers what it was made from (run.json "provenance", from
kit.provenance.training_provenance: the requested config, fold, regions, data and starting
weights) and how far it got (run.json "trained": steps, whether the last one was validated, the
best score). The rule, in one place:

- nothing there yet: "fresh";
- other inputs: refused, naming what differs, unless --overwrite ("overwrite": the run's files
  are deleted and it starts over). Inputs that only lengthen or tune the run (RESUME_FREE) may
  instead be continued with --resume;
- the same inputs: "done" when it trained all its steps and validated them, else "resume"
  (which needs --resume when a last.pt exists, so that a run is never continued by surprise).

Nothing here imports torch: `kit train` answers "done" in a fraction of a second.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from kit.config import Config, with_added_defaults
from kit.errors import KitError
from kit.provenance import differences
from kit.run import PredictionDir, RunDir

Decision = Literal["fresh", "overwrite", "resume", "done"]
# train.* that may change on resume
RESUME_FREE = ("epochs", "num_workers", "checkpoint_every", "log_every")


def total_steps(config: Config, max_steps: int | None) -> int:
    """Optimiser steps this invocation trains to: all epochs, or fewer with --max-steps."""
    full = config.train.total_steps
    return min(full, max_steps) if max_steps is not None else full


def plan(
    config: Config,
    *,
    data_dir,
    fold: int,
    folds_csv,
    run: RunDir,
    resume: bool,
    overwrite: bool,
    max_steps: int | None,
    prior_dir=None,
) -> tuple[Decision, dict]:
    """The provenance of this job (fragments opened, not read) and what to do with `run`.
    `prior_dir` (a member that needs a prior): its maps of the fold's fragments are an input."""
    from kit.data.folds import fold_fragments
    from kit.provenance import training_provenance

    regions, fragments = fold_fragments(data_dir, fold, folds_csv)
    prior = None
    if prior_dir is not None:
        prior = PredictionDir(prior_dir).identity(sorted(fragments))
    provenance = training_provenance(
        config, fold=fold, regions=regions, fragments=list(fragments.values()), prior=prior
    )
    decision = decide(run, provenance, resume=resume, overwrite=overwrite, max_steps=max_steps)
    return decision, provenance


def checked_prior(config: Config, prior_dir: Path | None) -> Path | None:
    """The prior directory this member reads: `prior_dir` when it needs a prior, None when it
    does not (a member without one ignores it); a KitError naming the fix when it needs one and
    has none, or the directory does not exist."""
    from kit.models import needs_prior

    if not needs_prior(config):
        return None
    if prior_dir is None:
        raise KitError(
            f"{config.name} (model.prompt={config.model.prompt}) needs a prior: a first-stage "
            "probability map of every fragment; pass --prior DIR (for training, the out-of-fold "
            "maps `kit evaluate` writes to EVAL_DIR/oof; for test fragments, `kit predict` "
            "output)"
        )
    if not Path(prior_dir).is_dir():
        raise KitError(f"--prior {prior_dir} is not a directory of maps")
    return Path(prior_dir)


def finished_message(run: RunDir) -> str:
    trained = run.record()["trained"]
    return f"{run.path}: run finished ({trained['steps']} steps, same inputs); nothing to do"


def decide(
    run: RunDir, provenance: dict, *, resume: bool, overwrite: bool, max_steps: int | None
) -> Decision:
    """What to do with `run` for a job of this `provenance` (see the module docstring).
    Deletes nothing: "overwrite" asks the caller to clear the run first."""
    record = run.record()
    if not (run.last.is_file() or run.best.is_file() or "provenance" in record):
        return "fresh"
    old = record.get("provenance")
    if old is not None and isinstance(old.get("config"), dict):  # fields added since: defaults
        old = {**old, "config": with_added_defaults(old["config"])}
    diffs = (
        differences(old, provenance)
        if old is not None
        else [f"{run.run_json} records no provenance (an older kit's run)"]
    )
    free = bool(diffs) and old is not None and all(_resume_free(d) for d in diffs)
    if diffs:
        if overwrite:
            return "overwrite"
        if free and resume:
            return "resume"
        fix = (
            "add --resume to continue it with the new value, or --overwrite to train it again"
            if free
            else "add --overwrite to train it again from scratch, or give another --out"
        )
        raise KitError(f"{run.path} holds a run of other inputs ({'; '.join(diffs[:5])}): {fix}")
    if finished(run, max_steps):
        return "done"
    if not run.last.is_file():
        return "fresh"  # started, but killed before its first checkpoint
    if not resume:
        raise KitError(
            f"{run.last} holds an unfinished run of these inputs; add --resume to continue it, "
            "or --overwrite to start over"
        )
    return "resume"


def finished(run: RunDir, max_steps: int | None) -> bool:
    """True when the run trained every step this job asks for and validated the last one.
    Its length is its own config.yaml's (a budgeted run's resolved steps per epoch)."""
    trained = run.record().get("trained") or {}
    config = run.config()
    if config is None or not run.best.is_file() or not trained.get("validated"):
        return False
    return int(trained.get("steps", 0)) >= total_steps(config, max_steps)


def _resume_free(difference: str) -> bool:
    return any(difference.startswith(f"config.train.{k}:") for k in RESUME_FREE)
