"""Out-of-fold scoring: F0.5 per fold and pooled, the pooled-optimal threshold, members vs ensemble.

    load_oof_run(spec, data=None) -> OOFRun          a run directory's OOF maps and held-out regions
    evaluate_runs(runs)           -> Evaluation      per fold/member histograms -> scores, and
                                                     each fragment's OOF ensemble map
    write_oof_maps(evaluation, out, record)          those maps as a prior dir (kit train --prior)
    draw_pictures(evaluation, runs, out)             overlays (TP/FP/FN) of the ensemble and of
                                                     each member, and threshold plots

Each run directory holds oof/<fragment>.png or .tif (uint8 probability on its held-out rows) and
oof/regions.csv (the held-out regions). Runs of the same fold from different model families are
averaged with the same arithmetic as `predict` (kit.infer.ensemble.mean_maps). Scores come from
global TP/FP/FN counts: per fold over its regions, pooled over all regions of all folds. Each
map is reduced to a kit.metrics.LevelHistogram (ink / no ink by 8-bit level) of its held-out
papyrus pixels outside any ignore mask (Fragment.scored), so every threshold k/255 is scored at
once and pooling is a sum.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kit.data.fragment import Fragment
from kit.data.layout import fragment_path
from kit.errors import KitError
from kit.infer.ensemble import mean_maps, parse_spec
from kit.io import write_png
from kit.metrics import THRESHOLDS, LevelHistogram
from kit.run import RunDir, member_stem

# the longest side of a member's overlay: the report shows several per fragment, at about this
# size (the ensemble's is drawn larger, to be opened)
MEMBER_OVERLAY_SIDE = 640


@dataclass
class OOFRun:
    path: Path
    fold: int
    member: str  # which model this run is a fold of: str(kit.run.MemberId)
    weight: float
    data: Path  # dataset root (train/<id>/...) or a directory of fragments
    regions: list  # kit.data.folds.Region


@dataclass
class OOFMap:
    """A fragment's out-of-fold ensemble map: each held-out row from its own fold's runs."""

    fragment: Fragment
    prob: np.ndarray  # uint8 (H, W), 0 outside `rows`
    rows: list[tuple[int, int]]  # the held-out row ranges it covers


@dataclass
class Evaluation:
    folds: dict[int, dict[str, LevelHistogram]]  # fold -> member name or "ensemble" -> scores
    members: list[str]
    oof: dict[str, OOFMap] = field(default_factory=dict)  # fragment id -> stitched over folds

    def pooled(self, name: str) -> LevelHistogram:
        return LevelHistogram.total(s[name] for s in self.folds.values() if name in s)

    def summary(self) -> dict:
        """The content of evaluation.json: thresholds and scores, pooled and per fold."""
        threshold, score = self.pooled("ensemble").best()
        members = {}
        for m in self.members:
            t, s = self.pooled(m).best()
            folds = sorted(f for f, sc in self.folds.items() if m in sc)
            members[m] = {"threshold": t, "f05": s, "folds": folds}
        folds = {}
        for fold, scores in sorted(self.folds.items()):
            best_t, best_s = scores["ensemble"].best()
            folds[str(fold)] = {
                "f05": scores["ensemble"].at(threshold),
                "best_threshold": best_t,
                "best_f05": best_s,
                "members": {
                    m: s.at(members[m]["threshold"]) for m, s in scores.items() if m != "ensemble"
                },
            }
        full = [m for m in self.members if len(members[m]["folds"]) == len(self.folds)]
        return {
            "threshold": threshold,
            "f05": score,
            "folds": folds,
            "members": members,
            "ensemble_above_members": all(score > members[m]["f05"] for m in full)
            if len(full) > 1
            else None,
        }


def load_oof_run(spec: str, data: str | Path | None = None) -> OOFRun:
    """A run directory (`RUN` or `RUN:WEIGHT`) with its held-out regions and dataset."""
    path_str, weight = parse_spec(spec)
    run = RunDir(path_str)
    regions = run.regions()
    data = Path(data) if data is not None else run.record().get("data")
    if data is None:
        raise KitError(f"{run.run_json} does not name the dataset; pass --data DATA_DIR")
    member = str(run.member())
    return OOFRun(run.path, regions[0].fold, member, 1.0 if weight is None else weight,
                  Path(data), regions)  # fmt: skip


def fold_maps(
    runs: list[OOFRun],
) -> Iterator[tuple[int, Fragment, np.ndarray, dict[str, np.ndarray], np.ndarray]]:
    """Per fold and fragment: (fold, fragment, scored bool (H, W), member maps, ensemble map)."""
    by_fold: dict[int, list[OOFRun]] = {}
    for run in runs:
        by_fold.setdefault(run.fold, []).append(run)
    for fold, members in sorted(by_fold.items()):
        names = _unique_names([r.member for r in members])
        for other in members[1:]:
            if sorted(map(str, other.regions)) != sorted(map(str, members[0].regions)):
                raise KitError(
                    f"{other.path} and {members[0].path} are both fold {fold} but hold out "
                    f"different regions ({RunDir(other.path).regions_csv}): train them with the "
                    "same folds CSV"
                )
        fragment_ids = sorted({r.fragment for r in members[0].regions})
        for fragment_id in fragment_ids:
            fix = "pass the dataset the runs were trained on with --data"
            fragment = Fragment(fragment_path(members[0].data, fragment_id, fix=fix))
            scored = np.zeros(fragment.shape, bool)
            for r in members[0].regions:
                if r.fragment == fragment_id:
                    r0, r1 = r.rows(fragment.shape[0])
                    scored[r0:r1] = True
            scored &= fragment.scored()  # papyrus outside the ignore mask
            maps = {
                name: _read_oof(run, fragment) for name, run in zip(names, members, strict=True)
            }
            ensemble = mean_maps(list(maps.values()), [r.weight for r in members])
            yield fold, fragment, scored, maps, ensemble


def _unique_names(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n} #{seen[n]}")
    return out


def _read_oof(run: OOFRun, fragment: Fragment) -> np.ndarray:
    return RunDir(run.path).read_oof(fragment.id, fragment.shape, fragment.path)


def evaluate_runs(runs: list[OOFRun], *, progress: bool = True) -> Evaluation:
    """Histogram every fold's member and ensemble OOF maps over its held-out papyrus pixels."""
    from kit.progress import progress_bar

    if not runs:
        raise KitError("no run directories to evaluate")
    folds: dict[int, dict[str, LevelHistogram]] = {}
    members: list[str] = []
    oof: dict[str, OOFMap] = {}
    n_items = len({(run.fold, r.fragment) for run in runs for r in run.regions})
    for fold, fragment, scored, maps, ensemble in progress_bar(
        fold_maps(runs), desc="evaluate", unit="fragment", enabled=progress, total=n_items
    ):
        labels = fragment.labels()
        if labels is None:
            raise KitError(f"{fragment.files.labels} is missing: cannot score fold {fold}")
        scores = folds.setdefault(fold, {})
        for name, prob in [*maps.items(), ("ensemble", ensemble)]:
            scores.setdefault(name, LevelHistogram()).add(
                LevelHistogram.of(prob, labels, mask=scored)
            )
            if name != "ensemble" and name not in members:
                members.append(name)
        _stitch_oof(oof, fragment, ensemble, _held_out_rows(runs, fold, fragment))
    return Evaluation(folds, members, oof)


def _held_out_rows(runs: list[OOFRun], fold: int, fragment: Fragment) -> list[tuple[int, int]]:
    run = next(r for r in runs if r.fold == fold)
    return [r.rows(fragment.shape[0]) for r in run.regions if r.fragment == fragment.id]


def _stitch_oof(oof: dict[str, OOFMap], fragment: Fragment, ensemble: np.ndarray, rows) -> None:
    """Copy a fold's held-out rows of its ensemble map into the fragment's OOF map."""
    if fragment.id not in oof:
        oof[fragment.id] = OOFMap(fragment, np.zeros(fragment.shape, np.uint8), [])
    entry = oof[fragment.id]
    for r0, r1 in rows:
        entry.prob[r0:r1] = ensemble[r0:r1]
        entry.rows.append((r0, r1))


def write_oof_maps(evaluation: Evaluation, out: Path, record: dict) -> Path:
    """The OOF ensemble maps as a prediction directory `out` (`<fragment>.png` and a predict.json
    with each fragment's identity and the rows it covers), usable as `kit train --prior`: each
    pixel was predicted by the fold's models that did not train on it."""
    from kit.provenance import fragment_identity
    from kit.run import PredictionDir, map_suffixes

    pred = PredictionDir(out)
    for fid, m in sorted(evaluation.oof.items()):
        pred.write_map(fid, m.prob, map_suffixes(m.fragment.shape, layout=m.fragment.layout))
    pred.write_record({
        **record,
        "fragments": {fid: fragment_identity(m.fragment) for fid, m in evaluation.oof.items()},
        "rows": {fid: sorted(m.rows) for fid, m in evaluation.oof.items()},
    })  # fmt: skip
    return out


def overlay_picture(out: Path, fold: int, fragment_id: str, member: str | None = None) -> Path:
    """Where draw_pictures puts fold `fold`'s overlay of a fragment: the ensemble's, or one
    member's alone (`member`: its name in evaluation.json). The report reads them."""
    what = "" if member is None else f"_{member_stem(member)}"
    return out / f"fold{fold}_{fragment_id}_overlay{what}.png"


def threshold_picture(out: Path, fold: int | None = None) -> Path:
    """Where draw_pictures puts a fold's F0.5-against-threshold plot (None: the pooled one)."""
    return out / ("threshold_f05.png" if fold is None else f"fold{fold}_threshold.png")


def draw_pictures(evaluation: Evaluation, runs: list[OOFRun], out: Path) -> list[Path]:
    """Per fold: OOF overlays (the ensemble at the pooled threshold; with several members each
    member alone at its own pooled threshold, smaller) and a threshold-vs-F0.5 plot; a pooled
    plot."""
    from kit.metrics import binarize
    from kit.pictures import oof_overlay, threshold_plot

    summary = evaluation.summary()
    threshold = summary["threshold"]
    written = []
    for fold, fragment, scored, maps, ensemble in fold_maps(runs):
        labels, mask = fragment.labels(), fragment.mask()
        image = oof_overlay(binarize(ensemble, threshold), labels, mask, scored=scored)
        path = overlay_picture(out, fold, fragment.id)
        write_png(path, image)
        written.append(path)
        if len(evaluation.members) < 2:
            continue  # the ensemble is its one member: the same picture
        for name, prob in maps.items():
            cut = binarize(prob, summary["members"][name]["threshold"])
            image = oof_overlay(cut, labels, mask, scored=scored, max_side=MEMBER_OVERLAY_SIDE)
            path = overlay_picture(out, fold, fragment.id, name)
            write_png(path, image)
            written.append(path)
    for fold, scores in evaluation.folds.items():
        path = threshold_picture(out, fold)
        curves = {name: (THRESHOLDS, s.curve()) for name, s in scores.items()}
        threshold_plot(curves, threshold, path, title=f"fold {fold}")
        written.append(path)
    curves = {f"fold {f}": (THRESHOLDS, s["ensemble"].curve()) for f, s in evaluation.folds.items()}
    curves["pooled"] = (THRESHOLDS, evaluation.pooled("ensemble").curve())
    curves.update({m: (THRESHOLDS, evaluation.pooled(m).curve()) for m in evaluation.members})
    threshold_plot(curves, threshold, threshold_picture(out), title="out-of-fold F0.5")
    written.append(threshold_picture(out))
    return written


def format_table(summary: dict) -> str:
    """Plain-text table: one line per fold, then pooled; members as columns."""
    members = list(summary["members"])
    head = ["fold", "ensemble", *members]
    rows = [head]
    for fold, s in summary["folds"].items():
        rows.append(
            [
                fold,
                f"{s['f05']:.4f}",
                *(f"{s['members'].get(m, float('nan')):.4f}" for m in members),
            ]
        )
    rows.append(
        [
            "pooled",
            f"{summary['f05']:.4f}",
            *(f"{summary['members'][m]['f05']:.4f}" for m in members),
        ]
    )
    rows.append(
        [
            "threshold",
            f"{summary['threshold']:.4f}",
            *(f"{summary['members'][m]['threshold']:.4f}" for m in members),
        ]
    )
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows)
