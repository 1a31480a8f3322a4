"""Which tiles a training epoch sees: candidates from the training rows, ink balance, jitter.

    candidates = tile_candidates(fragments, labels, row_ranges, data)   once per run
    tiles      = epoch_tiles(candidates, epoch=e, count=n, ...)          int64 (n, 3): frag, y, x

Candidates lie on the same stride grid as inference (`kit.tiles.tile_positions`) over each
fragment's training row ranges, and keep only tiles whose papyrus share reaches
`data.min_mask_fraction`. Each epoch draws a fresh, seeded mix of ink and background tiles and
shifts every tile by up to half a stride, clamped to the tile's own training rows: a training tile
never reaches into held-out rows, however it is jittered.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from kit.config import DataConfig
from kit.data.fragment import Fragment
from kit.errors import KitError
from kit.tiles import mask_fractions, tile_positions


@dataclass(frozen=True)
class TileCandidates:
    """All N candidate tiles of a run; `row_lo`/`row_hi` bound each tile's rows (jitter too)."""

    fragment: np.ndarray  # int64 (N,), index into the fragment list
    yx: np.ndarray  # int64 (N, 2), top-left corner
    ink: np.ndarray  # bool (N,), the tile holds labelled ink
    row_lo: np.ndarray  # int64 (N,), first row the tile may cover
    row_hi: np.ndarray  # int64 (N,), end (exclusive) of the rows the tile may cover
    widths: np.ndarray  # int64 (N,), fragment width (bounds the column jitter)
    tile: int
    stride: int

    def __len__(self) -> int:
        return len(self.fragment)


def merge_ranges(ranges: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted, overlapping or touching (r0, r1) row ranges merged into disjoint ones."""
    merged: list[tuple[int, int]] = []
    for r0, r1 in sorted(r for r in ranges if r[1] > r[0]):
        if merged and r0 <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], r1))
        else:
            merged.append((r0, r1))
    return merged


def tile_candidates(
    fragments: Sequence[Fragment],
    labels: Sequence[np.ndarray],
    row_ranges: Sequence[Sequence[tuple[int, int]]],
    data: DataConfig,
) -> TileCandidates:
    """Candidate tiles inside each fragment's training `row_ranges` (absolute rows, end exclusive)."""
    tile, parts = data.tile, []
    for index, (fragment, label, ranges) in enumerate(
        zip(fragments, labels, row_ranges, strict=True)
    ):
        mask = fragment.mask()
        for r0, r1 in merge_ranges(ranges):
            if r1 - r0 < tile:
                continue  # a band thinner than a tile cannot hold a tile without leaking
            yx = np.asarray(tile_positions(fragment.shape, tile, data.stride, rows=(r0, r1)))
            yx = yx.reshape(-1, 2).astype(np.int64)
            yx = yx[(yx[:, 0] >= r0) & (yx[:, 0] + tile <= r1)]
            if not len(yx):
                continue
            keep = np.asarray(mask_fractions(mask, yx, tile)) >= data.min_mask_fraction
            yx = yx[keep]
            ink = np.asarray(mask_fractions(label > 0, yx, tile)) > 0
            n = len(yx)
            parts.append((np.full(n, index), yx, ink, np.full(n, r0), np.full(n, r1),
                          np.full(n, fragment.shape[1])))  # fmt: skip
    if not parts:
        raise KitError(
            f"no training tile of {tile}×{tile} px with ≥{data.min_mask_fraction:.0%} papyrus fits "
            "the training rows; lower data.tile or data.min_mask_fraction, or check the folds CSV"
        )
    cols = [np.concatenate(c) for c in zip(*parts, strict=True)]
    return TileCandidates(
        fragment=cols[0].astype(np.int64), yx=cols[1], ink=cols[2].astype(bool),
        row_lo=cols[3].astype(np.int64), row_hi=cols[4].astype(np.int64),
        widths=cols[5].astype(np.int64), tile=tile, stride=data.stride,
    )  # fmt: skip


def epoch_tiles(
    candidates: TileCandidates,
    *,
    epoch: int,
    count: int,
    seed: int,
    ink_fraction: float,
    jitter: bool,
) -> np.ndarray:
    """`count` tiles for one epoch, int64 (count, 3) = (fragment index, y, x); same args, same tiles.

    `ink_fraction` of them hold ink (drawn without replacement while candidates last); if one
    kind is missing the other fills in.
    """
    rng = np.random.default_rng([seed, epoch])
    ink_idx = np.flatnonzero(candidates.ink)
    bg_idx = np.flatnonzero(~candidates.ink)
    n_ink = round(count * ink_fraction) if len(bg_idx) else count
    n_ink = n_ink if len(ink_idx) else 0
    chosen = np.concatenate([_draw(rng, ink_idx, n_ink), _draw(rng, bg_idx, count - n_ink)])
    chosen = chosen[rng.permutation(len(chosen))]
    yx = candidates.yx[chosen].copy()
    if jitter:
        half = max(candidates.stride // 2, 0)
        yx += rng.integers(-half, half + 1, size=yx.shape)
        tile = candidates.tile
        y_max = np.maximum(candidates.row_hi[chosen] - tile, candidates.row_lo[chosen])
        x_max = np.maximum(candidates.widths[chosen] - tile, 0)
        yx[:, 0] = np.clip(yx[:, 0], candidates.row_lo[chosen], y_max)
        yx[:, 1] = np.clip(yx[:, 1], 0, x_max)
    return np.column_stack([candidates.fragment[chosen], yx]).astype(np.int64)


def _draw(rng: np.random.Generator, pool: np.ndarray, n: int) -> np.ndarray:
    """n indices from `pool`: whole shuffled passes over it, then a partial one."""
    if n <= 0 or not len(pool):
        return np.zeros(0, dtype=np.int64)
    passes = [rng.permutation(pool) for _ in range(-(-n // len(pool)))]
    return np.concatenate(passes)[:n].astype(np.int64)
