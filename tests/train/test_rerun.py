"""Reruns decided by provenance: other inputs refused or retrained, a kill during validation
loses nothing, damaged or half-written checkpoints named, every fragment checked up front."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_loop import TINY, _config, _Killed, _train

from kit.cli import main
from kit.data.folds import Region, write_folds
from kit.errors import KitError
from kit.run import RunDir
from kit.train import loop

ROOT = Path(__file__).resolve().parents[2]


def test_a_finished_run_of_other_inputs_is_refused_and_overwrite_retrains_it(demo_dir, tmp_path):
    out = tmp_path / "run"
    _train(demo_dir, out)
    run = RunDir(out)
    best = run.best.read_bytes()
    with pytest.raises(
        KitError, match=r"other inputs \(config\.train\.lr: 0\.001 -> 0\.01\).*--overwrite"
    ):
        _train(demo_dir, out, "train.lr=0.01")
    assert run.best.read_bytes() == best  # nothing good destroyed by the refusal
    with pytest.raises(KitError, match=r"fold: 0 -> 1"):
        loop.train_fold(_config(), data_dir=demo_dir, fold=1, folds_csv=demo_dir / "folds.csv",
                        out=out, progress=False)  # fmt: skip
    summary = _train(demo_dir, out, "train.lr=0.01", overwrite=True)
    assert summary["step"] == 6
    assert run.config().train.lr == 0.01
    assert run.record()["provenance"]["config"]["train"]["lr"] == 0.01
    # the same inputs again: nothing to do; a longer run may be continued with --resume
    stamp = run.last.stat().st_mtime_ns
    assert _train(demo_dir, out, "train.lr=0.01")["step"] == 6
    assert run.last.stat().st_mtime_ns == stamp
    with pytest.raises(KitError, match=r"config\.train\.epochs: 2 -> 3\): add --resume"):
        _train(demo_dir, out, "train.lr=0.01", "train.epochs=3")
    assert _train(demo_dir, out, "train.lr=0.01", "train.epochs=3", resume=True)["step"] == 9


def test_a_run_recorded_before_a_config_field_existed_is_still_the_same_run(demo_dir, tmp_path):
    out = tmp_path / "run"
    _train(demo_dir, out)
    run = RunDir(out)
    record = run.record()
    del record["provenance"]["config"]["train"]["final_epoch_steps"]  # an older kit's run.json
    run.run_json.write_text(json.dumps(record))
    stamp = run.last.stat().st_mtime_ns
    assert _train(demo_dir, out)["step"] == 6  # finished: nothing to do
    assert run.last.stat().st_mtime_ns == stamp
    record["provenance"]["config"]["train"]["lr"] = 0.5  # a real difference still counts
    run.run_json.write_text(json.dumps(record))
    with pytest.raises(KitError, match=r"config\.train\.lr: 0\.5 -> 0\.001"):
        _train(demo_dir, out)


SETS = [x for item in TINY for x in ("--set", item)]


def test_changed_data_is_another_input(demo_dir, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(demo_dir, data)
    out = tmp_path / "run"
    _train(data, out)
    mask = data / "train" / "1" / "mask.png"
    mask.write_bytes(mask.read_bytes())  # same bytes, new mtime: the file was replaced
    with pytest.raises(KitError, match=r"data\.1 files changed"):
        _train(data, out)


def test_changed_starting_weights_are_another_input(demo_dir, tmp_path):
    source, out = tmp_path / "source", tmp_path / "run"
    _train(demo_dir, source)
    start = f"model.init_from={RunDir(source).best}"
    _train(demo_dir, out, start)
    assert _train(demo_dir, out, start)["step"] == 6  # the same weights: nothing to do
    _train(demo_dir, source, "train.lr=0.01", overwrite=True)  # new weights, same path
    with pytest.raises(KitError, match=r"weights\.init_from"):
        _train(demo_dir, out, start)


def test_a_kill_during_validation_resumes_with_that_validation(demo_dir, tmp_path, monkeypatch):
    out = tmp_path / "run"
    reference = _train(demo_dir, tmp_path / "ref")
    real = loop.validate
    calls = {"n": 0}

    def killed_in_second(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise _Killed
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "validate", killed_in_second)
    with pytest.raises(_Killed):
        _train(demo_dir, out)
    run = RunDir(out)
    assert run.record()["trained"] == {**run.record()["trained"], "steps": 6, "validated": False}
    monkeypatch.setattr(loop, "validate", real)
    resumed = _train(demo_dir, out, resume=True)
    assert resumed == reference  # the same steps, score and threshold as an uninterrupted run
    assert run.record()["trained"]["validated"] is True
    rows = list(run.metrics_csv.read_text().splitlines())
    assert len(rows) == 3 and rows[-1].split(",")[1] == "6"  # header + 2 epochs, each once


def test_damaged_last_checkpoint_is_named_with_the_way_back(demo_dir, tmp_path):
    out = tmp_path / "run"
    _train(demo_dir, out, "train.epochs=1")
    run = RunDir(out)
    assert run.last_prev.is_file()  # the epoch's pre-validation save, kept
    data = run.last.read_bytes()
    run.last.write_bytes(data[: len(data) // 2])
    with pytest.raises(KitError, match=r"last\.pt could not be read .*mv .*last\.prev\.pt"):
        _train(demo_dir, out, "train.epochs=2", resume=True)


def test_stale_temporaries_are_removed_when_a_run_starts(demo_dir, tmp_path, capsys):
    out = tmp_path / "run"
    stale = RunDir(out).checkpoints / ".last.12345.tmp.pt"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"half a checkpoint")
    _train(demo_dir, out)
    assert not stale.exists()
    assert "left by a killed write" in capsys.readouterr().out


def test_held_out_fragment_without_labels_fails_before_any_training(demo_dir, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(demo_dir, data)
    (data / "train" / "1" / "inklabels.png").unlink()  # fragment 1 is fold 0's held-out one
    out = tmp_path / "run"
    with pytest.raises(KitError, match=r"inklabels\.png is missing: fold 0 holds out rows"):
        _train(data, out)
    assert not RunDir(out).last.exists()


def test_a_disk_too_small_for_the_checkpoints_is_refused_before_any_training(
    demo_dir, tmp_path, monkeypatch
):
    from collections import namedtuple

    from kit.train import resume

    usage = namedtuple("usage", "total used free")
    out = tmp_path / "run"
    monkeypatch.setattr(resume.shutil, "disk_usage", lambda _: usage(1 << 40, 1 << 40, 4096))
    with pytest.raises(KitError, match=r"GiB free on its disk, but this run's checkpoints need"):
        _train(demo_dir, out)
    assert not RunDir(out).last.exists()
    monkeypatch.undo()  # the same run with the disk it really has
    _train(demo_dir, out)
    assert RunDir(out).last.exists()


def test_checkpoint_bytes_bounds_what_the_run_writes(demo_dir, tmp_path):
    from kit.models import build_model
    from kit.train.resume import checkpoint_bytes

    out = tmp_path / "run"
    _train(demo_dir, out)
    run = RunDir(out)
    written = sum(p.stat().st_size for p in (run.last, run.last_prev, run.best) if p.exists())
    need = checkpoint_bytes(build_model(_config("data.reverse=false", "data.flatten=false")))
    assert written + run.last.stat().st_size <= need < 20 * written


def test_a_fold_without_held_out_ink_is_warned(demo_dir, tmp_path, capsys):
    folds = tmp_path / "folds.csv"  # fragment 1's first 2 % of rows: papyrus edge, no ink
    write_folds([Region("1", 0, 0.0, 0.02), Region("1", 1, 0.02, 1.0),
                 Region("2", 1, 0.0, 1.0)], folds)  # fmt: skip
    loop.train_fold(_config(), data_dir=demo_dir, fold=0, folds_csv=folds,
                    out=tmp_path / "run", max_steps=1, progress=False)  # fmt: skip
    assert "contain no ink" in capsys.readouterr().out


def test_a_finished_run_answers_without_importing_torch(demo_dir, tmp_path):
    out = tmp_path / "run"
    _train(demo_dir, out)
    tiny = SETS
    code = (
        "import sys\nfrom kit.cli import main\n"
        f"code = main({['train', '--data', str(demo_dir), '--fold', '0', '--config', 'cpu-demo-unet', '--folds', str(demo_dir / 'folds.csv'), '--out', str(out), *tiny]!r})\n"
        "assert code == 0, code\nassert 'torch' not in sys.modules\n"
    )  # fmt: skip
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "nothing to do" in result.stdout


def test_cli_overwrite_flag(demo_dir, tmp_path, capsys):
    out = tmp_path / "run"
    base = ["train", "--data", str(demo_dir), "--fold", "0", "--config", "cpu-demo-unet",
            "--folds", str(demo_dir / "folds.csv"), "--out", str(out)]  # fmt: skip
    tiny = SETS
    assert main([*base, *tiny, "--max-steps", "2"]) == 0
    capsys.readouterr()
    assert main([*base, *tiny, "--max-steps", "2", "--set", "train.seed=1"]) == 2
    assert "add --overwrite" in capsys.readouterr().err
    assert main([*base, *tiny, "--max-steps", "2", "--set", "train.seed=1", "--overwrite"]) == 0
    assert (
        json.loads(RunDir(out).run_json.read_text())["provenance"]["config"]["train"]["seed"] == 1
    )
