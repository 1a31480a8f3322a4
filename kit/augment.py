"""Batched augmentation on the device, after normalisation: `augment_batch(x, y, ...)`.

    x  float32 (B, C, T, T)   normalised slices (channels = depth)
    y  float32 (B, K, T, T)   ink labels in {0, 1} (K = 1; 2 with the ignore mask beside them)

Every transform draws its own per-sample parameters from one `torch.Generator`, so a batch is
augmented the same way for the same generator state (resume reproduces the next batch) and
differently for every sample. Geometric transforms (flip, rot90, affine) move the image and the
label together: the same grid samples both, bilinear for the image, nearest for the label, so the
label stays a {0, 1} map exactly aligned with what the model sees. Intensity transforms touch the
image only. The `random_*` steps write into the tensors they are given (and return them);
`augment_batch` copies its inputs once, so callers' tensors are never modified.

Parameters are drawn here rather than by an augmentation library (kornia, for one, draws from the
global RNG and cannot take a generator); the warps are plain `affine_grid`/`grid_sample`.

Two ways to apply a transform to the chosen samples, the same results (tests/test_augment.py):
on the CPU a loop over them (which samples were chosen is read on the host: the fastest there);
on other devices the whole batch is transformed and the chosen samples selected with
`torch.where`, so that augmenting never waits for the device (each host read would). One
exception: Gaussian noise is drawn for the whole batch there, so its values differ.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from kit.config import AugmentConfig


def augment_batch(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    config: AugmentConfig,
    generator: torch.Generator,
    channels: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Augmented copies of x (B, C, T, T) and y (B, K, T, T); see the module docstring.

    `channels`: how many of x's channels are the image (the slices); the ones after it (a
    first-stage prior, kit.data.preprocess.read_window) move with every geometric transform
    (bilinear, like the image) and get no intensity transform. None: all of them are image."""
    g = generator
    x, y = x.clone(), y.clone()  # the transforms below work in place
    x, y = random_flip(x, y, p=config.p_flip, generator=g)
    x, y = random_rot90(x, y, p=config.p_rot90, generator=g)
    x, y = random_affine(x, y, config=config, generator=g)
    extra = None
    if channels is not None and channels < x.shape[1]:
        x, extra = x[:, :channels].contiguous(), x[:, channels:]
    x = random_zshift(x, p=config.p_zshift, max_shift=config.max_zshift, generator=g)
    x = random_intensity(x, config=config, generator=g)
    x = random_slice_jitter(x, p=config.p_slice_jitter, amount=config.slice_jitter, generator=g)
    x = random_slice_dropout(x, p=config.p_slice_dropout, rate=config.slice_dropout, generator=g)
    x = random_coarse_dropout(x, config=config, generator=g)
    x = random_noise(x, p=config.p_noise, std=config.noise_std, generator=g)
    return (x if extra is None else torch.cat([x, extra], dim=1)), y


def _rand(shape: tuple[int, ...], like: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Uniform [0, 1) float32 on `like`'s device, drawn from `g` (a generator on that device)."""
    return torch.rand(shape, generator=g, device=like.device, dtype=torch.float32)


# Devices where transforms loop over the chosen samples (see the module docstring).
PER_SAMPLE_DEVICES = ("cpu",)


def _loops(x: torch.Tensor) -> bool:
    return x.device.type in PER_SAMPLE_DEVICES


def _chosen(p: float, like: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """bool (B,): which samples get a transform applied with probability p."""
    return _rand((like.shape[0],), like, g) < p


def _apply(x: torch.Tensor, chosen: torch.Tensor, fn) -> torch.Tensor:
    """x with fn(x[part], part) written over the chosen samples; returns it. `fn` may work in
    place and must index its per-sample parameters with `part` (a slice of the batch).

    Where `_loops`: in place, one sample at a time (part = i:i+1): gathering the chosen samples
    with advanced indexing costs more than the transforms themselves on a CPU, and in-place
    `fn`s then copy nothing at all. Elsewhere: fn over a copy of the whole batch, then selected.
    """
    if not _loops(x):
        return torch.where(_per_sample(chosen), fn(x.clone(), slice(None)), x)
    for i in chosen.nonzero().flatten().tolist():
        part = slice(i, i + 1)
        view = x[part]
        out = fn(view, part)
        if out.data_ptr() != view.data_ptr():
            view.copy_(out)
    return x


def _per_sample(value: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, 1, 1, 1), to broadcast over (B, C, H, W)."""
    return value[:, None, None, None]


def random_flip(
    x: torch.Tensor, y: torch.Tensor, *, p: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Horizontal and vertical flips, each with probability p per sample."""
    for dim in (-1, -2):
        flip = _chosen(p, x, generator)
        x = _apply(x, flip, lambda v, _: v.flip(dim))  # noqa: B023 (called right away)
        y = _apply(y, flip, lambda v, _: v.flip(dim))  # noqa: B023
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
    if x.shape[-1] != x.shape[-2]:
        return x, y
    if not _loops(x):
        for k in (1, 2, 3):
            turned = _per_sample(turns == k)
            x = torch.where(turned, torch.rot90(x, k, dims=(-2, -1)), x)
            y = torch.where(turned, torch.rot90(y, k, dims=(-2, -1)), y)
        return x, y
    k = turns.tolist()
    x = _apply(x, turns > 0, lambda v, part: torch.rot90(v, k[part.start], dims=(-2, -1)))
    y = _apply(y, turns > 0, lambda v, part: torch.rot90(v, k[part.start], dims=(-2, -1)))
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
    idx = chosen.nonzero().flatten() if _loops(x) else slice(None)  # the whole batch: no read
    if _loops(x) and not len(idx):
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
    warped_x = F.grid_sample(
        x[idx], grid, mode="bilinear", padding_mode="zeros", align_corners=False
    )
    warped_y = F.grid_sample(
        y[idx], grid, mode="nearest", padding_mode="zeros", align_corners=False
    )
    if not _loops(x):
        warped = _per_sample(chosen)
        return torch.where(warped, warped_x, x), torch.where(warped, warped_y, y)
    x[idx], y[idx] = warped_x, warped_y
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
    shift = draw - max_shift

    def move(v: torch.Tensor, part: slice) -> torch.Tensor:
        source = torch.arange(c, device=x.device)[None, :] + shift[part, None]  # (n, C)
        valid = (source >= 0) & (source < c)
        index = source.clamp(0, c - 1)[:, :, None, None].expand_as(v)
        return torch.gather(v, 1, index) * valid[:, :, None, None]

    return _apply(x, _chosen(p, x, generator) & (shift != 0), move)


def random_intensity(
    x: torch.Tensor, *, config: AugmentConfig, generator: torch.Generator
) -> torch.Tensor:
    """Per-sample gamma, contrast and brightness with probability p_intensity.

    Gamma acts on |x| keeping the sign, so it is defined for mean/std-normalised inputs too.
    """
    g, b = generator, x.shape[0]
    chosen = _chosen(config.p_intensity, x, g)
    gamma = _per_sample(torch.exp((_rand((b,), x, g) * 2 - 1) * config.gamma))
    contrast = _per_sample(1 + (_rand((b,), x, g) * 2 - 1) * config.contrast)
    brightness = _per_sample((_rand((b,), x, g) * 2 - 1) * config.brightness)

    def adjust(v: torch.Tensor, part: slice) -> torch.Tensor:
        g, c, b = gamma[part], contrast[part], brightness[part]
        # percentile-normalised input: the cheap in-place path (the same values where v >= 0)
        if _loops(v) and bool((v >= 0).all()):
            return v.pow_(g).mul_(c).add_(b)
        return torch.sign(v) * v.abs().pow(g) * c + b

    return _apply(x, chosen, adjust)


def random_slice_jitter(
    x: torch.Tensor, *, p: float, amount: float, generator: torch.Generator
) -> torch.Tensor:
    """With probability p, scale each slice by its own factor in 1 ± amount (scanner drift)."""
    b, c = x.shape[:2]
    factor = 1 + (_rand((b, c), x, generator) * 2 - 1) * amount
    return _apply(x, _chosen(p, x, generator), lambda v, part: v.mul_(factor[part, :, None, None]))


def random_slice_dropout(
    x: torch.Tensor, *, p: float, rate: float, generator: torch.Generator
) -> torch.Tensor:
    """With probability p, zero each slice with probability `rate` (never all slices)."""
    b, c = x.shape[:2]
    drop = _rand((b, c), x, generator) < rate
    drop &= _chosen(p, x, generator)[:, None]
    drop &= ~drop.all(dim=1, keepdim=True)
    return _apply(x, drop.any(dim=1), lambda v, part: v.mul_((~drop[part])[:, :, None, None]))


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
    if not _loops(x):  # (B, holes, H) rows × (B, holes, W) columns -> (B, 1, H, W) holes
        rows = _inside(torch.arange(h, device=x.device), top, side_y)
        cols = _inside(torch.arange(w, device=x.device), left, side_x)
        holes_mask = (rows[..., :, None] & cols[..., None, :]).any(dim=1) & chosen[:, None, None]
        return x.masked_fill(holes_mask[:, None], 0.0)
    # A few slice assignments per sample beat building (B, holes, H, W) masks by far on a CPU.
    for i in chosen.nonzero().flatten().tolist():
        for y0, x0 in zip(top[i].tolist(), left[i].tolist(), strict=True):
            x[i, :, y0 : y0 + side_y, x0 : x0 + side_x] = 0
    return x


def _inside(coords: torch.Tensor, start: torch.Tensor, side: int) -> torch.Tensor:
    """coords (L,), start (B, holes) -> bool (B, holes, L): start <= coord < start + side."""
    return (coords >= start[..., None]) & (coords < start[..., None] + side)


def random_noise(
    x: torch.Tensor, *, p: float, std: float, generator: torch.Generator
) -> torch.Tensor:
    """With probability p, add Gaussian noise of standard deviation `std`."""
    chosen = _chosen(p, x, generator)
    if p <= 0:  # nothing chosen: draw no noise (the whole-batch path would, for nothing)
        return x

    def add(v: torch.Tensor, _: slice) -> torch.Tensor:
        # per chosen sample where _loops; else for the whole batch (another stream of values)
        noise = torch.randn(v.shape, generator=generator, device=v.device, dtype=v.dtype)
        return v.add_(noise.mul_(std))

    return _apply(x, chosen, add)
