"""Threshold, post-process, RLE-encode, validate and write submission.csv."""

from __future__ import annotations

import argparse

HELP = "threshold, post-process, RLE-encode, validate, write submission.csv"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pred", required=True, help="prediction directory from `predict`")
    p.add_argument("--out", default="submission.csv", help="CSV to write")
    p.add_argument("--threshold", type=float, default=None, help="probability threshold")


def run(args: argparse.Namespace) -> int:
    from kit.errors import KitError

    raise KitError("submit is not built yet")
