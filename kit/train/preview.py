"""Preview pictures (BGR uint8 arrays): `train --log-images` writes them to report/, and the
validation's go to TensorBoard (val/preview, kit/train/tensorboard.py).

validation_preview: held-out rows of one fragment: middle input slice | label | prediction;
                    fragment_panels: its first two, which no validation changes
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


def _narrow(image: np.ndarray, width: int) -> np.ndarray:
    """`image` shrunk (area-averaged) to at most `width` pixels wide, aspect kept."""
    if image.shape[1] <= width:
        return image
    size = (width, max(round(image.shape[0] * width / image.shape[1]), 1))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def _panel_width(max_width: int) -> int:
    return (max_width - 8) // 3  # three panels and two 4-pixel gaps


def fragment_panels(
    fragment: Fragment, config: Config, ranges: list[tuple[int, int]], *, max_width: int = MAX_WIDTH
) -> list[np.ndarray]:
    """The panels of validation_preview that no validation changes: rows min(r0)..max(r1) of
    the input slice (stretched) and the label, uint8, shrunk to fit a picture `max_width` wide.
    Worth keeping: reading them costs a slice and the label image, the rest is a resize."""
    r0, r1 = min(r for r, _ in ranges), max(r for _, r in ranges)
    if config.data.input_mode == "ir" and fragment.has_ir:
        image = fragment.ir()[r0:r1]
    else:
        z = (config.data.z_start + config.data.z_end) // 2
        image = fragment.read(z, z + 1, slice(r0, r1))[0]
    labels = fragment.labels()
    label = np.zeros((r1 - r0, fragment.shape[1]), np.uint8)
    if labels is not None:
        label = (labels[r0:r1] * 255).astype(np.uint8)
    width = _panel_width(max_width)
    return [_to_u8(_narrow(image.astype(np.float32), width)), _narrow(label, width)]


def validation_preview(
    fragment: Fragment,
    config: Config,
    prob: np.ndarray,
    ranges: list[tuple[int, int]],
    *,
    max_width: int = MAX_WIDTH,
    panels: list[np.ndarray] | None = None,
) -> np.ndarray:
    """Rows min(r0)..max(r1) of `fragment`: input slice, label, `prob` (uint8 H×W), at most
    `max_width` wide; `panels`: fragment_panels' for the same max_width (read when None)."""
    r0, r1 = min(r for r, _ in ranges), max(r for _, r in ranges)
    if panels is None:
        panels = fragment_panels(fragment, config, ranges, max_width=max_width)
    return _row([*panels, _narrow(prob[r0:r1], _panel_width(max_width))])


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
