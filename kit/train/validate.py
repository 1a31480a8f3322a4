"""Validation during training: stitch every held-out region, F0.5 at the best threshold.

    validate(model, config, data, device=...) -> Validation(score, threshold, maps)
    write_previews(folder, epoch, ...)          the `--log-images` pictures of one validation

The score comes from the global counts of all held-out pixels inside the papyrus mask and outside
any ignore mask (`Fragment.scored`; never an average of per-tile scores); the trainer keeps
best.pt and the OOF maps of the best one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from kit.config import Config
from kit.errors import KitError
from kit.io import write_png
from kit.models import TrainingHooks

if TYPE_CHECKING:
    from kit.train.loop import FoldData


@dataclass(frozen=True)
class Validation:
    score: float  # held-out F0.5 at `threshold`
    threshold: float
    maps: dict[str, np.ndarray]  # fragment id -> uint8 probability on its held-out rows, 0 else


def validate(model: torch.nn.Module, config: Config, data: FoldData, *, device: str) -> Validation:
    """Predict the held-out rows of `data.val` with `model` (left in training mode after)."""
    from kit.infer.stitch import predict_fragment
    from kit.metrics import best_threshold

    model.eval()
    maps, probs, targets = {}, [], []
    for fragment, ranges in zip(data.val, data.val_rows, strict=True):
        full = np.zeros(fragment.shape, dtype=np.uint8)
        keep = np.zeros(fragment.shape[0], dtype=bool)
        for r0, r1 in ranges:
            pred = predict_fragment(model, config, fragment, rows=(r0, r1), device=device,
                                    progress=False)  # fmt: skip
            full[r0:r1] = pred[r0:r1]
            keep[r0:r1] = True
        labels = fragment.labels()
        if labels is None:
            raise KitError(f"{fragment.files.labels} is missing: cannot validate")
        inside = fragment.scored() & keep[:, None]
        maps[fragment.id] = full
        probs.append(full[inside])
        targets.append(labels[inside])
    model.train()
    threshold, score = best_threshold(np.concatenate(probs), np.concatenate(targets))
    return Validation(float(score), float(threshold), maps)


def write_previews(
    folder: Path,
    epoch: int,
    *,
    config: Config,
    data: FoldData,
    maps: dict[str, np.ndarray],
    model: torch.nn.Module,
    batch: tuple,
    hooks: TrainingHooks,
) -> None:
    """report/epochNNN_<fragment>.png per held-out fragment, and epochNNN_train.png: up to 4
    tiles of the last training `batch` (x, y, tiles) with `model`'s prediction."""
    from kit.train.preview import training_preview, validation_preview

    for fragment, ranges in zip(data.val, data.val_rows, strict=True):
        picture = validation_preview(fragment, config, maps[fragment.id], ranges)
        write_png(folder / f"epoch{epoch:03d}_{fragment.id}.png", picture)
    x, y, tiles = batch
    kwargs = hooks.eval_kwargs(tiles[:4] if tiles is not None else None)
    with torch.no_grad():
        model.eval()
        logits = model(x[:4], **kwargs).logits.float()
        model.train()
    picture = training_preview(x[:4], y[:4], torch.sigmoid(logits), hooks.last_points)
    write_png(folder / f"epoch{epoch:03d}_train.png", picture)
