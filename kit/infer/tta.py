"""Test-time augmentation: dihedral transforms of a (B, C, H, W) batch and their exact inverses.

A prediction made on `forward(x)` is mapped back with `inverse(...)` before averaging, so every
transform's output lines up pixel for pixel with the untransformed input.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where a transform runs: the names load without it
    import torch

Transform = Callable[["torch.Tensor"], "torch.Tensor"]

# name -> (forward, inverse), both acting on the last two dims
TRANSFORMS: dict[str, tuple[Transform, Transform]] = {
    "identity": (lambda x: x, lambda x: x),
    "hflip": (lambda x: x.flip(-1), lambda x: x.flip(-1)),
    "vflip": (lambda x: x.flip(-2), lambda x: x.flip(-2)),
    "rot90": (lambda x: x.rot90(1, (-2, -1)), lambda x: x.rot90(-1, (-2, -1))),
    "rot180": (lambda x: x.rot90(2, (-2, -1)), lambda x: x.rot90(-2, (-2, -1))),
    "rot270": (lambda x: x.rot90(3, (-2, -1)), lambda x: x.rot90(-3, (-2, -1))),
}


def check_tta(names: list[str] | tuple[str, ...]) -> list[str]:
    """Validated list of transform names (config.infer.tta); empty means identity only."""
    unknown = [n for n in names if n not in TRANSFORMS]
    if unknown:
        raise ValueError(f"unknown TTA transform(s) {unknown}; choose from {list(TRANSFORMS)}")
    return list(names) or ["identity"]


def tta_probabilities(
    predict: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, names: list[str]
) -> torch.Tensor:
    """Mean over transforms of inverse(sigmoid(predict(forward(x)))), float32 (B, 1, H, W).

    `predict` maps (B, C, H, W) to logits (B, 1, H, W). Probabilities, not logits, are averaged,
    as in the ensemble, so TTA and model averaging compose.
    """
    total = None
    for name in check_tta(names):
        forward, inverse = TRANSFORMS[name]
        prob = inverse(predict(forward(x)).float().sigmoid())
        total = prob if total is None else total + prob
    return total / len(names or ["identity"])
