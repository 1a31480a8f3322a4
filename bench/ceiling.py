"""How high can test F0.5 go on a demo variant? An observer who knows all but labels and noise.

The demo generator writes each voxel as a noise-free density plus Gaussian noise of the style's
σ (kit.data.demo.SynthFragment.slice, .papyrus). Given the fragment's surface, fibres and
shading, the density with ink (m1) and without (m0) is known at every voxel, and a pixel's
voxels depend on that pixel's label alone; so the log-likelihood ratio per pixel

    LLR(y, x) = Σ_z (m1 - m0) (2 v - m0 - m1) / (2 σ²)      (v: the voxel the file holds)

is all the volume says about the labels. No model of the volume, which must also find the
surface and tell fibres from noise, can do better than the best rule on this map. Two figures on
the variant's test fragments (TP/FP/FN pooled, each at its best threshold chosen on the test
labels, so both are upper figures):

- per pixel: the LLR thresholded (no spatial prior: what depth alone can give);
- spatial: the plain reference's U-Net (bench/plain_reference.py) trained on the LLR map alone,
  on the training fragments of --train-seeds (the variant drawn with other seeds too: more
  strokes than the kit's three fragments), with a learning curve (--curve) to show how close
  to its plateau it got; it approaches the best rule from below.

The volume is regenerated in memory (kit.data.demo.demo_fragments, the same bytes as
`kit demo-data DIR --variant NAME --seed S`); nothing is written but the result.

    PYTHONPATH=. python bench/ceiling.py --variant deep [--seed 0] [--train-seeds 0,1,2,3]
        [--minutes 10] [--curve 2,5] [--threads 2] [--out result.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from bench import plain_reference as plain
from kit.data.demo import (
    BACKGROUND,
    DEFAULT_SCALE,
    N_SLICES,
    SynthFragment,
    demo_fragments,
    style_from,
)

CLIP = 30.0  # the U-Net sees LLR / CLIP clipped to ±1 (a pixel's LLR rarely leaves ±30)


def llr(frag: SynthFragment) -> np.ndarray:
    """Per-pixel log-likelihood ratio of ink against no ink, float32 (H, W); 0 outside the mask
    (no ink is drawn there)."""
    ink, none = np.ones(frag.shape, np.float32), np.zeros(frag.shape, np.float32)
    total = np.zeros(frag.shape, np.float64)
    for z in range(N_SLICES):
        m1, m0 = frag.papyrus(z, ink), frag.papyrus(z, none)
        v = frag.slice(z).astype(np.float32) - np.float32(BACKGROUND)
        total += (m1 - m0) * (2 * v - m0 - m1)
    return np.where(frag.mask, total / (2 * frag.style.noise**2), 0).astype(np.float32)


def pooled_best(maps: list[np.ndarray], frags: list[SynthFragment]) -> tuple[float, float]:
    """(threshold, F0.5) at the best threshold over all test pixels inside their masks."""
    scores = plain.pooled_scores([m * f.mask for m, f in zip(maps, frags, strict=True)],
                                 [f.labels for f in frags])  # fmt: skip
    return scores["oracle_threshold"], scores["oracle_test_f05"]


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--variant", required=True, help="a named demo variant, e.g. deep")
    ap.add_argument("--seed", type=int, default=0, help="the dataset's seed (its test fragments)")
    ap.add_argument("--train-seeds", default="0,1,2,3", help="seeds whose training fragments train")
    ap.add_argument("--scale", type=float, default=DEFAULT_SCALE)
    ap.add_argument("--minutes", type=float, default=10.0, help="the spatial model's training")
    ap.add_argument("--curve", default="2,5", help="also score after these minutes")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, help="also write the result JSON here")
    args = ap.parse_args()
    start = time.monotonic()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    style = style_from(args.variant)

    _, tests = demo_fragments(args.seed, args.scale, style)
    tests = list(tests.values())
    test_llr = [llr(f) for f in tests]
    prior = float(np.mean(np.concatenate([f.labels[f.mask] for f in tests])))
    posterior = [1 / (1 + np.exp(-(m + np.log(prior / (1 - prior))))) for m in test_llr]
    t_pixel, f_pixel = pooled_best(posterior, tests)
    print(f"per pixel: F0.5 {f_pixel:.4f} at posterior {t_pixel:.3f}", file=sys.stderr)

    fragments = []
    for seed in (int(s) for s in args.train_seeds.split(",")):
        for frag in demo_fragments(seed, args.scale, style)[0].values():
            x = np.clip(llr(frag) / CLIP, -1, 1)[None]
            fragments.append((x, frag.mask, frag.labels.astype(np.float32)))
    print(
        f"{len(fragments)} training fragments ({time.monotonic() - start:.0f} s)", file=sys.stderr
    )

    test_x = [np.clip(m / CLIP, -1, 1)[None] for m in test_llr]

    def spatial(model) -> tuple[float, float]:
        maps = [plain.predict(model, x) * f.mask for x, f in zip(test_x, tests, strict=True)]
        return pooled_best(maps, tests)

    curve = []

    def on_mark(minutes: float, steps: int, model) -> None:
        t, f = spatial(model)
        curve.append({"minutes": minutes, "steps": steps, "f05": round(f, 4), "threshold": t})
        print(f"curve: {json.dumps(curve[-1])}", file=sys.stderr, flush=True)

    marks = [float(m) for m in args.curve.split(",") if m and float(m) < args.minutes]
    model, steps = plain.train(fragments, args.minutes, rng, None, (marks, on_mark))
    t_spatial, f_spatial = spatial(model)
    result = {
        "variant": args.variant,
        "seed": args.seed,
        "train_seeds": args.train_seeds,
        "per_pixel_f05": round(f_pixel, 4),
        "spatial_f05": round(f_spatial, 4),
        "spatial_threshold": t_spatial,
        "spatial_steps": steps,
        "spatial_minutes": args.minutes,
        "curve": curve,
        "seconds": round(time.monotonic() - start, 1),
    }
    plain.emit(result, args.out)


if __name__ == "__main__":
    main()
