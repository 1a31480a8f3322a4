"""One offline HTML page that shows a whole run of the pipeline at a glance.

    OUT_DIR/report/index.html     summary table, OOF overlays, threshold curve, test maps,
                                  training curves, each member's config
    OUT_DIR/report/*.png          the pictures it links (relative paths: the folder can be copied)

Inputs are the files the other stages already write (evaluation.json and its pictures,
predictions/*.png, each run's metrics.csv and config.yaml); nothing is recomputed here.
"""

from __future__ import annotations

import html
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd

from kit.io import copy_file, write_figure, write_text


def summary_lines(evaluation: dict, runs: list[str], seconds: float | None) -> list[str]:
    """What run_all prints and the report's first block shows."""
    from kit.evaluate import format_table
    from kit.run import RunDir
    from kit.weights import describe_weights

    members = sorted({str(RunDir(r).member()) for r in runs})
    lines = [f"ensemble members: {', '.join(members)} ({len(runs)} runs)"]
    if evaluation:
        lines += ["out-of-fold F0.5 (per fold at the pooled threshold):", format_table(evaluation)]
        if "weights" in evaluation:
            lines.append(describe_weights(evaluation["weights"]))
        lines.append(
            f"pooled OOF F0.5 {evaluation['f05']:.4f} at threshold {evaluation['threshold']:.3f}"
        )
    if seconds is not None:
        lines.append(f"wall time: {seconds / 60:.1f} min")
    return lines


def write_report(out_dir: Path, runs: list[str], summary: list[str]) -> Path:
    """Write OUT_DIR/report/index.html from the pipeline's outputs; returns its path."""
    report = out_dir / "report"
    parts = [f"<h1>inkkit report</h1><pre>{html.escape(chr(10).join(summary))}</pre>"]
    parts.append(
        _gallery(
            "Out-of-fold: overlays and threshold curve",
            _copy(sorted((out_dir / "evaluation").glob("*.png")), report, "eval"),
        )
    )
    preds = sorted((out_dir / "predictions" / "preview").glob("*.png")) or sorted(
        (out_dir / "predictions").glob("*.png")
    )
    parts.append(_gallery("Test fragments: ensemble probability", _copy(preds, report, "test")))
    curves = [p for run in runs if (p := _training_curves(Path(run), report)) is not None]
    parts.append(_gallery("Training curves", [c.name for c in curves]))
    parts.append("<h2>Members</h2>" + "".join(_config_block(Path(run)) for run in runs))
    page = report / "index.html"
    write_text(page, _PAGE.format(body="\n".join(parts)))
    return page


def _training_curves(run: Path, report: Path) -> Path | None:
    from kit.run import RunDir

    csv = RunDir(run).metrics_csv
    if not csv.is_file():
        return None
    frame = pd.read_csv(csv)
    x = "epoch" if "epoch" in frame else frame.columns[0]
    # Curves worth a look: numeric, not the x axis or the step counter, not constant (e.g. an
    # unused loss part).
    columns = [
        c for c in frame.columns
        if c not in (x, "step") and pd.api.types.is_numeric_dtype(frame[c]) and frame[c].nunique() > 1
    ]  # fmt: skip
    if frame.empty or not columns:
        return None
    ncols = min(len(columns), 5)
    nrows = -(-len(columns) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.8 * ncols, 2.3 * nrows), squeeze=False)
    for ax in axes.flat[len(columns) :]:
        ax.set_visible(False)
    for ax, column in zip(axes.flat, columns, strict=False):
        ax.plot(frame[x], frame[column], marker=".")
        ax.set_title(column, fontsize=9)
        ax.tick_params(labelsize=7)
    fig.suptitle(f"{run.parent.name} / {run.name}", fontsize=10)
    fig.tight_layout()
    path = report / f"curves_{run.parent.name}_{run.name}.png"
    write_figure(path, fig, dpi=80)
    return path


def _copy(pictures: list[Path], report: Path, prefix: str) -> list[str]:
    names = []
    for picture in pictures:
        name = f"{prefix}_{picture.name}"
        copy_file(picture, report / name)
        names.append(name)
    return names


def _gallery(title: str, names: list[str]) -> str:
    if not names:
        return f"<h2>{html.escape(title)}</h2><p>(nothing yet)</p>"
    figures = "".join(
        f'<figure><a href="{n}"><img src="{n}"></a><figcaption>{html.escape(n)}</figcaption></figure>'
        for n in names
    )
    return f"<h2>{html.escape(title)}</h2><div class='grid'>{figures}</div>"


def _config_block(run: Path) -> str:
    from kit.run import RunDir

    config = RunDir(run).config_yaml
    text = config.read_text() if config.is_file() else f"(no {config.name})"
    return f"<details><summary>{html.escape(os.fspath(run))}</summary><pre>{html.escape(text)}</pre></details>"


_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>inkkit report</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1400px}}
.grid{{display:flex;flex-wrap:wrap;gap:12px}} figure{{margin:0}}
img{{max-height:320px;max-width:640px;border:1px solid #ccc}} figcaption{{font-size:12px}}
pre{{background:#f6f6f6;padding:8px;overflow:auto}}</style></head><body>
{body}
</body></html>
"""
