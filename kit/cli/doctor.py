"""Check the environment (python, every dependency against the kit's requirements, CUDA) and,
with --data, a dataset (every fragment as the other commands find it: layout, size, each slice
opened and read, mask, labels, infrared) before hours are spent. Prints one line per check and
a summary; exits 1 when any check found a problem.
"""

from __future__ import annotations

import argparse

HELP = "check the environment and a data directory before training"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default=None,
                   help="a dataset directory (train/, test/), a folder of fragments or one fragment")  # fmt: skip


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from kit import __version__
    from kit.doctor import data_checks, environment_checks
    from kit.errors import KitError

    if args.data is not None and not Path(args.data).is_dir():  # a wrong argument, not a check
        raise KitError(f"{args.data} does not exist: pass a dataset directory (train/, test/), "
                       "a folder of fragments or one fragment")  # fmt: skip
    sections = [(f"environment (inkkit {__version__})", environment_checks())]
    if args.data is not None:
        sections.append((f"data {args.data}", data_checks(args.data)))
    width = max(len(c.what) for _, checks in sections for c in checks)
    for title, checks in sections:
        print(title)
        for c in checks:
            print(f"  {c.status.upper() if c.status == 'problem' else c.status:8} "
                  f"{c.what:{width}}  {c.detail}")  # fmt: skip
    problems = [c for _, checks in sections for c in checks if c.status == "problem"]
    notes = sum(c.status == "note" for _, checks in sections for c in checks)
    if problems:
        print(f"{len(problems)} problem(s): {'; '.join(c.what for c in problems)}")
        return 1
    print(f"all checks passed ({notes} note(s))")
    return 0
