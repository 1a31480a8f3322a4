"""Run-length encoding of binary maps in the competition's submission format.

Pixels are numbered 1..H·W row-major (left to right, then top to bottom); a map is written as
space-separated `start length` pairs, sorted and non-overlapping; an all-zero map is "".
Both directions are vectorised: a 14830×9506 map encodes and decodes in well under a second.
"""

from __future__ import annotations

import warnings

import numpy as np

from kit.errors import KitError


class RLEError(KitError, ValueError):
    """A run-length string that is not a valid encoding for the given shape."""


def encode(mask: np.ndarray) -> str:
    """Binary map (H, W), any dtype (non-zero = 1) -> "start length start length ..."."""
    flat = np.asarray(mask).ravel(order="C")
    if flat.dtype != np.bool_:
        flat = flat != 0
    if flat.size == 0:
        return ""
    # Positions where the value changes; ink on the first or last pixel opens or closes a run
    # there (equivalent to padding with zeros, without copying 141M pixels).
    edges = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    if flat[0]:
        edges = np.concatenate(([0], edges))
    if flat[-1]:
        edges = np.concatenate((edges, [flat.size]))
    if edges.size == 0:
        return ""
    starts, ends = edges[0::2], edges[1::2]
    pairs = np.empty(edges.size, dtype=np.int64)
    pairs[0::2] = starts + 1
    pairs[1::2] = ends - starts
    # map(str) over Python ints is ~2x faster than numpy's astype(str) for long maps.
    return " ".join(map(str, pairs.tolist()))


def parse(rle: str, n_pixels: int) -> tuple[np.ndarray, np.ndarray]:
    """Validated (starts, lengths), 1-indexed int64 arrays; raises RLEError with the reason."""
    if rle is None or (isinstance(rle, float) and np.isnan(rle)):
        rle = ""
    text = str(rle).strip()
    if not text:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    # np.fromstring's text mode parses in C (~10x faster than split + int on long strings); it
    # warns, instead of raising, on a token it cannot read, so that warning becomes the error.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            values = np.fromstring(text, dtype=np.int64, sep=" ")
        except (ValueError, DeprecationWarning) as exc:
            raise RLEError("contains a token that is not an integer") from exc
    if values.size % 2:
        raise RLEError(
            f"has an odd number of values ({values.size}); it must be start/length pairs"
        )
    starts, lengths = values[0::2], values[1::2]
    _first_bad(starts < 1, starts, lengths, "start is not positive (pixels are 1-indexed)")
    _first_bad(lengths < 1, starts, lengths, "length is not positive")
    _first_bad(
        starts + lengths - 1 > n_pixels, starts, lengths, f"run ends past the last pixel {n_pixels}"
    )
    if starts.size > 1:
        order = np.concatenate(([False], starts[1:] <= starts[:-1]))
        _first_bad(order, starts, lengths, "runs are not sorted by start")
        overlap = np.concatenate(([False], starts[1:] < starts[:-1] + lengths[:-1]))
        _first_bad(overlap, starts, lengths, "run overlaps the previous run")
    return starts, lengths


def decode(rle: str, shape: tuple[int, int]) -> np.ndarray:
    """ "start length ..." -> uint8 {0, 1} (H, W); raises RLEError on an invalid string."""
    h, w = (int(s) for s in shape)
    starts, lengths = parse(rle, h * w)
    # Difference array: +1 at each run start, -1 just past its end, cumulative sum = the map.
    # Runs are validated sorted and disjoint, so starts (and ends) are unique among themselves
    # and plain fancy-index updates are safe; a start equal to the previous end adds to it.
    diff = np.zeros(h * w + 1, dtype=np.int8)
    diff[starts - 1] += 1
    diff[starts - 1 + lengths] -= 1
    return np.cumsum(diff[:-1], dtype=np.int8).astype(np.uint8).reshape(h, w)


def _first_bad(bad: np.ndarray, starts: np.ndarray, lengths: np.ndarray, reason: str) -> None:
    if bad.any():
        i = int(np.argmax(bad))
        raise RLEError(f"pair {i + 1} ({starts[i]} {lengths[i]}): {reason}")
