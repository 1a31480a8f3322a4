"""Where a small run_all.sh spends its seconds: each `python -m kit` step, first run and rerun.

The test suite's demo (`make_demo_data` scale 1/48), one fold of cpu-demo-unet (fragments 2 and
3 only trained on), `TRAIN_ARGS="--max-steps 2"`: what is left is mostly interpreter and
library start-up, which is what the end-to-end tests and an unchanged rerun pay. run_all.sh
runs with PYTHON set to a wrapper that appends each call's wall seconds to OUT/steps.log; the
same OUT_DIR runs twice (the second reuses everything). Prints per step and in all.

    PYTHONPATH=. python bench/run_all_steps.py [--out DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from kit.data.demo import make_demo_data
from kit.data.folds import TRAIN_ONLY, Region, write_folds

ROOT = Path(__file__).resolve().parents[1]
STEPS = ("probe", "train", "evaluate", "predict", "submit", "validate", "report")
WRAPPER = """#!/usr/bin/env bash
start=$(date +%s.%N); "{python}" "$@"; rc=$?
echo "$(echo "$(date +%s.%N) - $start" | bc) $*" >> "{log}"; exit $rc
"""


def run_once(out: Path, data: Path, folds: Path, python: Path) -> tuple[float, dict[str, float]]:
    """(wall seconds, seconds per kit step) of one `bash run_all.sh` into out/kit."""
    log = out / "steps.log"
    log.unlink(missing_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in ("TIME_BUDGET", "SUBMIT_ARGS")}
    env |= {"OUT_DIR": str(out / "kit"), "DATA_DIR": str(data), "FOLDS": str(folds),
            "NGPUS": "0", "CONFIG": "cpu-demo-unet", "TRAIN_ARGS": "--max-steps 2",
            "PYTHON": str(python), "PYTHONPATH": str(ROOT)}  # fmt: skip
    start = time.monotonic()
    subprocess.run(["bash", str(ROOT / "run_all.sh")], env=env, cwd=ROOT, check=True,
                   capture_output=True)  # fmt: skip
    wall = time.monotonic() - start
    steps: dict[str, float] = {}
    for line in log.read_text().splitlines():
        seconds, *argv = line.split()
        if argv[:2] == ["-m", "kit"] and argv[2] in STEPS:
            steps[argv[2]] = steps.get(argv[2], 0.0) + float(seconds)
    return wall, steps


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=ROOT / "bench/results/run_all_steps")
    out = p.parse_args().out.resolve()
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    data = make_demo_data(out / "data", seed=0, scale=1 / 48)
    folds = out / "folds.csv"
    write_folds([Region("1", 0, 0.0, 1.0), Region("2", TRAIN_ONLY, 0.0, 1.0),
                 Region("3", TRAIN_ONLY, 0.0, 1.0)], folds)  # fmt: skip
    python = out / "python"
    python.write_text(WRAPPER.format(python=sys.executable, log=out / "steps.log"))
    python.chmod(0o755)
    runs = {"first run": run_once(out, data, folds, python)}
    runs["rerun"] = run_once(out, data, folds, python)
    print("| | in all | " + " | ".join(STEPS) + " |\n" + "|---" * (len(STEPS) + 2) + "|")
    for name, (wall, steps) in runs.items():
        cells = [f"{steps.get(s, 0.0):.1f} s" for s in STEPS]
        print(f"| {name} | {wall:.1f} s | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
