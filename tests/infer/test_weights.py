"""Ensemble weights tuned on OOF maps (`evaluate --tune-weights`, `predict --evaluation`)."""

import json
import shutil

import cv2
import numpy as np
import pytest
from infer_helpers import write_oof_run, write_train_data

from kit.checkpoint import save_checkpoint
from kit.cli import main
from kit.config import Config, config_to_dict
from kit.data.folds import Region
from kit.data.fragment import Fragment
from kit.errors import KitError
from kit.evaluate import load_oof_run
from kit.infer.ensemble import Member, mean_maps
from kit.metrics import BETA
from kit.weights import search_weights, weigh_by_evaluation, weight_grid

FOLDS = {0: [("1", 0.0, 1.0), ("2", 0.0, 0.5)], 1: [("2", 0.5, 1.0)]}
MEMBERS = {"good": 0.15, "poor": 0.5}  # noise of each member's OOF maps


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("weights")
    data = write_train_data(root / "data")
    paths = [
        write_oof_run(root / "runs", m, fold, regions, data, seed=10 * i + fold, noise=noise)
        for i, (m, noise) in enumerate(MEMBERS.items())
        for fold, regions in FOLDS.items()
    ]
    return root, data, paths


def test_weight_grid_covers_the_simplex_with_equal_weights_first():
    for n, size in [(2, 21), (3, 232)]:
        step, grid = weight_grid(n)
        assert step == 0.05 and len(grid) == size
        np.testing.assert_allclose(grid[0], np.full(n, 1 / n))
        np.testing.assert_allclose(grid.sum(axis=1), 1.0)
        assert len(np.unique(grid.round(9), axis=0)) == len(grid)
        assert all(np.isclose(grid[:, i], 1.0).any() for i in range(n))  # each member alone
    for n in (5, 12):  # coarser steps, never an enumeration of the whole cube
        step, grid = weight_grid(n)
        assert step > 0.05 and len(grid) <= 300
        np.testing.assert_allclose(grid.sum(axis=1), 1.0)


def _held_out(data, paths, member, fold):
    """(uint8 OOF values, ink) over the fold's held-out papyrus pixels, by brute force."""
    run = next(p for p in paths if p.parent.name == member and p.name == f"fold{fold}")
    probs, inks = [], []
    for fid, start, end in FOLDS[fold]:
        fragment = Fragment(data / "train" / fid)
        r0, r1 = Region(fid, fold, start, end).rows(fragment.shape[0])
        scored = np.zeros(fragment.shape, bool)
        scored[r0:r1] = fragment.mask()[r0:r1]
        probs.append(cv2.imread(str(run / "oof" / f"{fid}.png"), 0)[scored])
        inks.append(fragment.labels()[scored] > 0)
    return np.concatenate(probs), np.concatenate(inks)


def _counts(prob, ink, level):
    pred = prob >= level
    return np.array([(pred & ink).sum(), (pred & ~ink).sum(), (~pred & ink).sum()])


def _f05(tp, fp, fn):
    b2 = BETA * BETA
    return (1 + b2) * tp / ((1 + b2) * tp + b2 * fn + fp)


def test_search_matches_brute_force_and_favours_the_better_member(runs):
    _, data, paths = runs
    search = search_weights([load_oof_run(str(p)) for p in paths])
    names = {m: f"{m} (sam vit_b)" for m in MEMBERS}
    held = {f: [_held_out(data, paths, m, f) for m in MEMBERS] for f in FOLDS}
    _, grid = weight_grid(2)

    def ensemble(fold, w):
        (good, ink), (poor, _) = held[fold]
        return mean_maps([good, poor], list(w)), ink

    def best(folds, w):  # (F0.5, level) at the best threshold, counts pooled over `folds`
        scores = []
        for level in range(1, 256):
            counts = sum(_counts(*ensemble(f, w), level) for f in folds)
            scores.append((_f05(*counts), level))
        return max(scores, key=lambda s: s[0])

    pooled = [best(FOLDS, w)[0] for w in grid]
    k = int(np.argmax(pooled))
    assert search.f05 == pytest.approx(pooled[k])
    assert search.weights[names["good"]] == pytest.approx(grid[k][0])
    assert search.weights[names["good"]] > search.weights[names["poor"]]
    assert search.equal_f05 == pytest.approx(pooled[0]) and search.f05 >= search.equal_f05
    # nested: each fold gets the weights and threshold best on the other fold
    total = np.zeros(3)
    for f in FOLDS:
        (other,) = [g for g in FOLDS if g != f]
        w = grid[int(np.argmax([best([other], w)[0] for w in grid]))]
        total += _counts(*ensemble(f, w), best([other], w)[1])
    assert search.nested_f05 == pytest.approx(_f05(*total))
    assert set(search.nested_members) == set(names.values())
    assert search.nested_members[names["good"]] > search.nested_members[names["poor"]]


def test_evaluate_tunes_and_predict_reads_the_weights(runs, tmp_path, capsys):
    _, data, paths = runs
    out = tmp_path / "evaluation"
    argv = ["evaluate", "--no-progress", "--no-pictures", "--data", str(data), "--out", str(out)]
    assert main([*argv, "--tune-weights", "--runs", *map(str, paths)]) == 0
    printed = capsys.readouterr().out
    assert "ensemble weights tuned on OOF" in printed and "nested" in printed
    summary = json.loads((out / "evaluation.json").read_text())
    tuned = summary["weights"]["tuned"]
    assert summary["f05"] == pytest.approx(summary["weights"]["f05"])
    assert {r["weight"] for r in summary["runs"]} == set(tuned.values())
    # predict matches members by name (config name, family, variant), not by path: a run copied
    # elsewhere and a loose checkpoint keep their member's weight
    copied = tmp_path / "copied" / "fold0"
    shutil.copytree(paths[0], copied)
    loose = tmp_path / "poor.pt"
    save_checkpoint(loose, {"config": config_to_dict(Config(name="poor")), "model": {}})
    members = [Member.of(r / "checkpoints" / "best.pt") for r in (*paths, copied)]
    weighed = weigh_by_evaluation([*members, Member.of(loose)], out / "evaluation.json")
    expected = [tuned[f"{p.parent.name} (sam vit_b)"] for p in paths]
    expected += [tuned["good (sam vit_b)"], tuned["poor (sam vit_b)"]]
    assert [m.weight for m in weighed] == pytest.approx(expected)
    # a member it did not weigh, or an evaluation without tuned weights: clear errors
    save_checkpoint(tmp_path / "x.pt", {"config": config_to_dict(Config(name="x")), "model": {}})
    stranger = Member.of(tmp_path / "x.pt")
    with pytest.raises(KitError, match="does not weigh"):
        weigh_by_evaluation([stranger], out / "evaluation.json")
    assert main([*argv, "--runs", *map(str, paths)]) == 0
    with pytest.raises(KitError, match="--tune-weights"):
        weigh_by_evaluation(members, out / "evaluation.json")
    capsys.readouterr()
    assert main([*argv, "--tune-weights", "--runs", f"{paths[0]}:2", *map(str, paths[1:])]) == 2
    assert "drop the :W" in capsys.readouterr().err
    predict = ["predict", "--data", str(data), "--runs", str(loose), "--out", str(tmp_path)]
    assert main([*predict, "--weights", "1", "--evaluation", str(out / "evaluation.json")]) == 2
    assert "not several" in capsys.readouterr().err


def test_tuning_needs_two_members_in_every_fold(runs, capsys):
    _, _, paths = runs
    one_member = [str(p) for p in paths if p.parent.name == "good"]
    assert main(["evaluate", "--no-progress", "--tune-weights", "--runs", *one_member]) == 2
    assert "at least two ensemble members" in capsys.readouterr().err
    lopsided = [*one_member, str(next(p for p in paths if p.parent.name == "poor"))]
    assert main(["evaluate", "--no-progress", "--tune-weights", "--runs", *lopsided]) == 2
    assert "every member in every fold" in capsys.readouterr().err


def test_tuning_needs_one_run_per_member_and_fold(runs, tmp_path, capsys):
    _, data, paths = runs
    twin = write_oof_run(tmp_path, "good", 0, FOLDS[0], data, seed=99, noise=0.2)
    argv = ["evaluate", "--no-progress", "--tune-weights", "--runs", *map(str, paths), str(twin)]
    assert main(argv) == 2
    assert "one run per member and fold" in capsys.readouterr().err
