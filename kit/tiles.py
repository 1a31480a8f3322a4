"""Tiling, written once: tile positions, mask coverage, window weights, weighted accumulation.

Used by training (tile sampling, validation) and by inference (`kit.infer.stitch`) alike.
Positions are (y, x) of a tile's top-left corner in fragment pixels. All but the last work on
NumPy arrays (add_tile on torch tensors too); the stitcher accumulates on the model's device.

    tile_positions(shape, tile, stride, rows=...)  -> int64 (N, 2), row-major order
    mask_fractions(mask, positions, tile)          -> float64 (N,) papyrus share of each tile
    window_weights(tile, kind)                     -> float32 (tile, tile), strictly positive
    add_tile(sums, weights, pred, window, y, x)    accumulate one tile (clipped to the arrays)
    finish_uint8(sums, weights)                    -> uint8 weighted mean × 255, 0 where uncovered
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # finish_uint8 imports it: the window names load without torch
    import torch

WINDOWS = ("gaussian", "hann", "flat")


def axis_positions(start: int, end: int, length: int, tile: int, stride: int) -> list[int]:
    """Tile starts covering [start, end) of an axis of `length`; the last one ends at `end`.

    A span shorter than a tile gets one tile, shifted to stay inside the axis; an axis shorter
    than a tile gets position 0 (the window beyond the border is zero-padded by `read_window`).
    """
    if stride <= 0 or tile <= 0:
        raise ValueError(f"tile and stride must be positive, got tile={tile}, stride={stride}")
    if not 0 <= start < end <= length:
        raise ValueError(f"span {start}..{end} is not inside an axis of length {length}")
    if end - start <= tile:
        return [max(min(start, length - tile), 0)]
    positions = list(range(start, end - tile, stride))
    positions.append(end - tile)
    return positions


def tile_positions(
    shape: tuple[int, int], tile: int, stride: int, *, rows: tuple[int, int] | None = None
) -> np.ndarray:
    """(y, x) corners, int64 (N, 2), of tiles covering rows r0..r1 (default all) × all columns.

    Sorted by y then x, so consecutive tiles share a horizontal band (what streaming needs).
    """
    height, width = shape
    r0, r1 = rows if rows is not None else (0, height)
    ys = axis_positions(r0, r1, height, tile, stride)
    xs = axis_positions(0, width, width, tile, stride)
    grid = np.array([(y, x) for y in ys for x in xs], dtype=np.int64)
    return grid.reshape(-1, 2)


def mask_fractions(mask: np.ndarray, positions: np.ndarray, tile: int) -> np.ndarray:
    """Share of papyrus (0..1) in each tile, float64 (N,); pixels beyond the border count as 0.

    An integral image of the whole mask would cost 4-8 bytes per pixel (0.5-1 GB for fragment 2),
    so this integrates per tile row instead: column sums of the tile-high strip, then a prefix
    sum along x. Same result, memory O(tile × W).
    """
    out = np.zeros(len(positions), dtype=np.float64)
    if len(positions) == 0:
        return out
    width = mask.shape[1]
    for y in np.unique(positions[:, 0]):
        rows = positions[:, 0] == y
        column_sums = np.count_nonzero(mask[y : y + tile], axis=0)
        prefix = np.zeros(width + tile + 1, dtype=np.int64)
        np.cumsum(column_sums, out=prefix[1 : width + 1])
        prefix[width + 1 :] = prefix[width]
        xs = positions[rows, 1]
        out[rows] = (prefix[xs + tile] - prefix[xs]) / float(tile * tile)
    return out


def window_weights(tile: int, kind: str = "gaussian") -> np.ndarray:
    """Blending weights, float32 (tile, tile), peak 1 and strictly positive everywhere.

    Down-weighting tile borders (where the model sees the least context) hides seams; positivity
    guarantees every covered pixel gets a defined value. Gaussian sigma = tile/8 as in nnU-Net.
    """
    if kind == "gaussian":
        r = np.arange(tile, dtype=np.float64) - (tile - 1) / 2
        line = np.exp(-(r**2) / (2 * (tile / 8) ** 2))
    elif kind == "hann":
        line = np.hanning(tile + 2)[1:-1]  # the endpoints of a Hann window are 0: drop them
    elif kind == "flat":
        line = np.ones(tile)
    else:
        raise ValueError(f"unknown window {kind!r}; choose one of {list(WINDOWS)}")
    window = np.outer(line, line)
    window /= window.max()
    return np.maximum(window, 1e-6).astype(np.float32)


def add_tile(
    sums: np.ndarray, weights: np.ndarray, pred: np.ndarray, window: np.ndarray, y: int, x: int
) -> None:
    """sums[y:y+t, x:x+t] += window * pred, weights[...] += window, clipped to the arrays.

    `y`, `x` are relative to the arrays' origin and may be negative (a tile starting above a band).
    """
    t = pred.shape[0]
    ys, ye = max(y, 0), min(y + t, sums.shape[0])
    xs, xe = max(x, 0), min(x + t, sums.shape[1])
    if ys >= ye or xs >= xe:
        return
    w = window[ys - y : ye - y, xs - x : xe - x]
    sums[ys:ye, xs:xe] += w * pred[ys - y : ye - y, xs - x : xe - x]
    weights[ys:ye, xs:xe] += w


def finish_uint8(sums: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The weighted mean in the prediction file format: uint8 round(p × 255) (half to even), 0
    where no tile contributed; float32 operations on the tensors' own device."""
    import torch

    prob = torch.where(weights > 0, sums / weights, 0.0)
    return prob.mul_(255.0).round_().clamp_(0, 255).to(torch.uint8)
