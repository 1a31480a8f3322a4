"""Ensemble inference: stitched probability maps for every fragment under DATA.

Writes <OUT>/<fragment>.png (8-bit probability, the fragment's size) or, with --format tiff or
for a huge map under --format auto, <OUT>/<fragment>.tif (tiled BigTIFF with a pyramid; a
competition fragment keeps its PNG too, which submit encodes), <OUT>/preview/<fragment>.png
(small colour picture) and <OUT>/predict.json (members with their checkpoints' sha256, weights,
overrides, format, and each fragment's files). A rerun skips a fragment only when all of that
is the same (kit.provenance), so reruns are cheap and never stale; --overwrite redoes every
fragment.
"""

from __future__ import annotations

import argparse

from kit.cli import add_progress_flag

HELP = "ensemble inference; writes <PRED_DIR>/<fragment>.png (or .tif)"


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
    p.add_argument("--set", action="append", default=[], metavar="infer.KEY=VALUE",
                   help="an inference override for every member, e.g. infer.tta=[identity,hflip] "
                        "(repeatable)")  # fmt: skip
    p.add_argument("--device", default=None, help="cuda, cuda:1 or cpu (default: cuda if present)")
    p.add_argument("--format", default="auto", choices=["png", "tiff", "auto"],
                   help="map files: 8-bit PNG, or tiled BigTIFF with a pyramid; auto: TIFF above "
                        "2**26 pixels (competition fragments always get the PNG too)")  # fmt: skip
    p.add_argument("--overwrite", action="store_true", help="redo fragments already predicted")
    add_progress_flag(p)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from kit import __version__
    from kit.cli import checked_device
    from kit.data.fragment import Fragment
    from kit.data.layout import find_fragments
    from kit.infer.ensemble import (
        check_compatible,
        load_members,
        predict_ensemble,
        resolve_members,
    )
    from kit.io import remove_temporaries
    from kit.provenance import file_digest, fragment_identity
    from kit.run import PredictionDir, map_suffixes

    out = PredictionDir(args.out)
    device = checked_device(args.device)
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
        "kit": __version__,
        "data": str(Path(args.data).resolve()),
        "members": [
            {
                "checkpoint": str(m.checkpoint.resolve()),
                "sha256": file_digest(m.checkpoint),
                "weight": m.weight,
                "name": m.name,
                "member": m.member,
            }
            for m in members
        ],
        "overrides": list(args.set),
        "format": args.format,
        "fragments": {f.id: fragment_identity(f) for f in fragments},
    }
    suffixes = {f.id: map_suffixes(f.shape, args.format, layout=f.layout) for f in fragments}
    todo = _todo(out, record, fragments, suffixes, overwrite=args.overwrite)
    for f in fragments:
        if f not in todo:
            print(f"{out.map(f.id)} exists (same members, checkpoints and data): skipped; "
                  "--overwrite redoes it")  # fmt: skip
    remove_temporaries(out.path)  # what a killed predict left half-written
    if not todo:
        return 0
    loaded = load_members(members, overrides=args.set, device=device)
    for fragment in todo:  # every fragment before the first map: no half-predicted directory
        check_compatible(loaded, fragment)
        fragment.mask()  # an empty mask fails here
    for m in members:
        print(f"member {m.name}: {m.checkpoint} (weight {m.weight:g})")
    # predict.json lists a fragment only once its map is written: a map that a kill left from
    # other members is never taken for this prediction's
    done = {f.id: record["fragments"][f.id] for f in fragments if f not in todo}
    out.write_record({**record, "fragments": done})
    for fragment in todo:
        prob = predict_ensemble(loaded, fragment, device=device, progress=not args.no_progress)
        written = out.write_map(fragment.id, prob, suffixes[fragment.id])
        done[fragment.id] = record["fragments"][fragment.id]
        out.write_record({**record, "fragments": done})
        mean = _mean_in_mask(prob, fragment.mask())
        print(f"{' and '.join(map(str, written))}: {fragment.shape[0]}×{fragment.shape[1]}, "
              f"mean probability in mask {mean / 255:.3f}")  # fmt: skip
    return 0


def _mean_in_mask(prob, mask) -> float:
    """Mean of `prob` over `mask`, by row bands (no copy of the masked pixels)."""
    total = sum(int(prob[r : r + 1024][mask[r : r + 1024]].sum(dtype="int64"))
                for r in range(0, len(prob), 1024))  # fmt: skip
    return total / max(int(mask.sum()), 1)


def _todo(out, record: dict, fragments: list, suffixes: dict, *, overwrite: bool) -> list:
    """The fragments to predict: all when the members, their checkpoints' bytes, the overrides,
    the format or the kit differ from predict.json's; else those whose files changed or whose map
    files are missing."""
    from kit.errors import KitError

    try:
        old = out.record()
    except KitError:  # unreadable: redo everything
        old = {}
    same = {k: v for k, v in old.items() if k != "fragments"} == {
        k: v for k, v in record.items() if k != "fragments"
    }
    before = old.get("fragments", {}) if same and not overwrite else {}
    return [
        f for f in fragments
        if before.get(f.id) != record["fragments"][f.id]
        or not all(p.exists() for p in out.map_files(f.id, suffixes[f.id]))
    ]  # fmt: skip
