"""Preview pictures for `train --log-images` (BGR uint8 arrays; the loop writes them to report/).

validation_preview: held-out rows of one fragment: middle input slice | label | prediction
training_preview:   up to 4 augmented training tiles: input | label | prediction, with any
                    prompt points drawn green (inside ink) or red (outside)
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

from kit.config import Config
from kit.data.fragment import Fragment

MAX_WIDTH = 1536
GREEN, RED = (0, 200, 0), (0, 0, 230)


def _to_u8(image: np.ndarray) -> np.ndarray:
    """Any 2-D array -> uint8 stretched between its 1st and 99th percentiles."""
    lo, hi = np.percentile(image, [1, 99]) if image.size else (0.0, 1.0)
    return np.clip((image - lo) / max(hi - lo, 1e-6) * 255, 0, 255).astype(np.uint8)


def _row(panels: list[np.ndarray]) -> np.ndarray:
    gap = np.full((panels[0].shape[0], 4, 3), 255, np.uint8)
    out = [p if p.ndim == 3 else cv2.cvtColor(p, cv2.COLOR_GRAY2BGR) for p in panels]
    return np.concatenate([x for p in out for x in (p, gap)][:-1], axis=1)


def _fit(picture: np.ndarray) -> np.ndarray:
    if picture.shape[1] <= MAX_WIDTH:
        return picture
    scale = MAX_WIDTH / picture.shape[1]
    size = (MAX_WIDTH, max(round(picture.shape[0] * scale), 1))
    return cv2.resize(picture, size, interpolation=cv2.INTER_AREA)


def validation_preview(
    fragment: Fragment, config: Config, prob: np.ndarray, ranges: list[tuple[int, int]]
) -> np.ndarray:
    """Rows min(r0)..max(r1) of `fragment`: input slice, label, `prob` (uint8 H×W)."""
    r0, r1 = min(r for r, _ in ranges), max(r for _, r in ranges)
    if config.data.input_mode == "ir" and fragment.has_ir:
        image = fragment.ir()[r0:r1]
    else:
        z = (config.data.z_start + config.data.z_end) // 2
        image = fragment.read(z, z + 1, slice(r0, r1))[0]
    labels = fragment.labels()
    label = (
        (labels[r0:r1] * 255).astype(np.uint8) if labels is not None else np.zeros_like(prob[r0:r1])
    )
    return _fit(_row([_to_u8(image.astype(np.float32)), label, prob[r0:r1]]))


def training_preview(
    x: torch.Tensor,
    y: torch.Tensor,
    prob: torch.Tensor,
    points: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> np.ndarray:
    """x (B, C, T, T), y and prob (B, 1, T, T), points ((B, N, 2) xy pixels, (B, N) labels)."""
    rows = []
    for i in range(x.shape[0]):
        image = _to_u8(x[i, x.shape[1] // 2].float().cpu().numpy())
        label = (y[i, 0].float().cpu().numpy() * 255).astype(np.uint8)
        pred = cv2.cvtColor(
            (prob[i, 0].float().cpu().numpy() * 255).astype(np.uint8), cv2.COLOR_GRAY2BGR
        )
        if points is not None:
            coords, kinds = points[0][i].cpu().numpy(), points[1][i].cpu().numpy()
            for (px, py), kind in zip(coords, kinds, strict=True):
                if kind >= 0:
                    cv2.circle(pred, (int(px), int(py)), 2, GREEN if kind == 1 else RED, -1)
        rows.append(_row([image, label, pred]))
    return np.concatenate(rows, axis=0)
