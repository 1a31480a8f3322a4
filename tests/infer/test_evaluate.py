"""`evaluate`: pooled and per-fold F0.5 from global counts, ensemble of members, json + pictures."""

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from infer_helpers import write_oof_run, write_train_data

from kit.cli import main
from kit.data.folds import Region
from kit.data.fragment import Fragment
from kit.evaluate import MEMBER_OVERLAY_SIDE, evaluate_runs, load_oof_run, overlay_picture
from kit.infer.ensemble import mean_maps
from kit.metrics import best_threshold, binarize, f05_score

ROOT = Path(__file__).resolve().parents[2]
FOLDS = {0: [("1", 0.0, 1.0), ("2", 0.0, 0.5)], 1: [("2", 0.5, 1.0)]}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    data = write_train_data(root / "data")
    paths = []
    for member, noise in [("sam", 0.25), ("unet", 0.3)]:
        for fold, regions in FOLDS.items():
            paths.append(
                write_oof_run(
                    root / "runs", member, fold, regions, data, seed=len(paths), noise=noise
                )
            )
    return root, data, paths


def _scored(data, fold):
    """Per fragment: (labels, scored pixels) of a fold's held-out regions, by brute force."""
    out = {}
    for fid, start, end in FOLDS[fold]:
        fragment = Fragment(data / "train" / fid)
        labels, scored = out.get(fid, (fragment.labels(), np.zeros(fragment.shape, bool)))
        r0, r1 = Region(fid, fold, start, end).rows(fragment.shape[0])
        scored[r0:r1] = fragment.mask()[r0:r1]
        out[fid] = (labels, scored)
    return out


def _ensemble(runs, fold, fid):
    maps = [cv2.imread(str(r / "oof" / f"{fid}.png"), 0) for r in runs if r.name == f"fold{fold}"]
    return mean_maps(maps, [1] * len(maps))


def test_pooled_and_fold_scores_match_brute_force(runs):
    _, data, paths = runs
    summary = evaluate_runs([load_oof_run(str(p)) for p in paths], progress=False).summary()
    probs, targets = [], []
    for fold in FOLDS:
        for fid, (labels, scored) in _scored(data, fold).items():
            probs.append(_ensemble(paths, fold, fid)[scored])
            targets.append(labels[scored])
    # the default grid: what training's best.pt uses is what evaluation.json uses
    t, s = best_threshold(np.concatenate(probs), np.concatenate(targets))
    assert summary["threshold"] == pytest.approx(t) and summary["f05"] == pytest.approx(s)
    for fold in FOLDS:
        pred = np.concatenate(
            [
                binarize(_ensemble(paths, fold, fid)[sc], t)
                for fid, (_, sc) in _scored(data, fold).items()
            ]
        )
        target = np.concatenate([lab[sc] for lab, sc in _scored(data, fold).values()])
        assert summary["folds"][str(fold)]["f05"] == pytest.approx(f05_score(pred, target))
    assert set(summary["members"]) == {"sam (sam vit_b)", "unet (sam vit_b)"}
    assert summary["members"]["sam (sam vit_b)"]["folds"] == [0, 1]
    # two noisy members of independent noise: their mean is better than either
    assert summary["ensemble_above_members"] is True
    assert 0.5 < summary["f05"] <= 1


def test_cli_writes_json_table_and_pictures(runs, capsys):
    root, data, paths = runs
    out = root / "evaluation"
    assert (
        main(
            [
                "evaluate",
                "--no-progress",
                "--runs",
                *map(str, paths),
                "--data",
                str(data),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert (
        "pooled" in printed
        and "threshold" in printed
        and "ensemble above every member: yes" in printed
    )
    summary = json.loads((out / "evaluation.json").read_text())
    assert {"threshold", "f05", "folds", "members", "runs"} <= set(summary)
    for name in [
        "fold0_1_overlay.png",
        "fold0_2_overlay.png",
        "fold1_2_overlay.png",
        "fold0_threshold.png",
        "threshold_f05.png",
    ]:
        assert cv2.imread(str(out / name)) is not None, name
    overlay = cv2.imread(str(out / "fold1_2_overlay.png"))
    assert len(np.unique(overlay.reshape(-1, 3), axis=0)) >= 4  # TP, FP, FN, background colours
    # each member alone, at its own threshold: noisier than the ensemble, so other pixels
    for member in summary["members"]:
        alone = cv2.imread(str(overlay_picture(out, 1, "2", member)))
        assert alone is not None and max(alone.shape[:2]) <= MEMBER_OVERLAY_SIDE, member
        assert alone.shape == overlay.shape and not np.array_equal(alone, overlay), member


def test_single_member_weighting_and_default_out(runs):
    root, _, paths = runs
    sam = [p for p in paths if p.parent.name == "sam"]
    assert main(["evaluate", "--no-progress", "--no-pictures", "--runs", *map(str, sam)]) == 0
    summary = json.loads((root / "runs" / "sam" / "evaluation.json").read_text())
    assert summary["ensemble_above_members"] is None
    assert summary["f05"] == pytest.approx(summary["members"]["sam (sam vit_b)"]["f05"])


def test_missing_oof_and_data(runs, tmp_path, capsys):
    _, _, paths = runs
    assert main(["evaluate", "--runs", str(tmp_path / "nope")]) == 2
    assert "nope does not exist" in capsys.readouterr().err
    assert main(["evaluate", "--runs", str(paths[0]), "--data", str(tmp_path)]) == 2
    assert "not found under" in capsys.readouterr().err


def test_members_of_a_fold_must_hold_out_the_same_regions(runs, tmp_path, capsys):
    _, data, paths = runs
    odd = write_oof_run(tmp_path, "odd", 0, [("1", 0.0, 0.5)], data, seed=9, noise=0.2)
    assert main(["evaluate", "--no-progress", "--runs", str(paths[0]), str(odd)]) == 2
    assert "different regions" in capsys.readouterr().err


def test_ignored_pixels_count_in_no_score_nor_weight_search(tmp_path):
    """Labels under an ignore mask change neither the pooled F0.5 nor the tuned weights' score;
    the same change outside it does (so the test can fail)."""
    import shutil

    from kit.weights import search_weights

    data = write_train_data(tmp_path / "data")
    paths = [
        write_oof_run(tmp_path / "runs", member, fold, regions, data, seed=s, noise=noise)
        for s, (member, noise) in enumerate([("sam", 0.25), ("unet", 0.3)])
        for fold, regions in FOLDS.items()
    ]

    def scores(root) -> tuple[float, float]:
        runs = [load_oof_run(str(p), data=root) for p in paths]
        return evaluate_runs(runs, progress=False).summary()["f05"], search_weights(runs).f05

    def flip_labels(root, rows: slice) -> None:
        path = root / "train" / "2" / "inklabels.png"
        labels = cv2.imread(str(path), 0)
        labels[rows] = 255 - labels[rows]
        cv2.imwrite(str(path), labels)

    ignore = np.zeros((90, 40), np.uint8)
    ignore[10:60] = 255
    cv2.imwrite(str(data / "train" / "2" / "ignore.png"), ignore)
    before = scores(data)
    shutil.copytree(data, tmp_path / "inside")
    flip_labels(tmp_path / "inside", slice(10, 60))
    assert scores(tmp_path / "inside") == before
    shutil.copytree(data, tmp_path / "outside")
    flip_labels(tmp_path / "outside", slice(60, 90))
    assert all(a != b for a, b in zip(scores(tmp_path / "outside"), before, strict=True))


def test_evaluate_probe_and_report_answer_without_importing_torch(runs, demo_dir):
    """They read maps, labels and slices only: a rerun of run_all.sh spends no torch start-up
    (~2 s each) on them."""
    root, data, paths = runs
    out = root / "no_torch"
    commands = [
        ["evaluate", "--no-progress", "--runs", *map(str, paths), "--data", str(data), "--out",
         str(out / "evaluation"), "--tune-weights"],
        ["probe", "--no-progress", "--data", str(demo_dir), "--out", str(out / "probe")],
        ["report", "--out", str(out), "--runs", *map(str, paths)],
    ]  # fmt: skip
    code = (
        "import sys\nfrom kit.cli import main\n"
        f"for argv in {commands!r}:\n    assert main(argv) == 0, argv\n"
        "assert 'torch' not in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (out / "evaluation" / "evaluation.json").is_file()
    assert (out / "probe" / "probe.json").is_file()
    assert (out / "report" / "index.html").is_file()
