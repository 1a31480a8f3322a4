"""Per-pixel logistic regression on slice intensities: the floor every spatial model must beat.

For each fold: features = the preset's slices (data.z_start..z_end) at one pixel, normalised with
fragment_stats/normalize (the kit's one preprocessing path); trained on a subsample of mask pixels
in the fold's training rows; scored on the held-out rows (inside the mask) at the F0.5-best
threshold. Prints per-fold and pooled out-of-fold F0.5.

With --test it then also trains on every training fragment (all rows) and scores the test
fragments against DATA/solution.csv at the pooled out-of-fold threshold (F0.5 from TP/FP/FN pooled
over the test fragments, inside their masks). --out writes the scores as JSON.

A preset whose slice window is "auto" is resolved once by the kit's probe on every training
fragment (held-out rows included: a convenience for a floor, not an honest window choice).

    PYTHONPATH=. python bench/baseline_logreg.py [--data DIR] [--folds CSV] [--config cpu-demo]
        [--test] [--out JSON]
(without --data it generates the demo data, seed 0, into a temporary directory)
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

from kit.config import load_config
from kit.data.demo import make_demo_data
from kit.data.folds import (
    folds_of,
    load_folds,
    rows_mask,
    training_row_ranges,
    validation_row_ranges,
)
from kit.data.fragment import Fragment
from kit.data.preprocess import fragment_stats, normalize
from kit.metrics import best_threshold, binarize, confusion_counts, fbeta_from_counts
from kit.rle import decode


def features(fragment: Fragment, data) -> np.ndarray:
    """Normalised slices, float32 (C, H, W). Fine for demo-sized fragments only."""
    raw = torch.from_numpy(fragment.read(data.z_start, data.z_end).astype(np.int32))[None]
    stats = fragment_stats(fragment, data).as_tensor()[None]
    return normalize(raw, stats, data)[0].numpy()


def data_config(data_dir: Path, config: str):
    """The preset's data section, with "auto" fields resolved from all training fragments."""
    cfg = load_config(config)
    if cfg.data.unresolved:
        from kit.data.probe import probe_fragments, resolve_auto

        frags = [Fragment(p) for p in sorted((data_dir / "train").iterdir()) if p.is_dir()]
        cfg = resolve_auto(cfg, probe_fragments(frags, [f.labels() for f in frags]))
    return cfg.data


def run(data_dir: Path, folds_csv: Path, config: str, samples: int, seed: int) -> dict:
    data = data_config(data_dir, config)
    regions = load_folds(folds_csv)
    fragments = {r.fragment: Fragment(data_dir / "train" / r.fragment) for r in regions}
    feats = {k: features(f, data) for k, f in fragments.items()}
    rng = np.random.default_rng(seed)
    pooled_prob, pooled_target = [], []
    print(f"{'fold':>4} {'held out':<28} {'F0.5':>6} {'thr':>5}")
    for fold in folds_of(regions):
        xs, ys = [], []
        for fid, frag in fragments.items():
            rows = rows_mask(training_row_ranges(regions, fold, fid, frag.shape[0]), frag.shape[0])
            idx = np.flatnonzero((frag.mask() & rows[:, None]).ravel())
            if idx.size:
                idx = rng.choice(idx, min(samples, idx.size), replace=False)
                xs.append(feats[fid].reshape(feats[fid].shape[0], -1)[:, idx].T)
                ys.append(frag.labels().ravel()[idx])
        model = LogisticRegression(max_iter=1000).fit(np.concatenate(xs), np.concatenate(ys))
        probs, targets, names = [], [], []
        for fid, frag in fragments.items():
            ranges = validation_row_ranges(regions, fold, fid, frag.shape[0])
            if not ranges:
                continue
            keep = frag.mask() & rows_mask(ranges, frag.shape[0])[:, None]
            x = feats[fid].reshape(feats[fid].shape[0], -1)[:, keep.ravel()].T
            probs.append(model.predict_proba(x)[:, 1])
            targets.append(frag.labels()[keep].astype(bool))
            names.append(f"{fid}[{ranges[0][0]}:{ranges[-1][1]}]")
        prob, target = np.concatenate(probs), np.concatenate(targets)
        thr, score = best_threshold(prob, target)
        print(f"{fold:>4} {' '.join(names):<28} {score:6.3f} {thr:5.2f}")
        pooled_prob.append(prob)
        pooled_target.append(target)
    thr, score = best_threshold(np.concatenate(pooled_prob), np.concatenate(pooled_target))
    print(f"{'all':>4} {'pooled out-of-fold':<28} {score:6.3f} {thr:5.2f}")
    return {"oof_f05": score, "oof_threshold": thr}


def test_score(
    data_dir: Path, config: str, samples: int, seed: int, threshold: float
) -> dict[str, float]:
    """Train on every mask pixel sample of every training fragment; pooled test F0.5."""
    data = data_config(data_dir, config)
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for path in sorted(p for p in (data_dir / "train").iterdir() if p.is_dir()):
        frag = Fragment(path)
        idx = np.flatnonzero(frag.mask().ravel())
        idx = rng.choice(idx, min(samples, idx.size), replace=False)
        feats = features(frag, data)
        xs.append(feats.reshape(feats.shape[0], -1)[:, idx].T)
        ys.append(frag.labels().ravel()[idx])
    model = LogisticRegression(max_iter=1000).fit(np.concatenate(xs), np.concatenate(ys))
    with open(data_dir / "solution.csv", newline="") as f:
        solution = {r["Id"]: r for r in csv.DictReader(f)}
    tp = fp = fn = 0
    for path in sorted(p for p in (data_dir / "test").iterdir() if p.is_dir()):
        frag = Fragment(path)
        mask = frag.mask()
        feats = features(frag, data)
        prob = np.zeros(mask.shape, np.float64)
        prob[mask] = model.predict_proba(feats.reshape(feats.shape[0], -1)[:, mask.ravel()].T)[:, 1]
        row = solution[path.name]
        target = decode(row["Predicted"], (int(row["height"]), int(row["width"])))
        c = confusion_counts(binarize(prob, threshold) & mask, target)
        tp, fp, fn = tp + c[0], fp + c[1], fn + c[2]
    score = fbeta_from_counts(tp, fp, fn)
    print(f"test (trained on all training fragments, threshold {threshold:.2f}): F0.5 {score:.3f}")
    return {"test_f05": score, "test_threshold": threshold}


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--data", type=Path, help="dataset dir (default: generate demo data)")
    p.add_argument("--folds", type=Path, default=Path(__file__).resolve().parents[1] / "folds.csv")
    p.add_argument("--config", default="cpu-demo", help="preset whose data section is used")
    p.add_argument("--samples", type=int, default=50_000, help="training pixels per fragment")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--test", action="store_true", help="also score test/ against solution.csv")
    p.add_argument("--out", type=Path, help="write the scores as JSON here")
    args = p.parse_args()
    torch.set_num_threads(1)
    start = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = args.data or make_demo_data(Path(tmp) / "demo", seed=0)
        result = run(data_dir, args.folds, args.config, args.samples, args.seed)
        if args.test:
            result |= test_score(
                data_dir, args.config, args.samples, args.seed, result["oof_threshold"]
            )
    result["seconds"] = round(time.time() - start, 1)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"method": "baseline_logreg", **result}) + "\n")
    print(f"({result['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
