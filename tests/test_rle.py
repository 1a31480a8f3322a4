import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from kit import rle
from kit.errors import KitError


@st.composite
def masks(draw):
    h = draw(st.integers(1, 23))
    w = draw(st.integers(1, 23))
    return draw(arrays(np.bool_, (h, w)))


@settings(max_examples=300, deadline=None)
@given(masks())
def test_roundtrip_odd_shapes(mask):
    decoded = rle.decode(rle.encode(mask), mask.shape)
    assert decoded.dtype == np.uint8
    np.testing.assert_array_equal(decoded, mask.astype(np.uint8))


@settings(max_examples=200, deadline=None)
@given(masks())
def test_encode_matches_naive_reference(mask):
    flat = mask.ravel()
    pairs, i = [], 0
    while i < flat.size:
        if flat[i]:
            j = i
            while j < flat.size and flat[j]:
                j += 1
            pairs += [i + 1, j - i]
            i = j
        else:
            i += 1
    assert rle.encode(mask) == " ".join(map(str, pairs))


def test_edge_cases():
    assert rle.encode(np.zeros((3, 5), np.uint8)) == ""
    assert rle.encode(np.ones((3, 5), np.uint8)) == "1 15"
    m = np.zeros((2, 3), np.uint8)
    m[0, 0] = m[1, 2] = 1
    assert rle.encode(m) == "1 1 6 1"
    # Row-major: a run continues across the end of a row.
    m = np.zeros((2, 3), np.uint8)
    m[0, 2] = m[1, 0] = 1
    assert rle.encode(m) == "3 2"
    assert rle.encode(np.array([[0, 255, 7]], np.uint8)) == "2 2"
    assert rle.decode("", (2, 2)).sum() == 0
    assert rle.decode("  ", (2, 2)).sum() == 0
    np.testing.assert_array_equal(rle.decode("1 1 4 1", (2, 2)), [[1, 0], [0, 1]])
    np.testing.assert_array_equal(rle.decode("1 2\n3 1", (2, 2)), [[1, 1], [1, 0]])


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("1 2 3", "odd number"),
        ("0 2", "not positive"),
        ("-1 2", "not positive"),
        ("1 0", "length is not positive"),
        ("3 1 1 1", "not sorted"),
        ("1 3 2 1", "overlaps"),
        ("1 1 1 1", "not sorted"),
        ("3 3", "past the last pixel 4"),
        ("5 1", "past the last pixel 4"),
        ("1 x", "not an integer"),
        ("1 2.5", "not an integer"),
    ],
)
def test_decode_rejects_invalid(text, reason):
    with pytest.raises(rle.RLEError, match=reason) as info:
        rle.decode(text, (2, 2))
    assert isinstance(info.value, KitError)


def test_adjacent_runs_are_allowed():
    # "1 1 2 1" is unusual (two touching runs) but sorted and non-overlapping.
    np.testing.assert_array_equal(rle.decode("1 1 2 1", (1, 3)), [[1, 1, 0]])


def test_full_size_fragment_roundtrip():
    rng = np.random.default_rng(0)
    mask = np.zeros((14830, 9506), np.bool_)
    # Blocky ink (a few 100k runs) like a real prediction map, touching the first and last pixel.
    blocks = rng.random((14830 // 10 + 1, 9506 // 10 + 1)) > 0.9
    mask[:] = np.repeat(np.repeat(blocks, 10, 0), 10, 1)[:14830, :9506]
    mask[0, 0] = mask[-1, -1] = True
    text = rle.encode(mask)
    assert text.startswith("1 ")
    last_start, last_length = (int(v) for v in text.rsplit(" ", 2)[-2:])
    assert last_start + last_length - 1 == mask.size
    np.testing.assert_array_equal(rle.decode(text, mask.shape), mask)
