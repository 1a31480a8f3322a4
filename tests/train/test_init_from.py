"""`kit train --init-from RUN_DIR`: matching tensors copied, the rest named, other families
refused (kit.checkpoint.init_from)."""

import json

import pytest
import torch

from kit.checkpoint import CheckpointError, init_from, load_checkpoint
from kit.cli import main
from kit.config import load_config
from kit.models import build_model
from kit.train.loop import train_fold

TINY = [
    "data.tile=32", "data.stride=32", "data.z_start=26", "data.z_end=34", "data.reverse=false", "data.flatten=false",
    "train.batch_size=4", "train.steps_per_epoch=2", "train.epochs=1", "train.warmup_steps=1",
    "train.num_workers=0", "infer.batch_size=64",
]  # fmt: skip


@pytest.fixture(scope="module")
def ir_run(demo_dir, tmp_path_factory):
    """A tiny infrared warm-up run of the U-Net member."""
    out = tmp_path_factory.mktemp("ir") / "run"
    config = load_config("cpu-demo-unet", [*TINY, "data.input_mode=ir"])
    train_fold(config, data_dir=demo_dir, fold=0, folds_csv=demo_dir / "folds.csv", out=out,
               progress=False)  # fmt: skip
    return out


def test_matching_tensors_load_and_the_rest_are_named(ir_run):
    config = load_config("cpu-demo-unet", TINY)  # 8 volume slices instead of 1 IR channel
    model = build_model(config)
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    record = init_from(model, config, ir_run)
    saved = load_checkpoint(ir_run / "checkpoints" / "best.pt")["model"]
    ours = model.state_dict()
    shape_skips = [s for s in record["skipped"] if "there" in s]
    assert shape_skips, record["skipped"]  # the stem's input channels differ
    stem = shape_skips[0].split(" ")[0]
    assert ours[stem].shape[1] == 8 and saved[stem].shape[1] == 1  # input channels
    assert torch.equal(ours[stem], fresh[stem])  # skipped: left at its initialisation
    loaded = [k for k in saved if k in ours and ours[k].shape == saved[k].shape]
    assert record["loaded"] == len(loaded) > 10
    for k in loaded:
        assert torch.equal(ours[k], saved[k]), k


def test_another_family_is_refused(ir_run):
    config = load_config("cpu-demo", [*TINY, "model.input_gain=80"])
    with pytest.raises(CheckpointError, match=r"same model\.family"):
        init_from(build_model(config), config, ir_run)


def test_cli_records_what_it_loaded(demo_dir, ir_run, tmp_path, capsys):
    out = tmp_path / "volume"
    args = ["train", "--data", str(demo_dir), "--fold", "0", "--config", "cpu-demo-unet",
            "--folds", str(demo_dir / "folds.csv"), "--out", str(out), "--init-from", str(ir_run),
            *[a for s in TINY for a in ("--set", s)]]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "init from" in printed and "skipped:" in printed
    record = json.loads((out / "run.json").read_text())["init_from"]
    assert record["checkpoint"].endswith("best.pt") and record["loaded"] > 10
    missing = ["--init-from", str(tmp_path / "nowhere")]
    assert main([*args[: -len(TINY) * 2], *missing]) == 2
