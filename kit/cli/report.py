"""Write OUT_DIR/report/index.html (OOF overlays, threshold curve, test maps, training curves,
member configs) and print the run summary."""

from __future__ import annotations

import argparse

HELP = "write the HTML report of a pipeline run and print its summary"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="outputs", help="the pipeline's OUT_DIR")
    p.add_argument("--runs", nargs="+", required=True, help="run directories of the ensemble")
    p.add_argument("--seconds", type=float, default=None, help="wall time to report")


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from kit.report import summary_lines, write_report

    out = Path(args.out)
    evaluation_json = out / "evaluation" / "evaluation.json"
    evaluation = json.loads(evaluation_json.read_text()) if evaluation_json.is_file() else {}
    lines = summary_lines(evaluation, args.runs, args.seconds)
    page = write_report(out, args.runs, lines)
    submission = out / "submission.csv"
    print("\n".join(lines))
    if submission.is_file():
        print(f"submission: {submission}")
    print(f"report: {page}")
    return 0
