from types import SimpleNamespace

import numpy as np
import pytest

from kit.config import DataConfig
from kit.errors import KitError
from kit.train.ddp import DistInfo, shard
from kit.train.sampler import epoch_tiles, merge_ranges, tile_candidates

TILE, STRIDE = 32, 16


def _fragment(h: int = 300, w: int = 200):
    mask = np.zeros((h, w), bool)
    mask[10:-10, 5:-5] = True
    return SimpleNamespace(shape=(h, w), mask=lambda: mask)


def _labels(h: int = 300, w: int = 200) -> np.ndarray:
    labels = np.zeros((h, w), np.uint8)
    labels[40:80, 30:90] = 1
    labels[200:230, 100:160] = 1
    return labels


def _candidates(train_rows, **data):
    data = DataConfig(tile=TILE, stride=STRIDE, min_mask_fraction=0.5, **data)
    return tile_candidates([_fragment()], [_labels()], [train_rows], data)


def test_merge_ranges_joins_touching_bands():
    assert merge_ranges([(50, 80), (0, 50), (90, 95), (94, 99), (7, 7)]) == [(0, 80), (90, 99)]


def test_no_training_tile_reaches_held_out_rows_even_with_jitter():
    held_out = (120, 190)
    train_rows = [(0, held_out[0]), (held_out[1], 300)]
    candidates = _candidates(train_rows)
    assert len(candidates) > 0
    for epoch in range(20):
        tiles = epoch_tiles(
            candidates, epoch=epoch, count=500, seed=3, ink_fraction=0.5, jitter=True
        )
        top, bottom = tiles[:, 1], tiles[:, 1] + TILE
        assert not ((top < held_out[1]) & (bottom > held_out[0])).any()
        assert (top >= 0).all() and (bottom <= 300).all()
        assert (tiles[:, 2] >= 0).all() and (tiles[:, 2] + TILE <= 200).all()


def test_tiles_respect_mask_fraction_and_ink_balance():
    candidates = _candidates([(0, 300)])
    assert candidates.ink.any() and (~candidates.ink).any()
    ys, xs = candidates.yx.T
    mask = _fragment().mask()
    fractions = [mask[y : y + TILE, x : x + TILE].mean() for y, x in zip(ys, xs, strict=True)]
    assert min(fractions) >= 0.5
    tiles = epoch_tiles(candidates, epoch=0, count=400, seed=0, ink_fraction=0.75, jitter=False)
    labels = _labels()
    has_ink = [labels[y : y + TILE, x : x + TILE].any() for _, y, x in tiles]
    assert np.mean(has_ink) == pytest.approx(0.75, abs=0.01)


def test_epochs_are_seeded_and_jitter_moves_tiles():
    candidates = _candidates([(0, 300)])
    a = epoch_tiles(candidates, epoch=1, count=64, seed=0, ink_fraction=0.5, jitter=True)
    b = epoch_tiles(candidates, epoch=1, count=64, seed=0, ink_fraction=0.5, jitter=True)
    c = epoch_tiles(candidates, epoch=2, count=64, seed=0, ink_fraction=0.5, jitter=True)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    grid = {tuple(p) for p in candidates.yx}
    assert any(tuple(p) not in grid for p in a[:, 1:])


def test_band_thinner_than_a_tile_yields_nothing():
    with pytest.raises(KitError, match="no training tile"):
        _candidates([(0, TILE - 1)])


def test_shard_splits_tiles_evenly_without_overlap():
    items = np.arange(10)
    parts = [shard(items, DistInfo(rank=r, world_size=3)) for r in range(3)]
    assert [len(p) for p in parts] == [3, 3, 3]
    assert not set(parts[0]) & set(parts[1])
