"""Synthetic fragments in the competition layout: the kit's embedded dataset for demos and tests.

    OUT/train/{1,2,3}/surface_volume/00..64.tif, mask.png, inklabels.png, inklabels_rle.csv, ir.png
    OUT/test/{a,b}/surface_volume/00..64.tif, mask.png
    OUT/sample_submission.csv   Id,Predicted (a valid placeholder per test fragment)
    OUT/folds.csv               the standard split (kit.data.folds.STANDARD_FOLDS)
    OUT/solution.csv            the test fragments' true labels (Id,Predicted,height,width)

Geometry is the real fragments' × `scale` (default 1/16). Each fragment is a papyrus sheet whose
front surface sits at a depth `surf(y, x)` that wanders smoothly around a mean depth. The sheet is
bright in the X-ray (a dense band ~12 slices thick behind the surface) with horizontal fibres in
its front half and vertical fibres in its back half. Ink is a thin layer of slightly denser (or,
in some variants, lighter) material a few slices behind the surface that also smooths the front
fibres. In any one slice the ink shift is about the noise; it becomes visible only by pooling over
depth *and* over the stroke's area, which a spatial model does and a per-pixel model cannot. The
infrared photograph shows the ink plainly (dark strokes on light papyrus).

What real scans vary, the generator varies too (`DemoStyle`): the surface's mean depth and how
far it wanders, the layer order (`reverse`: file 00 is the deepest slice), ink contrast and sign,
ink depth, stroke width and letter size, noise and fibre texture, the outline's raggedness.
`VARIANTS` names a few styles; `random_style(seed)` draws one. The default style ("demo") is the
dataset the kit was first built on: the kit's defaults must not depend on any one style, and
`bench/generalise.py` keeps a list of held-out variants that no default is tuned on.

Test fragments a (top) and b (bottom) are one more synthetic fragment with fragment 1's
geometry cut in two, as in the real public test set; their labels go to solution.csv only.

`layout` writes the same fragments as scroll segments instead (`<id>/layers/NN.tif`, or 8-bit
.png/.jpg layers with `layers`; `<id>_mask.png`, `<id>_inklabels.png`; no infrared image) or as
zarr volumes (`<id>/<id>.zarr`, an OME-Zarr 0.4 image, and the same PNGs): only the writer
differs (kit.data.layout names the files).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from kit import rle
from kit.data.layout import CompetitionLayout, SegmentLayout, segment_pngs
from kit.errors import KitError
from kit.io import write_csv, write_json, write_png, write_tiff, write_zarr

N_SLICES = 65
DEFAULT_SCALE = 1 / 16
# Real (H, W) of the competition fragments; test a on top of b has fragment 1's geometry.
REAL_SHAPES = {"1": (8181, 6330), "2": (14830, 9506), "3": (7606, 5249)}
TEST_SPLIT = {"a": (0, 2727), "b": (2727, 8181)}  # rows of the real fragment 1 geometry
BACKGROUND, PAPYRUS = 9000.0, 22000.0  # uint16 counts: air, and the dense sheet


STYLE_FILE = "style.json"  # in every demo dataset: the style it was drawn in


@dataclass(frozen=True)
class DemoStyle:
    """What one synthetic dataset looks like. Lengths are pixels at the default scale, depths
    slices; intensities uint16 counts. The defaults are the original demo's: there the ink peak
    (2900) is ~1.1 of the per-voxel noise (2600 plus fibre texture), so the best single-slice
    per-pixel threshold scores F0.5 ~0.38 and a small U-Net ~0.9 (see docs/data.md)."""

    surface_mean: float = 32.0  # mean front-surface depth (slice, in scan order)
    surface_wander: float = 3.0  # the surface wanders within mean ± this
    surface_length: float = 140.0  # correlation length of the wandering
    reverse: bool = False  # files in reversed order: 00 is the deepest slice
    ink_density: float = 2900.0  # ink peak over the papyrus; < 0: ink lighter than papyrus
    ink_depth: float = 2.5  # ink layer's centre, slices behind the surface
    ink_width: float = 1.2  # its σ in slices
    ink_smoothing: float = 0.5  # fraction of the front-fibre contrast that ink hides
    noise: float = 2600.0  # per-voxel Gaussian noise σ
    fibre_contrast: float = 0.015  # fibre texture, relative to the papyrus density
    sheet_thickness: float = 12.0
    pen_width: tuple[float, float] = (3.0, 7.0)  # stroke width range
    glyph_height: float = 24.0  # letter size
    line_gap: float = 46.0  # baseline to baseline
    raggedness: float = 0.08  # outline irregularity (0 = a clean rounded rectangle)


# Named styles. "demo" is the default; bench/generalise.py holds some out of all tuning.
VARIANTS: dict[str, DemoStyle] = {
    "demo": DemoStyle(),
    "shallow": DemoStyle(surface_mean=22, surface_wander=5, ink_depth=3.5, pen_width=(2, 5),
                         glyph_height=18, line_gap=36),
    "bold": DemoStyle(surface_mean=36, surface_wander=4, ink_density=3300, noise=3200,
                      pen_width=(6, 11), glyph_height=34, line_gap=60),
    "noisy": DemoStyle(surface_mean=28, surface_wander=6, surface_length=80, noise=3300,
                       fibre_contrast=0.03, ink_density=3100, reverse=True),
    "reversed": DemoStyle(surface_mean=30, surface_wander=5, reverse=True, ink_depth=2.0,
                          noise=2800, pen_width=(3, 8), glyph_height=28, line_gap=52),
    "deep": DemoStyle(surface_mean=42, surface_wander=6, ink_depth=3.0, ink_width=1.5,
                      pen_width=(2, 6), glyph_height=22, line_gap=42),
    "light-ink": DemoStyle(surface_mean=33, surface_wander=4, ink_density=-2700,
                           ink_smoothing=0.8, fibre_contrast=0.025, pen_width=(4, 9),
                           glyph_height=30, line_gap=56, raggedness=0.14),
}  # fmt: skip


def random_style(seed: int) -> DemoStyle:
    """A style drawn from the ranges the named variants span (same seed, same style)."""
    rng = np.random.default_rng([seed, 7919])
    pen_lo = float(rng.uniform(2, 6))
    glyph = float(rng.uniform(18, 34))
    return DemoStyle(
        surface_mean=float(rng.uniform(20, 44)),
        surface_wander=float(rng.uniform(2, 6)),
        surface_length=float(rng.uniform(80, 180)),
        reverse=bool(rng.random() < 0.5),
        ink_density=float(rng.uniform(2700, 3400) * rng.choice([-1, 1])),
        ink_depth=float(rng.uniform(1.5, 3.5)),
        ink_width=float(rng.uniform(1.0, 1.6)),
        ink_smoothing=float(rng.uniform(0.3, 0.8)),
        noise=float(rng.uniform(2400, 3300)),
        fibre_contrast=float(rng.uniform(0.01, 0.03)),
        pen_width=(pen_lo, pen_lo + float(rng.uniform(2, 5))),
        glyph_height=glyph,
        line_gap=glyph * float(rng.uniform(1.6, 2.0)),
        raggedness=float(rng.uniform(0.04, 0.14)),
    )


def style_from(variant: str = "demo", overrides: dict | None = None, *, seed: int = 0) -> DemoStyle:
    """`variant` ("random" draws one from `seed`), then field overrides; unknown names raise."""
    from dataclasses import fields, replace

    if variant == "random":
        style = random_style(seed)
    elif variant in VARIANTS:
        style = VARIANTS[variant]
    else:
        raise KitError(f"unknown demo variant {variant!r}; valid: {[*VARIANTS, 'random']}")
    overrides = dict(overrides or {})
    valid = {f.name for f in fields(DemoStyle)}
    unknown = sorted(set(overrides) - valid)
    if unknown:
        raise KitError(f"unknown demo style field(s) {unknown}; valid: {sorted(valid)}")
    checked = {
        name: _style_value(name, value, getattr(style, name)) for name, value in overrides.items()
    }
    return replace(style, **checked)


def _style_value(name: str, value, current):
    """An override of style field `name` in the type of its `current` value, else a KitError."""

    def number(v) -> bool:
        return isinstance(v, int | float) and not isinstance(v, bool)

    if isinstance(current, bool):
        ok, what = isinstance(value, bool), "true or false"
    elif isinstance(current, tuple):
        ok = isinstance(value, list | tuple) and len(value) == len(current)
        ok, what = ok and all(map(number, value)), f"a list of {len(current)} numbers, e.g. [3, 7]"
        value = tuple(float(v) for v in value) if ok else value
    else:
        ok, what = number(value), "a number"
        value = float(value) if ok else value
    if not ok:
        raise KitError(f"--style {name}={value!r}: expected {what}")
    return value


@dataclass
class SynthFragment:
    """One generated fragment in memory (2-D maps only; slices are made on the fly)."""

    mask: np.ndarray  # bool (H, W)
    labels: np.ndarray  # uint8 {0, 1} (H, W)
    surface: np.ndarray  # float32 (H, W), depth of the front surface in slices
    fibre_h: np.ndarray  # float32 (H, W), unit-variance horizontal fibres
    fibre_v: np.ndarray  # float32 (H, W), unit-variance vertical fibres
    shading: np.ndarray  # float32 (H, W), slow multiplicative density drift around 1
    noise_seed: int
    style: DemoStyle = DemoStyle()

    @property
    def shape(self) -> tuple[int, int]:
        return self.mask.shape

    def slice(self, z: int) -> np.ndarray:
        """Slice z in scan order as uint16 (H, W); deterministic (noise seeded by noise_seed
        and z). The file index of slice z is N_SLICES - 1 - z when the style is reversed."""
        rng = np.random.default_rng([self.noise_seed, z])
        noise = BACKGROUND + self.style.noise * rng.standard_normal(self.shape, dtype=np.float32)
        # Outside the papyrus the scanner sees air: background and noise only.
        value = np.where(self.mask, self.papyrus(z, self.labels) + noise, noise)
        return np.clip(value, 0, 65535).astype(np.uint16)

    def papyrus(self, z: int, ink: np.ndarray) -> np.ndarray:
        """The sheet's noise-free density over the background in slice z (float32 (H, W)) with
        `ink` (H, W; 1 = ink) as the labels: what `slice` adds its noise to. An observer who
        knew this for ink and for no ink everywhere would know all but the labels and the
        noise (bench/ceiling.py)."""
        st = self.style
        d = np.float32(z) - self.surface  # > 0 behind the surface, inside the sheet
        sheet = _sigmoid(d / 0.8) * _sigmoid((st.sheet_thickness - d) / 1.5)
        front = (d < st.sheet_thickness / 2).astype(np.float32)
        ink = ink.astype(np.float32)
        ink_layer = np.exp(-0.5 * ((d - st.ink_depth) / st.ink_width) ** 2)
        texture = front * self.fibre_h * (1 - st.ink_smoothing * ink * ink_layer)
        texture += (1 - front) * self.fibre_v
        value = PAPYRUS * sheet * (1 + st.fibre_contrast * texture) * self.shading
        return value + st.ink_density * ink * ink_layer

    def ir(self) -> np.ndarray:
        """Infrared photograph, uint8 (H, W): light papyrus, dark ink, black outside."""
        rng = np.random.default_rng([self.noise_seed, 1000])
        tone = 165 + 18 * self.fibre_h + 30 * (self.shading - 1) / 0.1
        tone -= 105 * cv2.GaussianBlur(self.labels.astype(np.float32), (0, 0), 0.7)
        tone += 6 * rng.standard_normal(self.shape, dtype=np.float32)
        return np.where(self.mask, np.clip(tone, 1, 255), 8).astype(np.uint8)


def make_demo_data(
    out: str | os.PathLike,
    seed: int = 0,
    scale: float = DEFAULT_SCALE,
    *,
    style: DemoStyle | None = None,
    layout: str = "competition",
    layers: str = "tif",
    progress: bool = False,
) -> Path:
    """Write the demo dataset to `out` (created; existing demo files are overwritten), in
    `style` (default: the original demo's) and `layout` (LAYOUTS; `layers`: the segments
    layout's layer format, LAYER_FORMATS); the style is recorded in `out/style.json`."""
    from kit.data.folds import STANDARD_FOLDS, write_folds

    if layout not in LAYOUTS:
        raise KitError(f"unknown demo layout {layout!r}; valid: {list(LAYOUTS)}")
    if layers not in LAYER_FORMATS:
        raise KitError(f"unknown layer format {layers!r}; valid: {list(LAYER_FORMATS)}")
    write = LAYOUTS[layout]
    out = Path(out)
    style = style or DemoStyle()
    train, test = demo_fragments(seed, scale, style)
    for fid, frag in train.items():
        write(out / "train" / fid, frag, labels=True, layers=layers, progress=progress)
    solution = []
    for tid, part in test.items():
        write(out / "test" / tid, part, labels=False, layers=layers, progress=progress)
        solution.append((tid, rle.encode(part.labels), *part.labels.shape))
    write_csv(
        out / "sample_submission.csv", ["Id", "Predicted"], [(t, "1 1") for t, *_ in solution]
    )
    write_csv(out / "solution.csv", ["Id", "Predicted", "height", "width"], solution)
    write_folds(STANDARD_FOLDS, out / "folds.csv")
    write_json(out / STYLE_FILE, asdict(style))
    return out


def demo_fragments(
    seed: int = 0, scale: float = DEFAULT_SCALE, style: DemoStyle | None = None
) -> tuple[dict[str, SynthFragment], dict[str, SynthFragment]]:
    """The fragments a demo dataset is written from, in memory: ({train id: fragment},
    {test id: fragment}), the test ones with their labels (solution.csv's)."""
    from kit.data.folds import STANDARD_FOLDS

    style = style or DemoStyle()
    shapes = {k: _scaled(v, scale) for k, v in REAL_SHAPES.items()}
    split_rows = {"2": STANDARD_FOLDS[1].row_end}
    train = {
        fid: synth_fragment(
            shape, seed=seed, index=index, scale=scale, balance=split_rows.get(fid), style=style
        )
        for index, (fid, shape) in enumerate(shapes.items())
    }
    whole = synth_fragment(shapes["1"], seed=seed, index=len(shapes), scale=scale, style=style)
    cut = round(TEST_SPLIT["a"][1] / REAL_SHAPES["1"][0] * shapes["1"][0])
    test = {
        tid: _crop(whole, rows, noise_seed=whole.noise_seed + 1 + i)
        for i, (tid, rows) in enumerate((("a", slice(0, cut)), ("b", slice(cut, None))))
    }
    return train, test


def synth_fragment(
    shape: tuple[int, int],
    *,
    seed: int,
    index: int,
    scale: float = DEFAULT_SCALE,
    balance: float | None = None,
    style: DemoStyle | None = None,
) -> SynthFragment:
    """Generate one fragment of `shape`; `balance` = a row fraction at which the ink above and
    below should be about equal (text lines are dropped from the heavier side)."""
    style = style or DemoStyle()
    rng = np.random.default_rng([seed, index])
    f = scale / DEFAULT_SCALE  # lengths below are in pixels at the default scale
    mask = _outline(shape, rng, f, style.raggedness)
    labels = _text(shape, rng, f, mask, balance, style)
    lo, hi = style.surface_mean - style.surface_wander, style.surface_mean + style.surface_wander
    surface = lo + (hi - lo) * _unit(_smooth_field(shape, rng, style.surface_length * f))
    fibre_h = _fibres(shape, rng, long=6 * f, short=0.6 * f, horizontal=True)
    fibre_v = _fibres(shape, rng, long=6 * f, short=0.6 * f, horizontal=False)
    shading = 1 + 0.1 * (2 * _unit(_smooth_field(shape, rng, 90 * f)) - 1)
    return SynthFragment(
        mask, labels, surface.astype(np.float32), fibre_h, fibre_v, shading.astype(np.float32),
        noise_seed=int(rng.integers(2**31)), style=style,
    )  # fmt: skip


def _scaled(shape: tuple[int, int], scale: float) -> tuple[int, int]:
    return max(round(shape[0] * scale), 16), max(round(shape[1] * scale), 16)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


def _unit(field: np.ndarray) -> np.ndarray:
    """Rescale to 0..1."""
    lo, hi = float(field.min()), float(field.max())
    return (field - lo) / max(hi - lo, 1e-6)


def _smooth_field(shape: tuple[int, int], rng: np.random.Generator, length: float) -> np.ndarray:
    """Smooth random field (H, W), float32, correlation length ~`length` pixels."""
    h, w = shape
    gh, gw = max(int(h / length) + 3, 3), max(int(w / length) + 3, 3)
    coarse = rng.standard_normal((gh, gw)).astype(np.float32)
    return cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)


def _fibres(
    shape: tuple[int, int], rng: np.random.Generator, *, long: float, short: float, horizontal: bool
) -> np.ndarray:
    """Oriented noise (H, W), float32, zero mean, unit variance: streaks like papyrus fibres."""
    noise = rng.standard_normal(shape).astype(np.float32)
    sx, sy = (long, short) if horizontal else (short, long)
    streaks = cv2.GaussianBlur(noise, (0, 0), sigmaX=max(sx, 0.3), sigmaY=max(sy, 0.3))
    return (streaks - streaks.mean()) / max(float(streaks.std()), 1e-6)


def _outline(
    shape: tuple[int, int], rng: np.random.Generator, f: float, raggedness: float
) -> np.ndarray:
    """Irregular papyrus outline: a rounded blob with ragged, wandering edges. bool (H, W)."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    # Superellipse distance from the centre: 1 at the border of a rounded rectangle.
    dist = (np.abs(yy / (h - 1) * 2 - 1) ** 4 + np.abs(xx / (w - 1) * 2 - 1) ** 4) ** 0.25
    ragged = raggedness * _smooth_field(shape, rng, 60 * f)
    ragged += raggedness * 0.3125 * _smooth_field(shape, rng, 12 * f)  # 0.08 -> 0.025
    mask = dist + ragged < 0.9
    n, cc, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=4)
    if n > 1:  # keep the largest piece, as a real fragment is one sheet
        mask = cc == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    if not mask.any():
        mask[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = True
    return mask


def _text(
    shape: tuple[int, int],
    rng: np.random.Generator,
    f: float,
    mask: np.ndarray,
    balance: float | None,
    style: DemoStyle,
) -> np.ndarray:
    """Letter-like strokes in lines of text, clipped to the mask. uint8 {0, 1} (H, W)."""
    h = shape[0]
    glyph_h, line_gap = style.glyph_height * f, style.line_gap * f
    lines = []
    for base in np.arange(line_gap * 0.8, h - glyph_h * 0.5, line_gap):
        if rng.random() < 0.2:  # paragraph breaks leave empty lines
            continue
        canvas = np.zeros(shape, np.uint8)
        _draw_line(canvas, rng, float(base), glyph_h, f, style.pen_width)
        canvas &= mask
        rows = np.flatnonzero(canvas.any(axis=1))
        if rows.size:
            lines.append((rows[0], rows[-1] + 1, canvas[rows[0] : rows[-1] + 1].copy()))
    if balance is not None:
        lines = _balance_lines(lines, rng, round(balance * h))
    labels = np.zeros(shape, np.uint8)
    for r0, r1, band in lines:
        labels[r0:r1] |= band
    return labels


def _draw_line(
    canvas: np.ndarray,
    rng: np.random.Generator,
    base: float,
    gh: float,
    f: float,
    pen_width: tuple[float, float],
) -> None:
    """One line of pseudo-letters along a gently wavy baseline, pen width drawn from pen_width."""
    w = canvas.shape[1]
    pen = max(1, round(rng.uniform(*pen_width) * f))
    wave_a, wave_p = rng.uniform(0, 6 * f), rng.uniform(0, 2 * np.pi)
    x = rng.uniform(0, 30 * f)
    while x < w:
        gw = gh * rng.uniform(0.5, 0.9)
        if rng.random() < 0.2:  # word space
            x += gw
            continue
        y = base + wave_a * np.sin(x / (200 * f) + wave_p)
        _draw_glyph(canvas, rng, x, y - gh, gw, gh, pen)
        x += gw + rng.uniform(0.15, 0.4) * gh


def _draw_glyph(canvas, rng, x0: float, y0: float, gw: float, gh: float, pen: int) -> None:
    """2-3 strokes (bars, diagonals, arcs) inside the glyph box x0..x0+gw, y0..y0+gh."""
    s = 16  # fixed-point shift for sub-pixel coordinates in cv2 drawing

    def pt(u: float, v: float) -> tuple[int, int]:
        return int((x0 + u * gw) * s), int((y0 + v * gh) * s)

    for _ in range(rng.integers(1, 4)):
        kind = rng.integers(4)
        if kind == 0:  # vertical stem
            u = rng.uniform(0.1, 0.9)
            cv2.line(canvas, pt(u, rng.uniform(0, 0.2)), pt(u, rng.uniform(0.8, 1)), 1, pen, 8, 4)
        elif kind == 1:  # horizontal bar
            v = rng.choice([0.05, 0.5, 0.95])
            cv2.line(canvas, pt(0, v), pt(rng.uniform(0.6, 1), v), 1, pen, 8, 4)
        elif kind == 2:  # diagonal
            a, b = rng.uniform(0, 0.3), rng.uniform(0.7, 1)
            (a, b) = (a, b) if rng.random() < 0.5 else (b, a)
            cv2.line(canvas, pt(a, 0), pt(b, 1), 1, pen, 8, 4)
        else:  # arc / bowl
            centre = pt(0.5, rng.choice([0.3, 0.5, 0.7]))
            axes = (int(gw * 0.45 * s), int(gh * rng.uniform(0.25, 0.5) * s))
            start = int(rng.uniform(0, 360))
            sweep = int(rng.uniform(140, 360))
            cv2.ellipse(canvas, centre, axes, 0, start, start + sweep, 1, pen, 8, 4)


def _balance_lines(lines: list, rng: np.random.Generator, split: int) -> list:
    """Drop whole text lines from the heavier side of row `split` until the ink above and below
    agrees within ~5 %, so a fold split at `split` has similar ink area per band."""

    def side_ink(line, above: bool) -> int:
        r0, _, band = line
        k = min(max(split - r0, 0), band.shape[0])
        return int(band[:k].sum() if above else band[k:].sum())

    lines = list(lines)
    top = sum(side_ink(line, True) for line in lines)
    bottom = sum(side_ink(line, False) for line in lines)
    heavy_top = top > bottom
    heavy, light = (top, bottom) if heavy_top else (bottom, top)
    candidates = [i for i, ln in enumerate(lines) if side_ink(ln, not heavy_top) == 0]
    rng.shuffle(candidates)
    dropped = set()
    for i in candidates:
        if heavy <= 1.05 * light:
            break
        ink = side_ink(lines[i], heavy_top)
        if heavy - ink >= 0.95 * light:  # never overshoot to the other side
            heavy -= ink
            dropped.add(i)
    return [ln for i, ln in enumerate(lines) if i not in dropped]


def _crop(frag: SynthFragment, rows: slice, noise_seed: int) -> SynthFragment:
    return SynthFragment(
        frag.mask[rows], frag.labels[rows], frag.surface[rows], frag.fibre_h[rows],
        frag.fibre_v[rows], frag.shading[rows], noise_seed, frag.style,
    )  # fmt: skip


def _file_slices(frag: SynthFragment, progress: bool, name: str):
    """(file index, uint16 slice) in file order: reversed styles store the deepest slice first."""
    from kit.progress import progress_bar

    slices = progress_bar(range(N_SLICES), desc=f"fragment {name}", unit="slice",
                          enabled=progress)  # fmt: skip
    for index in slices:
        yield index, frag.slice(N_SLICES - 1 - index if frag.style.reverse else index)


def _write_competition(
    path: Path, frag: SynthFragment, *, labels: bool, layers: str, progress: bool
) -> None:
    names = CompetitionLayout
    for index, image in _file_slices(frag, progress, path.name):
        # Uncompressed and contiguous, so the reader memory-maps the slices.
        write_tiff(path / names.slice_dir / f"{index:02d}.tif", image, photometric="minisblack")
    write_png(path / names.mask_name, frag.mask.astype(np.uint8) * 255)
    if labels:
        write_png(path / names.labels_name, frag.labels * 255)
        write_png(path / names.ir_name, frag.ir())
        write_csv(
            path / "inklabels_rle.csv", ["Id", "Predicted"], [(path.name, rle.encode(frag.labels))]
        )


def to_uint8(image: np.ndarray) -> np.ndarray:
    """uint16 -> the 8-bit layer the reader scales back by 257 (round(v / 257))."""
    return ((image.astype(np.uint32) + 128) // 257).astype(np.uint8)


LAYER_FORMATS = {  # suffix, and what is written: uint16 TIFF, or 8-bit PNG / JPEG (quality 95)
    "tif": lambda path, image: write_tiff(path, image, photometric="minisblack"),
    "png": lambda path, image: write_png(path, to_uint8(image)),
    "jpg": lambda path, image: write_png(path, to_uint8(image), [cv2.IMWRITE_JPEG_QUALITY, 95]),
}


def _write_segment(
    path: Path, frag: SynthFragment, *, labels: bool, layers: str, progress: bool
) -> None:
    for index, image in _file_slices(frag, progress, path.name):
        LAYER_FORMATS[layers](path / SegmentLayout.layer_dir / f"{index:02d}.{layers}", image)
    _write_segment_pngs(path, frag, labels=labels)


def _write_segment_pngs(path: Path, frag: SynthFragment, *, labels: bool) -> None:
    names = segment_pngs(path)
    write_png(names["mask"], frag.mask.astype(np.uint8) * 255)
    if labels:
        write_png(names["labels"], frag.labels * 255)


def _write_zarr(
    path: Path, frag: SynthFragment, *, labels: bool, layers: str, progress: bool
) -> None:
    volume = (image for _, image in _file_slices(frag, progress, path.name))
    write_zarr(path / f"{path.name}.zarr", volume, shape=(N_SLICES, *frag.shape),
               dtype=np.uint16, chunks=(1, 128, 128), ome="0.4")  # fmt: skip
    _write_segment_pngs(path, frag, labels=labels)


LAYOUTS = {"competition": _write_competition, "segments": _write_segment, "zarr": _write_zarr}
