"""Segmentation loss: BCE-with-logits (+ Dice, focal, label smoothing) and SAM's IoU-MSE.

`segmentation_loss(output, target, *, config)` returns a dict of scalar tensors: "total" (what
to backpropagate) and the unweighted parts "bce", "dice", "focal", "iou" (zero when off). The
IoU term is the MSE between the model's predicted IoU and the actual IoU of its thresholded mask
(logits > 0) with the target, as in SAM's training; the actual IoU is a constant (no gradient).
Dice is computed over the whole batch (one ratio), so tiles without ink do not each score 0.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from kit.config import LossConfig
from kit.models.output import ModelOutput


def _masked_mean(values: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    if valid is None:
        return values.mean()
    return (values * valid).sum() / valid.sum().clamp_min(1.0)


def dice_loss(
    logits: torch.Tensor, target: torch.Tensor, *, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """1 − soft Dice over the batch; logits/target (B, 1, T, T)."""
    prob = torch.sigmoid(logits)
    if valid is not None:
        prob, target = prob * valid, target * valid
    inter = (prob * target).sum()
    return 1.0 - (2.0 * inter + 1.0) / (prob.sum() + target.sum() + 1.0)


def focal_loss(
    logits: torch.Tensor, target: torch.Tensor, *, gamma: float, alpha: float
) -> torch.Tensor:
    """Per-pixel sigmoid focal loss (B, 1, T, T); alpha < 0 disables class weighting."""
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    prob = torch.sigmoid(logits)
    p_t = prob * target + (1 - prob) * (1 - target)
    loss = bce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = loss * (alpha * target + (1 - alpha) * (1 - target))
    return loss


def mask_iou(
    logits: torch.Tensor, target: torch.Tensor, *, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """(B, 1) IoU of (logits > 0) with target > 0.5; 1 where both are empty."""
    pred, truth = logits > 0, target > 0.5
    if valid is not None:
        pred, truth = pred & (valid > 0), truth & (valid > 0)
    inter = (pred & truth).flatten(1).sum(1).float()
    union = (pred | truth).flatten(1).sum(1).float()
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))[:, None]


def segmentation_loss(
    output: ModelOutput,
    target: torch.Tensor,
    *,
    config: LossConfig,
    valid: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """output.logits (B, 1, T, T), target (B, 1, T, T) in {0, 1}, valid optional (B, 1, T, T)
    weights (e.g. the papyrus mask: pixels outside do not count)."""
    logits = output.logits.float()
    target = target.to(logits.dtype)
    if valid is not None:
        valid = valid.to(logits.dtype)
    smooth = target * (1 - config.label_smoothing) + 0.5 * config.label_smoothing
    zero = logits.new_zeros(())
    parts = {
        "bce": _masked_mean(F.binary_cross_entropy_with_logits(logits, smooth, reduction="none"), valid),
        "dice": dice_loss(logits, target, valid=valid) if config.dice > 0 else zero,
        "focal": _masked_mean(
            focal_loss(logits, smooth, gamma=config.focal_gamma, alpha=config.focal_alpha), valid
        )
        if config.focal > 0
        else zero,
        "iou": zero,
    }  # fmt: skip
    if output.iou is not None and config.iou > 0:
        actual = mask_iou(logits.detach(), target, valid=valid)
        parts["iou"] = F.mse_loss(output.iou.float(), actual)
    total = (
        config.bce * parts["bce"]
        + config.dice * parts["dice"]
        + config.focal * parts["focal"]
        + config.iou * parts["iou"]
    )
    return {"total": total, **parts}


def level_loss(pos: np.ndarray, neg: np.ndarray, *, config: LossConfig) -> dict[str, float]:
    """`segmentation_loss`'s BCE, Dice and focal terms (weighted as `config` weighs them) of an
    8-bit probability map, from its pixels counted by level: `pos` / `neg` int (256,) are the
    ink / no-ink pixels at each level k (kit.metrics.LevelHistogram), whose probability is k/255
    — 0 and 255 taken as half a level inside (0.5/255, 254.5/255), the map's resolution, so a
    confident miss costs -log(1/510) ≈ 6.2, not infinity. One Dice ratio over all the pixels
    (training: over a batch). No IoU term: a map has no predicted IoU. Exactly the loss of
    those pixels in one batch (`test_level_loss_is_segmentation_loss_of_the_pixels`), at the
    cost of 512 values whatever the map's size. Returns floats: "total" and the parts."""
    levels = torch.arange(256, dtype=torch.float64)
    prob = (levels / 255).clamp(0.5 / 255, 254.5 / 255)
    logits = torch.logit(prob).repeat(2)
    target = torch.cat([torch.ones(256), torch.zeros(256)]).double()
    count = torch.from_numpy(np.concatenate([pos, neg]).astype(np.float64))
    smooth = target * (1 - config.label_smoothing) + 0.5 * config.label_smoothing
    bce = F.binary_cross_entropy_with_logits(logits, smooth, reduction="none")
    focal = focal_loss(logits, smooth, gamma=config.focal_gamma, alpha=config.focal_alpha)
    p = torch.sigmoid(logits)
    inter = (p * target * count).sum()
    dice = 1.0 - (2.0 * inter + 1.0) / ((p * count).sum() + (target * count).sum() + 1.0)
    zero = levels.new_zeros(())
    parts = {"bce": _masked_mean(bce, count), "dice": dice if config.dice > 0 else zero,
             "focal": _masked_mean(focal, count) if config.focal > 0 else zero}  # fmt: skip
    total = config.bce * parts["bce"] + config.dice * parts["dice"] + config.focal * parts["focal"]
    return {"total": float(total), **{k: float(v) for k, v in parts.items()}}
