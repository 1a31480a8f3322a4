"""Per-pixel logistic regression on slice intensities: the floor every spatial model must beat.

For each fold: features = the preset's slices (data.z_start..z_end) at one pixel, normalised with
fragment_stats/normalize (the kit's one preprocessing path); trained on a subsample of mask pixels
in the fold's training rows; scored on the held-out rows (inside the mask) at the F0.5-best
threshold. Prints per-fold and pooled out-of-fold F0.5.

    PYTHONPATH=. python bench/baseline_logreg.py [--data DIR] [--folds CSV] [--config cpu-demo]
(without --data it generates the demo data, seed 0, into a temporary directory)
"""

from __future__ import annotations

import argparse
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
from kit.metrics import best_threshold


def features(fragment: Fragment, data) -> np.ndarray:
    """Normalised slices, float32 (C, H, W). Fine for demo-sized fragments only."""
    raw = torch.from_numpy(fragment.read(data.z_start, data.z_end).astype(np.int32))[None]
    stats = fragment_stats(fragment, data).as_tensor()[None]
    return normalize(raw, stats, data)[0].numpy()


def run(data_dir: Path, folds_csv: Path, config: str, samples: int, seed: int) -> None:
    data = load_config(config).data
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


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--data", type=Path, help="dataset dir (default: generate demo data)")
    p.add_argument("--folds", type=Path, default=Path(__file__).resolve().parents[1] / "folds.csv")
    p.add_argument("--config", default="cpu-demo", help="preset whose data section is used")
    p.add_argument("--samples", type=int, default=50_000, help="training pixels per fragment")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(1)
    start = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = args.data or make_demo_data(Path(tmp) / "demo", seed=0)
        run(data_dir, args.folds, args.config, args.samples, args.seed)
    print(f"({time.time() - start:.0f} s)")


if __name__ == "__main__":
    main()
