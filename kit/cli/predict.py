"""Ensemble inference: stitched probability maps for every fragment under DATA.

Writes <OUT>/<fragment>.png (8-bit probability, the fragment's size) or, with --format tiff or
for a huge map under --format auto, <OUT>/<fragment>.tif (tiled BigTIFF with a pyramid; a
competition fragment keeps its PNG too, which submit encodes), <OUT>/preview/<fragment>.png
(small colour picture) and <OUT>/predict.json (members with their checkpoints' sha256, weights,
overrides, format, and each fragment's files). A rerun skips a fragment only when all of that
is the same (kit.provenance), so reruns are cheap and never stale; --overwrite redoes every
fragment.

Shared out: `--part K/N` makes part K of N of every fragment (a band of its rows) on this
machine, `torchrun --nproc_per_node W -m kit predict ...` one part per rank (with --part too:
N·W parts). Parts meet as files in <OUT>/.parts/; rank 0, or without a process group whichever
part finds them all, writes the map, the same bytes one process writes (kit/infer/parts.py).
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
    p.add_argument("--prior", default=None, metavar="DIR",
                   help="first-stage maps of these fragments (a `kit predict` output) for the "
                        "members that need a prior (model.prompt=mask); the others ignore it")  # fmt: skip
    p.add_argument("--part", default=None, metavar="K/N",
                   help="make part K of N (a band of every fragment's rows) for a prediction "
                        "shared between machines; the last part to finish writes the maps")  # fmt: skip
    add_progress_flag(p)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import numpy as np

    from kit import __version__
    from kit.cli import checked_device
    from kit.config import config_to_dict
    from kit.data.fragment import Fragment
    from kit.data.layout import find_fragments
    from kit.infer.ensemble import (
        check_compatible,
        check_priors,
        load_members,
        predict_ensemble,
        resolve_members,
    )
    from kit.infer.parts import Part, part_key
    from kit.io import remove_temporaries
    from kit.models import needs_prior
    from kit.provenance import file_digest, fragment_identity
    from kit.run import POSTS, PredictionDir, map_suffixes
    from kit.train import ddp

    out = PredictionDir(args.out)
    machine = Part.parse(args.part)
    # What is left to do is decided from files alone: a rerun that finds every map made
    # answers without loading torch or joining a process group.
    info = ddp.env_info()
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
    priors = None
    if args.prior is not None:  # an input of every map (a changed prior predicts again)
        priors = PredictionDir(args.prior)
        record["prior"] = priors.identity([f.id for f in fragments])
    suffixes = {f.id: map_suffixes(f.shape, args.format, layout=f.layout) for f in fragments}
    todo = _todo(out, record, fragments, suffixes, overwrite=args.overwrite)
    for f in fragments:
        if f not in todo and info.is_main:
            print(f"{out.map(f.id)} exists (same members, checkpoints and data): skipped; "
                  "--overwrite redoes it")  # fmt: skip
    if info.is_main:
        remove_temporaries(out.path)  # what a killed predict left half-written
    if not todo:
        return 0
    info = ddp.init_distributed()
    part = Part.of(machine, info.rank, info.world_size)
    device = checked_device(
        args.device or (str(ddp.device_for(info)) if info.distributed else None)
    )
    loaded = load_members(members, overrides=args.set, device=device)
    # each member's post: (from its checkpoint, so not an input), for `kit submit` to read
    # without loading a checkpoint
    record[POSTS] = [config_to_dict(lm.config)["post"] for lm in loaded]
    check_priors(loaded, given=priors is not None)
    if not any(needs_prior(lm.config) for lm in loaded):
        priors = None  # no member reads one
    prior_maps = {}
    for fragment in todo:  # every fragment before the first map: no half-predicted directory
        check_compatible(loaded, fragment)
        fragment.mask()  # an empty mask fails here
        if priors is not None:  # checked against the fragment, the whole of it covered
            prior_maps[fragment.id] = priors.read_prior(fragment, [(0, fragment.shape[0])])
    if info.is_main:
        for m in members:
            print(f"member {m.name}: {m.checkpoint} (weight {m.weight:g})")
        # predict.json lists a fragment only once its map is written: a map that a kill left
        # from other members is never taken for this prediction's
        done = {f.id: record["fragments"][f.id] for f in fragments if f not in todo}
        out.write_record({**record, "fragments": done})
    ddp.barrier(info)
    for fragment in todo:
        fid, identity = fragment.id, record["fragments"][fragment.id]
        own = None if part.whole else part.rows(fragment.shape[0])
        prob = predict_ensemble(loaded, fragment, device=device, progress=not args.no_progress,
                                own=own, prior=prior_maps.get(fid))  # fmt: skip
        if not part.whole:
            key = part_key(record, identity)
            out.write_part(fid, key, part.index, part.count, prob[own[0] : own[1]])
            print(f"{fid}: part {part} (rows {own[0]}..{own[1] - 1}) written")
            ddp.barrier(info)
            if not info.is_main:
                continue
            rows = out.read_parts(fid, key, part.count)
            if rows is None:  # other machines' parts still to come: the last one assembles
                continue
            prob = np.concatenate(rows)
        written = out.write_map(fid, prob, suffixes[fid])
        done = out.record().get("fragments", {})  # other machines may have added theirs
        done[fid] = identity
        out.write_record({**record, "fragments": done})
        out.remove_parts(fid)
        mean = _mean_in_mask(prob, fragment.mask())
        print(f"{' and '.join(map(str, written))}: {fragment.shape[0]}×{fragment.shape[1]}, "
              f"mean probability in mask {mean / 255:.3f}")  # fmt: skip
    ddp.cleanup(info)
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
    from kit.run import POSTS

    derived = ("fragments", POSTS)  # what this run made, and what its checkpoints say
    same = {k: v for k, v in old.items() if k not in derived} == {
        k: v for k, v in record.items() if k not in derived
    }
    before = old.get("fragments", {}) if same and not overwrite else {}
    return [
        f for f in fragments
        if before.get(f.id) != record["fragments"][f.id]
        or not all(p.exists() for p in out.map_files(f.id, suffixes[f.id]))
    ]  # fmt: skip
