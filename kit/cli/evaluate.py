"""Out-of-fold F0.5 per fold and pooled, and the threshold that maximises it."""

from __future__ import annotations

import argparse

HELP = "out-of-fold F0.5 per fold and pooled, and the best threshold"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runs", nargs="+", required=True, help="run directories")


def run(args: argparse.Namespace) -> int:
    from kit.errors import KitError

    raise KitError("evaluate is not built yet")
