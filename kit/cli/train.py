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
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set train.lr=3e-4 (repeatable)")  # fmt: skip
    p.add_argument("--max-steps", type=int, default=None, help="stop after N optimiser steps")
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
    from kit.train.rerun import finished_message, plan

    data = Path(args.data)
    find_fragments(data, "train")  # a wrong --data fails here, before the model is built
    config = load_config(args.config, args.overrides)
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
    decision, _ = plan(  # before torch is imported: a finished run answers at once
        config, data_dir=data, fold=args.fold, folds_csv=folds, run=RunDir(out),
        resume=args.resume, overwrite=args.overwrite, max_steps=args.max_steps,
    )  # fmt: skip
    if decision == "done":
        print(finished_message(RunDir(out)))
        return 0
    from kit.train.loop import train_fold

    summary = train_fold(
        config, data_dir=data, fold=args.fold, folds_csv=folds, out=out,
        max_steps=args.max_steps, resume=args.resume, overwrite=args.overwrite,
        log_images=args.log_images, device=args.device, started=started,
        progress=not args.no_progress,
    )  # fmt: skip
    if summary["best_f05"] is not None:
        print(f"{out}: step {summary['step']}, best held-out F0.5 {summary['best_f05']:.4f} "
              f"at threshold {summary['threshold']:.3f}")  # fmt: skip
    return 0
