"""Out-of-fold F0.5 per fold and pooled, and the threshold that maximises it.

Reads each run's oof/<fragment>.png (or .tif) and oof/regions.csv, with labels and masks from the
dataset (--data, else the `data` recorded in the run's run.json). Runs of the same fold (e.g. a SAM and a
U-Net) are averaged as `predict` would (RUN:W sets a weight); each member is scored too.
With --tune-weights the members' weights are searched on the OOF maps first (kit/weights.py) and
the ensemble is scored with them; `predict --evaluation` then uses the same weights.
Writes <OUT>/evaluation.json (threshold, weights, pooled and per-fold scores), pictures and
<OUT>/oof/: per training fragment the ensemble's out-of-fold map (each fold's held-out rows from
that fold's runs, with the weights used here) in the prediction format, with a predict.json that
records the rows each map covers: the `--prior DIR` of a second stage (`kit train --prior`).
"""

from __future__ import annotations

import argparse

from kit.cli import add_progress_flag

HELP = "out-of-fold F0.5 per fold and pooled, and the best threshold"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runs", nargs="+", required=True, help="run directories (RUN:W sets a weight)")
    p.add_argument("--data", default=None, help="dataset the runs trained on (default: run.json)")
    p.add_argument(
        "--out",
        default=None,
        help="where evaluation.json and pictures go (default: the runs' common parent)",
    )
    p.add_argument(
        "--tune-weights",
        action="store_true",
        help="choose the members' ensemble weights on the OOF maps (reports a nested estimate)",
    )
    p.add_argument("--no-pictures", action="store_true", help="skip overlays and plots")
    add_progress_flag(p)


def run(args: argparse.Namespace) -> int:
    import json
    import os
    from pathlib import Path

    from kit import __version__
    from kit.errors import KitError
    from kit.evaluate import (
        draw_pictures,
        evaluate_runs,
        format_table,
        load_oof_run,
        write_oof_maps,
    )
    from kit.infer.ensemble import explicit_weights, parse_spec
    from kit.io import atomic_path
    from kit.weights import describe_weights, search_weights

    runs = [load_oof_run(spec, args.data) for spec in args.runs]
    search = None
    if args.tune_weights:
        if explicit_weights(args.runs):
            raise KitError("--tune-weights chooses the weights: drop the :W of the --runs entries")
        search = search_weights(runs)
        for r in runs:
            r.weight = search.weights[r.member]
    if args.out is not None:
        out = Path(args.out)
    else:
        parents = [str(Path(parse_spec(s)[0]).resolve().parent) for s in args.runs]
        out = Path(os.path.commonpath(parents))
    evaluation = evaluate_runs(runs, progress=not args.no_progress)
    summary = evaluation.summary()
    if search is not None:
        summary["weights"] = search.summary()
    summary["runs"] = [
        {"run": str(r.path), "fold": r.fold, "member": r.member, "weight": r.weight} for r in runs
    ]
    path = out / "evaluation.json"
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(summary, indent=2) + "\n")
    oof = write_oof_maps(evaluation, out / "oof", {
        "kit": __version__, "kind": "out-of-fold ensemble", "runs": summary["runs"],
    })  # fmt: skip
    if not args.no_pictures:
        draw_pictures(evaluation, runs, out)
    print(format_table(summary))
    if search is not None:
        print(describe_weights(summary["weights"]))
    above = summary["ensemble_above_members"]
    if above is not None:
        print(f"ensemble above every member: {'yes' if above else 'NO'}")
    print(f"out-of-fold F0.5 {summary['f05']:.4f} at threshold {summary['threshold']:.4f}")
    print(f"wrote {path} and the out-of-fold ensemble maps {oof} (a --prior for a next stage)")
    return 0
