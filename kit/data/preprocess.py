"""The one preprocessing path shared by training, validation and inference.

    read_window(fragment, data, y, x, h, w)  -> uint16 (C, h, w) on the host (zero-padded outside)
    fragment_stats(fragment, data)            -> NormStats (per fragment, from sampled mask rows)
    normalize(batch, stats, data)             -> float32 (B, C, h, w) on the device

Windows stay uint16 until they reach the device, so host memory and host→device traffic are
a quarter of float32's. Normalisation is per fragment (not per slice): the intensity profile
across depth is what tells the papyrus surface apart, and per-slice scaling would erase it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from kit.config import DataConfig
from kit.data.fragment import Fragment, FragmentError


@dataclass(frozen=True)
class NormStats:
    """`(x - offset) / scale`; for "percentile" the result is clipped to [0, 1]."""

    offset: float
    scale: float

    def as_tensor(self) -> torch.Tensor:
        return torch.tensor([self.offset, self.scale], dtype=torch.float32)


def read_window(fragment: Fragment, data: DataConfig, y: int, x: int, h: int, w: int) -> np.ndarray:
    """Model input channels over rows y..y+h, cols x..x+w, uint16 (C, h, w); zero outside."""
    H, W = fragment.shape
    out = np.zeros((data.in_channels, h, w), dtype=np.uint16)
    ys, ye, xs, xe = max(y, 0), min(y + h, H), max(x, 0), min(x + w, W)
    if ys >= ye or xs >= xe:
        return out
    if data.input_mode == "ir":
        ir = _cached_ir(fragment)
        out[0, ys - y : ye - y, xs - x : xe - x] = ir[ys:ye, xs:xe]
    elif data.input_mode == "volume":
        out[:, ys - y : ye - y, xs - x : xe - x] = fragment.read(
            data.z_start, data.z_end, slice(ys, ye), slice(xs, xe)
        )
    else:
        raise ValueError(f"data.input_mode must be 'volume' or 'ir', got {data.input_mode!r}")
    return out


def fragment_stats(fragment: Fragment, data: DataConfig, *, max_rows: int = 256) -> NormStats:
    """Normalisation statistics from up to `max_rows` evenly spaced rows, mask pixels only."""
    if data.input_mode == "ir":
        return NormStats(0.0, 255.0)
    mask = fragment.mask()
    rows = np.unique(
        np.linspace(0, fragment.shape[0] - 1, min(max_rows, fragment.shape[0])).astype(int)
    )
    rows = rows[mask[rows].any(axis=1)]
    samples = [
        fragment.read(data.z_start, data.z_end, slice(r, r + 1))[:, 0, mask[r]] for r in rows
    ]
    values = np.concatenate([s.ravel() for s in samples]).astype(np.float64)
    if data.norm == "percentile":
        lo, hi = np.percentile(values, [data.p_low, data.p_high])
        return NormStats(float(lo), float(max(hi - lo, 1.0)))
    if data.norm == "meanstd":
        return NormStats(float(values.mean()), float(max(values.std(), 1.0)))
    raise ValueError(f"data.norm must be 'percentile' or 'meanstd', got {data.norm!r}")


def normalize(batch: torch.Tensor, stats: torch.Tensor, data: DataConfig) -> torch.Tensor:
    """uint16/int (B, C, h, w) and stats (B, 2) = [offset, scale] -> float32 (B, C, h, w)."""
    stats = stats.to(batch.device, torch.float32)
    # in place on one float32 copy: half the time of out-of-place ops on CPU, same values
    x = (
        batch.to(torch.float32, copy=True)  # never modify a float32 input in place
        .sub_(stats[:, 0, None, None, None])
        .div_(stats[:, 1, None, None, None])
    )
    return x.clamp_(0.0, 1.0) if data.norm == "percentile" or data.input_mode == "ir" else x


def _cached_ir(fragment: Fragment) -> np.ndarray:
    ir = getattr(fragment, "_ir_cache", None)
    if ir is None:
        ir = fragment.ir()
        if ir is None:
            raise FragmentError(
                f"{fragment.path / 'ir.png'} is missing: data.input_mode=ir needs the infrared "
                "image (test fragments have none; use data.input_mode=volume)"
            )
        fragment._ir_cache = ir
    return ir
