"""The competition metric and the threshold sweep: the kit's one scoring core.

    confusion_counts(pred, target, mask=)    -> (tp, fp, fn) of a binary map
    fbeta / fbeta_from_counts(tp, fp, fn)    -> F0.5 of counts (element-wise / one)
    LevelHistogram.of(prob, target, mask=)   -> ink / no-ink pixels by 8-bit level: every
                                                threshold's counts at once; pools by adding
    threshold_curve / best_threshold         -> F0.5 over THRESHOLDS, and its maximum
    binarize(prob, threshold)                -> prob >= threshold, exactly as the sweep counts

Counts are taken over every pixel of the stitched map (restricted to `mask` when given), never
averaged over tiles. Probabilities are quantised to 256 levels (the 8-bit maps the kit writes),
so the one grid, THRESHOLDS = k/255 for k = 1..255, holds every distinct cut of a map, and any
number of thresholds costs one histogram pass. Training (best.pt), `evaluate` (evaluation.json)
and weight tuning all choose their threshold on it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

BETA = 0.5
LEVELS = np.arange(1, 256)  # ink iff level >= k: k = 0 (everything) and 256 (nothing) aside
THRESHOLDS = LEVELS / 255  # the grid: threshold k/255 is the cut at level k


def confusion_counts(
    pred: np.ndarray, target: np.ndarray, *, mask: np.ndarray | None = None
) -> tuple[int, int, int]:
    """(tp, fp, fn) of binary pred vs target (H, W), non-zero = ink; only where mask is set."""
    pred, target = _as_bool(pred), _as_bool(target)
    _check_shapes(pred, target, mask)
    if mask is not None:
        m = _as_bool(mask)
        pred, target = pred & m, target & m
    tp = int(np.count_nonzero(pred & target))
    return tp, int(np.count_nonzero(pred)) - tp, int(np.count_nonzero(target)) - tp


def fbeta(tp, fp, fn, *, beta: float = BETA) -> np.ndarray:
    """Element-wise F-beta = (1+β²)·TP / ((1+β²)·TP + β²·FN + FP) of count arrays, float64;
    0 where there is nothing to count."""
    tp, fp, fn = (np.asarray(a, dtype=np.float64) for a in (tp, fp, fn))
    b2 = beta * beta
    denom = (1 + b2) * tp + b2 * fn + fp
    return np.divide((1 + b2) * tp, denom, out=np.zeros_like(denom), where=denom > 0)


def fbeta_from_counts(tp: float, fp: float, fn: float, *, beta: float = BETA) -> float:
    """F-beta of one set of counts; 0 when there is nothing to count."""
    return float(fbeta(tp, fp, fn, beta=beta))


def f05_score(pred: np.ndarray, target: np.ndarray, *, mask: np.ndarray | None = None) -> float:
    """F0.5 of binary pred vs target (H, W) from global counts, inside `mask` when given."""
    return fbeta_from_counts(*confusion_counts(pred, target, mask=mask))


@dataclass
class LevelHistogram:
    """Pixels by 8-bit level 0..255, int64 (256,) each: ink (`pos`) and no ink (`neg`).

    The sufficient statistic of the threshold sweep: the TP/FP at threshold k/255 are the ink /
    no-ink pixels at levels >= k, so one pass scores every threshold, and histograms of disjoint
    pixel sets (fragments, folds) pool by adding them.
    """

    pos: np.ndarray = field(default_factory=lambda: np.zeros(256, np.int64))
    neg: np.ndarray = field(default_factory=lambda: np.zeros(256, np.int64))

    @classmethod
    def of(
        cls, prob: np.ndarray, target: np.ndarray, *, mask: np.ndarray | None = None
    ) -> LevelHistogram:
        """Histograms of prob (uint8 0..255 or float 0..1) vs target (non-zero = ink), both
        (H, W) or (N,), over the pixels where mask is set (all when None)."""
        levels, target = _to_levels(prob), _as_bool(target)
        _check_shapes(levels, target, mask)
        if mask is not None:
            m = _as_bool(mask)
            levels, target = levels[m], target[m]
        return cls(
            np.bincount(levels[target], minlength=256), np.bincount(levels[~target], minlength=256)
        )

    @classmethod
    def total(cls, histograms: Iterable[LevelHistogram]) -> LevelHistogram:
        """The pooled histogram: the sum of `histograms`."""
        out = cls()
        for h in histograms:
            out.add(h)
        return out

    def add(self, other: LevelHistogram) -> None:
        self.pos += other.pos
        self.neg += other.neg

    def counts(self, thresholds) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(tp, fp, fn) int64, shaped like `thresholds` (0..1 units): ink iff prob >= t."""
        k = _level(np.asarray(thresholds, dtype=np.float64))
        # Pixels at level >= k: reverse cumulative sums; index 256 (above every level) is 0.
        tp = np.append(np.cumsum(self.pos[::-1])[::-1], 0)[k]
        fp = np.append(np.cumsum(self.neg[::-1])[::-1], 0)[k]
        return tp, fp, self.pos.sum() - tp

    def curve(self, thresholds: np.ndarray = THRESHOLDS) -> np.ndarray:
        """F0.5 at each threshold, float64 shaped like `thresholds` (default THRESHOLDS, (255,))."""
        return fbeta(*self.counts(thresholds))

    def best(self) -> tuple[float, float]:
        """(threshold, F0.5) maximising F0.5 over THRESHOLDS; the lowest threshold wins ties."""
        curve = self.curve()
        i = int(np.argmax(curve))
        return float(THRESHOLDS[i]), float(curve[i])

    def at(self, threshold: float) -> float:
        """F0.5 of `prob >= threshold`."""
        return float(self.curve(threshold))


def threshold_curve(
    prob: np.ndarray,
    target: np.ndarray,
    *,
    mask: np.ndarray | None = None,
    thresholds: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(thresholds, f05) float64 arrays; pixel predicted ink when prob >= threshold.

    prob: uint8 0..255 or float 0..1 (H, W); thresholds in 0..1 units (default THRESHOLDS,
    k/255 for k = 1..255). Floats are quantised to 256 levels first, as in the kit's 8-bit maps.
    """
    thresholds = np.array(THRESHOLDS if thresholds is None else thresholds, dtype=np.float64)
    return thresholds, LevelHistogram.of(prob, target, mask=mask).curve(thresholds)


def best_threshold(
    prob: np.ndarray,
    target: np.ndarray,
    *,
    mask: np.ndarray | None = None,
    thresholds: np.ndarray | None = None,
) -> tuple[float, float]:
    """(threshold in 0..1, F0.5) maximising F0.5 of `prob >= threshold`; see threshold_curve.
    The lowest threshold wins ties."""
    ts, scores = threshold_curve(prob, target, mask=mask, thresholds=thresholds)
    i = int(np.argmax(scores))
    return float(ts[i]), float(scores[i])


def binarize(prob: np.ndarray, threshold: float) -> np.ndarray:
    """bool (H, W) = prob >= threshold, with the same 8-bit quantisation as the sweep, so the
    threshold that best_threshold returns reproduces its score exactly."""
    return _to_levels(prob) >= _level(np.asarray(threshold, dtype=np.float64))


def _level(thresholds: np.ndarray) -> np.ndarray:
    # Level L means probability L/255; the epsilon keeps 0.2·255 = 51.000000000000007 at 51.
    return np.clip(np.ceil(thresholds * 255 - 1e-9).astype(np.int64), 0, 256)


def _to_levels(prob: np.ndarray) -> np.ndarray:
    prob = np.asarray(prob)
    if prob.dtype == np.uint8:
        return prob
    if prob.dtype == np.bool_:
        return prob.astype(np.uint8) * 255
    if np.issubdtype(prob.dtype, np.integer):
        raise ValueError(f"integer probabilities must be uint8 0..255, got {prob.dtype}")
    return np.clip(np.rint(prob * 255.0), 0, 255).astype(np.uint8)


def _as_bool(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    return a if a.dtype == np.bool_ else a != 0


def _check_shapes(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None) -> None:
    shapes = [np.shape(a), np.shape(b)] + ([np.shape(mask)] if mask is not None else [])
    if len(set(shapes)) != 1:
        names = "pred/prob, target" + (", mask" if mask is not None else "")
        raise ValueError(f"{names} must have the same shape, got {shapes}")
