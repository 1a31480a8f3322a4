"""`train.budget_minutes` / `kit train --budget`: the arithmetic on given numbers, and tiny runs
whose calibration really runs but reports fixed timings (nothing here depends on the clock)."""

import json
import random

import numpy as np
import pytest
import torch
import yaml

from kit.checkpoint import load_checkpoint
from kit.cli import main
from kit.config import load_config
from kit.errors import KitError
from kit.train import budget
from kit.train.budget import (
    Timings,
    budget_steps,
    budget_warmup,
    final_epoch_steps,
    n_validations,
    refit_step,
    refit_steps,
    resolved_config,
)
from kit.train.loop import train_fold

TINY = [  # as in test_loop.py: 32-px tiles, 2 epochs, batches of 4 x 2
    "data.tile=32", "data.stride=32", "data.z_start=26", "data.z_end=34",
    "train.batch_size=4", "train.accumulate=2", "train.steps_per_epoch=3", "train.epochs=2",
    "train.warmup_steps=1", "train.num_workers=0", "train.lr=1e-3", "infer.batch_size=64",
]  # fmt: skip

# 1 s setup, 0.5 s a step, 1 s a validation, 0.25 s an epoch: a budget of 0.15 min (9 s) with
# 2 epochs leaves 9 - 1 - 2 x 1 - 2 x 0.25 = 5.5 s = 11 steps -> 5 steps per epoch, 10 steps.
FIXED = Timings(setup=1.0, step=0.5, validation=1.0, epoch=0.25)
BUDGET = ("train.budget_minutes=0.15", "train.warmup_steps=4", "train.ema=0.9")


def test_budget_steps_fill_the_budget_and_no_more():
    kw = dict(step_s=0.4, validation_s=5.0, n_validations=6, setup_s=10.0, epochs=6, epoch_s=0.5)
    steps = budget_steps(120.0, **kw)
    # free = 120 - 10 - 6 x 5 - 6 x 0.5 = 77 s -> 192.5 steps -> 32 per epoch
    assert steps == 192
    spent = 10.0 + 6 * 5.0 + 6 * 0.5 + steps * 0.4
    assert spent <= 120.0 < spent + 6 * 0.4  # one more step per epoch would not fit
    assert budget_steps(240.0, **kw) == 6 * 82  # (240 - 43) / 2.4 = 82.08
    assert budget_steps(120.0, **{**kw, "epochs": 1, "n_validations": 1}) == 261  # 104.5 / 0.4


def test_budget_steps_keep_one_step_per_epoch_when_nothing_fits():
    kw = dict(step_s=1.0, validation_s=30.0, n_validations=8, setup_s=5.0, epochs=8)
    assert budget_steps(60.0, **kw) == 8
    assert budget_steps(0.0, **kw) == 8
    with pytest.raises(ValueError, match="epochs"):
        budget_steps(60.0, **{**kw, "epochs": 0})
    with pytest.raises(ValueError, match="step_s"):
        budget_steps(60.0, **{**kw, "step_s": 0.0})


def test_warmup_is_capped_at_a_tenth_and_validations_count_the_last_epoch():
    assert budget_warmup(20, 240) == 20
    assert budget_warmup(100, 240) == 24
    assert budget_warmup(5, 9) == 0
    assert [n_validations(8, v) for v in (1, 2, 3, 8, 10)] == [8, 4, 3, 1, 1]


def test_refit_steps_fill_what_is_left_and_never_end_the_first_epoch_before_now():
    kw = dict(validation_s=1.0, n_validations=2, epochs=2, epoch_s=0.25)
    # 2 s in after 4 steps of 0.25 s: 1 s was setup; 12 - 1 - 2 - 0.5 = 8.5 s -> 34 steps
    assert refit_steps(12.0, elapsed_s=2.0, done=4, step_s=0.25, **kw) == 34
    # the same at 0.5 s/step, as calibrated: the first fit's 16 steps again
    assert refit_steps(12.0, elapsed_s=3.0, done=4, step_s=0.5, **kw) == 16
    assert budget_steps(12.0, step_s=0.5, setup_s=1.0, **kw) == 16
    # 2 s a step: 8.5 s hold 4 steps, fewer than the first epoch has already trained
    assert refit_steps(12.0, elapsed_s=9.0, done=4, step_s=2.0, **kw) == 8
    assert refit_steps(12.0, elapsed_s=30.0, done=6, step_s=5.0, **kw) == 12  # over already


def test_a_cut_last_epoch_holds_what_the_budget_has_left():
    kw = dict(step_s=0.5, validation_s=1.0, n_validations=2, epoch_s=0.5, steps_per_epoch=10)
    assert final_epoch_steps(20.0, elapsed_s=10.0, **kw) == 10  # 7.5 s left: more than an epoch
    assert final_epoch_steps(20.0, elapsed_s=14.0, **kw) == 7  # 3.5 s
    assert final_epoch_steps(20.0, elapsed_s=30.0, **kw) == 1  # over already: one step
    train = load_config("cpu-demo-unet", ["train.epochs=4", "train.steps_per_epoch=10"]).train
    assert train.total_steps == 40
    cut = load_config("cpu-demo-unet", ["train.epochs=4", "train.steps_per_epoch=10",
                                        "train.final_epoch_steps=7"]).train  # fmt: skip
    assert cut.total_steps == 37


def test_refit_comes_halfway_through_the_first_epoch_unless_it_is_too_short():
    assert [refit_step(n) for n in (1, 7, 8, 9, 80)] == [None, None, 4, 4, 40]


def test_resolved_config_takes_the_length_of_a_run_with_the_same_budget():
    ours = load_config("cpu-demo-unet", ["train.budget_minutes=2"])
    saved = {"train": {"budget_minutes": 2.0, "steps_per_epoch": 17, "warmup_steps": 3}}
    preset = ours.train.steps_per_epoch
    assert preset != 17
    got = resolved_config(ours, saved).train
    assert (got.steps_per_epoch, got.warmup_steps) == (17, 3)
    assert ours.train.steps_per_epoch == preset  # not modified in place
    other = {"train": {**saved["train"], "budget_minutes": 3.0}}
    assert resolved_config(ours, other).train.steps_per_epoch == preset
    unbudgeted = load_config("cpu-demo-unet")
    assert (
        resolved_config(unbudgeted, {"train": {**saved["train"], "budget_minutes": 0.0}})
        is unbudgeted
    )


@pytest.fixture
def fixed_timings(monkeypatch):
    """The real calibration runs (its steps, prediction, save and the restoring), then reports
    FIXED, and the run keeps that pace; `calls` counts the calibrations."""
    calls = []
    real = budget.calibrate

    def calibrate(trainer, **kwargs):
        before = torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()
        calls.append(real(trainer, **kwargs))
        assert torch.equal(torch.get_rng_state(), before[0])
        assert (np.random.get_state()[1] == before[1]).all() and random.getstate() == before[2]
        return FIXED

    monkeypatch.setattr(budget, "calibrate", calibrate)
    # the run's own pace as calibrated, so the checks that follow (re-fit, cut) change nothing
    monkeypatch.setattr(
        budget, "pace", lambda tr: (FIXED.step, FIXED.setup + tr.state.step * FIXED.step)
    )
    return calls


def _run(demo_dir, out, *extra, **kwargs):
    config = load_config("cpu-demo-unet", [*TINY, *extra])
    return train_fold(config, data_dir=demo_dir, fold=0, folds_csv=demo_dir / "folds.csv",
                      out=out, progress=False, **kwargs)  # fmt: skip


def _weights(run):
    return load_checkpoint(run / "checkpoints" / "last.pt")


def test_budget_run_resolves_its_length_and_trains_like_that_length(
    demo_dir, tmp_path, fixed_timings, capsys
):
    out = tmp_path / "budget"
    summary = _run(demo_dir, out, *BUDGET)
    assert len(fixed_timings) == 1
    measured = fixed_timings[0]
    assert measured.step > 0 and measured.validation > 0 and measured.setup > 0
    assert "budget 0.15 min" in capsys.readouterr().out
    assert summary["step"] == 10
    train = yaml.safe_load((out / "config.yaml").read_text())["train"]
    assert (train["epochs"], train["steps_per_epoch"], train["warmup_steps"]) == (2, 5, 1)
    assert train["budget_minutes"] == 0.15
    record = json.loads((out / "run.json").read_text())["budget"]
    assert record["steps"] == 10 and record["validations"] == 2 and record["step_seconds"] == 0.5
    for name in ("last.pt", "best.pt"):
        assert (
            load_checkpoint(out / "checkpoints" / name)["config"]["train"]["steps_per_epoch"] == 5
        )
    assert not list((out / "checkpoints").glob(".budget*"))  # the timed save left nothing

    # The same run without a budget, at the resolved length: the calibration left no trace.
    plain = tmp_path / "plain"
    _run(demo_dir, plain, "train.steps_per_epoch=5", "train.warmup_steps=1", "train.ema=0.9")
    a, b = _weights(out), _weights(plain)
    for key in ("train_model", "model"):
        for name, value in a[key].items():
            assert torch.equal(value, b[key][name]), f"{key}.{name}"
    assert [r["loss"] for r in a["history"]] == [r["loss"] for r in b["history"]]

    # A rerun is finished at once (no calibration); another budget is another run.
    assert _run(demo_dir, out, *BUDGET)["step"] == 10
    assert len(fixed_timings) == 1
    other = r"other inputs \(config\.train\.budget_minutes: 0\.15 -> 0\.3\): add --overwrite"
    with pytest.raises(KitError, match=other):
        _run(demo_dir, out, *BUDGET[1:], "train.budget_minutes=0.3")
    with pytest.raises(KitError, match=other):  # not a length --resume may change
        _run(demo_dir, out, *BUDGET[1:], "train.budget_minutes=0.3", resume=True)


def test_resumed_budget_run_keeps_its_length_without_recalibrating(
    demo_dir, tmp_path, fixed_timings, monkeypatch
):
    out = tmp_path / "run"
    args = ["train", "--data", str(demo_dir), "--fold", "0", "--folds", str(demo_dir / "folds.csv"),
            "--config", "cpu-demo-unet", "--out", str(out), "--budget", "0.15"]  # fmt: skip
    for item in [*TINY, *BUDGET[1:]]:
        args += ["--set", item]
    assert main([*args, "--max-steps", "7"]) == 0  # stopped early, mid-epoch 2
    assert len(fixed_timings) == 1
    assert load_checkpoint(out / "checkpoints" / "last.pt")["step"] == 7
    first = json.loads((out / "run.json").read_text())["budget"]

    def no_calibration(trainer, **kwargs):
        raise AssertionError("a resumed run must not calibrate again")

    monkeypatch.setattr(budget, "calibrate", no_calibration)
    assert main([*args, "--resume"]) == 0
    state = load_checkpoint(out / "checkpoints" / "last.pt")
    assert state["step"] == 10 and state["config"]["train"]["steps_per_epoch"] == 5
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["steps_per_epoch"] == 5
    assert json.loads((out / "run.json").read_text())["budget"] == first
    assert main(args) == 0  # finished: a rerun does nothing


def test_budget_flag_must_not_be_negative(demo_dir, tmp_path, capsys):
    args = ["train", "--data", str(demo_dir), "--fold", "0", "--folds", str(demo_dir / "folds.csv"),
            "--out", str(tmp_path / "run"), "--budget", "-1"]  # fmt: skip
    assert main(args) == 2
    assert "--budget must be at least 0" in capsys.readouterr().err


# 0.2 min = 12 s with FIXED: 12 - 1 - 2 - 0.5 = 8.5 s = 17 steps -> 8 per epoch; re-fit at step 4.
REFIT = ("train.budget_minutes=0.2", "train.warmup_steps=4", "train.ema=0.9")


@pytest.fixture
def paced(monkeypatch, fixed_timings):
    """FIXED calibration, and a re-fit (and the check before the last epoch) that finds the
    steps take `paced.step_s` each (the setup took FIXED.setup, later checks `paced.late` more);
    `paced.calls` counts the checks."""

    class Paced:
        step_s, calls = 0.25, 0
        late = 0.0  # seconds the run loses after the re-fit (the machine slowed down)

    def pace(trainer):
        Paced.calls += 1
        late = Paced.late if Paced.calls > 1 else 0.0
        return Paced.step_s, FIXED.setup + trainer.state.step * Paced.step_s + late

    monkeypatch.setattr(budget, "pace", pace)
    return Paced


def test_a_faster_pace_refits_the_length_and_a_kill_after_it_resumes_with_it(
    demo_dir, tmp_path, paced, capsys
):
    out = tmp_path / "refit"
    summary = _run(demo_dir, out, *REFIT)
    assert paced.calls == 2  # the re-fit, then (on time) the check before the last epoch
    assert "budget re-fit at step 4" in capsys.readouterr().out
    assert summary["step"] == 34  # 0.25 s a step: twice the calibrated steps (test above)
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["steps_per_epoch"] == 17
    record = json.loads((out / "run.json").read_text())["budget"]
    assert (record["steps"], record["refit"]["steps"], record["refit"]["at_step"]) == (16, 34, 4)
    last = _weights(out)
    assert last["config"]["train"]["steps_per_epoch"] == 17
    assert [r["step"] for r in last["history"]] == [17, 34]  # two whole epochs of the new length
    assert last["scheduler"]["last_epoch"] == 34

    # Killed after the re-fit, inside the tiles drawn for the calibrated length (step 6 < 8),
    # resumed: the same weights as in one go.
    cut = tmp_path / "cut"
    assert _run(demo_dir, cut, *REFIT, max_steps=6)["step"] == 6
    assert _weights(cut)["config"]["train"]["steps_per_epoch"] == 17  # saved at the re-fit
    assert _run(demo_dir, cut, *REFIT, resume=True)["step"] == 34
    assert paced.calls == 3  # the resumed run neither re-fitted nor checked
    resumed = _weights(cut)
    for name, value in last["model"].items():
        assert torch.equal(value, resumed["model"][name]), name


def test_a_slower_pace_ends_the_first_epoch_at_the_refit_and_cuts_the_last(
    demo_dir, tmp_path, paced
):
    paced.step_s = 2.0  # 8.5 s hold 4 steps: the first epoch ends where the re-fit is
    out = tmp_path / "slow"
    # 9 s in at step 4, 3 s left: two validations and an epoch's 0.25 s leave no whole step
    assert _run(demo_dir, out, *REFIT)["step"] == 5
    last = _weights(out)
    assert [r["step"] for r in last["history"]] == [4, 5]
    assert all("f05" in r for r in last["history"])  # both epochs validated
    assert last["config"]["train"]["final_epoch_steps"] == 1


def test_a_run_that_falls_behind_cuts_its_last_epoch_and_is_then_finished(
    demo_dir, tmp_path, paced, capsys
):
    paced.late = 3.0  # at step 17: 1 + 17 x 0.25 + 3 = 8.25 s in, 12 - 8.25 - 2 - 0.25 = 1.5 s
    out = tmp_path / "behind"
    assert _run(demo_dir, out, *REFIT)["step"] == 23  # 17 + 6 steps of 0.25 s
    assert "the last epoch cut to 6 of 17 steps, 23 in all" in capsys.readouterr().out
    train = yaml.safe_load((out / "config.yaml").read_text())["train"]
    assert (train["steps_per_epoch"], train["final_epoch_steps"]) == (17, 6)
    cut = json.loads((out / "run.json").read_text())["budget"]["cut"]
    assert (cut["at_step"], cut["final_epoch_steps"], cut["steps"]) == (17, 6, 23)
    last = _weights(out)
    assert [r["step"] for r in last["history"]] == [17, 23]
    assert last["history"][-1]["lr"] == 0.0  # the cosine ends at the cut end
    assert _run(demo_dir, out, *REFIT)["step"] == 23  # finished: nothing trains again
    assert paced.calls == 2
