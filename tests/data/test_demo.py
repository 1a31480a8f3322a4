import csv
import hashlib

import cv2
import numpy as np
import pytest
import tifffile

from kit import rle
from kit.data.demo import (
    BACKGROUND,
    DEFAULT_SCALE,
    N_SLICES,
    REAL_SHAPES,
    demo_fragments,
    make_demo_data,
    style_from,
    synth_fragment,
)
from kit.data.folds import FRAGMENT2_SPLIT, STANDARD_FOLDS, load_folds
from kit.data.fragment import Fragment
from kit.metrics import best_threshold
from kit.submission import validate_submission

DEMO_SCALE = 1 / 48  # tests/conftest.py's demo_dir


def _digest(root):
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_competition_layout(demo_dir):
    for fid, (h, w) in REAL_SHAPES.items():
        frag = Fragment(demo_dir / "train" / fid)
        assert frag.shape == (round(h * DEMO_SCALE), round(w * DEMO_SCALE))
        assert frag.n_slices == N_SLICES == 65
        assert frag.has_labels and frag.has_ir
        raw = cv2.imread(str(frag.path / "inklabels.png"), cv2.IMREAD_UNCHANGED)
        assert raw.dtype == np.uint8 and set(np.unique(raw)) == {0, 255}
        with open(frag.path / "inklabels_rle.csv") as fh:
            header, row = fh.read().splitlines()
        assert header == "Id,Predicted" and row.split(",")[0] == fid
        np.testing.assert_array_equal(rle.decode(row.split(",")[1], frag.shape), frag.labels())
        assert frag.ir().dtype == np.uint8
    a, b = (Fragment(demo_dir / "test" / t) for t in "ab")
    one = Fragment(demo_dir / "train" / "1")
    assert a.shape[0] + b.shape[0] == one.shape[0] and a.shape[1] == b.shape[1] == one.shape[1]
    for t in (a, b):
        assert not t.has_labels and not t.has_ir and t.mask().any()
        assert sorted(p.name for p in t.path.iterdir()) == ["mask.png", "surface_volume"]
    assert sorted(p.name for p in (demo_dir / "test").iterdir()) == ["a", "b"]
    assert validate_submission(demo_dir / "sample_submission.csv", demo_dir / "test")
    assert load_folds(demo_dir / "folds.csv") == STANDARD_FOLDS


def test_slices_are_uncompressed_uint16_for_memory_mapping(demo_dir):
    for path in (demo_dir / "train" / "2" / "surface_volume").glob("*.tif"):
        with tifffile.TiffFile(path) as tif:
            page = tif.pages.first
            assert page.dtype == np.uint16 and page.compression == 1 and page.is_contiguous


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    scale = 1 / 96
    a = _digest(make_demo_data(tmp_path / "a", seed=3, scale=scale))
    b = _digest(make_demo_data(tmp_path / "b", seed=3, scale=scale))
    c = _digest(make_demo_data(tmp_path / "c", seed=4, scale=scale))
    assert a == b
    assert a != c


def test_ink_amount_and_fragment2_balance():
    for index, fid in enumerate("123"):
        shape = tuple(round(s / 16) for s in REAL_SHAPES[fid])
        balance = FRAGMENT2_SPLIT if fid == "2" else None
        frag = synth_fragment(shape, seed=0, index=index, balance=balance)
        ink = frag.labels[frag.mask].mean()
        assert 0.07 < ink < 0.25, (fid, ink)
        if fid == "2":
            split = round(FRAGMENT2_SPLIT * shape[0])
            top, bottom = frag.labels[:split].sum(), frag.labels[split:].sum()
            assert abs(top - bottom) < 0.1 * max(top, bottom)


def test_ink_lives_in_the_middle_slices(demo_dir):
    frag = Fragment(demo_dir / "train" / "1")
    mask, ink = frag.mask(), frag.labels().astype(bool)
    volume = frag.read(0, N_SLICES).astype(np.float32)
    contrast = volume[:, mask & ink].mean(axis=1) - volume[:, mask & ~ink].mean(axis=1)
    assert 28 <= int(np.argmax(contrast)) <= 38
    assert contrast[:20].max() < 0.2 * contrast.max()
    assert contrast[45:].max() < 0.2 * contrast.max()


def _local_contrast(image: np.ndarray, mask: np.ndarray, k: int, big: int) -> np.ndarray:
    m = mask.astype(np.float32)

    def mean(a, size):
        return cv2.blur(a * m, (size, size)) / np.maximum(cv2.blur(m, (size, size)), 1e-3)

    out = mean(image, k) - mean(image, big)
    return (out - out[mask].min()) / (out[mask].max() - out[mask].min())


def test_task_is_not_trivial_but_spatially_learnable():
    """Per pixel, no single slice finds the ink; a simple spatial filter over slices 24..40 does."""
    shape = tuple(round(s / 16) for s in REAL_SHAPES["1"])
    frag = synth_fragment(shape, seed=0, index=0)
    mask, ink = frag.mask, frag.labels.astype(bool)
    volume = np.stack([frag.slice(z) for z in range(24, 40)]).astype(np.float32)
    per_slice = []
    for s in volume:
        lo, hi = s[mask].min(), s[mask].max()
        per_slice.append(best_threshold((s - lo) / (hi - lo), ink, mask=mask)[1])
    single = max(per_slice)
    spatial = best_threshold(_local_contrast(volume.mean(0), mask, 7, 31), ink, mask=mask)[1]
    print(f"best single-slice per-pixel F0.5 {single:.3f}, box-filtered mean F0.5 {spatial:.3f}")
    assert single < 0.45
    assert spatial > single + 0.15


@pytest.mark.parametrize("scale", [1 / 200, 1 / 48])
def test_small_scales_still_make_valid_fragments(tmp_path, scale):
    out = make_demo_data(tmp_path / "d", seed=1, scale=scale)
    for fid in "123":
        frag = Fragment(out / "train" / fid)
        assert frag.mask().any() and frag.labels().any()
    assert validate_submission(out / "sample_submission.csv", out / "test")


def test_the_written_dataset_is_demo_fragments(demo_dir):
    """make_demo_data writes demo_fragments' fragments: slices byte for byte, test labels into
    solution.csv (what bench/ceiling.py regenerates in memory)."""
    train, test = demo_fragments(seed=0, scale=DEMO_SCALE)
    for z in (0, 33):
        written = tifffile.imread(demo_dir / "train" / "2" / "surface_volume" / f"{z:02d}.tif")
        np.testing.assert_array_equal(written, train["2"].slice(z))
    with open(demo_dir / "solution.csv") as fh:
        rows = {r["Id"]: r for r in csv.DictReader(fh)}
    for tid, frag in test.items():
        np.testing.assert_array_equal(rle.decode(rows[tid]["Predicted"], frag.shape), frag.labels)
        np.testing.assert_array_equal(Fragment(demo_dir / "test" / tid).read(40, 41)[0],
                                      frag.slice(40))  # fmt: skip


def test_a_slice_is_background_plus_papyrus_plus_the_styles_noise():
    style = style_from("deep")
    frag = synth_fragment((120, 100), seed=0, index=0, scale=DEFAULT_SCALE / 4, style=style)
    inside, z = frag.mask, round(float(frag.surface.mean()) + style.ink_depth)
    residual = frag.slice(z).astype(np.float32) - BACKGROUND - frag.papyrus(z, frag.labels)
    assert abs(residual[inside].mean()) < 0.05 * style.noise
    assert abs(residual[inside].std() / style.noise - 1) < 0.05
    # ink changes the density only in its layer behind the surface
    ink, none = np.ones(frag.shape), np.zeros(frag.shape)
    assert np.abs(frag.papyrus(z, ink) - frag.papyrus(z, none))[inside].mean() > 0.5 * 2900
    assert np.abs(frag.papyrus(5, ink) - frag.papyrus(5, none)).max() < 1
