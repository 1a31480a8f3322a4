"""From an 8-bit probability map to the binary ink map that is submitted.

    percentile_threshold(prob, mask, percent)  -> threshold putting `percent` % of mask pixels on
    remove_small_components(binary, min_area)  -> bool (H, W) without 8-connected blobs < min_area
    postprocess(prob, mask, threshold=..., min_area=...) -> bool (H, W): threshold, clean, mask

Thresholds are in probability units (0..1) and compared exactly as `kit.metrics.binarize`
does, so the threshold `evaluate` picks reproduces its out-of-fold score.
"""

from __future__ import annotations

import cv2
import numpy as np

from kit.metrics import binarize


def percentile_threshold(prob: np.ndarray, mask: np.ndarray, percent: float) -> float:
    """Lowest level k/255 at which at most `percent` % of the mask's pixels are >= k.

    prob: uint8 (H, W). Winners thresholded at the top ~4-7 % of papyrus pixels: robust to a
    probability scale that shifts between fragments or ensembles.
    """
    if not 0 < percent <= 100:
        raise ValueError(f"percentile must be in (0, 100], got {percent}")
    hist = np.bincount(prob[mask].ravel(), minlength=256)
    at_least = np.cumsum(hist[::-1])[::-1]  # at_least[k] = pixels with prob >= k
    target = percent / 100 * hist.sum()
    level = int(np.argmax(at_least <= target)) if (at_least <= target).any() else 256
    return min(max(level, 1), 255) / 255


def remove_small_components(binary: np.ndarray, min_area: int) -> np.ndarray:
    """bool (H, W) keeping only 8-connected components of at least `min_area` pixels."""
    binary = binary.astype(bool)
    if min_area <= 1 or not binary.any():
        return binary
    _, labels, stats, _ = cv2.connectedComponentsWithStats(binary.view(np.uint8), connectivity=8)
    keep = stats[:, cv2.CC_STAT_AREA] >= min_area
    keep[0] = False  # label 0 is the background
    return keep[labels]


def postprocess(
    prob: np.ndarray, mask: np.ndarray | None, *, threshold: float, min_area: int = 0
) -> np.ndarray:
    """uint8 (H, W) probability -> bool (H, W) ink: >= threshold, small blobs removed, in mask."""
    binary = binarize(prob, threshold)
    if mask is not None:
        binary &= mask.astype(bool)
    return remove_small_components(binary, min_area)
