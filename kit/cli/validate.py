"""Check a submission.csv against the test fragments' ids and sizes."""

from __future__ import annotations

import argparse

HELP = "check a submission against the test fragments"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("submission", help="submission.csv")
    p.add_argument("--data", required=True, help="the test/ directory")


def run(args: argparse.Namespace) -> int:
    from kit.errors import KitError

    raise KitError("validate is not built yet")
