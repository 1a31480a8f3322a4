"""Write an ink-balanced fold split (folds.csv schema) for a dataset in any layout (kit.data.layout).

Labelled train fragments (train/<id>/inklabels.png in the competition layout) are split; the
ones with the most ink are cut into horizontal bands of equal ink until k folds of similar ink
area can be formed. Fragments without labels are skipped.
"""

from __future__ import annotations

import argparse

HELP = "write an ink-balanced fold split for a dataset"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="dataset directory (with train/)")
    p.add_argument("--k", type=int, default=4, help="number of folds")
    p.add_argument("--out", default="folds.csv", help="CSV to write")


def run(args: argparse.Namespace) -> int:
    from kit.data.folds import ink_rows_of, make_folds, write_folds

    ink_rows = ink_rows_of(args.data)
    regions = make_folds(ink_rows, args.k)
    write_folds(regions, args.out)
    for r in regions:
        rows = ink_rows[r.fragment]
        r0, r1 = r.rows(len(rows))
        print(
            f"fold {r.fold}: fragment {r.fragment} rows {r0}..{r1} ink {int(rows[r0:r1].sum())} px"
        )
    print(f"wrote {args.out}")
    return 0
