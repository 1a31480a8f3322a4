import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from kit.metrics import (
    best_threshold,
    binarize,
    confusion_counts,
    f05_score,
    fbeta_from_counts,
    threshold_curve,
)


def test_counts_and_score_by_hand():
    pred = np.array([[1, 1, 0, 0], [1, 0, 0, 0]])
    target = np.array([[1, 0, 1, 0], [1, 0, 1, 1]])
    assert confusion_counts(pred, target) == (2, 1, 3)
    p, r = 2 / 3, 2 / 5
    assert f05_score(pred, target) == pytest.approx(1.25 * p * r / (0.25 * p + r))
    # Positional API of docs/interface.md; 0/255 and bool inputs mean the same.
    assert f05_score(pred.astype(bool), target * 255) == f05_score(pred, target)


def test_mask_restricts_counts():
    pred = np.array([[1, 1], [1, 0]])
    target = np.array([[1, 0], [0, 0]])
    mask = np.array([[1, 0], [0, 1]])
    assert confusion_counts(pred, target, mask=mask) == (1, 0, 0)
    assert f05_score(pred, target, mask=mask) == 1.0
    assert f05_score(pred, target) < 1.0


def test_degenerate_cases():
    z = np.zeros((3, 3))
    assert f05_score(z, z) == 0.0
    assert f05_score(np.ones((3, 3)), z) == 0.0
    assert f05_score(z, np.ones((3, 3))) == 0.0
    assert f05_score(np.ones((3, 3)), np.ones((3, 3))) == 1.0
    with pytest.raises(ValueError, match="same shape"):
        f05_score(np.zeros((2, 2)), np.zeros((2, 3)))


def test_score_is_global_not_per_tile_mean():
    target = np.zeros((2, 4), bool)
    target[0, :] = True
    pred = np.zeros((2, 4), bool)
    pred[0, :2] = True
    pred[1, 3] = True
    # Global counts (2, 1, 2) give 0.625; the mean of the two 2×2 tiles' scores (1, 0) is 0.5.
    assert f05_score(pred, target) == pytest.approx(fbeta_from_counts(2, 1, 2))
    tiles = [f05_score(pred[:, i : i + 2], target[:, i : i + 2]) for i in (0, 2)]
    assert f05_score(pred, target) != pytest.approx(np.mean(tiles))


@settings(max_examples=60, deadline=None)
@given(
    arrays(np.uint8, (7, 9)),
    arrays(np.bool_, (7, 9)),
    arrays(np.bool_, (7, 9)),
)
def test_sweep_matches_brute_force(prob, target, mask):
    thresholds = np.round(np.arange(0, 101) / 100, 2)
    ts, curve = threshold_curve(prob, target, mask=mask, thresholds=thresholds)
    np.testing.assert_array_equal(ts, thresholds)
    expected = [f05_score(prob >= t * 255 - 1e-9, target, mask=mask) for t in thresholds]
    np.testing.assert_allclose(curve, expected)
    t, s = best_threshold(prob, target, mask=mask, thresholds=thresholds)
    assert s == pytest.approx(max(expected))
    assert f05_score(binarize(prob, t), target, mask=mask) == pytest.approx(s)


def test_float_and_uint8_probabilities_agree():
    rng = np.random.default_rng(0)
    target = rng.random((50, 60)) > 0.8
    prob = np.clip(target * 0.5 + rng.random((50, 60)) * 0.6, 0, 1)
    prob_u8 = np.rint(prob * 255).astype(np.uint8)
    t_f, s_f = best_threshold(prob, target)
    t_u, s_u = best_threshold(prob_u8, target)
    assert (t_f, s_f) == (t_u, s_u)
    assert 0.0 < t_f < 1.0
    assert s_f == pytest.approx(f05_score(binarize(prob, t_f), target))


@given(st.integers(0, 1000).map(lambda i: i / 1000))
def test_binarize_threshold_semantics(t):
    levels = np.arange(256, dtype=np.uint8)
    out = binarize(levels, t)
    # Exactly the levels whose probability level/255 reaches the threshold (up to rounding).
    assert np.array_equal(out, levels / 255 >= t - 1e-9)


def test_best_threshold_separable():
    prob = np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9])[None]
    target = np.array([0, 0, 0, 1, 1, 1], bool)[None]
    t, s = best_threshold(prob, target)
    assert s == 1.0
    assert 0.29 < t <= 0.7
    np.testing.assert_array_equal(binarize(prob, t), target)


def test_integer_probabilities_other_than_uint8_rejected():
    with pytest.raises(ValueError, match="uint8"):
        best_threshold(np.zeros((2, 2), np.int32), np.zeros((2, 2)))
