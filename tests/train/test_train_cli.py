"""`kit train --dry-run` and `--seed`: the plan without training; the seed lands in the config."""

from __future__ import annotations

from kit.cli import main
from kit.config import load_config


def test_dry_run_prints_the_plan_and_writes_nothing(demo_dir, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--data", str(demo_dir), "--fold", "1", "--folds", str(demo_dir / "folds.csv"),
            "--out", str(out), "--seed", "7", "--dry-run"]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("dry run: cpu-demo (sam vit_tiny4) fold 1 of ")
    assert "trains on: " in printed and "holds out: " in printed and "candidate tiles" in printed
    assert "seed 7" in printed and "slices auto" in printed
    assert f"{out} is new: it would train from scratch" in printed
    assert not out.exists()


def test_dry_run_checks_the_fold(demo_dir, tmp_path, capsys):
    argv = ["train", "--data", str(demo_dir), "--fold", "9", "--folds", str(demo_dir / "folds.csv"),
            "--out", str(tmp_path / "run"), "--dry-run"]  # fmt: skip
    assert main(argv) == 2
    assert "fold 9" in capsys.readouterr().err


def test_seed_is_the_configs_train_seed(monkeypatch, demo_dir, tmp_path):
    seen = {}

    def fake_train(config, **kwargs):
        seen["seed"] = config.train.seed
        return {"best_f05": None}

    monkeypatch.setattr("kit.train.loop.train_fold", fake_train)
    argv = ["train", "--data", str(demo_dir), "--fold", "0", "--folds", str(demo_dir / "folds.csv"),
            "--out", str(tmp_path / "run"), "--seed", "11"]  # fmt: skip
    assert main(argv) == 0
    assert seen["seed"] == 11 != load_config("cpu-demo").train.seed
