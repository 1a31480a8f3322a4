"""Fine-tune one fold (SAM or U-Net) and write a run directory.

Single process: `python -m kit train --data DIR --fold K`; several GPUs (DDP):
`torchrun --nproc_per_node N -m kit train --data DIR --fold K`.
"""

from __future__ import annotations

import argparse

from kit.cli import add_progress_flag
from kit.config import preset_names

HELP = "fine-tune one fold; writes a run directory"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="dataset directory (with train/)")
    p.add_argument("--fold", type=int, required=True, help="fold to hold out (folds CSV)")
    p.add_argument("--config", default="cpu-demo",
                   help=f"preset name ({', '.join(preset_names())}) or YAML path")  # fmt: skip
    p.add_argument("--folds", default="folds.csv",
                   help="folds CSV (default: ./folds.csv, else DATA/folds.csv)")  # fmt: skip
    p.add_argument("--sam-checkpoint", default=None, help="Meta SAM checkpoint to start from")
    p.add_argument("--init-from", default=None, metavar="RUN_DIR",
                   help="start from a run of the same model (its best.pt): tensors whose name "
                        "and shape match are copied, the rest named (e.g. an infrared warm-up)")  # fmt: skip
    p.add_argument("--out", default=None, help="run directory (default runs/<config>/fold<K>)")
    p.add_argument("--prior", default=None, metavar="DIR",
                   help="first-stage maps for a member that needs a prior (model.prompt=mask): "
                        "the out-of-fold maps `kit evaluate` writes to EVAL_DIR/oof; members "
                        "without one ignore it")  # fmt: skip
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set train.lr=3e-4 (repeatable)")  # fmt: skip
    p.add_argument("--max-steps", type=int, default=None, help="stop after N optimiser steps")
    p.add_argument("--seed", type=int, default=None,
                   help="train.seed: tile sampling, augmentation and initialisation (default: "
                        "the config's, 0 in every preset)")  # fmt: skip
    p.add_argument("--dry-run", action="store_true",
                   help="resolve the config, check the data and the fold, print the plan and "
                        "what would happen to --out; train nothing")  # fmt: skip
    p.add_argument("--budget", type=float, default=None, metavar="MINUTES",
                   help="minutes for the whole run: times its steps and sets steps_per_epoch to "
                        "fit (train.budget_minutes; 0 = off)")  # fmt: skip
    p.add_argument("--resume", action="store_true", help="continue from checkpoints/last.pt")
    p.add_argument("--overwrite", action="store_true",
                   help="if --out holds a run of other inputs (config, fold, data, weights), "
                        "delete it and train again (with --resume: resume when they are the same)")  # fmt: skip
    p.add_argument("--log-images", action="store_true", help="write a preview per validation")
    add_progress_flag(p)
    p.add_argument(
        "--device", default=None, help="torch device (default: the rank's GPU, else cpu)"
    )


def run(args: argparse.Namespace) -> int:
    import os
    import time

    started = time.monotonic()  # a --budget counts from here (torch is imported below)

    # Idle OpenMP threads sleep instead of spinning: on a shared CPU spinning threads stall every op.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from pathlib import Path

    from kit.config import apply_overrides, load_config
    from kit.data.layout import find_fragments
    from kit.errors import KitError
    from kit.run import RunDir, default_run_dir
    from kit.train.rerun import checked_prior, finished_message, plan

    data = Path(args.data)
    find_fragments(data, "train")  # a wrong --data fails here, before the model is built
    config = load_config(args.config, args.overrides)
    if args.seed is not None:
        config = apply_overrides(config, [f"train.seed={args.seed}"])
    if args.sam_checkpoint:
        if not Path(args.sam_checkpoint).is_file():
            raise KitError(f"--sam-checkpoint {args.sam_checkpoint} does not exist")
        config = apply_overrides(
            config, [f"model.pretrained={Path(args.sam_checkpoint).resolve()}"]
        )
    if args.init_from:
        from kit.checkpoint import run_checkpoint

        source = run_checkpoint(args.init_from)
        if not source.is_file():
            raise KitError(f"--init-from {args.init_from}: {source} does not exist")
        config = apply_overrides(config, [f"model.init_from={source.resolve()}"])
    folds = Path(args.folds)
    if not folds.is_file() and args.folds == "folds.csv" and (data / "folds.csv").is_file():
        folds = data / "folds.csv"
    if not folds.is_file():
        raise KitError(
            f"folds CSV {folds} does not exist; write one with "
            f"`python -m kit folds --data {data} --out {data / 'folds.csv'}`"
        )
    if args.budget is not None:
        if args.budget < 0:
            raise KitError(f"--budget must be at least 0 minutes (0 = off), got {args.budget}")
        config = apply_overrides(config, [f"train.budget_minutes={args.budget}"])
    if args.max_steps is not None and args.max_steps < 1:
        raise KitError(f"--max-steps must be at least 1, got {args.max_steps}")
    if args.device is not None:
        from kit.cli import checked_device

        checked_device(args.device)
    out = Path(args.out) if args.out else default_run_dir(config.name, args.fold)
    prior = checked_prior(config, Path(args.prior) if args.prior else None)
    decision, _ = plan(  # before torch is imported: a finished run answers at once
        config, data_dir=data, fold=args.fold, folds_csv=folds, run=RunDir(out),
        resume=args.resume, overwrite=args.overwrite, max_steps=args.max_steps, prior_dir=prior,
    )  # fmt: skip
    if args.dry_run:
        return _dry_run(config, data, args.fold, folds, out, decision, args.max_steps)
    if decision == "done":
        print(finished_message(RunDir(out)))
        return 0
    from kit.train.loop import train_fold

    summary = train_fold(
        config, data_dir=data, fold=args.fold, folds_csv=folds, out=out,
        max_steps=args.max_steps, resume=args.resume, overwrite=args.overwrite,
        log_images=args.log_images, device=args.device, started=started,
        progress=not args.no_progress, prior_dir=prior,
    )  # fmt: skip
    if summary["best_f05"] is not None:
        print(f"{out}: step {summary['step']}, best held-out F0.5 {summary['best_f05']:.4f} "
              f"at threshold {summary['threshold']:.3f}")  # fmt: skip
    return 0


# what a dry run says the run directory would do, by kit.train.rerun.plan's decision
_DECISIONS = {
    "done": "is finished with these inputs: nothing to do",
    "resume": "holds an unfinished run of these inputs: it would resume",
    "overwrite": "holds a run of other inputs: --overwrite would delete it and train anew",
}


def _dry_run(config, data, fold: int, folds, out, decision: str, max_steps: int | None) -> int:
    """The plan of `kit train` without training: the fold's data is read and checked (labels of
    held-out rows, ink in them), the model's config checked, nothing written."""
    from kit.models import check_model_config
    from kit.run import MemberId
    from kit.train.loop import describe_fold, load_fold_data, total_steps
    from kit.train.sampler import tile_candidates

    fold_data = load_fold_data(data, fold, folds, progress=False)
    for note in fold_data.notes:
        print(note)
    check_model_config(config)
    tiles = tile_candidates(fold_data.train, fold_data.train_labels, fold_data.train_rows,
                            config.data)  # fmt: skip
    print(f"dry run: {MemberId.of(config)} fold {fold} of {folds}, data {data}")
    for line in describe_fold(config, fold_data, len(tiles)):
        print(f"  {line}")
    steps = total_steps(config, max_steps)
    print(f"  trains to step {steps}" + (" (--max-steps)" if max_steps is not None else ""))
    print(f"  {out} {_DECISIONS.get(decision, 'is new: it would train from scratch')}")
    return 0
