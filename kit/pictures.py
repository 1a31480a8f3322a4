"""Pictures for humans: probability previews, OOF error overlays, threshold-vs-F0.5 plots.

Everything is downsampled to at most `max_side` pixels: a 14830×9506 map is unreadable anyway.
Functions return BGR uint8 images (for kit.io.write_png) or write a PNG with matplotlib's Agg
backend through kit.io.write_figure.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from kit.io import write_figure

# BGR colours of the overlay classes
COLOURS = {
    "outside": (0, 0, 0),
    "tn": (60, 60, 60),
    "tp": (80, 200, 80),  # green
    "fp": (60, 60, 230),  # red
    "fn": (230, 150, 40),  # blue
    "not scored": (25, 25, 25),
}


def _shrink(image: np.ndarray, max_side: int, interpolation: int) -> np.ndarray:
    h, w = image.shape[:2]
    scale = min(1.0, max_side / max(h, w))
    if scale == 1.0:
        return image
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(image, size, interpolation=interpolation)


def probability_preview(prob: np.ndarray, *, max_side: int = 1024) -> np.ndarray:
    """uint8 (H, W) probability map -> BGR uint8 (h, w, 3), inferno colours, ≤ max_side."""
    return cv2.applyColorMap(_shrink(prob, max_side, cv2.INTER_AREA), cv2.COLORMAP_INFERNO)


def oof_overlay(
    pred: np.ndarray,
    labels: np.ndarray,
    mask: np.ndarray,
    *,
    scored: np.ndarray | None = None,
    max_side: int = 1024,
) -> np.ndarray:
    """Binary pred vs labels (H, W) -> BGR uint8 (h, w, 3): TP green, FP red, FN blue.

    `scored` (bool (H, W)) marks the held-out pixels; the rest of the mask is drawn dark.
    """
    classes = np.zeros(pred.shape, np.uint8)  # 0 = outside the mask
    pred, labels = pred.astype(bool), labels.astype(bool)
    classes[mask] = 1
    classes[mask & pred & labels] = 2
    classes[mask & pred & ~labels] = 3
    classes[mask & ~pred & labels] = 4
    if scored is not None:
        classes[mask & ~scored] = 5
    palette = np.array([COLOURS[k] for k in COLOURS], np.uint8)
    # shrink the class map first (nearest), then colour: no full-size colour image
    return palette[_shrink(classes, max_side, cv2.INTER_NEAREST)]


def threshold_plot(
    curves: dict[str, tuple[np.ndarray, np.ndarray]], chosen: float, path: Path, *, title: str = ""
) -> None:
    """F0.5 against threshold, one line per curve, a vertical line at `chosen`; PNG at `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for label, (thresholds, scores) in curves.items():
        ax.plot(thresholds, scores, label=f"{label} (max {np.max(scores):.3f})")
    ax.axvline(chosen, color="grey", linestyle="--", label=f"threshold {chosen:.3f}")
    ax.set(xlabel="threshold", ylabel="F0.5", xlim=(0, 1), ylim=(0, 1), title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    write_figure(path, fig)


def probe_plot(probe, path: Path) -> None:
    """Ink signal against slice, one line per fragment and the pooled one, the chosen window
    shaded; below, each fragment's mean papyrus intensity (scaled 0..1). PNG at `path`.
    `probe` is a kit.data.probe.DatasetProbe."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6), dpi=100, sharex=True)
    lo, hi = probe.window
    for ax in (top, bottom):
        ax.axvspan(lo - 0.5, hi - 0.5, color="tab:green", alpha=0.12)
        ax.grid(alpha=0.3)
    for f in probe.fragments:
        top.plot(np.abs(f.signal), label=f"fragment {f.id}" + (" (reversed)" if f.reversed else ""))
        profile = np.asarray(f.profile)
        span = max(float(profile.max() - profile.min()), 1e-6)
        bottom.plot((profile - profile.min()) / span, label=f"fragment {f.id}")
        bottom.axvline(f.surface["median"], color="grey", linewidth=0.8, linestyle=":")
    top.plot(probe.signal, color="black", linewidth=2, label="pooled")
    if probe.flat_signal:  # along the surface, placed at the surface depth
        n = len(probe.signal)
        x = np.arange(len(probe.flat_signal)) - (n - 1) + probe.surface_depth
        keep = (x >= 0) & (x <= n - 1)
        top.plot(x[keep], np.asarray(probe.flat_signal)[keep], color="black", linestyle="--",
                 label="pooled, along the surface" + (" (read so)" if probe.flatten else ""))  # fmt: skip
    top.set(ylabel="|ink signal| (Cohen's d)", title=f"ink window: slices {lo}..{hi - 1}")
    bottom.set(xlabel="slice (file index)", ylabel="papyrus intensity (0..1)")
    top.legend(fontsize=8)
    fig.tight_layout()
    write_figure(path, fig)


def legend_colours() -> dict[str, str]:
    """The overlay classes' colours as CSS rgb(), for a legend beside oof_overlay pictures."""
    names = {"tp": "true positive (ink found)", "fp": "false positive (ink where none is)",
             "fn": "false negative (ink missed)", "tn": "papyrus, no ink, none predicted",
             "not scored": "papyrus outside the held-out rows", "outside": "outside the mask"}  # fmt: skip
    return {names[k]: f"rgb({r},{g},{b})" for k, (b, g, r) in COLOURS.items()}


def submission_plot(
    prob: np.ndarray, submitted: np.ndarray | None, path: Path, *, title: str, max_side: int = 800
) -> None:
    """A test fragment: uint8 (H, W) probability (inferno, colour bar 0..1) beside the bool
    (H, W) mask that was submitted (None: not submitted yet); PNG at `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 2 if submitted is not None else 1
    h, w = prob.shape
    panel = min(max(3.2 * w / h, 2.0), 6.0)  # inches per panel at a height of 3.2
    fig, axes = plt.subplots(1, panels, figsize=(panel * panels + 1.2, 3.6), dpi=100,
                             squeeze=False)  # fmt: skip
    shown = axes[0, 0].imshow(_shrink(prob, max_side, cv2.INTER_AREA) / 255.0, cmap="inferno",
                              vmin=0, vmax=1)  # fmt: skip
    axes[0, 0].set_title("ensemble probability", fontsize=9)
    fig.colorbar(shown, ax=axes[0, 0], fraction=0.046, pad=0.03, label="probability of ink")
    if submitted is not None:
        small = _shrink(submitted.astype(np.uint8) * 255, max_side, cv2.INTER_AREA)
        axes[0, 1].imshow(small, cmap="gray", vmin=0, vmax=255)
        axes[0, 1].set_title(f"submitted mask (ink {submitted.mean():.1%} of pixels)", fontsize=9)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    write_figure(path, fig)


def metric_plot(
    lines: list[tuple[str, np.ndarray, np.ndarray, dict]], path: Path, *, ylabel: str, title: str
) -> None:
    """One quantity against the optimiser step: `lines` are (label, steps, values, matplotlib
    style) — one per run, so folds and members compare on one axis; PNG at `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.8), dpi=100)
    for label, steps, values, style in lines:
        ax.plot(steps, values, marker="o", markersize=3, label=label, **style)
    ax.set(xlabel="optimiser step", ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2 if len(lines) > 4 else 1)
    fig.tight_layout()
    write_figure(path, fig)
