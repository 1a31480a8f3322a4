"""Batched augmentation on the device, after normalisation: `augment_batch(x, y, ...)`.

    x  float32 (B, C, T, T)   normalised slices (channels = depth)
    y  float32 (B, 1, T, T)   ink labels in {0, 1}

Every transform draws its own per-sample parameters from one `torch.Generator`, so a batch is
augmented the same way for the same generator state (resume reproduces the next batch) and
differently for every sample. Geometric transforms (flip, rot90, affine) move the image and the
label together: the same grid samples both, bilinear for the image, nearest for the label, so the
label stays a {0, 1} map exactly aligned with what the model sees. Intensity transforms touch the
image only.

Parameters are drawn here rather than by `kornia.augmentation`, because kornia draws from the
global RNG and cannot take a generator; the warps themselves are plain `affine_grid`/`grid_sample`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from kit.config import AugmentConfig


def augment_batch(
    x: torch.Tensor, y: torch.Tensor, *, config: AugmentConfig, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Augmented copies of x (B, C, T, T) and y (B, 1, T, T); see the module docstring."""
    g = generator
    x, y = random_flip(x, y, p=config.p_flip, generator=g)
    x, y = random_rot90(x, y, p=config.p_rot90, generator=g)
    x, y = random_affine(x, y, config=config, generator=g)
    x = random_zshift(x, p=config.p_zshift, max_shift=config.max_zshift, generator=g)
    x = random_intensity(x, config=config, generator=g)
    x = random_slice_jitter(x, p=config.p_slice_jitter, amount=config.slice_jitter, generator=g)
    x = random_slice_dropout(x, p=config.p_slice_dropout, rate=config.slice_dropout, generator=g)
    x = random_coarse_dropout(x, config=config, generator=g)
    x = random_noise(x, p=config.p_noise, std=config.noise_std, generator=g)
    return x, y


def _rand(shape: tuple[int, ...], like: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Uniform [0, 1) float32 on `like`'s device, drawn from `g` (a generator on that device)."""
    return torch.rand(shape, generator=g, device=like.device, dtype=torch.float32)


def _chosen(p: float, like: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """bool (B,): which samples get a transform applied with probability p."""
    return _rand((like.shape[0],), like, g) < p


def _per_sample(value: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, 1, 1, 1), to broadcast over (B, C, H, W)."""
    return value[:, None, None, None]


def random_flip(
    x: torch.Tensor, y: torch.Tensor, *, p: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Horizontal and vertical flips, each with probability p per sample."""
    for dim in (-1, -2):
        flip = _per_sample(_chosen(p, x, generator))
        x = torch.where(flip, x.flip(dim), x)
        y = torch.where(flip, y.flip(dim), y)
    return x, y


def random_rot90(
    x: torch.Tensor, y: torch.Tensor, *, p: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """With probability p, rotate by 90, 180 or 270 degrees (square tiles only)."""
    turns = torch.where(
        _chosen(p, x, generator),
        1 + (_rand((x.shape[0],), x, generator) * 3).long().clamp_(max=2),
        torch.zeros(x.shape[0], dtype=torch.long, device=x.device),
    )
    if x.shape[-1] != x.shape[-2] or not bool(turns.any()):
        return x, y
    x, y = x.clone(), y.clone()
    for k in (1, 2, 3):
        idx = (turns == k).nonzero().flatten()
        if len(idx):
            x[idx] = torch.rot90(x[idx], k, dims=(-2, -1))
            y[idx] = torch.rot90(y[idx], k, dims=(-2, -1))
    return x, y


def random_affine(
    x: torch.Tensor, y: torch.Tensor, *, config: AugmentConfig, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale/rotate/shift with probability p_affine; outside the source is zero (no ink)."""
    g, b = generator, x.shape[0]
    chosen = _chosen(config.p_affine, x, g)
    angle = (_rand((b,), x, g) * 2 - 1) * math.radians(config.rotate_deg)
    scale = 1 + (_rand((b,), x, g) * 2 - 1) * config.scale
    shift = (_rand((b, 2), x, g) * 2 - 1) * config.shift * 2  # grid units span 2 per side
    idx = chosen.nonzero().flatten()
    if not len(idx):
        return x, y
    cos, sin = torch.cos(angle[idx]) / scale[idx], torch.sin(angle[idx]) / scale[idx]
    theta = torch.stack(
        [
            torch.stack([cos, -sin, shift[idx, 0]], dim=1),
            torch.stack([sin, cos, shift[idx, 1]], dim=1),
        ],
        dim=1,
    )  # (n, 2, 3): output pixel -> source pixel, in [-1, 1] grid units
    grid = F.affine_grid(theta, list(x[idx].shape), align_corners=False)
    x, y = x.clone(), y.clone()
    x[idx] = F.grid_sample(x[idx], grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    y[idx] = F.grid_sample(y[idx], grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return x, y


def random_zshift(
    x: torch.Tensor, *, p: float, max_shift: int, generator: torch.Generator
) -> torch.Tensor:
    """With probability p, move the slice window by -max_shift..max_shift slices, zero-filled.

    Slice c of the output is slice c + s of the input, so the ink surface appears s slices
    shallower or deeper: the papyrus surface wanders in depth across real fragments.
    """
    b, c = x.shape[:2]
    if max_shift <= 0 or c < 2:
        return x
    draw = (_rand((b,), x, generator) * (2 * max_shift + 1)).long().clamp_(max=2 * max_shift)
    shift = torch.where(_chosen(p, x, generator), draw - max_shift, torch.zeros_like(draw))
    source = torch.arange(c, device=x.device)[None, :] + shift[:, None]  # (B, C)
    valid = (source >= 0) & (source < c)
    index = source.clamp(0, c - 1)[:, :, None, None].expand_as(x)
    return torch.gather(x, 1, index) * valid[:, :, None, None]


def random_intensity(
    x: torch.Tensor, *, config: AugmentConfig, generator: torch.Generator
) -> torch.Tensor:
    """Per-sample gamma, contrast and brightness with probability p_intensity.

    Gamma acts on |x| keeping the sign, so it is defined for mean/std-normalised inputs too.
    """
    g, b = generator, x.shape[0]
    chosen = _per_sample(_chosen(config.p_intensity, x, g))
    gamma = _per_sample(torch.exp((_rand((b,), x, g) * 2 - 1) * config.gamma))
    contrast = _per_sample(1 + (_rand((b,), x, g) * 2 - 1) * config.contrast)
    brightness = _per_sample((_rand((b,), x, g) * 2 - 1) * config.brightness)
    out = torch.sign(x) * x.abs().pow(gamma) * contrast + brightness
    return torch.where(chosen, out, x)


def random_slice_jitter(
    x: torch.Tensor, *, p: float, amount: float, generator: torch.Generator
) -> torch.Tensor:
    """With probability p, scale each slice by its own factor in 1 ± amount (scanner drift)."""
    b, c = x.shape[:2]
    factor = 1 + (_rand((b, c), x, generator) * 2 - 1) * amount
    factor = torch.where(_chosen(p, x, generator)[:, None], factor, torch.ones_like(factor))
    return x * factor[:, :, None, None]


def random_slice_dropout(
    x: torch.Tensor, *, p: float, rate: float, generator: torch.Generator
) -> torch.Tensor:
    """With probability p, zero each slice with probability `rate` (never all slices)."""
    b, c = x.shape[:2]
    drop = _rand((b, c), x, generator) < rate
    drop &= _chosen(p, x, generator)[:, None]
    drop &= ~drop.all(dim=1, keepdim=True)
    return x * (~drop)[:, :, None, None]


def random_coarse_dropout(
    x: torch.Tensor, *, config: AugmentConfig, generator: torch.Generator
) -> torch.Tensor:
    """With probability p_coarse_dropout, zero `coarse_holes` squares of side coarse_size·T.

    The label is kept: the model must infer ink under a hole from the context around it.
    """
    g, (b, _, h, w) = generator, x.shape
    holes = max(config.coarse_holes, 0)
    side_y, side_x = max(round(config.coarse_size * h), 1), max(round(config.coarse_size * w), 1)
    top = (_rand((b, holes), x, g) * (h - side_y + 1)).long()
    left = (_rand((b, holes), x, g) * (w - side_x + 1)).long()
    chosen = _chosen(config.p_coarse_dropout, x, g)
    if holes == 0 or not bool(chosen.any()):
        return x
    rows = torch.arange(h, device=x.device)[None, None, :]
    cols = torch.arange(w, device=x.device)[None, None, :]
    in_rows = (rows >= top[..., None]) & (rows < top[..., None] + side_y)  # (B, holes, H)
    in_cols = (cols >= left[..., None]) & (cols < left[..., None] + side_x)  # (B, holes, W)
    hole = (in_rows[..., :, None] & in_cols[..., None, :]).any(dim=1)  # (B, H, W)
    hole &= chosen[:, None, None]
    return x * (~hole)[:, None]


def random_noise(
    x: torch.Tensor, *, p: float, std: float, generator: torch.Generator
) -> torch.Tensor:
    """With probability p, add Gaussian noise of standard deviation `std`."""
    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype) * std
    return x + noise * _per_sample(_chosen(p, x, generator))
