"""Prompts for SAM in the tile frame: whole-tile boxes and points sampled from labels.

Conventions (SAM's): coordinates are float32 pixel coordinates (x, y) in the model's input frame
(the tile, 0..T-1; not 0..1 units), labels int64 with 1 = ink (foreground), 0 = background,
-1 = padding (ignored by the prompt encoder). Shapes: coords (B, N, 2), labels (B, N), boxes
(B, 4) as (x0, y0, x1, y1). Everything is vectorised over the batch.

Inference has no labels: a model trained with `prompt: points` is run prompt-free at inference
(the prompt encoder's "no prompt" path), which is why point prompts are a training experiment.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from kit.config import ModelConfig
from kit.errors import KitError
from kit.models.sam_family import POINT_SAMPLING


class Prompts(NamedTuple):
    coords: torch.Tensor | None = None  # (B, N, 2) float32 (x, y) pixels
    labels: torch.Tensor | None = None  # (B, N) int64 in {1, 0, -1}
    boxes: torch.Tensor | None = None  # (B, 4) float32 (x0, y0, x1, y1) pixels


def whole_tile_box(batch: int, size: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(B, 4) boxes covering the whole size×size frame."""
    box = torch.tensor([0.0, 0.0, size - 1.0, size - 1.0], device=device)
    return box.expand(batch, 4).contiguous()


def _sample_from(
    weights: torch.Tensor, n: int, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample n flat indices per row of (B, P) weights >= 0; rows may be all zero.

    Returns (indices (B, n), valid (B, n) bool): a tiny floor weight keeps multinomial defined on
    empty rows, and draws that land on zero-weight pixels are reported invalid (-> padding).
    """
    floor = torch.full_like(weights, 1e-12)
    # a seeded CPU generator may drive sampling for CUDA labels: draw where the generator lives
    where = generator.device if generator is not None else weights.device
    idx = torch.multinomial((weights + floor).to(where), n, replacement=True, generator=generator)
    idx = idx.to(weights.device)
    return idx, weights.gather(1, idx) > 0


def _to_xy(idx: torch.Tensor, width: int) -> torch.Tensor:
    return torch.stack([idx % width, idx // width], dim=-1).float()


def sample_points(
    target: torch.Tensor,
    num_points: int,
    *,
    mode: str = "labels",
    pred_logits: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Prompts:
    """Point prompts for a batch of label tiles.

    target: (B, 1, T, T) {0, 1}. mode:
      "labels": half the points on ink (label 1), half on background (label 0);
      "grid":   a regular ceil(√N)² grid (first N points), labelled from the target;
      "error":  points on the errors of `pred_logits` (B, 1, T, T), as in SAM's interactive
                training: missed ink -> 1, false ink -> 0.
    Points that cannot be drawn (no ink in the tile, no errors) are padding (-1).
    """
    b, _, h, w = target.shape
    flat = target.reshape(b, h * w).float()
    if mode == "grid":
        side = math.ceil(math.sqrt(num_points))
        ys = (torch.arange(side, device=target.device) + 0.5) * h / side
        xs = (torch.arange(side, device=target.device) + 0.5) * w / side
        gy, gx = torch.meshgrid(ys.long(), xs.long(), indexing="ij")
        idx = (gy * w + gx).reshape(1, -1)[:, :num_points].expand(b, -1)
        labels = flat.gather(1, idx).long()
        return Prompts(_to_xy(idx, w), labels)
    if mode == "labels":
        n_pos = num_points - num_points // 2
        pos, pos_ok = _sample_from(flat, n_pos, generator)
        neg, neg_ok = _sample_from(1 - flat, num_points - n_pos, generator)
        idx, ok = torch.cat([pos, neg], 1), torch.cat([pos_ok, neg_ok], 1)
    elif mode == "error":
        if pred_logits is None:
            raise KitError("point sampling mode 'error' needs the previous prediction logits")
        pred = (pred_logits.detach().reshape(b, h * w) > 0).float()
        idx, ok = _sample_from((pred - flat).abs(), num_points, generator)
    else:
        raise KitError(f"unknown point sampling {mode!r}; valid: {list(POINT_SAMPLING)}")
    labels = torch.where(ok, flat.gather(1, idx).long(), torch.full_like(idx, -1))
    return Prompts(_to_xy(idx, w), labels)


def training_prompts(
    model: ModelConfig,
    target: torch.Tensor,
    *,
    pred_logits: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Prompts | None:
    """The prompts a training step passes to `model(x, prompts=...)` for `model.prompt`.

    "none" -> None; "box" -> None (the model adds the whole-tile box itself, also at inference);
    "points" -> `sample_points(target, model.num_points, mode=model.point_sampling)`.
    """
    if model.prompt != "points":
        return None
    return sample_points(
        target,
        model.num_points,
        mode=model.point_sampling,
        pred_logits=pred_logits,
        generator=generator,
    )
