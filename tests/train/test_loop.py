"""End-to-end behaviour of `train_fold` on the demo data with a tiny, fast configuration."""

import csv
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from kit.checkpoint import load_checkpoint, model_from_checkpoint
from kit.config import load_config
from kit.data.fragment import Fragment
from kit.errors import KitError
from kit.run import RunDir
from kit.train.loop import lr_factor, train_fold
from kit.train.step import Stepper

TINY = [
    "data.tile=32", "data.stride=32", "data.z_start=26", "data.z_end=34",
    "train.batch_size=4", "train.accumulate=2", "train.steps_per_epoch=3", "train.epochs=2",
    "train.warmup_steps=1", "train.num_workers=0", "train.lr=1e-3", "infer.batch_size=64",
]  # fmt: skip
NO_AUGMENT = [f"augment.{p}=0" for p in ("p_flip", "p_rot90", "p_affine", "p_intensity",
              "p_slice_jitter", "p_zshift", "p_slice_dropout", "p_coarse_dropout", "p_noise")]  # fmt: skip


def _config(*extra: str):
    return load_config("cpu-demo-unet", [*TINY, *extra])


def _train(demo_dir: Path, out: Path, *extra: str, **kwargs) -> dict:
    return train_fold(
        _config(*extra), data_dir=demo_dir, fold=0, folds_csv=demo_dir / "folds.csv", out=out,
        progress=False, **kwargs,
    )  # fmt: skip


def test_lr_schedule_warms_up_then_decays_to_zero():
    factors = [lr_factor(s, warmup=4, total=20) for s in range(21)]
    assert factors[:4] == [0.25, 0.5, 0.75, 1.0]
    assert all(a >= b for a, b in itertools.pairwise(factors[3:]))
    assert factors[20] == pytest.approx(0.0)


def test_loss_decreases_on_demo_data(demo_dir, tmp_path):
    _train(demo_dir, tmp_path / "run", *NO_AUGMENT, "train.epochs=4", "train.val_every=4")
    with open(tmp_path / "run" / "metrics.csv") as f:
        losses = [float(row["loss"]) for row in csv.DictReader(f)]
    assert len(losses) == 4
    assert losses[-1] < losses[0]


def test_run_directory_is_complete_and_rerun_is_a_no_op(demo_dir, tmp_path, capsys):
    out = tmp_path / "run"
    summary = _train(demo_dir, out, log_images=True)
    # the log starts with who trains what, where, on which rows, with which settings
    log = capsys.readouterr().out.splitlines()
    header = next(i for i, line in enumerate(log) if line.startswith("inkkit "))
    assert log[header].endswith(f"fold 0 -> {out} (full config: {out / 'config.yaml'})")
    assert (
        log[header + 1].startswith("device cpu, 1 thread, ")
        and "(train.amp " in log[header + 1]
        and "M parameters" in log[header + 1]
    )
    assert log[header + 2].startswith("trains on: ") and "candidate tiles" in log[header + 2]
    assert log[header + 3].startswith("holds out: ")
    assert "tile 32 stride 32, batch 4×2, 2 epochs × 3 steps" in log[header + 4]
    assert summary["step"] == 6 and 0.0 <= summary["best_f05"] <= 1.0
    for name in ("config.yaml", "run.json", "metrics.csv", "checkpoints/last.pt",
                 "checkpoints/best.pt", "oof/regions.csv"):  # fmt: skip
        assert (out / name).is_file(), name
    assert any((out / "tensorboard").iterdir())
    assert any(p.name.endswith("_train.png") for p in (out / "report").iterdir())
    run = json.loads((out / "run.json").read_text())
    assert run["fold"] == 0 and Path(run["data"]) == demo_dir.resolve()
    assert run["trained"]["steps"] == 6 and run["trained"]["seconds"] > 0  # for the report
    with open(out / "oof" / "regions.csv") as f:
        regions = list(csv.DictReader(f))
    assert regions and all(r["fold"] == "0" for r in regions)
    for r in regions:
        fragment = Fragment(demo_dir / "train" / r["fragment"])
        oof = cv2.imread(str(out / "oof" / f"{r['fragment']}.png"), cv2.IMREAD_UNCHANGED)
        assert oof.dtype == np.uint8 and oof.shape == fragment.shape
        r0 = round(float(r["row_start"]) * fragment.shape[0])
        r1 = round(float(r["row_end"]) * fragment.shape[0])
        outside = np.ones(fragment.shape[0], bool)
        outside[r0:r1] = False
        assert not oof[outside].any()
    _, config = model_from_checkpoint(out / "checkpoints" / "best.pt")
    assert config.data.tile == 32
    best = load_checkpoint(out / "checkpoints" / "best.pt")
    assert best["score"] == pytest.approx(summary["best_f05"])

    stamp = (out / "checkpoints" / "last.pt").stat().st_mtime_ns
    again = _train(demo_dir, out)
    assert again["step"] == 6
    assert (out / "checkpoints" / "last.pt").stat().st_mtime_ns == stamp  # nothing retrained
    with pytest.raises(KitError, match="--resume"):
        _train(demo_dir, out, "train.epochs=3")


class _Killed(Exception):
    """Stands in for a SIGKILL: nothing after it runs (no save on the way out)."""


def _assert_same_weights(a: Path, b: Path) -> None:
    sa, sb = (
        load_checkpoint(a / "checkpoints" / "last.pt"),
        load_checkpoint(b / "checkpoints" / "last.pt"),
    )
    assert sa["step"] == sb["step"] == 6
    for key in ("train_model", "model"):  # raw and EMA weights
        for name, value in sa[key].items():
            assert torch.equal(value, sb[key][name]), f"{key}.{name}"


def _losses(run: Path) -> dict[int, float]:
    with open(run / "metrics.csv") as f:
        return {int(r["epoch"]): float(r["loss"]) for r in csv.DictReader(f)}


def test_resume_continues_with_the_same_batches(demo_dir, tmp_path, monkeypatch):
    extra = ("train.ema=0.9",)
    _train(demo_dir, tmp_path / "straight", *extra)
    first = _train(demo_dir, tmp_path / "resumed", *extra, max_steps=4)
    assert first["step"] == 4
    assert load_checkpoint(tmp_path / "resumed" / "checkpoints" / "last.pt")["step"] == 4
    _train(demo_dir, tmp_path / "resumed", *extra, resume=True)
    _assert_same_weights(tmp_path / "straight", tmp_path / "resumed")

    # Killed during step 5 (epoch 2 = steps 4..6): the mid-epoch checkpoint of step 4
    # (train.checkpoint_every=2) is all that is left; resuming from it is the same run.
    step = Stepper.step

    def dying_step(self, batch):
        if self.scheduler.last_epoch == 4:  # optimiser steps taken so far
            raise _Killed
        return step(self, batch)

    monkeypatch.setattr(Stepper, "step", dying_step)
    killed = tmp_path / "killed"
    with pytest.raises(_Killed):
        _train(demo_dir, killed, *extra, "train.checkpoint_every=2")
    state = load_checkpoint(killed / "checkpoints" / "last.pt")
    assert state["step"] == 4 and len(state["history"]) == 1  # mid-epoch, not an epoch end
    monkeypatch.setattr(Stepper, "step", step)
    _train(demo_dir, killed, *extra, "train.checkpoint_every=2", resume=True)
    _assert_same_weights(tmp_path / "straight", killed)
    assert _losses(killed) == _losses(tmp_path / "straight")  # epoch 2 averages all 3 steps


def test_sigkill_leaves_a_loadable_last_checkpoint(demo_dir, tmp_path):
    out = tmp_path / "killed"
    args = [sys.executable, "-m", "kit", "train", "--data", str(demo_dir), "--fold", "0",
            "--folds", str(demo_dir / "folds.csv"), "--config", "cpu-demo-unet", "--out", str(out)]  # fmt: skip
    for item in [*TINY, "train.epochs=200", "train.val_every=100"]:
        args += ["--set", item]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    last = out / "checkpoints" / "last.pt"
    try:
        deadline = time.monotonic() + 120
        while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert last.exists(), proc.stderr.read().decode() if proc.poll() is not None else "timeout"
        time.sleep(0.3)  # mid-run, likely mid-write of the next checkpoint
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    state = load_checkpoint(last)
    assert state["step"] >= 3
    summary = _train(demo_dir, out, "train.epochs=200", "train.val_every=100", resume=True,
                     max_steps=state["step"] + 3)  # fmt: skip
    assert summary["step"] == state["step"] + 3


def test_logged_lr_is_the_heads_under_layer_decay(demo_dir, tmp_path):
    config = load_config("cpu-demo", [*TINY, "model.layer_decay=0.5", "train.val_every=100"])
    train_fold(config, data_dir=demo_dir, fold=0, folds_csv=demo_dir / "folds.csv",
               out=tmp_path / "run", progress=False, max_steps=3)  # fmt: skip
    with open(tmp_path / "run" / "metrics.csv") as f:
        (row,) = csv.DictReader(f)
    # After 3 scheduler steps the head (lr_scale 1) is at train.lr × schedule, not the
    # lowest layer's train.lr × 0.5^L.
    assert float(row["lr"]) == pytest.approx(1e-3 * lr_factor(3, warmup=1, total=6))


def _events(folder: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    return events.Reload()


def test_tensorboard_shows_held_out_loss_previews_and_hparams(demo_dir, tmp_path, monkeypatch):
    from tensorboard.plugins.hparams import plugin_data_pb2

    from kit.train import board

    read = []  # the fixed panels of a preview are read once per fragment, not per validation
    panels = board.fragment_panels

    def counted(fragment, *args, **kwargs):
        read.append(fragment.id)
        return panels(fragment, *args, **kwargs)

    monkeypatch.setattr(board, "fragment_panels", counted)
    out = tmp_path / "run"
    summary = _train(demo_dir, out)
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    events = _events(out / "tensorboard")
    scalars = {tag: [(e.step, e.value) for e in events.Scalars(tag)]
               for tag in events.Tags()["scalars"]}  # fmt: skip
    # two validations (steps 3 and 6): the held-out loss and F0.5 of metrics.csv
    for tag, column in (("val/loss", "val_loss"), ("val/f05", "f05")):
        assert [s for s, _ in scalars[tag]] == [3, 6], tag
        assert [v for _, v in scalars[tag]] == pytest.approx([float(r[column]) for r in rows])
    assert all(0 < float(r["val_loss"]) < 10 for r in rows)
    assert "val/loss_bce" in scalars and "val/loss_dice" in scalars
    assert "val/loss_focal" not in scalars  # loss.focal is 0: no term, no curve
    held_out = sorted({r.fragment for r in RunDir(out).regions()})
    assert events.Tags()["images"] == [f"val/preview/{fid}" for fid in held_out]
    for fid in held_out:
        images = events.Images(f"val/preview/{fid}")
        assert [i.step for i in images] == [3, 6]
        picture = cv2.imdecode(np.frombuffer(images[-1].encoded_image_string, np.uint8), 1)
        assert picture.shape[1] == images[-1].width <= board.PREVIEW_WIDTH
    assert sorted(read) == held_out
    # hparams: the resolved config's main fields and the best held-out F0.5
    assert scalars[board.BEST] == [(6, pytest.approx(summary["best_f05"]))]
    content = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    start = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
    values = {k: v.WhichOneof("kind") and getattr(v, v.WhichOneof("kind"))
              for k, v in start.hparams.items()}  # fmt: skip
    assert set(values) == set(board.HPARAMS)
    assert values["model.family"] == "unet" and values["data.tile"] == 32
    assert values["train.lr"] == pytest.approx(1e-3) and values["name"] == "cpu-demo-unet"


def test_validation_scores_all_held_out_pixels_at_once(demo_dir):
    """The F0.5 and threshold of a validation are best_threshold's over every scored held-out
    pixel of its maps (as before the loss was added), and its loss is level_loss's of them."""
    from kit.metrics import best_threshold
    from kit.models import build_model
    from kit.models.losses import segmentation_loss
    from kit.models.output import ModelOutput
    from kit.train.loop import load_fold_data
    from kit.train.validate import validate

    config = _config("data.reverse=false", "data.flatten=false")
    torch.manual_seed(0)
    data = load_fold_data(demo_dir, 0, demo_dir / "folds.csv", progress=False)
    v = validate(build_model(config), config, data, device="cpu")
    probs, labels = [], []
    for fragment, ranges in zip(data.val, data.val_rows, strict=True):
        keep = np.zeros(fragment.shape, bool)
        for r0, r1 in ranges:
            keep[r0:r1] = True
        inside = keep & fragment.scored()
        probs.append(v.maps[fragment.id][inside])
        labels.append(fragment.labels()[inside])
    threshold, score = best_threshold(np.concatenate(probs), np.concatenate(labels))
    assert (v.threshold, v.score) == (threshold, score)
    prob = torch.from_numpy(np.concatenate(probs) / 255).clamp(0.5 / 255, 254.5 / 255)
    target = torch.from_numpy(np.concatenate(labels)).double()
    expected = segmentation_loss(ModelOutput(torch.logit(prob)[None, None, None]),
                                 target[None, None, None], config=config.loss)  # fmt: skip
    assert v.loss["total"] == pytest.approx(float(expected["total"]), rel=1e-5)
