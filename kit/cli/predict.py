"""Ensemble inference: stitched probability maps for every fragment under DATA."""

from __future__ import annotations

import argparse

HELP = "ensemble inference; writes <PRED_DIR>/<fragment>.png"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="a test/ directory or a single fragment directory")
    p.add_argument("--runs", nargs="+", required=True, help="run directories or checkpoints")
    p.add_argument("--out", required=True, help="prediction directory")


def run(args: argparse.Namespace) -> int:
    from kit.errors import KitError

    raise KitError("predict is not built yet")
