"""Write an ink-balanced fold split (folds.csv schema) for any dataset in the competition layout."""

from __future__ import annotations

import argparse

HELP = "write an ink-balanced fold split for a dataset"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="dataset directory (with train/)")
    p.add_argument("--k", type=int, default=4, help="number of folds")
    p.add_argument("--out", default="folds.csv", help="CSV to write")


def run(args: argparse.Namespace) -> int:
    from kit.errors import KitError

    raise KitError("folds is not built yet")
