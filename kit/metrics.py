"""The competition metric: F0.5 from global TP/FP/FN counts, and the threshold sweep.

Counts are taken over every pixel of the stitched map (restricted to `mask` when given), never
averaged over tiles. The sweep is one histogram pass: probabilities are quantised to 256 levels
(the 8-bit prediction maps the kit writes), so any number of thresholds costs the same.
"""

from __future__ import annotations

import numpy as np

BETA = 0.5


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


def fbeta_from_counts(tp: float, fp: float, fn: float, *, beta: float = BETA) -> float:
    """F-beta = (1+β²)·TP / ((1+β²)·TP + β²·FN + FP); 0 when there is nothing to count."""
    b2 = beta * beta
    denom = (1 + b2) * tp + b2 * fn + fp
    return float((1 + b2) * tp / denom) if denom > 0 else 0.0


def f05_score(pred: np.ndarray, target: np.ndarray, *, mask: np.ndarray | None = None) -> float:
    """F0.5 of binary pred vs target (H, W) from global counts, inside `mask` when given."""
    return fbeta_from_counts(*confusion_counts(pred, target, mask=mask))


def threshold_curve(
    prob: np.ndarray,
    target: np.ndarray,
    *,
    mask: np.ndarray | None = None,
    thresholds: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(thresholds, f05) float64 arrays; pixel predicted ink when prob >= threshold.

    prob: uint8 0..255 or float 0..1 (H, W); thresholds in 0..1 units (default 0.01..0.99,
    step 0.01). Floats are quantised to 256 levels first, as in the kit's 8-bit maps.
    """
    levels = _to_levels(prob)
    target = _as_bool(target)
    _check_shapes(levels, target, mask)
    if mask is not None:
        m = _as_bool(mask)
        levels, target = levels[m], target[m]
    pos = np.bincount(levels[target], minlength=256).astype(np.float64)
    neg = np.bincount(levels[~target], minlength=256).astype(np.float64)
    # Pixels at level >= k: reverse cumulative sums, so index k answers "threshold at level k".
    tp_at = np.cumsum(pos[::-1])[::-1]
    fp_at = np.cumsum(neg[::-1])[::-1]
    if thresholds is None:
        thresholds = np.round(np.arange(1, 100) / 100, 2)
    thresholds = np.asarray(thresholds, dtype=np.float64)
    k = _level(thresholds)
    tp = np.append(tp_at, 0.0)[k]
    fp = np.append(fp_at, 0.0)[k]
    fn = pos.sum() - tp
    b2 = BETA * BETA
    denom = (1 + b2) * tp + b2 * fn + fp
    f05 = np.divide((1 + b2) * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    return thresholds, f05


def best_threshold(
    prob: np.ndarray,
    target: np.ndarray,
    *,
    mask: np.ndarray | None = None,
    thresholds: np.ndarray | None = None,
) -> tuple[float, float]:
    """(threshold in 0..1, F0.5) maximising F0.5 of `prob >= threshold`; see threshold_curve."""
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
