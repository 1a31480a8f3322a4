"""run_all.sh end to end on a reduced demo: generated fragments -> validated submission.csv."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from kit.data.folds import TRAIN_ONLY, Region, load_folds, write_folds
from kit.rle import decode
from kit.submission import fragment_shapes, validate_submission

ROOT = Path(__file__).resolve().parents[1]


# the default CPU members and a cascade member (it needs a prior): run_all.sh's two stages
CASCADE = "cpu-demo,cpu-demo-unet,cpu-demo-cascade"


def _run_all(out: Path, folds: Path) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "OUT_DIR": str(out),
        "FOLDS": str(folds),
        "NGPUS": "0",
        "DEMO_SCALE": "0.03",
        "TRAIN_ARGS": "--max-steps 2",
        "PYTHON": sys.executable,
        "CONFIG": CASCADE,
    }
    return subprocess.run(
        ["bash", str(ROOT / "run_all.sh")], env=env, capture_output=True, text=True, timeout=900
    )


@pytest.mark.slow
def test_run_all_writes_a_valid_submission_and_reuses_everything(tmp_path):
    # Two folds keep the test short; fold 1 holds out two whole fragments. The members are the
    # CPU defaults (stage 1) and the cascade (stage 2: trained on stage 1's out-of-fold maps,
    # predicting from its test maps); one run covers both stages (single-stage runs: below).
    folds = tmp_path / "folds.csv"
    write_folds(
        [Region("1", 0, 0.0, 1.0), Region("2", 1, 0.0, 1.0), Region("3", 1, 0.0, 1.0)], folds
    )
    out = tmp_path / "outputs"

    first = _run_all(out, folds)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "pooled OOF F0.5" in first.stdout
    test_dir = out / "demo_data" / "test"
    counts = validate_submission(out / "submission.csv", test_dir)
    assert set(counts) == {"a", "b"}
    frame = pd.read_csv(out / "submission.csv", keep_default_na=False)
    shapes = fragment_shapes(test_dir)
    for fid, rle in zip(frame["Id"].astype(str), frame["Predicted"], strict=True):
        assert decode(rle, shapes[fid]).sum() == counts[fid]
    for member in ("cpu-demo", "cpu-demo-unet", "cpu-demo-cascade"):
        for fold in (0, 1):
            assert (out / "runs" / member / f"fold{fold}" / "checkpoints" / "best.pt").is_file()
    assert (out / "report" / "index.html").read_text().count("<img") >= 3
    stage1 = out / "stage1"
    assert first.stdout.index("==> stage 1: train 4 runs") < first.stdout.index(
        "==> stage 2: train 2 runs of cpu-demo-cascade"
    )
    for fold in (0, 1):  # stage 2 trained on stage 1's out-of-fold ensemble maps
        record = json.loads(
            (out / "runs" / "cpu-demo-cascade" / f"fold{fold}" / "run.json").read_text()
        )
        assert record["prior"] == str((stage1 / "evaluation" / "oof").resolve())
        assert "prior" not in json.loads(
            (out / "runs" / "cpu-demo" / f"fold{fold}" / "run.json").read_text()
        )
    assert sorted(p.name for p in (stage1 / "evaluation" / "oof").glob("*.png")) == [
        "1.png",
        "2.png",
        "3.png",
    ]
    predicted = json.loads((out / "predictions" / "predict.json").read_text())
    assert predicted["prior"]["dir"] == str((stage1 / "predictions").resolve())

    checkpoint = out / "runs" / "cpu-demo" / "fold0" / "checkpoints" / "best.pt"
    stamp = checkpoint.stat().st_mtime_ns
    second = _run_all(out, folds)
    assert second.returncode == 0, second.stderr[-3000:]
    assert second.stdout.count("nothing to do") == 6
    assert second.stdout.count("exists (same members, checkpoints and data): skipped") == 4
    assert checkpoint.stat().st_mtime_ns == stamp


def test_run_all_refuses_a_cascade_without_a_first_stage(tmp_path, demo_dir):
    env = {**os.environ, "OUT_DIR": str(tmp_path), "DATA_DIR": str(demo_dir), "NGPUS": "0",
           "CONFIG": "cpu-demo-cascade", "PYTHON": sys.executable}  # fmt: skip
    result = subprocess.run(
        ["bash", str(ROOT / "run_all.sh")], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 2
    assert "need a prior from a first stage: add a member that needs none" in result.stderr
    assert not (tmp_path / "probe").exists()


def test_run_all_refuses_an_unknown_member_before_any_work(tmp_path, demo_dir):
    env = {**os.environ, "OUT_DIR": str(tmp_path), "DATA_DIR": str(demo_dir), "NGPUS": "0"}
    env["CONFIG"] = "no-such-preset"
    result = subprocess.run(
        ["bash", str(ROOT / "run_all.sh")], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode != 0
    assert "unknown config 'no-such-preset'" in result.stderr
    # checked before any work: no probe, no training started
    assert "CONFIG member 'no-such-preset' is not a preset" in result.stderr
    assert not (tmp_path / "probe").exists() and not (tmp_path / "submission.csv").exists()


def _run_all_failing(tmp_path, demo_dir, **env_vars) -> subprocess.CompletedProcess:
    """run_all.sh up to its first training, which fails at once (train.lr=0 is refused)."""
    env = {k: v for k, v in os.environ.items() if k not in ("TIME_BUDGET", "TRAIN_ARGS")}
    env.update({"OUT_DIR": str(tmp_path), "DATA_DIR": str(demo_dir), "NGPUS": "0",
                "CPU_JOBS": "2", "CONFIG": "cpu-demo-unet", "PYTHON": sys.executable, **env_vars})  # fmt: skip
    env["TRAIN_ARGS"] = (env.get("TRAIN_ARGS", "") + " --set train.lr=0").strip()
    return subprocess.run(
        ["bash", str(ROOT / "run_all.sh")], env=env, capture_output=True, text=True, timeout=300
    )


def test_run_all_gives_every_training_the_same_budget(tmp_path, demo_dir):
    # ./folds.csv has 4 folds: 4 runs, 2 at a time = 2 waves; 85 % of 6 min over 2 waves
    result = _run_all_failing(tmp_path, demo_dir, TIME_BUDGET="6")
    assert "--budget 2.55 min per run (4 runs, 2 at a time = 2 waves" in result.stdout
    assert 'step "train cpu-demo-unet fold 0' in result.stderr  # it got as far as training
    # no GPU: 9 minutes unless told otherwise, and the default members, a cascade (4 + 4 runs)
    default = _run_all_failing(tmp_path, demo_dir, CONFIG="")
    assert (
        "time budget 9 min: --budget 1.91 min per run (8 runs, 2 at a time = 4 waves"
        in default.stdout
    )
    assert "stage 1: train 4 runs of cpu-demo-unet," in default.stdout
    # a cascade cannot self-train (pseudo-labels have no prior): then the default is one stage
    selftrain = _run_all_failing(tmp_path, demo_dir, CONFIG="", SELF_TRAIN_ROUNDS="1")
    assert "train 8 runs, 2 at a time (CPU)" in selftrain.stdout
    assert 'step "train cpu-demo fold 0' in selftrain.stderr
    for told in ({"TRAIN_ARGS": "--max-steps 2"}, {"TIME_BUDGET": "0"}):
        assert "time budget" not in _run_all_failing(tmp_path, demo_dir, **told).stdout
    # two stages wait for each other: 4 + 4 runs, 3 at a time = 2 + 2 waves (not ceil(8 / 3))
    staged = _run_all_failing(tmp_path, demo_dir, TIME_BUDGET="6", CPU_JOBS="3",
                              CONFIG="cpu-demo-unet,cpu-demo-cascade")  # fmt: skip
    assert "--budget 1.27 min per run (8 runs, 3 at a time = 4 waves" in staged.stdout
    wrong = _run_all_failing(tmp_path, demo_dir, TIME_BUDGET="nine")
    assert wrong.returncode == 2 and "TIME_BUDGET must be minutes" in wrong.stderr


def _outputs(out: Path) -> dict[str, str]:
    """sha256 of what a run_all.sh run delivers: every out-of-fold map, prediction map and the
    submission (run.json, logs and the report hold wall times, which no two runs share)."""
    import hashlib

    files = [*out.glob("runs/*/fold*/oof/*"), *out.glob("predictions/*.png")]
    files.append(out / "submission.csv")
    return {
        f.relative_to(out).as_posix(): hashlib.sha256(f.read_bytes()).hexdigest() for f in files
    }


@pytest.mark.slow
def test_run_all_after_any_changed_input_gives_what_a_fresh_run_gives(tmp_path, demo_dir):
    import shutil

    import cv2

    # One fold (fragments 2 and 3 only trained on): one training per run, six runs
    folds = tmp_path / "folds.csv"
    write_folds(
        [Region("1", 0, 0.0, 1.0), Region("2", TRAIN_ONLY, 0.0, 1.0),
         Region("3", TRAIN_ONLY, 0.0, 1.0)], folds,
    )  # fmt: skip
    data = tmp_path / "data"
    shutil.copytree(demo_dir, data)

    def run(out: Path, data: Path, **env_vars) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if k not in ("TIME_BUDGET", "SUBMIT_ARGS")}
        env.update(OUT_DIR=str(out), DATA_DIR=str(data), FOLDS=str(folds), NGPUS="0",
                   CONFIG="cpu-demo-unet", TRAIN_ARGS="--max-steps 2", PYTHON=sys.executable)  # fmt: skip
        env.update(env_vars)
        result = subprocess.run(
            ["bash", str(ROOT / "run_all.sh")], env=env, capture_output=True, text=True,
            timeout=900,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        return result

    out = tmp_path / "kept"
    run(out, data)
    first = _outputs(out)

    # 1. TRAIN_ARGS (a config value) and the threshold policy change together
    changed = {"TRAIN_ARGS": "--max-steps 2 --set train.lr=0.0005", "SUBMIT_ARGS": "--percentile 5"}
    rerun = run(out, data, **changed)
    assert "nothing to do" not in rerun.stdout
    fresh = tmp_path / "fresh1"
    run(fresh, data, **changed)
    assert _outputs(out) == _outputs(fresh) != first

    # 2. a training fragment's labels change (same path): probe, training and all after it
    labels = data / "train" / "1" / "inklabels.png"
    image = cv2.imread(str(labels), cv2.IMREAD_GRAYSCALE)
    image[: image.shape[0] // 2] = 0
    cv2.imwrite(str(labels), image)
    run(out, data, **changed)
    edited = tmp_path / "edited"
    shutil.copytree(data, edited)
    fresh = tmp_path / "fresh2"
    run(fresh, edited, **changed)
    assert _outputs(out) == _outputs(fresh)
    probe = {
        k: json.loads((d / "probe" / "probe.json").read_text())
        for k, d in (("kept", out), ("fresh", fresh))
    }
    assert probe["kept"]["signal"] == probe["fresh"]["signal"]

    # 3. nothing changed: every step reuses what it made
    again = run(out, data, **changed)
    assert again.stdout.count("nothing to do") == 1
    assert "same fragments, kept" in again.stdout
    assert again.stdout.count("exists (same members, checkpoints and data): skipped") == 2
    assert _outputs(out) == _outputs(fresh)


@pytest.mark.slow
def test_run_all_self_training_rounds_train_on_pseudo_labels_and_rerun_in_place(tmp_path, demo_dir):
    folds = tmp_path / "folds.csv"
    write_folds([Region("1", 0, 0.0, 1.0), Region("2", TRAIN_ONLY, 0.0, 1.0)], folds)
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k not in ("TIME_BUDGET", "SUBMIT_ARGS")}
    env.update(OUT_DIR=str(out), DATA_DIR=str(demo_dir), FOLDS=str(folds), NGPUS="0",
               CONFIG="cpu-demo-unet", TRAIN_ARGS="--max-steps 2", PYTHON=sys.executable,
               SELF_TRAIN_ROUNDS="1", PSEUDO_ARGS="--ink 0.6 --background 0.4")  # fmt: skip

    def run() -> subprocess.CompletedProcess:
        result = subprocess.run(["bash", str(ROOT / "run_all.sh")], env=env, capture_output=True,
                                text=True, timeout=900)  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        return result

    first = run()
    assert "round 1: pseudo-labels from" in first.stdout
    round1 = out / "self_train" / "round1"
    # the test fragments a, b join fragment 2: only trained on, never held out
    trained_only = {r.fragment for r in load_folds(round1 / "data" / "folds.csv") if r.fold < 0}
    assert trained_only == {"2", "a", "b"}
    assert (round1 / "runs" / "cpu-demo-unet" / "fold0" / "checkpoints" / "best.pt").is_file()
    assert (out / "submission.csv").read_bytes() == (round1 / "submission.csv").read_bytes()
    assert (out / "self_train" / "round0" / "submission.csv").is_file()
    validate_submission(out / "submission.csv", demo_dir / "test")

    again = run()
    assert again.stdout.count("nothing to do") == 2  # one run per round, both kept
