"""Run and prediction directories: file names, the member's one name, atomic records."""

import numpy as np
import pytest

from kit.checkpoint import save_checkpoint
from kit.config import Config, ModelConfig, config_to_dict
from kit.data.folds import Region, write_folds
from kit.errors import KitError
from kit.infer.ensemble import Member, resolve_members
from kit.io import write_png
from kit.run import MemberId, PredictionDir, RunDir, default_run_dir
from kit.versions import versions


def _config(name="cpu-demo", family="sam", variant="vit_tiny") -> Config:
    return Config(name=name, model=ModelConfig(family=family, variant=variant))


def _started_run(path, config: Config, fold: int) -> RunDir:
    run = RunDir(path)
    run.start(config, {"data": "/data", "fold": fold}, [Region("1", fold, 0.0, 1.0)])
    return run


def test_a_run_names_its_files_once_and_reads_back_what_it_wrote(tmp_path):
    run = _started_run(tmp_path / "r", _config(), fold=2)
    assert run.looks_like_run()
    assert run.config().model.variant == "vit_tiny"
    assert run.record() == {"data": "/data", "fold": 2, "versions": versions()}
    assert [r.fold for r in run.regions()] == [2]
    assert run.label == "cpu-demo (sam vit_tiny) fold 2"
    assert sorted(p.name for p in run.path.iterdir()) == ["checkpoints", "config.yaml", "oof",
                                                          "run.json"]  # fmt: skip
    assert not list(run.path.rglob(".*tmp*"))  # atomic writes leave no temporary behind
    with pytest.raises(KitError, match=r"no checkpoints/best\.pt or last\.pt"):
        run.checkpoint()
    save_checkpoint(run.last, {"config": config_to_dict(_config()), "model": {}})
    assert run.checkpoint() == run.last
    save_checkpoint(run.best, {"config": config_to_dict(_config()), "model": {}})
    assert run.checkpoint() == run.best
    assert RunDir.of_checkpoint(run.best).path == run.path
    assert RunDir.of_checkpoint(tmp_path / "loose.pt") is None
    assert default_run_dir("unet", 3) == default_run_dir("unet", 3, "runs")
    assert default_run_dir("unet", 3).parts[-2:] == ("unet", "fold3")


def test_members_of_different_models_get_different_names_and_folds_share_one(tmp_path):
    sam = _config("cpu-demo", "sam", "vit_tiny")
    unet = _config("cpu-demo-unet", "unet", "resnet18")
    runs = [_started_run(tmp_path / n / f"fold{f}", c, f) for n, c in (("sam", sam), ("unet", unet))
            for f in (0, 1)]  # fmt: skip
    for run in runs:
        save_checkpoint(run.best, {"config": config_to_dict(run.config()), "model": {}})
    members = resolve_members([str(r.path) for r in runs])
    assert len({m.name for m in members}) == 4  # predict used to print "fold1" twice
    assert [m.member for m in members] == [str(MemberId.of(sam))] * 2 + [str(MemberId.of(unet))] * 2
    assert members[3].name == "cpu-demo-unet (unet resnet18) fold 1"
    # a loose checkpoint: named by its own config and file
    loose = tmp_path / "x.pt"
    save_checkpoint(loose, {"config": config_to_dict(sam), "model": {}})
    assert Member.of(loose).name == "cpu-demo (sam vit_tiny) (x.pt)"
    # runs copied without run.json and regions.csv (no fold recorded): named by their folders
    for run in runs[2:]:
        run.run_json.unlink()
        run.regions_csv.unlink()
    assert [m.name for m in resolve_members([str(r.path) for r in runs[2:]])] == [
        "cpu-demo-unet (unet resnet18) (fold0)",
        "cpu-demo-unet (unet resnet18) (fold1)",
    ]
    # a run without config.yaml still knows its member from the checkpoint
    runs[0].config_yaml.unlink()
    assert runs[0].member() == MemberId.of(sam)


def test_regions_of_several_folds_and_bad_oof_maps_are_named(tmp_path):
    run = _started_run(tmp_path / "r", _config(), fold=0)
    write_folds([Region("1", 0, 0.0, 0.5), Region("1", 1, 0.5, 1.0)], run.regions_csv)
    with pytest.raises(KitError, match=r"regions of folds \[0, 1\]; expected one fold"):
        run.regions()
    with pytest.raises(KitError, match="is missing: the run has not validated yet"):
        run.read_oof("1", (4, 4), tmp_path)
    run.write_oof("1", np.zeros((4, 5), np.uint8))
    with pytest.raises(KitError, match=r"is 4×5 but fragment .* is 4×4"):
        run.read_oof("1", (4, 4), tmp_path)
    with pytest.raises(KitError, match="does not exist"):
        RunDir(tmp_path / "nowhere").regions()


def test_prediction_directory_records_and_maps(tmp_path):
    pred = PredictionDir(tmp_path / "pred")
    assert pred.record() == {}
    pred.write_record({"data": "x", "members": []})
    assert pred.record() == {"data": "x", "members": []}
    write_png(pred.map("b"), np.zeros((2, 2), np.uint8))
    write_png(pred.map("a"), np.zeros((2, 2), np.uint8))
    write_png(pred.preview("a"), np.zeros((2, 2, 3), np.uint8))
    assert pred.map_ids() == ["a", "b"]
    pred.predict_json.write_text("{broken")
    with pytest.raises(KitError, match="not valid JSON"):
        pred.record()
