"""How well budgeted trainings kept their budget: one row per run under the given directories.

Reads every `runs/<member>/fold<k>/run.json` below each DIR (a `run_all.sh` OUT_DIR, or a
`bench/generalise.py --out` directory with one per variant) and prints, per finished run: the
budget, the steps and s/step calibration chose, the re-fit's (if any), the cut's steps (if
any), the steps trained and the run's own wall time (`trained.seconds`: setup, training,
validations) against its budget; then the fraction of runs over 100 % and over 110 % of their
budget (kit/train/budget.py).

    python bench/budget_use.py DIR [DIR ...] [--markdown]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def budget_rows(root: Path) -> list[dict]:
    """One dict per budgeted run below `root` that trained all its steps, sorted by path."""
    rows = []
    for path in sorted(root.rglob("run.json")):
        record = json.loads(path.read_text())
        budget, trained = record.get("budget"), record.get("trained")
        if not budget or not trained:
            continue
        planned = [budget["steps"]] + [(budget.get(k) or {}).get("steps") for k in ("refit", "cut")]
        if trained["steps"] < [n for n in planned if n][-1]:  # still training, or killed
            continue
        budget_s = budget["minutes"] * 60
        rows.append({
            "run": str(path.parent.relative_to(root)),
            "budget_s": budget_s,
            "calibrated": budget["steps"],
            "calibrated_s": budget["step_seconds"],
            "refit": (budget.get("refit") or {}).get("steps"),
            "refit_s": (budget.get("refit") or {}).get("step_seconds"),
            "cut": (budget.get("cut") or {}).get("steps"),
            "steps": trained["steps"],
            "seconds": trained["seconds"],
            "used": trained["seconds"] / budget_s,
        })  # fmt: skip
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dirs", nargs="+", type=Path)
    ap.add_argument("--markdown", action="store_true", help="a Markdown table")
    args = ap.parse_args()
    rows = [r for d in args.dirs for r in budget_rows(d)]
    if not rows:
        raise SystemExit(f"no budgeted run.json under {', '.join(map(str, args.dirs))}")
    cols = ["run", "budget_s", "calibrated", "s/step", "refit", "s/step", "cut", "steps",
            "seconds", "used"]  # fmt: skip
    if args.markdown:
        print("| " + " | ".join(cols) + " |")
        print("|" + "---|" * len(cols))
    for r in rows:
        refit_s = f"{r['refit_s']:.3f}" if r["refit_s"] else "-"
        cells = [r["run"], f"{r['budget_s']:.1f}", str(r["calibrated"]),
                 f"{r['calibrated_s']:.3f}", str(r["refit"] or "-"), refit_s,
                 str(r["cut"] or "-"), str(r["steps"]), f"{r['seconds']:.1f}",
                 f"{100 * r['used']:.0f} %"]  # fmt: skip
        print("| " + " | ".join(cells) + " |" if args.markdown else "  ".join(cells))
    used = [r["used"] for r in rows]
    over, far = sum(u > 1.0 for u in used), sum(u > 1.1 for u in used)
    print(f"\n{len(rows)} runs: budget used {100 * min(used):.0f}-{100 * max(used):.0f} %, "
          f"{over} over 100 %, {far} over 110 %")  # fmt: skip


if __name__ == "__main__":
    main()
