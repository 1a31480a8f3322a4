"""Threshold, post-process, RLE-encode, validate and write submission.csv.

The threshold is, in order: --threshold; --percentile P (per fragment, the top P % of mask
pixels); the `threshold` of evaluation.json (--evaluation PATH, else the first found of
PRED/evaluation.json, PRED/../evaluation/evaluation.json, PRED/../evaluation.json, and
evaluation.json in the common parent of the predicting runs); else config.post.threshold.
--data (default: the test data recorded in PRED/predict.json) gives the masks, the ids and the
sample_submission.csv order, and the written file is validated against it.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

HELP = "threshold, post-process, RLE-encode, validate, write submission.csv"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pred", required=True, help="prediction directory from `predict`")
    p.add_argument("--out", default="submission.csv", help="CSV to write")
    p.add_argument("--threshold", type=float, default=None, help="probability threshold")
    p.add_argument("--percentile", type=float, default=None, help="ink = top P %% of mask pixels")
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
    import cv2
    import numpy as np

    from kit.config import PostConfig
    from kit.data.fragment import Fragment
    from kit.data.layout import find_fragments
    from kit.errors import KitError
    from kit.io import read_json
    from kit.postprocess import percentile_threshold, postprocess
    from kit.rle import encode
    from kit.submission import validate_submission, write_submission

    if not pred.is_dir():
        raise KitError(f"prediction directory {pred} does not exist; run `python -m kit predict`")
    record = read_json(pred / "predict.json")
    post = PostConfig()
    if data is None and record.get("data"):
        data = Path(record["data"])
    if percentile is None and threshold is None:
        threshold, source = _evaluation_threshold(pred, record, evaluation)
        if threshold is None:
            threshold = post.threshold
            source = f"config.post.threshold (no evaluation.json found: {source})"
    elif threshold is not None:
        source = "--threshold"
    else:
        source = f"--percentile {percentile}"
    min_area = post.min_component_area if min_area is None else min_area
    if data is not None:
        found = {p.name: p for p in find_fragments(data, "test")}
        ids = list(found)
    else:
        ids = sorted(p.stem for p in pred.glob("*.png"))
        print("warning: no --data: masks not applied, submission not validated")
    if not ids:
        raise KitError(f"{pred} holds no <fragment>.png; run `python -m kit predict` first")
    rows = []
    for fid in ids:
        path = pred / f"{fid}.png"
        prob = cv2.imread(str(path), cv2.IMREAD_UNCHANGED) if path.is_file() else None
        if prob is None:
            raise KitError(f"{path} is missing or unreadable: predict fragment {fid} first")
        mask = Fragment(found[fid]).mask() if data is not None else None
        if mask is not None and mask.shape != prob.shape:
            raise KitError(
                f"{path} is {prob.shape[0]}×{prob.shape[1]} but the mask of {found[fid]} is "
                f"{mask.shape[0]}×{mask.shape[1]}: predicted from another dataset?"
            )
        t = threshold
        if percentile is not None:
            t = percentile_threshold(
                prob, mask if mask is not None else np.ones(prob.shape, bool), percentile
            )
        ink = postprocess(prob, mask, threshold=t, min_area=min_area)
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
    print(f"threshold from {source}; min component area {min_area}; wrote {out}")
    return rows


def _evaluation_threshold(pred, record: dict, evaluation) -> tuple[float | None, str]:
    """(threshold, where it came from) from evaluation.json, searched as the module doc says."""
    from kit.errors import KitError
    from kit.io import read_json

    if evaluation is not None:
        candidates = [evaluation]
        if not evaluation.is_file():
            raise KitError(f"{evaluation} does not exist; run `python -m kit evaluate` first")
    else:
        candidates = [pred / "evaluation.json", pred.parent / "evaluation" / "evaluation.json",
                      pred.parent / "evaluation.json"]  # fmt: skip
        runs = [Path(m["checkpoint"]).parent.parent for m in record.get("members", [])]
        if runs:
            candidates.append(
                Path(os.path.commonpath([str(r.parent) for r in runs])) / "evaluation.json"
            )
    for path in candidates:
        if path.is_file():
            summary = read_json(path)
            if "threshold" not in summary:
                raise KitError(f"{path} has no 'threshold'; rerun `python -m kit evaluate`")
            return float(summary["threshold"]), str(path)
    return None, "looked in " + ", ".join(str(c) for c in candidates)


def _sample_path(data: Path | None) -> Path | None:
    """DATA/sample_submission.csv next to test/ (or inside the given directory), if any."""
    if data is None:
        return None
    for sample in (data.parent / "sample_submission.csv", data / "sample_submission.csv"):
        if sample.is_file():
            return sample
    return None
