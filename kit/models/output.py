"""What every model returns."""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:  # annotations only: importing kit.models loads no torch (registry.py)
    import torch


class ModelOutput(NamedTuple):
    logits: torch.Tensor  # (B, 1, T, T) mask logits at tile resolution
    iou: torch.Tensor | None = None  # (B, 1) predicted IoU of the thresholded mask (SAM only)
