"""Fine-tune one fold (SAM or U-Net) and write a run directory."""

from __future__ import annotations

import argparse

HELP = "fine-tune one fold; writes a run directory"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="dataset directory (with train/)")
    p.add_argument("--fold", type=int, required=True, help="fold to hold out (folds CSV)")
    p.add_argument("--config", default="cpu-demo", help="preset name or YAML path")
    p.add_argument("--folds", default="folds.csv", help="folds CSV")
    p.add_argument("--sam-checkpoint", default=None, help="Meta SAM checkpoint to start from")
    p.add_argument("--out", default=None, help="run directory (default runs/<config>-fold<K>)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set train.lr=3e-4 (repeatable)")  # fmt: skip
    p.add_argument("--max-steps", type=int, default=None, help="stop after N optimiser steps")
    p.add_argument("--resume", action="store_true", help="continue from checkpoints/last.pt")
    p.add_argument("--log-images", action="store_true", help="write a preview per validation")


def run(args: argparse.Namespace) -> int:
    from kit.errors import KitError

    raise KitError("train is not built yet")
