"""Test-time augmentation on finished runs: what dihedral TTA adds to the same trained models.

Takes a finished `run_all.sh` output (OUT_DIR: runs/, evaluation/ and, for a cascade, stage1/)
and its dataset (with solution.csv, e.g. a `kit demo-data --variant` directory), and for each
TTA list predicts the test fragments again with `kit predict --set infer.tta=[...]` (a cascade:
stage 1's test maps first, the priors of stage 2, with the same list), submits with the run's
evaluation.json (its threshold and weights, chosen on the out-of-fold maps without TTA) and
scores the submission against solution.csv. Same checkpoints for every list, so the difference
is TTA's alone; it leaves out what TTA would cost during training (each validation predicts
with infer.tta, so a budgeted run would take fewer steps).

    PYTHONPATH=. python bench/tta.py --run OUT_DIR --data DATA_DIR [--out DIR]
        [--tta identity identity,hflip identity,hflip,vflip,rot180]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from bench.generalise import score_submission, sh

ROOT = Path(__file__).resolve().parents[1]


def kit(out: Path, *args: str) -> float:
    """`python -m kit ARGS` (bench.generalise.sh: output in out/kit.log); its wall seconds."""
    start = time.monotonic()
    sh(
        [sys.executable, "-m", "kit", *args],
        out / "kit.log",
        dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    return time.monotonic() - start


def member_runs(evaluation: dict) -> list[str]:
    """The run directories an evaluation.json scored, in its order (as run_all.sh passed them)."""
    return [r["run"] for r in evaluation["runs"]]


def score_tta(run: Path, data: Path, out: Path, tta: str) -> dict:
    """Predict, submit and score the test fragments with infer.tta=[tta]."""
    test, here = data / "test", out / tta.replace(",", "+")
    override = ["--set", f"infer.tta=[{tta}]", "--no-progress"]
    seconds, prior = 0.0, []
    if (run / "stage1").is_dir():  # the members' runs and, with several, their weights
        evaluation1 = run / "stage1" / "evaluation" / "evaluation.json"
        ev1 = json.loads(evaluation1.read_text())
        weights1 = ["--evaluation", str(evaluation1)] if "weights" in ev1 else []
        seconds += kit(here, "predict", "--data", str(test), "--runs", *member_runs(ev1),
                       "--out", str(here / "stage1"), *weights1, *override)  # fmt: skip
        prior = ["--prior", str(here / "stage1")]
    evaluation = run / "evaluation" / "evaluation.json"
    seconds += kit(here, "predict", "--data", str(test), "--runs",
                   *member_runs(json.loads(evaluation.read_text())), "--out",
                   str(here / "predictions"), "--evaluation", str(evaluation), *override,
                   *prior)  # fmt: skip
    submission = here / "submission.csv"
    kit(here, "submit", "--pred", str(here / "predictions"), "--data", str(test), "--evaluation",
        str(evaluation), "--out", str(submission))  # fmt: skip
    return {"tta": tta, "test_f05": score_submission(submission, data), "predict_s": seconds}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, required=True, help="a finished run_all.sh OUT_DIR")
    p.add_argument("--data", type=Path, required=True, help="its dataset, with solution.csv")
    p.add_argument("--out", type=Path, default=None, help="default: RUN/tta")
    p.add_argument("--tta", nargs="+", default=["identity", "identity,rot180",
                                                "identity,hflip,vflip,rot180"])  # fmt: skip
    args = p.parse_args()
    out = args.out or args.run / "tta"
    rows = [score_tta(args.run, args.data, out, tta) for tta in args.tta]
    (out / "tta.json").write_text(json.dumps(rows, indent=1) + "\n")
    print("| TTA | test F0.5 | predict s |\n|---|---|---|")
    for r in rows:
        print(f"| {r['tta']} | {r['test_f05']:.3f} | {r['predict_s']:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
