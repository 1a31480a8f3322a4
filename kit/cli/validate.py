"""Check a submission.csv against the test fragments' ids and sizes.

Exits 0 and prints each id's ink pixel count when the file is valid; otherwise prints the reason
(naming the id) and exits 2.
"""

from __future__ import annotations

import argparse

HELP = "check a submission against the test fragments"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("submission", help="submission.csv")
    p.add_argument("--data", required=True, help="the test/ directory (or the dataset holding it)")


def run(args: argparse.Namespace) -> int:
    from kit.submission import validate_submission

    ink = validate_submission(args.submission, args.data)
    for fid, n in ink.items():
        print(f"{fid}: {n} ink pixels")
    print(f"{args.submission} is valid ({len(ink)} fragments)")
    return 0
