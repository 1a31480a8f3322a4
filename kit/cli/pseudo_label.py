"""Self-training labels: confident ink and papyrus from predictions of unlabelled fragments.

For every fragment of DATA that PRED holds a map of and that has no labels of its own, pixels
at or above --ink become ink, pixels at or below --background papyrus, and the band between is
written as the fragment's ignore mask (no loss or metric counts it). OUT becomes a dataset that
`kit train` reads like any other:

    OUT/train/<id>            each labelled training fragment of DATA (a link to it)
    OUT/train/<id>/...        each pseudo-labelled fragment in its own layout: its slices and
                              mask linked, its labels and ignore mask written (PNG)
    OUT/folds.csv             the folds of --folds, plus the pseudo-labelled fragments as
                              fold -1: every fold trains on them, none holds them out
    OUT/segments.csv          DATA's layer table, when it has one (a link)
    OUT/pseudo.json           what the labels were made from: the prediction, the bands,
                              the share of ink and of ignored papyrus per fragment

Maps are checked against the fragments they claim to be (predict.json), as `kit submit` does.
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "pseudo-labels (confident ink/papyrus, an ignored band) from predictions, for self-training"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pred", required=True, type=Path, help="prediction directory (kit predict)")
    p.add_argument("--data", required=True, type=Path,
                   help="the dataset (train/ with labels; the predicted fragments anywhere in "
                        "it, or a folder of them with --unlabelled)")  # fmt: skip
    p.add_argument("--unlabelled", type=Path, default=None,
                   help="where the predicted fragments are, when not in --data (default: "
                        "DATA's test/ and train/)")  # fmt: skip
    p.add_argument("--out", required=True, type=Path, help="the self-training dataset to write")
    p.add_argument("--folds", type=Path, default=None, help="folds CSV (default: DATA/folds.csv)")
    p.add_argument("--ink", type=float, default=0.9, help="probability at or above: ink")
    p.add_argument("--background", type=float, default=0.1,
                   help="probability at or below: papyrus; between the two: ignored")  # fmt: skip


def run(args: argparse.Namespace) -> int:
    from kit.data.folds import TRAIN_ONLY, Region, load_folds, write_folds
    from kit.data.fragment import Fragment
    from kit.data.layout import find_fragments, labelled_fragments
    from kit.errors import KitError
    from kit.io import link, write_json, write_png_if_changed
    from kit.post.pseudo import PseudoStats, check_bands, pseudo_labels
    from kit.run import PredictionDir

    check_bands(ink=args.ink, background=args.background)
    prediction = PredictionDir(args.pred)
    if not args.pred.is_dir() or not prediction.map_ids():
        raise KitError(f"{args.pred} holds no prediction maps; run `python -m kit predict` first")
    folds_csv = args.folds or args.data / "folds.csv"
    regions = load_folds(folds_csv)
    out = args.out.resolve()
    if out == args.data.resolve() or out in args.data.resolve().parents:
        raise KitError(f"--out {args.out} would write into --data {args.data}: give a new folder")
    labelled = {p.name: p for p in labelled_fragments(args.data)}
    if args.unlabelled is not None:
        sources = find_fragments(args.unlabelled, "test") or find_fragments(
            args.unlabelled, "train"
        )
    else:
        sources = [*find_fragments(args.data, "test"), *find_fragments(args.data, "train")]
    candidates = {p.name: p for p in sources if p.name not in labelled}
    ids = [fid for fid in prediction.map_ids() if fid in candidates]
    if not ids:
        raise KitError(
            f"{args.pred} predicts no unlabelled fragment of {args.unlabelled or args.data} "
            f"(maps: {', '.join(prediction.map_ids())}; labelled fragments keep their labels)"
        )
    taken = {r.fragment for r in regions} & set(ids)
    if taken:
        raise KitError(f"{folds_csv} already splits {sorted(taken)}: they have labels, or give "
                       "folds without them")  # fmt: skip

    for fid, path in labelled.items():
        link(path, out / "train" / fid)
    record = {"pred": str(args.pred.resolve()), "predict_json": prediction.record(),
              "ink": args.ink, "background": args.background, "fragments": {}}  # fmt: skip
    for fid in ids:
        fragment = Fragment(candidates[fid])
        prob = prediction.read_checked(fid, fragment)
        mask = fragment.mask()
        labels, ignore = pseudo_labels(prob, mask, ink=args.ink, background=args.background)
        files, target = fragment.files, out / "train" / fid
        written = {files.labels, files.ignore}
        if None in written:
            raise KitError(f"the {files.layout} layout of {fragment.path} has no label or "
                           "ignore file to write")  # fmt: skip
        for entry in sorted(files.root.iterdir()):
            if entry not in written:
                link(entry, target / entry.name)
        for path, image in ((files.labels, labels), (files.ignore, ignore)):
            write_png_if_changed(target / path.relative_to(files.root), image.astype("uint8") * 255)
        stats = PseudoStats.of(labels, ignore, mask)
        record["fragments"][fid] = {"ink": round(stats.ink, 5), "ignored": round(stats.ignored, 5)}
        print(f"{fid}: ink {stats.ink:.2%} of the papyrus, ignored {stats.ignored:.2%} "
              f"(between {args.background} and {args.ink})")  # fmt: skip
    tables = {Fragment(p).files.table for p in [*labelled.values(), *(candidates[i] for i in ids)]}
    tables.discard(None)
    if len(tables) > 1:
        raise KitError(f"the fragments come with several layer tables ({', '.join(map(str, sorted(tables)))}): "
                       "merge them into one segments.csv")  # fmt: skip
    for table in tables:
        link(table, out / table.name)
    extra = [Region(fid, TRAIN_ONLY, 0.0, 1.0) for fid in ids]
    write_folds([*regions, *extra], out / "folds.csv")
    write_json(out / "pseudo.json", record)
    print(f"wrote {out}: train on it with `python -m kit train --data {out} --folds "
          f"{out / 'folds.csv'} ...`")  # fmt: skip
    return 0
