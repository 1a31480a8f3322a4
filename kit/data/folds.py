"""Fold split by fragment and by horizontal bands of rows.

folds.csv has one row per region: `fragment,fold,row_start,row_end`, the row range as fractions
0..1 of the fragment's height, so one file serves the real data and the demo data alike.
A region of fold k is validated by the model of fold k and trained on by every other fold's model.

Boundary rule (the one place it is decided): a *training* tile lies entirely inside training
rows (`training_row_ranges`); a *validation* prediction covers the held-out rows with tiles that
may read context rows outside them, but only held-out rows are scored (`validation_row_ranges`).
So no training tile ever contains a held-out label, and every held-out pixel is predicted.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kit.errors import KitError
from kit.io import read_csv, write_csv

COLUMNS = ["fragment", "fold", "row_start", "row_end"]


class FoldsError(KitError, ValueError):
    """A folds CSV that does not follow the schema; the message names the file and the row."""


TRAIN_ONLY = -1  # the fold of regions every fold trains on and none holds out (pseudo-labels)


@dataclass(frozen=True)
class Region:
    """Rows row_start..row_end (fractions of the height) of one fragment, held out in `fold`
    (TRAIN_ONLY: never held out, trained on by every fold)."""

    fragment: str
    fold: int
    row_start: float
    row_end: float

    def rows(self, height: int) -> tuple[int, int]:
        """(r0, r1) pixel rows, r1 exclusive. Neighbouring regions share their boundary row."""
        return round(self.row_start * height), round(self.row_end * height)


# The competition's usual 4-fold split: fragments 1 and 3 whole, fragment 2 cut at row 9456 of
# 14830 (the "2a"/"2b" split used by public top solutions), which halves its ink area.
FRAGMENT2_SPLIT = round(9456 / 14830, 6)
STANDARD_FOLDS = [
    Region("1", 0, 0.0, 1.0),
    Region("2", 1, 0.0, FRAGMENT2_SPLIT),
    Region("2", 2, FRAGMENT2_SPLIT, 1.0),
    Region("3", 3, 0.0, 1.0),
]


def load_folds(path: str | os.PathLike) -> list[Region]:
    """Read and check a folds CSV; raises FoldsError naming the file and the bad row."""
    path = Path(path)
    rows = read_csv(path, COLUMNS, FoldsError,
                    missing="; write one with `python -m kit folds --data DIR`")  # fmt: skip
    regions = [_parse_row(path, line, row) for line, row in rows]
    if not regions:
        raise FoldsError(f"{path} has no regions")
    check_regions(regions, source=str(path))
    return regions


def write_folds(regions: list[Region], path: str | os.PathLike) -> Path:
    """Write regions as a folds CSV (atomically: a reader never sees half a file)."""
    path = Path(path)
    write_csv(path, COLUMNS, ([r.fragment, r.fold, _fmt(r.row_start), _fmt(r.row_end)]
                              for r in regions))  # fmt: skip
    return path


def check_regions(regions: list[Region], *, source: str = "folds") -> None:
    """Raise FoldsError if two regions of one fragment overlap."""
    by_fragment: dict[str, list[Region]] = {}
    for r in regions:
        by_fragment.setdefault(r.fragment, []).append(r)
    for fid, rs in by_fragment.items():
        rs = sorted(rs, key=lambda r: r.row_start)
        for a, b in itertools.pairwise(rs):
            if b.row_start < a.row_end:
                raise FoldsError(
                    f"{source}: fragment {fid} regions {a.row_start}..{a.row_end} (fold {a.fold}) "
                    f"and {b.row_start}..{b.row_end} (fold {b.fold}) overlap"
                )


def folds_of(regions: list[Region]) -> list[int]:
    """The fold numbers present (the folds a run can hold out), sorted."""
    return sorted({r.fold for r in regions if r.fold != TRAIN_ONLY})


def validation_regions(regions: list[Region], fold: int) -> list[Region]:
    """Regions held out (predicted and scored) by the model of `fold`."""
    return [r for r in regions if r.fold == fold]


def training_regions(regions: list[Region], fold: int) -> list[Region]:
    """Regions the model of `fold` trains on (all other folds' regions)."""
    return [r for r in regions if r.fold != fold]


def training_row_ranges(
    regions: list[Region], fold: int, fragment_id: str, height: int
) -> list[tuple[int, int]]:
    """Merged (r0, r1) pixel row ranges of `fragment_id` that fold `fold` may train on.

    A training tile (y, tile) is allowed iff r0 <= y and y + tile <= r1 for one range.
    Fragments absent from the folds file give [] (they are not used).
    """
    return _merged_rows(training_regions(regions, fold), fragment_id, height)


def validation_row_ranges(
    regions: list[Region], fold: int, fragment_id: str, height: int
) -> list[tuple[int, int]]:
    """Merged (r0, r1) pixel row ranges of `fragment_id` held out in `fold`: predicted (tiles may
    read context outside them) and scored (only these rows)."""
    return _merged_rows(validation_regions(regions, fold), fragment_id, height)


def rows_mask(ranges: list[tuple[int, int]], height: int) -> np.ndarray:
    """bool (height,) true on the rows of `ranges`; multiply into a (H, W) mask with [:, None]."""
    out = np.zeros(height, dtype=bool)
    for r0, r1 in ranges:
        out[r0:r1] = True
    return out


def make_folds(ink_rows: dict[str, np.ndarray], k: int) -> list[Region]:
    """Ink-balanced split of labelled fragments into k folds.

    ink_rows: fragment id -> ink pixels per row (H,). The fragment (or band) with the most ink is
    cut into two bands of equal ink while there are fewer than k pieces or a piece holds more than
    1.5× the per-fold target; pieces then go to folds largest first, each to the fold with the
    least ink; adjacent bands that land in the same fold are merged.
    """
    if k < 1:
        raise FoldsError(f"k must be at least 1, got {k}")
    if not ink_rows:
        raise FoldsError("no labelled fragments to split into folds")
    cums = {
        fid: np.concatenate(([0], np.cumsum(rows, dtype=np.int64)))
        for fid, rows in ink_rows.items()
    }
    pieces = [(fid, 0, len(c) - 1) for fid, c in cums.items()]  # (fragment, r0, r1) pixel rows

    def ink(p):
        return int(cums[p[0]][p[2]] - cums[p[0]][p[1]])

    target = sum(ink(p) for p in pieces) / k
    while True:
        pieces.sort(key=lambda p: -ink(p))
        big = pieces[0]
        if len(pieces) >= k and ink(big) <= 1.5 * target:
            break
        cut = _ink_median_row(cums[big[0]], big[1], big[2])
        if cut is None:
            if len(pieces) < k:
                raise FoldsError(
                    f"cannot make {k} folds: the labelled ink cannot be cut further; ask for "
                    "fewer folds (a smaller --k)"
                )
            break
        pieces[0:1] = [(big[0], big[1], cut), (big[0], cut, big[2])]
    load = [0] * k
    assigned = []
    for p in sorted(pieces, key=lambda p: (-ink(p), _natural(p[0]), p[1])):
        fold = int(np.argmin(load))
        load[fold] += ink(p)
        assigned.append((p, fold))
    return _regions_from_pieces(assigned, cums)


def ink_rows_of(data_dir: str | os.PathLike) -> dict[str, np.ndarray]:
    """Ink pixels per row (H,) of every labelled train fragment of data_dir, in natural id order."""
    from kit.data.fragment import Fragment
    from kit.data.layout import labelled_fragments

    out = {}
    for path in sorted(labelled_fragments(data_dir), key=lambda p: _natural(p.name)):
        fragment = Fragment(path)
        out[fragment.id] = (fragment.labels() & fragment.mask()).sum(axis=1, dtype=np.int64)
    return out


def _regions_from_pieces(assigned: list, cums: dict[str, np.ndarray]) -> list[Region]:
    pieces = sorted(assigned, key=lambda a: (_natural(a[0][0]), a[0][1]))
    merged: list[list] = []
    for (fid, r0, r1), fold in pieces:
        if merged and merged[-1][0] == fid and merged[-1][3] == fold and merged[-1][2] == r0:
            merged[-1][2] = r1
        else:
            merged.append([fid, r0, r1, fold])
    # Renumber folds in order of first appearance, so fold 0 starts with the first fragment.
    order: dict[int, int] = {}
    for m in merged:
        order.setdefault(m[3], len(order))
    regions = []
    for fid, r0, r1, fold in merged:
        height = len(cums[fid]) - 1
        regions.append(Region(fid, order[fold], _frac(r0, height), _frac(r1, height)))
    return regions


def _ink_median_row(cum: np.ndarray, r0: int, r1: int) -> int | None:
    """Row r0 < r < r1 that halves the ink of rows r0..r1, or None when it cannot be cut."""
    half = (cum[r0] + cum[r1]) / 2
    r = int(np.searchsorted(cum, half, side="left"))
    r = min(max(r, r0 + 1), r1 - 1)
    inside = cum[r] - cum[r0]
    if r1 - r0 < 2 or inside == 0 or inside == cum[r1] - cum[r0]:
        return None
    return r


def _merged_rows(regions: list[Region], fragment_id: str, height: int) -> list[tuple[int, int]]:
    spans = sorted(r.rows(height) for r in regions if r.fragment == str(fragment_id))
    merged: list[tuple[int, int]] = []
    for r0, r1 in spans:
        if r1 <= r0:
            continue
        if merged and r0 <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], r1))
        else:
            merged.append((r0, r1))
    return merged


def _parse_row(path: Path, line: int, row: list[str]) -> Region:
    if len(row) != len(COLUMNS):
        raise FoldsError(f"{path} line {line}: expected {len(COLUMNS)} values, got {row}")
    fragment, fold, start, end = (v.strip() for v in row)
    try:
        region = Region(fragment, int(fold), float(start), float(end))
    except ValueError as exc:
        raise FoldsError(f"{path} line {line}: {exc}; fold is an integer, rows are 0..1") from exc
    if not fragment or region.fold < TRAIN_ONLY:
        raise FoldsError(
            f"{path} line {line}: fragment must be non-empty and fold >= 0 "
            f"(or {TRAIN_ONLY}: trained on by every fold, never held out)"
        )
    if not 0.0 <= region.row_start < region.row_end <= 1.0:
        raise FoldsError(
            f"{path} line {line}: rows {start}..{end} must satisfy 0 <= row_start < row_end <= 1 "
            "(fractions of the fragment height)"
        )
    return region


def _frac(row: int, height: int) -> float:
    # 6 decimals keep round(frac * height) == row for heights below 500 000 rows.
    return round(row / height, 6)


def _fmt(x: float) -> str:
    return f"{x:.6f}".rstrip("0").rstrip(".") if x not in (0.0, 1.0) else f"{x:.1f}"


def _natural(fid: str) -> tuple:
    return (0, int(fid), "") if fid.isdigit() else (1, 0, fid)


def fold_fragments(data_dir: Path, fold: int, folds_csv: Path) -> tuple[list, dict]:
    """(every region of the folds CSV, {id: Fragment} of the fragments fold `fold` reads):
    opened, not read, so this is cheap; a missing fragment or fold is a KitError."""
    from kit.data.fragment import Fragment
    from kit.data.layout import fragment_path

    regions = load_folds(folds_csv)
    if fold not in folds_of(regions):
        folds = folds_of(regions)
        raise KitError(f"{folds_csv} has no regions for fold {fold}; folds there: {folds}")
    fix = f"{folds_csv} names it; write a split for this dataset: python -m kit folds --data {data_dir}"
    names = sorted({r.fragment for r in regions})
    return regions, {n: Fragment(fragment_path(data_dir, n, fix=fix)) for n in names}
