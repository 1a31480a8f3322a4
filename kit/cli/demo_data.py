"""Write synthetic fragments in the competition layout (train/1, 2, 3 with labels; test/a, b).

Also writes sample_submission.csv, folds.csv (the standard split) and solution.csv (the test
fragments' true labels, for checking a pipeline end to end). See docs/data.md.
"""

from __future__ import annotations

import argparse

HELP = "write synthetic fragments in the competition layout"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("out", help="output directory (created)")
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed, same data)")
    p.add_argument(
        "--scale", type=float, default=1 / 16,
        help="size relative to the real fragments (default 1/16: fragment 1 is 511×396)",
    )  # fmt: skip


def run(args: argparse.Namespace) -> int:
    from kit.data.demo import make_demo_data
    from kit.errors import KitError

    if not 0 < args.scale <= 1:
        raise KitError(f"--scale must be in (0, 1], got {args.scale}")
    out = make_demo_data(args.out, seed=args.seed, scale=args.scale, progress=True)
    print(f"demo data written to {out}")
    return 0
