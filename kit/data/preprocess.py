"""The one preprocessing path shared by training, validation and inference.

    layer_window(fragment, data)              -> (z_start, z_end, reverse) the model reads there
                                                (with data.flatten: along the surface)
    read_window(fragment, data, y, x, h, w)  -> uint16 (C, h, w) on the host (zero-padded outside);
                                                (C + 1, h, w) when the fragment carries a prior
    fragment_stats(fragment, data)            -> NormStats (per fragment, from sampled mask rows)
    normalize(batch, stats, data)             -> float32 (B, C, h, w) on the device

A first-stage prediction attached to a fragment (`Fragment.with_prior`, for members that need a
prior: `kit.models.needs_prior`) is read here too, as one more channel after the slices holding
its 8-bit levels 0..255, so that every tile of it comes from the same window, flips, rot90 and
TTA as the image (the augmentations' geometric transforms move all channels; `normalize` maps it
to [0, 1]).

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
from kit.data.surface import read_flat, surface_map


@dataclass(frozen=True)
class NormStats:
    """`(x - offset) / scale`; for "percentile" the result is clipped to [0, 1]."""

    offset: float
    scale: float

    def as_tensor(self) -> torch.Tensor:
        return torch.tensor([self.offset, self.scale], dtype=torch.float32)


def read_window(fragment: Fragment, data: DataConfig, y: int, x: int, h: int, w: int) -> np.ndarray:
    """Model input channels over rows y..y+h, cols x..x+w, uint16 (C, h, w); zero outside.
    With a prior attached to the fragment, its window follows as channel C: (C + 1, h, w)."""
    image = _image_window(fragment, data, y, x, h, w)
    if fragment.prior is None:
        return image
    return np.concatenate([image, prior_window(fragment.prior, y, x, h, w)])


def prior_window(prior: np.ndarray, y: int, x: int, h: int, w: int) -> np.ndarray:
    """uint16 (1, h, w) window of a uint8 (H, W) prior (its levels 0..255), zero outside."""
    out = np.zeros((1, h, w), dtype=np.uint16)
    H, W = prior.shape
    ys, ye, xs, xe = max(y, 0), min(y + h, H), max(x, 0), min(x + w, W)
    if ys < ye and xs < xe:
        out[0, ys - y : ye - y, xs - x : xe - x] = prior[ys:ye, xs:xe]
    return out


def _image_window(fragment: Fragment, data: DataConfig, y: int, x: int, h: int, w: int):
    H, W = fragment.shape
    ys, ye, xs, xe = max(y, 0), min(y + h, H), max(x, 0), min(x + w, W)
    if data.input_mode == "volume" and (ys, ye, xs, xe) == (y, y + h, x, x + w):
        # inside the fragment: no padding, so no zero-filled copy (halves a band's peak memory)
        return _volume(fragment, data, slice(ys, ye), slice(xs, xe))
    out = np.zeros((data.in_channels, h, w), dtype=np.uint16)
    if ys >= ye or xs >= xe:
        return out
    if data.input_mode == "ir":
        ir = _cached_ir(fragment)
        out[0, ys - y : ye - y, xs - x : xe - x] = ir[ys:ye, xs:xe]
    elif data.input_mode == "volume":
        out[:, ys - y : ye - y, xs - x : xe - x] = _volume(
            fragment, data, slice(ys, ye), slice(xs, xe)
        )
    else:
        raise ValueError(f"data.input_mode must be 'volume' or 'ir', got {data.input_mode!r}")
    return out


def layer_window(fragment: Fragment, data: DataConfig) -> tuple[int, int, bool]:
    """(z_start, z_end, reverse): the slices the model reads from `fragment`, and their order.

    data's window, unless the fragment has a row in its segments.csv (`Fragment.window`): then
    that row's order, and the model's data.in_channels slices centred on that row's window
    (exactly the row's slices when it is as wide; shifted inside the volume at its ends).
    """
    if data.unresolved:
        raise FragmentError(f"data.{data.unresolved[0]}='auto' must be resolved before reading")
    row = fragment.window
    if row is None:
        return data.z_start, data.z_end, data.reverse
    width, n = data.in_channels, fragment.n_slices
    if width > n:
        raise FragmentError(
            f"the model reads {width} slices but {fragment.path} has {n}; use a model trained "
            "on fewer slices"
        )
    z_start = min(max(round((row.z_start + row.z_end - width) / 2), 0), n - width)
    return z_start, z_start + width, row.reverse


def _volume(fragment: Fragment, data: DataConfig, rows: slice, cols: slice) -> np.ndarray:
    """The window's slices in model order: deepest first when reversed (`layer_window`); read
    along the fragment's surface with data.flatten (a fragment whose segments.csv row fixes its
    window is read as the row says)."""
    z_start, z_end, reverse = layer_window(fragment, data)
    if data.flatten and fragment.window is None:
        h, w = fragment.shape
        rows, cols = slice(*rows.indices(h)[:2]), slice(*cols.indices(w)[:2])
        depth = surface_map(fragment, reverse).depth(rows, cols)
        shift = np.rint(depth - data.surface_depth).astype(np.int64)
        volume = read_flat(fragment, z_start, z_end, rows, cols, shift)
    else:
        volume = fragment.read(z_start, z_end, rows, cols)
    return np.ascontiguousarray(volume[::-1]) if reverse else volume


def fragment_stats(fragment: Fragment, data: DataConfig, *, max_rows: int = 256) -> NormStats:
    """Normalisation statistics from up to `max_rows` evenly spaced rows, mask pixels only."""
    if data.input_mode == "ir":
        return NormStats(0.0, 255.0)
    mask = fragment.mask()
    rows = np.unique(
        np.linspace(0, fragment.shape[0] - 1, min(max_rows, fragment.shape[0])).astype(int)
    )
    rows = rows[mask[rows].any(axis=1)]
    # A 65536-bin histogram of the uint16 samples instead of a float64 copy of them: fragment 2
    # with 30 slices samples ~50 M values (0.4 GB as float64, twice that inside np.percentile).
    hist = np.zeros(65536, dtype=np.int64)
    for r in rows:
        values = _volume(fragment, data, slice(r, r + 1), slice(None))[:, 0, mask[r]]
        hist += np.bincount(values.ravel(), minlength=65536)
    if data.norm == "percentile":
        lo, hi = (_histogram_percentile(hist, q) for q in (data.p_low, data.p_high))
        return NormStats(float(lo), float(max(hi - lo, 1.0)))
    if data.norm == "meanstd":
        levels = np.arange(65536, dtype=np.float64)
        n = hist.sum()
        mean = float((hist * levels).sum() / n)
        std = float(np.sqrt((hist * (levels - mean) ** 2).sum() / n))
        return NormStats(mean, max(std, 1.0))
    raise ValueError(f"data.norm must be 'percentile' or 'meanstd', got {data.norm!r}")


def _histogram_percentile(hist: np.ndarray, q: float) -> float:
    """np.percentile(values, q) (method "linear") of the values whose histogram is `hist`."""
    cumulative = np.cumsum(hist)
    index = q / 100 * (cumulative[-1] - 1)
    below = int(np.floor(index))
    t = index - below
    a = float(np.searchsorted(cumulative, below, side="right"))  # sorted value number `below`
    b = float(np.searchsorted(cumulative, min(below + 1, cumulative[-1] - 1), side="right"))
    return b - (b - a) * (1 - t) if t >= 0.5 else a + (b - a) * t  # numpy's lerp, bit for bit


def normalize(batch: torch.Tensor, stats: torch.Tensor, data: DataConfig) -> torch.Tensor:
    """uint16/int (B, C, h, w) and stats (B, 2) = [offset, scale] -> float32 (B, C, h, w).
    A prior channel after the data.in_channels slices (`read_window`) becomes level / 255."""
    c = data.in_channels
    if batch.shape[1] > c:
        image = normalize(batch[:, :c], stats, data)
        return torch.cat([image, batch[:, c:].to(torch.float32) / 255.0], dim=1)
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
                f"{fragment.files.ir} is missing: data.input_mode=ir needs the infrared "
                "image (test fragments have none; use data.input_mode=volume)"
            )
        fragment._ir_cache = ir
    return ir
