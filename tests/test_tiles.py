"""Tiling: coverage, flush borders, mask fractions, window weights, exact identity stitching."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kit.tiles import add_tile, finish_uint8, mask_fractions, tile_positions, window_weights


def stitch(tiles: np.ndarray, positions: np.ndarray, shape, window: np.ndarray):
    """Tiles (N, t, t) at `positions` accumulated into float32 (sums, weights) of `shape`."""
    sums, weights = np.zeros(shape, np.float32), np.zeros(shape, np.float32)
    for tile, (y, x) in zip(tiles, positions, strict=True):
        add_tile(sums, weights, tile, window, int(y), int(x))
    return sums, weights


def _crop(image: np.ndarray, y: int, x: int, t: int) -> np.ndarray:
    """The tile at (y, x), zero-padded beyond the border (what read_window does)."""
    out = np.zeros((t, t), dtype=image.dtype)
    part = image[y : y + t, x : x + t]
    out[: part.shape[0], : part.shape[1]] = part
    return out


@settings(max_examples=60, deadline=None)
@given(
    h=st.integers(1, 90),
    w=st.integers(1, 90),
    tile=st.integers(4, 40),
    frac=st.floats(0.2, 1.0),
)
def test_positions_cover_everything_flush(h, w, tile, frac):
    stride = max(1, int(tile * frac))
    pos = tile_positions((h, w), tile, stride)
    covered = np.zeros((h, w), bool)
    for y, x in pos:
        covered[y : y + tile, x : x + tile] = True
    assert covered.all()
    assert pos[:, 0].max() == max(h - tile, 0) and pos[:, 1].max() == max(w - tile, 0)
    assert pos.min() >= 0
    assert len(np.unique(pos, axis=0)) == len(pos)
    order = np.lexsort((pos[:, 1], pos[:, 0]))
    assert (order == np.arange(len(pos))).all()


@settings(max_examples=60, deadline=None)
@given(h=st.integers(8, 120), tile=st.integers(4, 40), data=st.data())
def test_positions_cover_row_range(h, tile, data):
    r0 = data.draw(st.integers(0, h - 1))
    r1 = data.draw(st.integers(r0 + 1, h))
    pos = tile_positions((h, 17), tile, max(1, tile // 2), rows=(r0, r1))
    ys = np.unique(pos[:, 0])
    covered = np.zeros(h, bool)
    for y in ys:
        covered[y : y + tile] = True
    assert covered[r0:r1].all()
    if r1 - r0 >= tile:
        assert ys.min() == r0 and ys.max() == r1 - tile


def test_mask_fractions_match_brute_force():
    rng = np.random.default_rng(0)
    mask = rng.random((53, 71)) > 0.6
    tile = 16
    pos = tile_positions(mask.shape, tile, 7)
    expected = [_crop(mask, y, x, tile).sum() / tile**2 for y, x in pos]
    np.testing.assert_allclose(mask_fractions(mask, pos, tile), expected)
    # a fragment smaller than the tile: padding counts as no papyrus
    small = np.ones((5, 6), bool)
    assert mask_fractions(small, tile_positions(small.shape, 8, 4), 8).tolist() == [30 / 64]


@pytest.mark.parametrize("kind", ["gaussian", "hann", "flat"])
@pytest.mark.parametrize("tile", [1, 2, 7, 64])
def test_window_weights_positive_peak_one(kind, tile):
    w = window_weights(tile, kind)
    assert w.shape == (tile, tile) and w.dtype == np.float32
    assert (w > 0).all() and w.max() == pytest.approx(1.0)
    np.testing.assert_allclose(w, w.T)
    np.testing.assert_allclose(w, w[::-1, ::-1])


def test_unknown_window_names_the_choices():
    with pytest.raises(ValueError, match="gaussian"):
        window_weights(8, "box")


@settings(max_examples=50, deadline=None)
@given(
    h=st.integers(1, 70),
    w=st.integers(1, 70),
    tile=st.integers(3, 32),
    frac=st.floats(0.25, 1.0),
    kind=st.sampled_from(["gaussian", "hann", "flat"]),
    seed=st.integers(0, 99),
)
def test_identity_stitch_reproduces_input(h, w, tile, frac, kind, seed):
    stride = max(1, int(tile * frac))
    image = np.random.default_rng(seed).integers(0, 256, (h, w)).astype(np.float32) / 255
    pos = tile_positions((h, w), tile, stride)
    tiles = np.stack([_crop(image, y, x, tile) for y, x in pos])
    sums, weights = stitch(tiles, pos, (h, w), window_weights(tile, kind))
    np.testing.assert_allclose(sums / weights, image, atol=1e-6)
    out = finish_uint8(torch.from_numpy(sums), torch.from_numpy(weights)).numpy()
    np.testing.assert_array_equal(out, np.rint(image * 255).astype(np.uint8))


@pytest.mark.parametrize("kind", ["gaussian", "hann", "flat"])
def test_constant_input_has_no_seams(kind):
    h, w, tile, stride = 300, 257, 64, 24
    pos = tile_positions((h, w), tile, stride)
    tiles = np.full((len(pos), tile, tile), 0.7, np.float32)
    sums, weights = stitch(tiles, pos, (h, w), window_weights(tile, kind))
    assert np.abs(sums / weights - 0.7).max() < 1e-5


def test_add_tile_clips_negative_offsets():
    sums, weights = np.zeros((4, 4), np.float32), np.zeros((4, 4), np.float32)
    add_tile(sums, weights, np.full((3, 3), 2.0, np.float32), np.ones((3, 3), np.float32), -1, 2)
    assert sums[:2, 2:].tolist() == [[2.0, 2.0], [2.0, 2.0]]
    assert weights[:2, 2:].tolist() == [[1.0, 1.0], [1.0, 1.0]]
    assert (
        sums[2:].sum() == weights[2:].sum() == 0 and sums[:, :2].sum() == weights[:, :2].sum() == 0
    )
    out = finish_uint8(torch.from_numpy(sums / 4), torch.from_numpy(weights)).numpy()
    assert out[:2, 2:].tolist() == [[128, 128], [128, 128]]  # 0.5 × 255 rounds half to even
    assert out[2:].sum() == 0 and out[:, :2].sum() == 0  # uncovered: 0
