"""predict_fragment: exact identity, equality with a naive in-memory stitch, rows, mask, streaming."""

import numpy as np
import pytest
import torch
from infer_helpers import (
    ConvModel,
    IdentityModel,
    naive_predict,
    small_config,
    to_uint8,
    write_fragment,
)

from kit.data.fragment import Fragment
from kit.data.preprocess import fragment_stats, normalize, read_window
from kit.infer import stitch
from kit.infer.stitch import plan_tiles, predict_fragment
from kit.tiles import tile_positions


def _normalized(fragment, config) -> np.ndarray:
    """The whole (tiny) volume, normalised: what a load-everything reader would do."""
    h, w = fragment.shape
    raw = torch.from_numpy(read_window(fragment, config.data, 0, 0, h, w))[None]
    stats = fragment_stats(fragment, config.data).as_tensor()[None]
    return normalize(raw, stats, config.data)[0].numpy()


@pytest.mark.parametrize("tta", [["identity"], ["hflip", "vflip", "rot90", "rot180", "rot270"]])
@pytest.mark.parametrize(("shape", "tile", "stride"), [((70, 53), 16, 8), ((23, 9), 16, 5)])
def test_identity_model_reproduces_input_exactly(tmp_path, tta, shape, tile, stride):
    fragment = Fragment(write_fragment(tmp_path, "f", shape=shape))
    config = small_config(tta=tta, stride=stride, window="hann")
    config.data.tile = tile
    out = predict_fragment(IdentityModel(), config, fragment, progress=False)
    expected = to_uint8(_normalized(fragment, config)[0]) * fragment.mask()
    assert out.dtype == np.uint8 and out.shape == fragment.shape
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("batch_size", [1, 3, 64])
@pytest.mark.parametrize("rows", [None, (0, 20), (31, 70), (40, 47)])
def test_streaming_equals_naive_stitch(fragment_dir, batch_size, rows):
    fragment = Fragment(fragment_dir)
    config = small_config(batch_size=batch_size)
    model = ConvModel()
    out = predict_fragment(model, config, fragment, rows=rows, progress=False)
    ref = naive_predict(model, config, fragment, rows)
    assert np.abs(out.astype(int) - ref).max() <= 1
    assert (out != ref).mean() < 0.01
    assert out[~fragment.mask()].max() == 0
    if rows is not None:
        assert not out[: rows[0]].any() and not out[rows[1] :].any()
        assert out[rows[0] : rows[1]].max() > 0


def test_each_row_read_once_and_empty_tiles_skipped(tmp_path, monkeypatch):
    mask = np.zeros((90, 40), bool)
    mask[5:20, 3:30] = True
    mask[60:85, 10:38] = True  # rows 20..60 hold no papyrus: no tile there is predicted
    fragment = Fragment(write_fragment(tmp_path, "f", shape=(90, 40), mask=mask))
    config = small_config()
    reads = []
    real = stitch.read_window
    monkeypatch.setattr(
        stitch,
        "read_window",
        lambda f, d, y, x, h, w: reads.append((y, h)) or real(f, d, y, x, h, w),
    )
    seen = []
    model = ConvModel()
    monkeypatch.setattr(
        model, "forward", lambda x: seen.append(len(x)) or ConvModel.forward(model, x)
    )
    out = predict_fragment(model, config, fragment, progress=False)
    rows = [r for y, h in reads for r in range(y, y + h)]
    assert len(rows) == len(set(rows))  # no pixel row is read twice
    plan = plan_tiles(config, fragment)
    assert sum(seen) == plan.n_tiles < len(tile_positions((90, 40), 16, 8))
    assert all(n == config.infer.batch_size for n in seen[:-1])  # batches span bands
    assert out[~mask].max() == 0 and out[mask].min() >= 0


def test_model_mode_is_restored(fragment_dir):
    model = ConvModel().train()
    predict_fragment(model, small_config(), Fragment(fragment_dir), progress=False)
    assert model.training


def test_bad_rows_are_rejected(fragment_dir):
    with pytest.raises(ValueError, match="rows"):
        predict_fragment(ConvModel(), small_config(), Fragment(fragment_dir), rows=(50, 80))
