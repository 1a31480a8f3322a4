"""One offline HTML page that shows a whole run of the pipeline, as a competitor would share it.

    OUT_DIR/report/index.html     tables (OOF F0.5 per fold × member, nested estimate, weights,
                                  runs), OOF overlays with their colour legend, threshold curves,
                                  each test fragment's probability (colour bar) beside the mask
                                  submitted, one training-curve figure per quantity comparing the
                                  runs, the config once with the settings that differ per run
    OUT_DIR/report/*.png          the pictures it links (relative paths: the folder can be copied)

Inputs are the files the other stages write (evaluation.json and its pictures, predictions/,
submission.csv, each run's run.json, metrics.csv and config.yaml); scores are never recomputed.
"""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np
import pandas as pd

from kit.io import copy_file, write_text
from kit.run import RunDir

# metrics.csv columns that are bookkeeping, not curves worth a figure
NOT_CURVES = {"epoch", "step", "seconds", "tiles_per_s"}
# the y-axis label of each metrics.csv column (others: their own name)
AXIS = {"loss": "training loss (epoch mean)", "f05": "held-out F0.5",
        "threshold": "held-out best threshold", "lr": "learning rate (heads)"}  # fmt: skip


def training_seconds(runs: list[str]) -> float | None:
    """The runs' own training time, summed (run.json trained.seconds; None if none records it)."""
    seconds = [RunDir(r).record().get("trained", {}).get("seconds") for r in runs]
    recorded = [s for s in seconds if s is not None]
    return float(sum(recorded)) if recorded else None


def summary_lines(evaluation: dict, runs: list[str], seconds: float | None) -> list[str]:
    """What run_all prints at the end (the report shows the same in tables)."""
    from kit.evaluate import format_table
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
    lines.append(_times(runs, seconds))
    return lines


def _times(runs: list[str], seconds: float | None) -> str:
    trained = training_seconds(runs)
    parts = []
    if trained is not None:
        parts.append(f"training {trained / 60:.1f} min summed over the runs (as each recorded it)")
    if seconds is not None:
        parts.append(f"this invocation {seconds / 60:.1f} min (steps already done are reused)")
    return "time: " + ("; ".join(parts) if parts else "not recorded")


def write_report(out_dir: Path, runs: list[str], evaluation: dict, seconds: float | None) -> Path:
    """Write OUT_DIR/report/index.html from the pipeline's outputs; returns its path."""
    report = out_dir / "report"
    run_dirs = [RunDir(r) for r in runs]
    members = sorted({str(r.member()) for r in run_dirs})
    parts = [
        "<h1>inkkit report</h1>",
        f"<p>{len(members)} ensemble member(s), {len(runs)} runs: "
        f"{html.escape(', '.join(members))}. {html.escape(_times(runs, seconds))}.</p>",
        _evaluation_section(evaluation),
        _oof_pictures(out_dir / "evaluation", report, evaluation, run_dirs),
        _test_section(out_dir, report),
        _runs_table(run_dirs),
        _curves_section(run_dirs, report),
        _config_section(run_dirs),
        "<p class='note'>Scores and pictures vary a little between runs: time budgets set the "
        "step counts from the machine's measured speed, and data loading order depends on it.</p>",
    ]
    page = report / "index.html"
    write_text(page, _PAGE.format(body="\n".join(parts)))
    return page


# -- tables ------------------------------------------------------------------------------------
def _table(head: list[str], rows: list[list[str]], caption: str = "") -> str:
    cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table>{cap}<thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def _score(x) -> str:
    return "n/a" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:.4f}"


def _evaluation_section(evaluation: dict) -> str:
    if not evaluation:
        return "<h2>Out-of-fold F0.5</h2><p>No evaluation.json: run <code>kit evaluate</code>.</p>"
    members = list(evaluation["members"])
    rows = [
        [f"fold {fold}", _score(s["f05"]), *(_score(s["members"].get(m)) for m in members)]
        for fold, s in evaluation["folds"].items()
    ]
    rows.append(["pooled", _score(evaluation["f05"]),
                 *(_score(evaluation["members"][m]["f05"]) for m in members)])  # fmt: skip
    rows.append([
        "threshold", f"{evaluation['threshold']:.3f}",
        *(f"{evaluation['members'][m]['threshold']:.3f}" for m in members),
    ])  # fmt: skip
    weights = evaluation.get("weights")
    if weights:
        nested = weights["nested_members"]
        rows.append(["nested", _score(weights["nested_f05"]), *(_score(nested.get(m)) for m in members)])  # fmt: skip
    scores = _table(
        ["", "ensemble", *members], rows,
        "Out-of-fold F0.5: each fold at the pooled threshold; pooled over all held-out pixels; "
        "nested: weights and threshold chosen on the other folds only (an honest estimate).",
    )  # fmt: skip
    parts = ["<h2>Out-of-fold F0.5</h2>", scores]
    if weights:
        rows = [[m, f"{w:.2f}"] for m, w in weights["tuned"].items()]
        parts.append(_table(
            ["member", "weight"], rows,
            f"Ensemble weights tuned on the OOF maps (grid step {weights['step']:g}): pooled "
            f"F0.5 {weights['f05']:.4f}, {weights['equal_f05']:.4f} with equal weights.",
        ))  # fmt: skip
    return "".join(parts)


def _runs_table(runs: list[RunDir]) -> str:
    rows = []
    for run in runs:
        record = run.record()
        trained, versions = record.get("trained", {}), record.get("versions", {})
        seconds = trained.get("seconds")
        rows.append([
            run.label, trained.get("steps", "?"), _score(trained.get("best_f05")),
            "n/a" if trained.get("threshold") is None else f"{trained['threshold']:.3f}",
            "not recorded" if seconds is None else f"{seconds / 60:.1f} min",
            ", ".join(f"{k} {v}" for k, v in versions.items() if k in ("torch", "timm")) or "?",
        ])  # fmt: skip
    head = ["run", "steps", "best held-out F0.5", "its threshold", "training time", "versions"]
    return "<h2>Runs</h2>" + _table(head, rows, "Each run as it recorded itself.")


# -- pictures ----------------------------------------------------------------------------------
def _figure(report: Path, source: Path, name: str, caption: str) -> str:
    if not source.is_file():
        return ""
    if source.parent != report:
        copy_file(source, report / name)
    return (f'<figure><a href="{name}"><img src="{name}" alt="{html.escape(caption)}"></a>'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")  # fmt: skip


def _grid(figures: list[str]) -> str:
    figures = [f for f in figures if f]
    return f"<div class='grid'>{''.join(figures)}</div>" if figures else "<p>(none yet)</p>"


def _legend() -> str:
    from kit.pictures import legend_colours

    items = "".join(
        f"<span class='swatch' style='background:{css}'></span>{html.escape(name)} "
        for name, css in legend_colours().items()
    )
    return f"<p class='legend'>{items}</p>"


def _oof_pictures(folder: Path, report: Path, evaluation: dict, runs: list[RunDir]) -> str:
    from kit.evaluate import overlay_picture, threshold_picture

    head = "<h2>Out-of-fold pictures</h2>"
    if not evaluation:
        return head + "<p>(none yet)</p>"
    threshold = evaluation["threshold"]
    fragments: dict[int, set[str]] = {}
    for run in runs:
        if run.regions_csv.is_file():
            fragments.setdefault(run.fold(), set()).update(r.fragment for r in run.regions())
    overlays = [
        _figure(report, overlay_picture(folder, fold, fid), f"oof_fold{fold}_{fid}.png",
                f"fold {fold}, fragment {fid}: held-out rows, ensemble at threshold "
                f"{threshold:.3f}")
        for fold in sorted(fragments) for fid in sorted(fragments[fold])
    ]  # fmt: skip
    curves = [_figure(report, threshold_picture(folder), "oof_threshold.png",
                      "F0.5 against threshold: pooled, per fold and per member; dashed: the "
                      "threshold chosen")]  # fmt: skip
    curves += [
        _figure(report, threshold_picture(folder, int(fold)), f"oof_threshold_fold{fold}.png",
                f"fold {fold}: F0.5 against threshold, ensemble and members")
        for fold in evaluation["folds"]
    ]  # fmt: skip
    return head + _legend() + _grid(overlays) + _grid(curves)


def _test_section(out_dir: Path, report: Path) -> str:
    from kit.pictures import submission_plot
    from kit.rle import decode
    from kit.run import PredictionDir
    from kit.submission import read_submission

    pred = PredictionDir(out_dir / "predictions")
    submission = out_dir / "submission.csv"
    rles = read_submission(submission) if submission.is_file() else {}
    figures = []
    for fid in pred.map_ids():
        prob = pred.read_map(fid)  # PNG or TIFF, as `predict --format` wrote it
        if prob is None:
            continue
        mask = decode(rles[fid], prob.shape).astype(bool) if fid in rles else None
        name = f"test_{fid}.png"
        submission_plot(prob, mask, report / name, title=f"test fragment {fid}")
        what = "and the mask submitted" if mask is not None else "(no submission.csv row yet)"
        figures.append(_figure(report, report / name, name,
                               f"fragment {fid} ({prob.shape[0]}×{prob.shape[1]}): ensemble "
                               f"probability {what}"))  # fmt: skip
    return "<h2>Test fragments</h2>" + _grid(figures)


def _curves_section(runs: list[RunDir], report: Path) -> str:
    """One figure per metrics.csv quantity, a line per run: colour = member, style = fold."""
    from kit.pictures import metric_plot

    frames = {}
    for run in runs:
        if run.metrics_csv.is_file():
            frame = pd.read_csv(run.metrics_csv)
            if not frame.empty and "step" in frame:
                frames[run] = frame
    columns: list[str] = []
    for frame in frames.values():
        columns += [c for c in frame.columns if c not in columns and c not in NOT_CURVES
                    and pd.api.types.is_numeric_dtype(frame[c])]  # fmt: skip
    # a quantity that never changes (an unused loss term) is no curve
    columns = [c for c in columns
               if pd.concat([f[c] for f in frames.values() if c in f]).nunique() > 1]  # fmt: skip
    members = sorted({str(r.member()) for r in frames})
    styles = ["-", "--", ":", "-."]
    figures = []
    for column in columns:
        lines = []
        for run, frame in frames.items():
            if column in frame and frame[column].notna().any():
                rows = frame[frame[column].notna()]
                colour = f"C{members.index(str(run.member())) % 10}"
                style = {"color": colour, "linestyle": styles[(run.fold() or 0) % len(styles)]}
                lines.append((run.label, rows["step"].to_numpy(), rows[column].to_numpy(), style))
        name = f"curve_{column}.png"
        metric_plot(lines, report / name, ylabel=AXIS.get(column, column), title=column)
        figures.append(_figure(report, report / name, name,
                               f"{AXIS.get(column, column)} at each epoch's end, one line per "
                               "run (colour: member, line style: fold)"))  # fmt: skip
    return "<h2>Training curves</h2>" + _grid(figures)


# -- config ------------------------------------------------------------------------------------
def _flat(tree: dict, prefix: str = "") -> dict[str, object]:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _config_section(runs: list[RunDir]) -> str:
    """The settings every run shares, once, and a table of those that differ."""
    import yaml

    from kit.config import config_to_dict

    configs = {run: _flat(config_to_dict(c)) for run in runs if (c := run.config()) is not None}
    if not configs:
        return "<h2>Config</h2><p>(no run has a config)</p>"
    keys = list(dict.fromkeys(k for flat in configs.values() for k in flat))
    differ = [k for k in keys if len({repr(f.get(k)) for f in configs.values()}) > 1]
    common: dict = {}
    for key in keys:
        if key not in differ:
            *sections, last = key.split(".")
            node = common
            for s in sections:
                node = node.setdefault(s, {})
            node[last] = next(iter(configs.values()))[key]
    rows = [[k, *(repr(f.get(k)) for f in configs.values())] for k in differ]
    table = _table(
        ["setting", *(r.label for r in configs)], rows,
        "Settings that differ between runs (auto fields as each run resolved them).",
    ) if differ else "<p>All runs share every setting.</p>"  # fmt: skip
    dump = yaml.safe_dump(common, sort_keys=False)
    return (f"<h2>Config</h2>{table}<details><summary>settings every run shares "
            f"({len(keys) - len(differ)})</summary><pre>{html.escape(dump)}</pre></details>")  # fmt: skip


_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>inkkit report</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1400px}}
.grid{{display:flex;flex-wrap:wrap;gap:12px;margin-bottom:1em}} figure{{margin:0;max-width:660px}}
img{{max-height:340px;max-width:640px;border:1px solid #ccc}} figcaption{{font-size:12px}}
table{{border-collapse:collapse;margin:0.5em 0 1em}} caption{{caption-side:bottom;font-size:12px;
text-align:left;padding-top:4px}} td,th{{border:1px solid #ccc;padding:3px 8px;font-size:13px}}
td{{text-align:right}} td:first-child{{text-align:left}}
.swatch{{display:inline-block;width:12px;height:12px;margin:0 4px 0 10px;border:1px solid #888}}
.legend{{font-size:13px}} .note{{font-size:12px;color:#555}}
pre{{background:#f6f6f6;padding:8px;overflow:auto}}</style></head><body>
{body}
</body></html>
"""
