"""Versions: recorded in every checkpoint and run.json; a checkpoint of other versions warns."""

from __future__ import annotations

import warnings

import pytest
import torch

import kit
from kit import versions as v
from kit.checkpoint import load_checkpoint, save_checkpoint
from kit.cli import main
from kit.config import Config, config_to_dict
from kit.data.folds import Region
from kit.errors import KitWarning
from kit.run import RunDir


def test_versions_name_the_kit_and_the_model_packages():
    found = v.versions()
    assert found["inkkit"] == kit.__version__
    assert found["torch"].split("+")[0] == torch.__version__.split("+")[0]
    assert {"timm", "segment-anything", "numpy", "python"} <= set(found)


def test_differences_name_each_package_and_ignore_python_patch_levels(monkeypatch):
    here = {"inkkit": "0.1.0", "python": "3.11.7", "torch": "2.14.1", "timm": "1.0.31"}
    monkeypatch.setattr(v, "versions", lambda: here)
    assert v.version_differences(dict(here)) == []
    assert v.version_differences({**here, "python": "3.11.2"}) == []
    assert v.version_differences({**here, "torch": "2.3.0", "timm": None}) == [
        "torch 2.3.0 there, 2.14.1 here",
        "timm absent there, 1.0.31 here",
    ]
    assert v.version_differences({"unknown-package": "1"}) == []
    assert v.version_differences(None) == []


def _checkpoint(path):
    save_checkpoint(path, {"config": config_to_dict(Config()), "model": {}})
    return path


def test_every_checkpoint_records_the_versions_and_loads_quietly_under_the_same(tmp_path):
    path = _checkpoint(tmp_path / "a.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning fails the test
        state = load_checkpoint(path)
    assert state["versions"] == v.versions()


def test_a_checkpoint_of_other_versions_warns_once_per_difference(tmp_path):
    path = tmp_path / "old.pt"
    state = torch.load(_checkpoint(path), weights_only=False)
    state["versions"]["timm"] = "0.0.test-warn"
    torch.save(state, path)
    with pytest.warns(KitWarning, match=r"timm 0\.0\.test-warn there, .* here") as record:
        load_checkpoint(path)
        load_checkpoint(path)  # the same difference again (another member): no second warning
    assert len(record) == 1 and str(path) in str(record[0].message)


def test_the_cli_prints_a_kit_warning_as_one_line(tmp_path, capsys, monkeypatch):
    def warns(args):
        warnings.warn("checkpoint x was saved with other versions", KitWarning, stacklevel=1)
        return 0

    monkeypatch.setattr("kit.cli.fragments.run", warns)
    assert main(["fragments", "--data", str(tmp_path)]) == 0
    assert capsys.readouterr().err == "warning: checkpoint x was saved with other versions\n"


def test_run_json_records_the_versions(tmp_path):
    run = RunDir(tmp_path / "run")
    run.start(Config(), {"fold": 0}, [Region("1", 0, 0.0, 1.0)])
    assert run.record() == {"fold": 0, "versions": v.versions()}
