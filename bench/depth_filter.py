"""A learned depth filter, then a spatial U-Net on its one-channel map: a prototype (issue 10).

bench/ceiling.py shows that the plain reference's U-Net, given each pixel's exact
log-likelihood ratio as its only channel, reaches test F0.5 ~0.97 on `deep` in a few minutes,
where the same U-Net on 36 raw slices (the plain reference) and the kit reach 0.93-0.95: most of
their minutes go into learning, by SGD and from noisy tiles, what a per-pixel linear filter
along depth gives at once. This script tries the two stages with no oracle, from the volume and
the training labels only:

1. The kit's own reading: the `cpu-demo-unet` preset's data section resolved by `kit probe`
   (slice window, layer order, flattening along the surface; kit.data.probe.resolve_auto) and
   kit.data.preprocess (read_window, fragment_stats, normalize): one preprocessing path.
2. A per-pixel logistic regression on the window's values (scikit-learn, --samples training
   pixels inside the masks, standardised): its decision value per pixel is the depth filter's
   map (for Gaussian noise and a known ink profile, the log-likelihood ratio is linear in the
   voxels, so a linear filter can match it where the flattening holds).
   With --local-mean σ, each slice first loses its Gaussian-weighted local mean (shading).
3. bench/plain_reference.py's U-Net, training and tiling on that map alone (clipped to ±CLIP,
   divided by CLIP), for the rest of --minutes on --threads threads; BatchNorm re-estimated.

Test F0.5 on DATA/solution.csv at 0.5 (as the plain reference) and at the test-optimal
threshold (a diagnostic), plus the per-pixel filter's own best test F0.5.

    PYTHONPATH=. python bench/depth_filter.py --data DATA [--minutes 8.5] [--threads 2]
        [--samples 300000] [--curve 2,5] [--local-mean 32] [--filter-only] [--out result.json]
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from bench import plain_reference as plain
from kit.config import load_config
from kit.data.fragment import Fragment
from kit.data.layout import find_fragments
from kit.data.preprocess import fragment_stats, normalize, read_window
from kit.data.probe import describe, probe_fragments, resolve_auto
from kit.rle import decode

CLIP = 8.0  # the U-Net sees the filter's logit / CLIP clipped to ±1


def window(fragment: Fragment, data, local_mean: float = 0) -> np.ndarray:
    """float32 (C, H, W): the kit's normalised model input over the whole fragment; with
    `local_mean` σ > 0 each slice less its Gaussian-weighted mean over the mask (slow shading)."""
    h, w = fragment.shape
    raw = torch.from_numpy(read_window(fragment, data, 0, 0, h, w).astype(np.int32)[None])
    stats = fragment_stats(fragment, data).as_tensor()[None]
    x = normalize(raw, stats, data)[0].numpy()
    if local_mean <= 0:
        return x
    m = (fragment.mask() > 0).astype(np.float32)
    weight = cv2.GaussianBlur(m, (0, 0), local_mean) + 1e-3
    return np.stack([c - cv2.GaussianBlur(c * m, (0, 0), local_mean) / weight for c in x])


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data", type=Path, required=True, help="dataset in the competition layout")
    ap.add_argument("--minutes", type=float, default=8.5, help="wall time, filter included")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--samples", type=int, default=300_000, help="training pixels for the filter")
    ap.add_argument("--curve", default="", help="also score after these minutes of U-Net")
    ap.add_argument("--local-mean", type=float, default=0, help="σ px of a shading removal")
    ap.add_argument("--filter-only", action="store_true", help="score the depth filter only")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    start = time.monotonic()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)

    train = [Fragment(p) for p in find_fragments(args.data, "train")]
    tests = [Fragment(p) for p in find_fragments(args.data, "test")]
    labels = [f.labels() > 0 for f in train]
    probe = probe_fragments(train, labels)
    data = resolve_auto(load_config("cpu-demo-unet"), probe).data
    print(f"probe: {describe(probe)}", file=sys.stderr)
    print(f"window {data.z_start}..{data.z_end} reverse {data.reverse} flatten {data.flatten}",
          file=sys.stderr)  # fmt: skip

    inputs = [window(f, data, args.local_mean) for f in train]
    xs, ys = [], []
    for x, f, y in zip(inputs, train, labels, strict=True):
        m = f.mask() > 0
        xs.append(x[:, m].T)
        ys.append(y[m])
    x_all, y_all = np.concatenate(xs), np.concatenate(ys)
    pick = rng.choice(len(y_all), min(args.samples, len(y_all)), replace=False)
    scaler = StandardScaler().fit(x_all[pick])
    filt = LogisticRegression(max_iter=500).fit(scaler.transform(x_all[pick]), y_all[pick])

    def filtered(x: np.ndarray, f: Fragment) -> np.ndarray:
        c, h, w = x.shape
        logit = filt.decision_function(scaler.transform(x.reshape(c, -1).T)).reshape(h, w)
        return np.where(f.mask() > 0, logit, -CLIP).astype(np.float32)

    maps = [filtered(x, f) for x, f in zip(inputs, train, strict=True)]
    fragments = [
        (np.clip(m / CLIP, -1, 1)[None], f.mask() > 0, y.astype(np.float32))
        for m, f, y in zip(maps, train, labels, strict=True)
    ]
    with open(args.data / "solution.csv", newline="") as fh:
        solution = {r["Id"]: r for r in csv.DictReader(fh)}
    targets = [decode(solution[f.path.name]["Predicted"], f.shape) for f in tests]
    test_maps = [filtered(window(f, data, args.local_mean), f) for f in tests]
    test_x = [np.clip(m / CLIP, -1, 1)[None] for m in test_maps]
    masks = [f.mask() > 0 for f in tests]
    filter_seconds = time.monotonic() - start

    def pooled(probs: list[np.ndarray]) -> tuple[float, float, float]:
        """(F0.5 at 0.5, best threshold, F0.5 there) over the test fragments' masks."""
        scores = plain.pooled_scores([p * m for p, m in zip(probs, masks, strict=True)], targets)
        return scores["test_f05"], scores["oracle_threshold"], scores["oracle_test_f05"]

    per_pixel = pooled([1 / (1 + np.exp(-m)) for m in test_maps])
    print(f"depth filter alone: best test F0.5 {per_pixel[2]:.4f} ({filter_seconds:.0f} s)",
          file=sys.stderr)  # fmt: skip
    if args.filter_only:
        print(json.dumps({"method": "depth_filter", "local_mean": args.local_mean,
                          "filter_only_oracle_f05": round(per_pixel[2], 4)}))  # fmt: skip
        return

    def scored(model) -> tuple[float, float, float]:
        return pooled([plain.predict(model, x) for x in test_x])

    curve = []

    def on_mark(minutes: float, steps: int, model) -> None:
        f05, _, best = scored(model)
        curve.append({"minutes": minutes, "steps": steps, "test_f05": round(f05, 4),
                      "oracle_test_f05": round(best, 4)})  # fmt: skip
        print(f"curve: {json.dumps(curve[-1])}", file=sys.stderr, flush=True)

    remaining = args.minutes - filter_seconds / 60
    marks = [float(m) for m in args.curve.split(",") if m and float(m) < remaining]
    model, steps = plain.train(fragments, remaining, rng, None, (marks, on_mark))
    f05, t, best = scored(model)
    result = {
        "method": "depth_filter",
        "data": str(args.data),
        "window": [data.z_start, data.z_end],
        "reverse": data.reverse,
        "flatten": data.flatten,
        "local_mean": args.local_mean,
        "filter_seconds": round(filter_seconds, 1),
        "filter_only_oracle_f05": round(per_pixel[2], 4),
        "test_f05": round(f05, 4),
        "oracle_threshold": t,
        "oracle_test_f05": round(best, 4),
        "steps": steps,
        "curve": curve,
        "seconds": round(time.monotonic() - start, 1),
    }
    plain.emit(result, args.out)


if __name__ == "__main__":
    main()
