"""Where is the ink? Per-slice ink signal, surface depth and layer order of labelled fragments.

    probe_fragment(fragment, labels, rows)  -> FragmentProbe (one fragment's profiles)
    combine(probes)                          -> DatasetProbe (pooled signal, window, reverse)
    resolve_auto(config, probe)              -> Config with data.z_start/z_end/reverse resolved

The probe reads evenly spaced bands of rows (all slices, never a whole volume). In each band it
compares ink pixels with the non-ink papyrus *near* them (within a few stroke widths): the
per-slice difference of means in units of the background's standard deviation (Cohen's d) is the
ink signal of that slice. Comparing with nearby papyrus, not all papyrus, keeps slow changes
across the fragment (the surface's depth, density drift) out of the signal.

Layer order: ink lies on the written surface, at the front of the dense papyrus sheet. In scan
order (file 00 = outside) the ink peak comes before the centre of the sheet's density; in a
reversed volume (00 = deepest) after it. The surface depth is where the density rises (falls,
reversed) most steeply along depth (kit.data.surface, on 8×8-pixel blocks).

Flattening: the same signal is also measured along each pixel's own surface (slices counted
from the surface, `flat_signal`). Where the surface wanders, the ink sits at one depth below it
but at many file slices, so the flat signal peaks higher; data.flatten "auto" flattens when its
peak is at least FLATTEN_GAIN × the file-order peak, with the window taken from it around the
dataset's surface depth (the median of the fragments').
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import cv2
import numpy as np

from kit.config import Config, DataConfig
from kit.data.fragment import Fragment
from kit.data.surface import surface_map
from kit.errors import KitError

BAND_ROWS = 16  # rows read together (all slices of them)
MAX_BANDS = 32  # per fragment: bounds the read to 512 rows whatever the fragment's height
FLATTEN_GAIN = 1.1  # flat peak signal over file-order peak signal that makes "auto" flatten
MIN_WINDOW = 8  # slices; a window narrower than this gives the model no depth context
MAX_WINDOW = 32
WINDOW_LEVEL = 0.2  # slices whose |signal| is at least this share of the peak are in the window
WINDOW_MARGIN = 2  # slices added on each side


@dataclass
class FragmentProbe:
    """One fragment's profiles along depth (file order, one value per slice)."""

    id: str
    signal: list[float]  # Cohen's d of ink vs nearby non-ink papyrus, signed
    profile: list[float]  # mean intensity of the papyrus
    surface: dict[str, float]  # surface depth in file slices: median, p5, p95
    # the signal along the surface: index k is k - (slices - 1) slices behind the surface
    flat_signal: list[float]
    ink_pixels: int
    reversed: bool
    window: tuple[int, int] = (0, 0)  # recommended [z_start, z_end) for this fragment alone
    fixed: bool = False  # segments.csv fixes its window and order: not pooled (see combine)


@dataclass
class DatasetProbe:
    fragments: list[FragmentProbe]
    signal: list[float]  # pooled over fragments, weighted by ink pixels
    window: tuple[int, int]  # in file slices, or along the surface when `flatten`
    reverse: bool
    flat_signal: list[float] = field(default_factory=list)  # pooled, as FragmentProbe's
    flatten: bool = False  # the flat signal peaks FLATTEN_GAIN × higher: read along the surface
    surface_depth: float = 0.0  # the depth flattening moves the surface to (file slices)
    file_window: tuple[int, int] = (0, 0)  # the window in file slices
    flat_window: tuple[int, int] = (0, 0)  # the window along the surface (at surface_depth)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def probe_fragment(
    fragment: Fragment, labels: np.ndarray, rows: list[tuple[int, int]] | None = None
) -> FragmentProbe:
    """Profiles of `fragment` from bands of rows inside `rows` (default: all rows)."""
    mask = fragment.mask()
    ink = (labels > 0) & mask
    near = _near_background(ink, mask)
    n = fragment.n_slices
    sums = np.zeros((4, n))  # ink Σx, ink Σx², near Σx, near Σx²
    counts = np.zeros((2, 1))
    profile = np.zeros(n)
    # the same sums along the surface of either layer order (which one is known at the end)
    maps = {r: surface_map(fragment, r) for r in (False, True)}
    flat = {r: (np.zeros((4, 2 * n - 1)), np.zeros((2, 2 * n - 1))) for r in maps}
    starts = _band_starts(fragment.shape[0], rows, mask)
    for r0 in starts:
        band = fragment.read(0, n, slice(r0, r0 + BAND_ROWS)).astype(np.float32)
        m, i, b = (a[r0 : r0 + BAND_ROWS] for a in (mask, ink, near))
        xi, xb = band[:, i], band[:, b]
        sums += [xi.sum(1), (xi**2).sum(1), xb.sum(1), (xb**2).sum(1)]
        counts += [[i.sum()], [b.sum()]]
        profile += band[:, m].sum(1)
        for r, surface in maps.items():
            _add_along_surface(band, surface, r0, (i, b), *flat[r])
    profile /= max(sum(int(mask[s : s + BAND_ROWS].sum()) for s in starts), 1)
    signal = _cohens_d(sums, counts)
    reversed_ = _looks_reversed(signal, profile)
    surface, (flat_sums, flat_counts) = maps[reversed_], flat[reversed_]
    flat_signal = _cohens_d(flat_sums, flat_counts)
    # offsets few pixels reach (the ends of the volume) give noisy means: not signal
    flat_signal[flat_counts[0] < 0.5 * flat_counts[0].max()] = 0.0
    p5, median, p95 = np.percentile(surface.grid, [5, 50, 95])
    return FragmentProbe(
        id=fragment.id, signal=signal.round(4).tolist(), profile=profile.round(1).tolist(),
        surface={"median": float(median), "p5": float(p5), "p95": float(p95)},
        flat_signal=flat_signal.round(4).tolist(), ink_pixels=int(counts[0, 0]),
        reversed=reversed_, window=recommend_window(signal), fixed=fragment.window is not None,
    )  # fmt: skip


def _add_along_surface(band, surface, r0: int, pixels, sums: np.ndarray, counts: np.ndarray):
    """Add the band's (n, h, w) ink and papyrus `pixels` (two bool (h, w)) to `sums` (4, 2n-1)
    and `counts` (2, 2n-1) by slice offset from the surface: index k = z - surface + n - 1."""
    n, h, w = band.shape
    offset = np.rint(surface.depth(slice(r0, r0 + h), slice(0, w))).astype(np.int64)
    k = np.arange(n)[:, None, None] - offset[None] + n - 1
    for j, sel in enumerate(pixels):
        kk, x = k[:, sel].ravel(), band[:, sel].ravel().astype(np.float64)
        sums[2 * j] += np.bincount(kk, x, minlength=2 * n - 1)
        sums[2 * j + 1] += np.bincount(kk, x**2, minlength=2 * n - 1)
        counts[j] += np.bincount(kk, minlength=2 * n - 1)


def combine(probes: list[FragmentProbe]) -> DatasetProbe:
    """The dataset's window and layer order from its fragments (ink-pixel weighted). Fragments
    whose window segments.csv fixes are read with theirs, so they do not choose the others'
    (unless all are fixed: then the pooled window still sets the model's number of slices)."""
    all_probes, probes = probes, [p for p in probes if not p.fixed] or probes
    depths = {p.id: len(p.signal) for p in probes}
    if len(set(depths.values())) > 1:
        raise KitError(
            f"the probed fragments have different numbers of slices {depths}: one window cannot "
            "be pooled; set data.z_start/z_end, or give each a row in segments.csv"
        )
    weights = np.array([p.ink_pixels for p in probes], dtype=np.float64)
    signals = np.array([p.signal for p in probes])
    if weights.sum() == 0:
        raise ValueError("no ink pixels in the probed fragments: cannot locate the ink")
    pooled = (np.abs(signals) * weights[:, None]).sum(0) / weights.sum()
    votes = sum(w for p, w in zip(probes, weights, strict=True) if p.reversed)
    reverse = votes > weights.sum() / 2
    notes = []
    if any(p.reversed != reverse for p in probes):
        odd = [p.id for p in probes if p.reversed != reverse]
        notes.append(f"layer order differs between fragments: {odd} look the other way round")
    signs = {p.id: np.sign(p.signal[int(np.argmax(np.abs(p.signal)))]) for p in probes}
    if len(set(signs.values())) > 1:
        notes.append(f"ink is denser than papyrus in some fragments, lighter in others: {signs}")
    flat = (np.abs([p.flat_signal for p in probes]) * weights[:, None]).sum(0) / weights.sum()
    n = len(pooled)
    depth = float(np.median([p.surface["median"] for p in probes]))
    flatten = bool(_peak(flat) >= FLATTEN_GAIN * _peak(pooled))
    file_window = recommend_window(pooled)
    lo, hi = recommend_window(flat)  # offsets from the surface, placed at its depth
    lo = int(np.clip(round(depth) + lo - (n - 1), 0, n - 1))
    flat_window = (lo, int(np.clip(round(depth) + hi - (n - 1), lo + 1, n)))
    return DatasetProbe(
        fragments=all_probes, signal=pooled.round(4).tolist(),
        window=flat_window if flatten else file_window, reverse=bool(reverse),
        flat_signal=flat.round(4).tolist(), flatten=flatten, surface_depth=round(depth, 2),
        file_window=file_window, flat_window=flat_window, notes=notes,
    )  # fmt: skip


def _peak(signal: np.ndarray) -> float:
    """The |signal| peak after recommend_window's smoothing."""
    s = np.abs(np.asarray(signal, dtype=np.float64))
    return float(np.convolve(np.pad(s, 1, mode="edge"), [0.25, 0.5, 0.25], mode="valid").max())


def recommend_window(signal) -> tuple[int, int]:
    """[z_start, z_end): the contiguous run of slices around the |signal| peak at or above
    WINDOW_LEVEL of the peak, plus WINDOW_MARGIN each side, widened to MIN_WINDOW and cut to
    MAX_WINDOW around the peak."""
    s = np.abs(np.asarray(signal, dtype=np.float64))
    n = len(s)
    s = np.convolve(np.pad(s, 1, mode="edge"), [0.25, 0.5, 0.25], mode="valid")
    peak = int(np.argmax(s))
    lo = hi = peak
    while lo > 0 and s[lo - 1] >= WINDOW_LEVEL * s[peak]:
        lo -= 1
    while hi < n - 1 and s[hi + 1] >= WINDOW_LEVEL * s[peak]:
        hi += 1
    lo, hi = max(lo - WINDOW_MARGIN, 0), min(hi + 1 + WINDOW_MARGIN, n)
    while hi - lo < min(MIN_WINDOW, n):  # widen on whichever side still has slices
        lo, hi = (lo - 1, hi) if hi == n or (lo > 0 and peak - lo < hi - peak) else (lo, hi + 1)
    if hi - lo > MAX_WINDOW:  # centred on the peak, inside the volume
        lo = min(max(peak - MAX_WINDOW // 2, lo), hi - MAX_WINDOW)
        hi = lo + MAX_WINDOW
    return int(lo), int(hi)


def _band_starts(height: int, rows, mask: np.ndarray) -> list[int]:
    """Up to MAX_BANDS evenly spaced band starts inside `rows`, each band holding papyrus."""
    ranges = rows or [(0, height)]
    starts = [s for r0, r1 in ranges for s in range(r0, max(r1 - BAND_ROWS, r0) + 1, BAND_ROWS)]
    starts = [s for s in starts if mask[s : s + BAND_ROWS].any()]
    if len(starts) > MAX_BANDS:
        starts = [starts[i] for i in np.linspace(0, len(starts) - 1, MAX_BANDS).astype(int)]
    return starts


def _near_background(ink: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Non-ink papyrus within ~3 stroke half-widths of ink, bool (H, W)."""
    if not ink.any():
        return np.zeros_like(ink)
    dist = cv2.distanceTransform(ink.astype(np.uint8), cv2.DIST_L2, 3)
    half_width = float(np.percentile(dist[ink], 90))
    r = int(np.clip(round(3 * half_width), 3, 64))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
    return (cv2.dilate(ink.astype(np.uint8), kernel) > 0) & ~ink & mask


def _cohens_d(sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Per depth, from sums (4, n) and counts (2, n) or (2, 1) of ink and nearby papyrus; 0
    where either has fewer than 2 pixels."""
    counts = np.broadcast_to(counts, (2, sums.shape[1]))
    ok = counts.min(0) >= 2
    c = np.maximum(counts, 1)
    mean_i, mean_b = sums[0] / c[0], sums[2] / c[1]
    var_b = np.maximum(sums[3] / c[1] - mean_b**2, 1e-6)
    return np.where(ok, (mean_i - mean_b) / np.sqrt(var_b), 0.0)


def _looks_reversed(signal: np.ndarray, profile: np.ndarray) -> bool:
    """Ink peak after the centre of the sheet's excess density: 00 is the deepest slice."""
    excess = np.maximum(profile - profile.min(), 0)
    if excess.sum() == 0:
        return False
    centre = float((excess * np.arange(len(profile))).sum() / excess.sum())
    return int(np.argmax(np.abs(signal))) > centre


def probe_fragments(
    fragments: list[Fragment],
    labels: list[np.ndarray],
    rows: list[list[tuple[int, int]]] | None = None,
) -> DatasetProbe:
    """`combine` of each fragment's probe, over its `rows` ranges (default: all rows)."""
    rows = rows or [None] * len(fragments)
    return combine(
        [probe_fragment(f, lab, r) for f, lab, r in zip(fragments, labels, rows, strict=True)]
    )


def resolve_auto(config: Config, probe: DatasetProbe) -> Config:
    """`config` with each "auto" of data.z_start/z_end/reverse/flatten (and a missing
    data.surface_depth) replaced by the probe's choice; the window is the one for the resolved
    flatten. A fixed bound keeps its value; the other bound keeps the probe's window width."""
    d = config.data
    if not d.unresolved:
        return config
    flatten = probe.flatten if d.flatten == "auto" else d.flatten
    lo, hi = probe.flat_window if flatten else probe.file_window
    if d.z_start != "auto":
        lo, hi = d.z_start, max(d.z_start + 1, d.z_start + hi - lo)
    elif d.z_end != "auto":
        lo, hi = max(min(d.z_end - (hi - lo), d.z_end - 1), 0), d.z_end
    resolved = {"z_start": lo, "z_end": hi, "reverse": probe.reverse, "flatten": flatten,
                "surface_depth": probe.surface_depth}  # fmt: skip
    data = dataclasses.replace(d, **{k: resolved[k] for k in d.unresolved})
    return dataclasses.replace(config, data=data)


# What model.input_gain "auto" scales the tile-centred channel mean to (its standard deviation,
# in the [0, 1] frame): a from-scratch ViT learns on a signal of about SAM's pixel spread.
TILE_CONTRAST = 3.0


def tile_contrast(
    fragments: list[Fragment],
    rows: list[list[tuple[int, int]]],
    data: DataConfig,
    *,
    tiles_per_fragment: int = 32,
    seed: int = 0,
) -> float:
    """Median standard deviation of the normalised, channel-averaged, tile-centred image over
    tiles (data.tile, ≥ 90 % papyrus) inside `rows`: the contrast the model's input carries."""
    import torch

    from kit.data.preprocess import fragment_stats, normalize, read_window

    rng = np.random.default_rng(seed)
    t, values = data.tile, []
    for fragment, ranges in zip(fragments, rows, strict=True):
        stats = fragment_stats(fragment, data).as_tensor()[None]
        mask, (_, width) = fragment.mask(), fragment.shape
        for _ in range(tiles_per_fragment * 8):  # tries; most land inside for real outlines
            r0, r1 = ranges[rng.integers(len(ranges))]
            if r1 - r0 < t or width < t:
                continue
            y, x = int(rng.integers(r0, r1 - t + 1)), int(rng.integers(0, width - t + 1))
            if mask[y : y + t, x : x + t].mean() < 0.9:
                continue
            raw = torch.from_numpy(read_window(fragment, data, y, x, t, t).astype(np.int32))
            image = normalize(raw[None], stats, data).mean(1)
            values.append(float((image - image.mean()).std()))
            if len(values) % tiles_per_fragment == 0:
                break
    if not values:
        raise ValueError(f"no {t}-px tile with 90 % papyrus in the training rows")
    return float(np.median(values))


def resolve_input_gain(config: Config, contrast: float) -> Config:
    """`config` with model.input_gain "auto" set so the measured `contrast` becomes
    TILE_CONTRAST."""
    if config.model.input_gain != "auto":
        return config
    gain = round(TILE_CONTRAST / max(contrast, 1e-6), 2)
    return dataclasses.replace(config, model=dataclasses.replace(config.model, input_gain=gain))


def describe(probe: DatasetProbe) -> str:
    """One line for logs: the window, the layer order and the notes."""
    lo, hi = probe.window
    order = "reversed (00 = deepest)" if probe.reverse else "scan order (00 = outside)"
    peak = int(np.argmax(probe.signal))
    text = f"ink window slices {lo}..{hi - 1} (signal peak at {peak}), layers in {order}"
    if probe.flatten:
        gain = _peak(probe.flat_signal) / max(_peak(probe.signal), 1e-9)
        text += (f", read along the surface (moved to slice {probe.surface_depth:g}; "
                 f"ink signal ×{gain:.2f} that way)")  # fmt: skip
    return "; ".join([text, *probe.notes])
