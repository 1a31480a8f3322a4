"""Pseudo-labels for self-training: confident ink and confident papyrus from a prediction map,
with the uncertain band between them left out of the loss (an ignore mask).

    check_bands(ink=, background=)                   KitError unless 0 <= background < ink <= 1
    pseudo_labels(prob, mask, ink=, background=)     -> (labels, ignore), bool (H, W) each
    PseudoStats.of(labels, ignore, mask)             -> ink / ignored shares of the papyrus

A pixel of the papyrus (mask) is ink when its probability is at least `ink`, papyrus when it
is at most `background`, and ignored in between; outside the mask nothing is ink and nothing
needs ignoring (no loss or metric counts it). Probabilities are the 8-bit maps `kit predict`
writes (level / 255), so the bands are compared on the same grid (kit.metrics.THRESHOLDS).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kit.errors import KitError


def check_bands(*, ink: float, background: float) -> None:
    for name, value in (("--ink", ink), ("--background", background)):
        if not 0.0 <= value <= 1.0:
            raise KitError(f"{name} must be a probability in [0, 1], got {value}")
    if not background < ink:
        raise KitError(
            f"--background ({background}) must be below --ink ({ink}): pixels between them are "
            "ignored, pixels at or above --ink become ink"
        )


def pseudo_labels(
    prob: np.ndarray, mask: np.ndarray, *, ink: float, background: float
) -> tuple[np.ndarray, np.ndarray]:
    """(labels, ignore) of a uint8 probability map (0..255) inside `mask` (bool, same shape)."""
    check_bands(ink=ink, background=background)
    if prob.shape != mask.shape:
        raise KitError(f"prediction map {prob.shape} and mask {mask.shape} differ in size")
    if prob.dtype != np.uint8:
        raise KitError(f"a prediction map is 8-bit (0..255), got {prob.dtype}")
    # level k is probability k/255: ink at k >= ceil(255 ink), papyrus at k <= floor(255 bg)
    ink_level = int(np.ceil(ink * 255 - 1e-9))
    background_level = int(np.floor(background * 255 + 1e-9))
    mask = mask.astype(bool)
    labels = (prob >= ink_level) & mask
    ignore = mask & ~labels & (prob > background_level)
    return labels, ignore


@dataclass(frozen=True)
class PseudoStats:
    ink: float  # share of the papyrus labelled ink
    ignored: float  # share of the papyrus left out of the loss

    @classmethod
    def of(cls, labels: np.ndarray, ignore: np.ndarray, mask: np.ndarray) -> PseudoStats:
        area = max(int(np.count_nonzero(mask)), 1)
        return cls(np.count_nonzero(labels) / area, np.count_nonzero(ignore) / area)
