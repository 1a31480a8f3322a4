"""Ensemble inference: stitched probability maps for every fragment under DATA.

Writes <OUT>/<fragment>.png (8-bit probability, the fragment's size), <OUT>/preview/<fragment>.png
(small colour picture) and <OUT>/predict.json (members, weights, data). Fragments already
predicted by the same members are skipped, so reruns are cheap; --overwrite redoes them.
"""

from __future__ import annotations

import argparse

HELP = "ensemble inference; writes <PRED_DIR>/<fragment>.png"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="a test/ directory or a single fragment directory")
    p.add_argument(
        "--runs",
        nargs="+",
        required=True,
        help="run directories, checkpoints (.pt) or directories of runs; RUN:W sets a weight",
    )
    p.add_argument("--out", required=True, help="prediction directory")
    p.add_argument("--weights", nargs="+", type=float, help="one weight per --runs entry")
    p.add_argument(
        "--evaluation",
        default=None,
        help="evaluation.json of `evaluate --tune-weights`: use its tuned weights",
    )
    p.add_argument("--set", nargs="*", default=[], metavar="infer.KEY=VALUE",
                   help="inference overrides for every member, e.g. infer.tta=[identity,hflip]")  # fmt: skip
    p.add_argument("--device", default=None, help="cuda, cuda:1 or cpu (default: cuda if present)")
    p.add_argument("--overwrite", action="store_true", help="redo fragments already predicted")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    import torch

    from kit.data.fragment import Fragment
    from kit.data.layout import find_fragments
    from kit.infer.ensemble import (
        load_members,
        predict_ensemble,
        resolve_members,
    )
    from kit.io import write_png
    from kit.pictures import probability_preview

    out = Path(args.out)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    members = resolve_members(args.runs, args.weights)
    if args.evaluation is not None:
        from kit.errors import KitError
        from kit.infer.ensemble import explicit_weights
        from kit.weights import weigh_by_evaluation

        if args.weights is not None or explicit_weights(args.runs):
            raise KitError("give the weights with --weights, RUN:W or --evaluation, not several")
        members = weigh_by_evaluation(members, Path(args.evaluation))
    fragments = [Fragment(p) for p in find_fragments(args.data, "test")]  # checks masks up front
    record = {
        "data": str(Path(args.data).resolve()),
        "members": [
            {"checkpoint": str(m.checkpoint.resolve()), "weight": m.weight, "name": m.name}
            for m in members
        ],
        "overrides": list(args.set),
    }
    stale = _stale(out / "predict.json", record)
    todo = [f for f in fragments if args.overwrite or stale or not (out / f"{f.id}.png").exists()]
    for f in fragments:
        if f not in todo:
            print(f"{out / f'{f.id}.png'} exists (same members): skipped; --overwrite redoes it")
    if not todo:
        return 0
    loaded = load_members(members, overrides=args.set, device=device)
    for m in members:
        print(f"member {m.name}: {m.checkpoint} (weight {m.weight:g})")
    out.mkdir(parents=True, exist_ok=True)
    (out / "predict.json").write_text(json.dumps(record, indent=2) + "\n")
    for fragment in todo:
        prob = predict_ensemble(loaded, fragment, device=device, progress=not args.no_progress)
        write_png(out / f"{fragment.id}.png", prob)
        write_png(out / "preview" / f"{fragment.id}.png", probability_preview(prob))
        inside = prob[fragment.mask()]
        print(f"{out / f'{fragment.id}.png'}: {fragment.shape[0]}×{fragment.shape[1]}, "
              f"mean probability in mask {inside.mean() / 255:.3f}")  # fmt: skip
    return 0


def _stale(path, record: dict) -> bool:
    """True when the directory was written by other members/data (its PNGs must be redone)."""
    import json

    if not path.exists():
        return False
    try:
        return json.loads(path.read_text()) != record
    except ValueError:
        return True
