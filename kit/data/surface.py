"""The papyrus surface's depth at every pixel, from the volume alone; and reading along it.

    surface_map(fragment, reverse)            -> SurfaceMap (coarse depth grid, file slices)
    SurfaceMap.depth(rows, cols)              -> float32 (h, w) surface depth at those pixels
    read_flat(fragment, z_start, z_end, rows, cols, shift)
                                              -> uint16 (C, h, w): slice z_start + k + shift

Ink lies a few slices behind the written surface, and the surface wanders in depth across a
fragment. A fixed slice window then holds the ink at a different channel in every region, and a
model must learn to follow the surface before it can learn the ink. *Flattening* reads each
pixel's slices relative to its own surface instead: the file slice z + round(surface(y, x) -
anchor) is the model's slice z, so the surface sits at the anchor everywhere and the ink at one
depth below it (kit.data.probe decides whether that helps, from the labelled training rows).

The surface is found without labels, so test fragments get theirs the same way: the sheet is
far denser than air, so along depth the mean intensity of a BLOCK×BLOCK block rises most steeply
where the front surface is (falls, when the layers are reversed: 00 = deepest). Block depths are
median-filtered (cracks, edges) and smoothed; blocks outside the mask take the nearest papyrus
block's depth. Bands of rows are read evenly spaced (at most MAX_BANDS of them, all slices), so
the map costs a bounded read whatever the fragment's height; the surface is smooth at that scale.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from kit.data.fragment import Fragment

BLOCK = 8  # pixels per side of a block
MAX_BANDS = 256  # block rows read per fragment; the grid is interpolated in between


@dataclass(frozen=True)
class SurfaceMap:
    """Surface depth (file slices, float) at block centres: grid[i, j] at pixel row rows[i] and
    column (j + 0.5) * BLOCK."""

    grid: np.ndarray  # float32 (n_rows, n_cols)
    rows: np.ndarray  # float64 (n_rows,), pixel row of each grid row's centre, increasing

    def depth(self, rows: slice, cols: slice) -> np.ndarray:
        """float32 (h, w): the surface depth at rows × cols, bilinear between block centres."""
        r = np.arange(rows.start, rows.stop) + 0.5
        c = np.arange(cols.start, cols.stop) + 0.5
        gy = np.interp(r, self.rows, np.arange(len(self.rows)))
        gx = np.clip(c / BLOCK - 0.5, 0, self.grid.shape[1] - 1)
        y0, x0 = np.floor(gy).astype(int), np.floor(gx).astype(int)
        y1 = np.minimum(y0 + 1, self.grid.shape[0] - 1)
        x1 = np.minimum(x0 + 1, self.grid.shape[1] - 1)
        # along columns on the grid's own rows first (n_rows, w), then along rows: no (h, w)
        # temporaries but the last ones
        wx, wy = gx - x0, (gy - y0)[:, None]
        across = self.grid[:, x0] * (1 - wx) + self.grid[:, x1] * wx
        return (across[y0] * (1 - wy) + across[y1] * wy).astype(np.float32)

    def median(self) -> float:
        return float(np.median(self.grid))


def surface_map(fragment: Fragment, reverse: bool) -> SurfaceMap:
    """The fragment's surface depths for one layer order. Both orders come from one read and
    are cached on the fragment object."""
    cache = fragment.__dict__.get("_surface_cache")
    if cache is None:
        cache = fragment.__dict__["_surface_cache"] = _measure(fragment)
    return cache[reverse]


def _measure(fragment: Fragment) -> dict[bool, SurfaceMap]:
    height, width = fragment.shape
    n_rows, n_cols = max(height // BLOCK, 1), max(width // BLOCK, 1)
    picked = np.unique(np.linspace(0, n_rows - 1, min(n_rows, MAX_BANDS)).astype(int))
    mask = fragment.mask()
    depths = np.zeros((2, len(picked), n_cols), np.float32)  # scan order, reversed
    valid = np.zeros((len(picked), n_cols), bool)
    for i, b in enumerate(picked):
        r0 = b * BLOCK
        band = fragment.read(0, fragment.n_slices, slice(r0, r0 + BLOCK)).astype(np.float32)
        c, h, _ = band.shape
        cut = band[:, :, : n_cols * BLOCK].reshape(c, h, n_cols, BLOCK).mean((1, 3))
        valid[i] = mask[r0 : r0 + h, : n_cols * BLOCK].reshape(h, n_cols, BLOCK).all((0, 2))
        smooth = cv2.GaussianBlur(cut, (1, 0), sigmaX=0.1, sigmaY=1.0)  # along depth only
        rise = np.diff(smooth, axis=0)
        depths[:, i] = np.argmax(rise, 0) + 0.5, np.argmin(rise, 0) + 0.5
    rows = (picked + 0.5) * BLOCK
    maps = {}
    for reverse, found in ((False, depths[0]), (True, depths[1])):
        grid = cv2.GaussianBlur(cv2.medianBlur(_fill(found, valid), 3), (0, 0), sigmaX=1.0)
        maps[reverse] = SurfaceMap(grid=grid.astype(np.float32), rows=rows)
    return maps


def _fill(depths: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Blocks outside the papyrus take the nearest papyrus block's depth (all: the median)."""
    if not valid.any():
        return np.full_like(depths, float(np.median(depths)))
    if valid.all():
        return depths
    _, labels = cv2.distanceTransformWithLabels(
        (~valid).astype(np.uint8), cv2.DIST_L2, 3, labelType=cv2.DIST_LABEL_PIXEL
    )
    ys, xs = np.nonzero(valid)
    nearest = np.zeros(labels.max() + 1, np.float32)
    nearest[labels[ys, xs]] = depths[ys, xs]
    return nearest[labels]


def read_flat(
    fragment: Fragment, z_start: int, z_end: int, rows: slice, cols: slice, shift: np.ndarray
) -> np.ndarray:
    """uint16 (z_end - z_start, h, w): at each pixel the file slices z_start + shift ..
    z_end - 1 + shift (`shift` int (h, w)), each index clamped into the volume. Reads only the
    slices the window's shifts reach."""
    n = fragment.n_slices
    lo = int(np.clip(z_start + shift.min(), 0, n - 1))
    hi = int(np.clip(z_end + shift.max(), lo + 1, n))
    volume = fragment.read(lo, hi, rows, cols)
    out = np.empty((z_end - z_start, *shift.shape), dtype=volume.dtype)
    for k in range(z_end - z_start):  # one (h, w) index at a time: a band's index stays small
        index = np.clip(z_start + k + shift, lo, hi - 1) - lo
        out[k] = np.take_along_axis(volume, index[None], axis=0)[0]
    return out
