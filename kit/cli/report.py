"""Write OUT_DIR/report/index.html (tables of the out-of-fold scores and the runs, OOF overlays
of the ensemble and of each member with their legend, threshold curves, test maps beside the
submitted masks, one training-curve figure per quantity, the config with what differs per run)
and print the run summary."""

from __future__ import annotations

import argparse

HELP = "write the HTML report of a pipeline run and print its summary"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="outputs", help="the pipeline's OUT_DIR")
    p.add_argument("--runs", nargs="+", required=True, help="run directories of the ensemble")
    p.add_argument("--seconds", type=float, default=None,
                   help="wall time of this invocation of the pipeline, shown beside the runs' "
                        "own training time (run_all.sh passes its own)")  # fmt: skip


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from kit.errors import KitError
    from kit.io import read_json
    from kit.report import summary_lines, write_report
    from kit.run import RunDir

    out = Path(args.out)
    for run in args.runs:
        r = RunDir(run)
        if not r.looks_like_run():
            raise KitError(
                f"{run} is not a run directory (no {r.config_yaml.name} or "
                f"{r.checkpoints.name}/): pass the runs that `kit train` wrote, e.g. "
                "OUT_DIR/runs/<member>/fold<K>"
            )
    evaluation = read_json(out / "evaluation" / "evaluation.json")
    lines = summary_lines(evaluation, args.runs, args.seconds)
    page = write_report(out, args.runs, evaluation, args.seconds)
    submission = out / "submission.csv"
    print("\n".join(lines))
    if submission.is_file():
        print(f"submission: {submission}")
    print(f"report: {page}")
    return 0
