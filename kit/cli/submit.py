"""Threshold, post-process, RLE-encode, validate and write submission.csv.

The threshold and the minimum blob area are decided by kit.post.threshold: --threshold or
--percentile P (per fragment, the top P % of mask pixels; not both); else the `threshold` of
evaluation.json (--evaluation PATH, else found beside the predictions or the runs); else the
`post:` section of the members' configs; else PostConfig's defaults. The log's last line says
which. --data (default: the test data recorded in PRED/predict.json) gives the masks, the ids
and the sample_submission.csv order, and the written file is validated against it.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

HELP = "threshold, post-process, RLE-encode, validate, write submission.csv"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pred", required=True, help="prediction directory from `predict`")
    p.add_argument("--out", default="submission.csv", help="CSV to write")
    p.add_argument("--threshold", type=float, default=None, help="probability threshold in [0, 1]")
    p.add_argument(
        "--percentile", type=float, default=None, help="ink = top P %% of mask pixels, (0, 100]"
    )
    p.add_argument("--evaluation", default=None, help="evaluation.json whose threshold to use")
    p.add_argument("--min-area", type=int, default=None, help="drop ink blobs smaller than this")
    p.add_argument("--data", default=None, help="test directory (masks, ids, validation)")


def run(args: argparse.Namespace) -> int:
    make_submission(
        Path(args.pred),
        Path(args.out),
        data=Path(args.data) if args.data else None,
        threshold=args.threshold,
        percentile=args.percentile,
        evaluation=Path(args.evaluation) if args.evaluation else None,
        min_area=args.min_area,
    )
    return 0


def make_submission(
    pred: Path,
    out: Path,
    *,
    data: Path | None = None,
    threshold: float | None = None,
    percentile: float | None = None,
    evaluation: Path | None = None,
    min_area: int | None = None,
) -> list[tuple[str, str]]:
    """Write `out` from the maps in `pred`; returns the (id, rle) rows in file order."""
    from kit.data.fragment import Fragment
    from kit.data.layout import find_fragments
    from kit.errors import KitError
    from kit.post.threshold import decide_threshold
    from kit.postprocess import postprocess
    from kit.rle import encode
    from kit.run import PredictionDir
    from kit.submission import validate_submission, write_submission

    if not pred.is_dir():
        raise KitError(f"prediction directory {pred} does not exist; run `python -m kit predict`")
    if out.is_dir():
        raise KitError(
            f"--out {out} is a directory: give a file path, e.g. {out / 'submission.csv'}"
        )
    policy = decide_threshold(
        pred, threshold=threshold, percentile=percentile, min_area=min_area, evaluation=evaluation
    )
    prediction = PredictionDir(pred)
    record = prediction.record()
    if data is None and record.get("data"):
        data = Path(record["data"])
    if data is not None:
        found = {p.name: p for p in find_fragments(data, "test")}
        ids = list(found)
    else:
        ids = prediction.map_ids()
        print("warning: no --data: masks not applied, submission not validated")
    if not ids:
        raise KitError(f"{pred} holds no <fragment>.png or .tif; run `python -m kit predict` first")
    rows = []
    for fid in ids:
        fragment = Fragment(found[fid]) if data is not None else None
        prob = prediction.read_checked(fid, fragment)
        mask = fragment.mask() if fragment is not None else None
        t = policy.threshold_for(prob, mask)
        ink = postprocess(prob, mask, threshold=t, min_area=policy.min_area)
        rows.append((fid, encode(ink)))
        print(f"{fid}: threshold {t:.4f}, ink {ink.mean():.2%} of pixels")
    # written beside `out` and validated before it replaces `out`: never publish a bad file
    staged = out.with_name(f".{out.name}.unvalidated")
    try:
        write_submission(rows, staged, sample=_sample_path(data))
        if data is not None:
            validate_submission(staged, data)
        os.replace(staged, out)
    finally:
        staged.unlink(missing_ok=True)
    print(f"{policy.describe()}; wrote {out}")
    return rows


def _sample_path(data: Path | None) -> Path | None:
    """DATA/sample_submission.csv next to test/ (or inside the given directory), if any."""
    if data is None:
        return None
    for sample in (data.parent / "sample_submission.csv", data / "sample_submission.csv"):
        if sample.is_file():
            return sample
    return None
