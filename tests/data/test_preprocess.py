import numpy as np
import pytest
import torch

from kit.config import DataConfig
from kit.data.fragment import Fragment, FragmentError
from kit.data.preprocess import fragment_stats, normalize, read_window


@pytest.fixture(scope="module")
def frag(demo_dir):
    return Fragment(demo_dir / "train" / "1")


def test_read_window_inside_equals_fragment_read(frag):
    data = DataConfig(z_start=24, z_end=40)
    win = read_window(frag, data, 10, 20, 32, 48)
    assert win.dtype == np.uint16 and win.shape == (16, 32, 48)
    np.testing.assert_array_equal(win, frag.read(24, 40, slice(10, 42), slice(20, 68)))


def test_read_window_pads_with_zeros_outside(frag):
    data = DataConfig(z_start=30, z_end=33)
    h, w = frag.shape
    win = read_window(frag, data, -5, w - 10, 20, 30)
    assert win.shape == (3, 20, 30)
    assert not win[:, :5].any() and not win[:, :, 10:].any()
    np.testing.assert_array_equal(
        win[:, 5:, :10], frag.read(30, 33, slice(0, 15), slice(w - 10, w))
    )
    assert not read_window(frag, data, h + 1, 0, 8, 8).any()


def test_ir_mode_and_missing_ir(frag, demo_dir):
    data = DataConfig(input_mode="ir")
    assert data.in_channels == 1
    np.testing.assert_array_equal(read_window(frag, data, 0, 0, 16, 16)[0], frag.ir()[:16, :16])
    assert fragment_stats(frag, data) == fragment_stats(frag, data)
    with pytest.raises(FragmentError, match=r"ir.png is missing"):
        read_window(Fragment(demo_dir / "test" / "a"), data, 0, 0, 8, 8)


@pytest.mark.parametrize("norm", ["percentile", "meanstd"])
def test_normalize_uses_fragment_stats_from_mask_pixels(frag, norm):
    data = DataConfig(z_start=24, z_end=40, norm=norm)
    stats = fragment_stats(frag, data)
    assert stats.scale > 0
    win = torch.from_numpy(read_window(frag, data, 0, 0, 64, 64).astype(np.int32))[None]
    x = normalize(win, stats.as_tensor()[None], data)
    assert x.dtype == torch.float32 and x.shape == (1, 16, 64, 64)
    if norm == "percentile":
        assert x.min() >= 0 and x.max() <= 1
        mask = torch.from_numpy(frag.mask()[:64, :64])
        inside = x[0][:, mask]
        assert 0.2 < inside.mean() < 0.8  # papyrus, scaled by papyrus statistics


def test_stats_ignore_pixels_outside_the_mask(frag):
    data = DataConfig(z_start=24, z_end=40, norm="meanstd")
    stats = fragment_stats(frag, data)
    inside = frag.read(24, 40)[:, frag.mask()].astype(np.float64)
    # Sampled rows only, so close to (not equal to) the full-mask mean.
    assert abs(stats.offset - inside.mean()) < 0.05 * inside.std()
