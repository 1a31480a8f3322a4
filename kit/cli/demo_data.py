"""Write synthetic fragments in the competition layout (train/1, 2, 3 with labels; test/a, b)."""

from __future__ import annotations

import argparse

HELP = "write synthetic fragments in the competition layout"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("out", help="output directory (created)")
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed, same data)")


def run(args: argparse.Namespace) -> int:
    from kit.errors import KitError

    raise KitError("demo-data is not built yet")
