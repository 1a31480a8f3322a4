"""Ensemble weights chosen on out-of-fold maps, with an honest (nested) estimate of their worth.

    search_weights(runs) -> WeightSearch

A grid over the simplex of member weights (step 0.05 for two or three members, coarser for
more), each candidate scored by its pooled OOF F0.5 at its best threshold, with the ensemble
computed by the same arithmetic as `predict` (kit.infer.ensemble.mean_maps). Picking weights and
a threshold on the maps they are then scored on flatters them, so the search also reports the
nested score: for each fold, the weights and threshold are chosen on the *other* folds and
applied to it; the held-out counts are pooled. Each member alone gets the same nested treatment
(its threshold chosen on the other folds), so the two nested figures compare like with like.

The search reads at most about 4 M held-out papyrus pixels (outside any ignore mask) per fragment
and member (every s-th row and column, s = 1 on small fragments, ~5 on fragment 2), ample for a
handful of weights.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from kit.errors import KitError
from kit.evaluate import OOFRun, fold_maps
from kit.infer.ensemble import Member, mean_maps
from kit.metrics import LevelHistogram, fbeta_from_counts

MAX_CANDIDATES = 300
SAMPLES_PER_FRAGMENT = 4_000_000


@dataclass
class WeightSearch:
    weights: dict[str, float]  # member -> tuned weight (they sum to 1)
    f05: float  # pooled OOF F0.5 of the tuned weights, chosen on these same maps (optimistic)
    equal_f05: float  # pooled OOF F0.5 with equal weights
    nested_f05: float | None  # weights and threshold chosen on the other folds (None: 1 fold)
    nested_members: dict[str, float | None]  # each member alone, threshold from the other folds
    step: float  # grid step
    candidates: int

    def summary(self) -> dict:
        return {
            "tuned": self.weights,
            "f05": self.f05,
            "equal_f05": self.equal_f05,
            "nested_f05": self.nested_f05,
            "nested_members": self.nested_members,
            "step": self.step,
            "candidates": self.candidates,
        }


def weight_grid(n_members: int) -> tuple[float, np.ndarray]:
    """(step, candidates (K, n_members)): equal weights first, then the simplex grid (each row
    sums to 1) at the finest step with at most MAX_CANDIDATES points."""
    for step in (0.05, 0.1, 0.125, 0.2, 0.25, 0.5, 1.0):
        n = round(1 / step)
        if math.comb(n + n_members - 1, n_members - 1) <= MAX_CANDIDATES:
            break
    grid = np.array(list(_compositions(n, n_members)), dtype=np.float64) / n
    equal = np.full((1, n_members), 1 / n_members)
    return step, np.concatenate([equal, grid[~np.all(np.isclose(grid, equal), axis=1)]])


def _compositions(n: int, parts: int):
    """Every tuple of `parts` non-negative ints summing to n (stars and bars)."""
    for bars in itertools.combinations(range(n + parts - 1), parts - 1):
        edges = (-1, *bars, n + parts - 1)
        yield tuple(b - a - 1 for a, b in itertools.pairwise(edges))


def search_weights(runs: list[OOFRun]) -> WeightSearch:
    """Tune the members' weights on the runs' OOF maps (every member must cover every fold)."""
    samples = _held_out_samples(runs)
    members = list(next(iter(samples.values()))[0])
    if len(members) < 2:
        raise KitError("weight tuning needs at least two ensemble members")
    step, grid = weight_grid(len(members))
    # scores[k][fold]: histograms of candidate k's ensemble over the fold's held-out samples
    scores = [
        {
            fold: LevelHistogram.of(mean_maps([maps[m] for m in members], list(w)), ink)
            for fold, (maps, ink) in samples.items()
        }
        for w in grid
    ]
    folds = list(samples)
    best = int(np.argmax([_pooled(s, folds).best()[1] for s in scores]))
    nested_members = {}
    for i, m in enumerate(members):
        alone = np.flatnonzero(np.isclose(grid[:, i], 1.0))[0]
        nested_members[m] = _nested(scores, folds, candidates=[alone])
    return WeightSearch(
        weights={m: float(w) for m, w in zip(members, grid[best], strict=True)},
        f05=_pooled(scores[best], folds).best()[1],
        equal_f05=_pooled(scores[0], folds).best()[1],
        nested_f05=_nested(scores, folds, candidates=range(len(grid))),
        nested_members=nested_members,
        step=step,
        candidates=len(grid),
    )


def weigh_by_evaluation(members: list[Member], path: Path) -> list[Member]:
    """`members` with the weights `evaluate --tune-weights` stored in `path` (evaluation.json).

    Matched by member name (`Member.member`: config name, family, variant), not by path, so runs
    copied elsewhere (an offline notebook's dataset) keep their weights.
    """
    from kit.io import read_json

    if not path.is_file():
        raise KitError(f"evaluation file {path} does not exist; run `kit evaluate --tune-weights`")
    tuned = read_json(path).get("weights", {}).get("tuned")
    if not tuned:
        raise KitError(
            f"{path} holds no tuned weights: run `kit evaluate --tune-weights`, or drop "
            "--evaluation to weigh members equally"
        )
    weighed = []
    for m in members:
        name = m.member
        if name not in tuned:
            raise KitError(
                f"{m.checkpoint} is member {name!r}, which {path} does not weigh (it weighs "
                f"{sorted(tuned)}): pass the runs that were evaluated"
            )
        weighed.append(replace(m, weight=float(tuned[name])))
    return weighed


def describe_weights(weights: dict) -> str:
    """Two lines for the terminal and the report, from `WeightSearch.summary()` (as stored in
    evaluation.json under "weights"): the tuned weights, and what they are worth."""

    def fmt(x: float | None) -> str:
        return "n/a" if x is None else f"{x:.4f}"

    tuned = ", ".join(f"{m} {w:.2f}" for m, w in weights["tuned"].items())
    alone = ", ".join(f"{m} {fmt(v)}" for m, v in weights["nested_members"].items())
    return (
        f"ensemble weights tuned on OOF (grid step {weights['step']:g}): {tuned}; pooled F0.5 "
        f"{weights['f05']:.4f} (equal weights {weights['equal_f05']:.4f})\n"
        f"nested (weights and threshold chosen on the other folds): ensemble "
        f"{fmt(weights['nested_f05'])}; members alone {alone}"
    )


def _held_out_samples(runs: list[OOFRun]) -> dict[int, tuple[dict[str, np.ndarray], np.ndarray]]:
    """fold -> ({member: uint8 samples (N,)}, ink bool (N,)) over its held-out papyrus pixels."""
    for fold in {r.fold for r in runs}:
        names = [r.member for r in runs if r.fold == fold]
        if len(set(names)) < len(names):
            raise KitError(
                f"weight tuning weighs members, but fold {fold} has several runs of one member "
                f"({sorted(names)}): pass one run per member and fold"
            )
    parts: dict[int, tuple[dict[str, list], list]] = {}
    for fold, fragment, scored, maps, _ in fold_maps(runs):
        s = max(1, int(np.sqrt(scored.sum() / SAMPLES_PER_FRAGMENT)))
        keep = np.zeros_like(scored)
        keep[::s, ::s] = scored[::s, ::s]
        labels = fragment.labels()
        if labels is None:
            raise KitError(f"{fragment.files.labels} is missing: cannot tune weights")
        member_parts, ink = parts.setdefault(fold, ({}, []))
        for name, prob in maps.items():
            member_parts.setdefault(name, []).append(prob[keep])
        ink.append(labels[keep] > 0)
    names = {tuple(sorted(m)) for m, _ in parts.values()}
    if len(names) != 1:
        raise KitError(
            "weight tuning needs every member in every fold; the folds have members "
            f"{sorted(names)}: train the missing runs or leave --tune-weights off"
        )
    return {
        fold: ({n: np.concatenate(v) for n, v in m.items()}, np.concatenate(ink))
        for fold, (m, ink) in sorted(parts.items())
    }


def _pooled(by_fold: dict[int, LevelHistogram], folds: list[int]) -> LevelHistogram:
    return LevelHistogram.total(by_fold[f] for f in folds)


def _nested(
    scores: list[dict[int, LevelHistogram]], folds: list[int], *, candidates
) -> float | None:
    """Pooled F0.5 when each fold gets the candidate and threshold best on the other folds."""
    if len(folds) < 2:
        return None
    held_out = np.zeros(3, np.int64)  # tp, fp, fn pooled over the held-out folds
    for f in folds:
        others = [g for g in folds if g != f]
        k = max(candidates, key=lambda c: _pooled(scores[c], others).best()[1])
        threshold, _ = _pooled(scores[k], others).best()
        held_out += scores[k][f].counts(threshold)
    return fbeta_from_counts(*held_out)
