"""The training step's fast paths: it never waits for the device, and its EMA is torch's.

A step that reads a tensor back on the host (`.item()`, `.tolist()`, `.cpu()`, `float(t)`,
`if t:` ...) makes the CPU wait for the GPU to finish everything queued so far, so the next
batch cannot be prepared while the GPU computes. The trainer reads the losses back only at its
log points (train.log_every, checkpoints, epoch ends). The count below runs on the CPU with the
augmentation's device path (whole-batch, as on a GPU) and counts the reads that kit code makes.
"""

import sys
from pathlib import Path

import pytest
import torch

from kit.config import load_config
from kit.train.loop import train_fold
from kit.train.step import Stepper, update_ema

KIT = str(Path(__file__).resolve().parents[2] / "kit")
READS = ("item", "tolist", "cpu", "numpy", "nonzero", "__float__", "__int__", "__bool__")
STEPS, LOG_EVERY = 6, 3  # per epoch; two epochs


def _count_reads(monkeypatch) -> list:
    """Every host read of a tensor called from kit code, in order, between ("step", i) marks."""
    events: list = []
    inside = [False]

    def counting(name: str):
        original = getattr(torch.Tensor, name)

        def read(self, *args, **kwargs):
            caller = sys._getframe(1)
            if caller.f_code.co_filename.startswith(KIT):
                where = f"{Path(caller.f_code.co_filename).name}:{caller.f_lineno}"
                events.append(("read", name, where, inside[0]))
            return original(self, *args, **kwargs)

        return read

    for name in READS:
        monkeypatch.setattr(torch.Tensor, name, counting(name))
    step = Stepper.step

    def counted_step(self, batch):
        events.append(("step", sum(e[0] == "step" for e in events) + 1))
        inside[0] = True
        try:
            return step(self, batch)
        finally:
            inside[0] = False

    monkeypatch.setattr(Stepper, "step", counted_step)
    monkeypatch.setattr("kit.augment.PER_SAMPLE_DEVICES", ())  # the device path, on the CPU
    return events


@pytest.mark.parametrize("preset", ["cpu-demo", "cpu-demo-unet"])
def test_steps_read_nothing_back_outside_log_points(demo_dir, tmp_path, monkeypatch, preset):
    events = _count_reads(monkeypatch)
    gain = ["model.input_gain=40"] if preset == "cpu-demo" else []
    config = load_config(preset, [
        *gain, "data.tile=32", "data.stride=32", "data.z_start=26", "data.z_end=34",
        "data.reverse=false", "train.batch_size=4", "train.accumulate=2",
        f"train.steps_per_epoch={STEPS}", "train.epochs=2", "train.warmup_steps=1",
        f"train.log_every={LOG_EVERY}", "train.checkpoint_every=0", "train.ema=0.9",
        "infer.batch_size=64",
        *(f"augment.{k}=0.5" for k in ("p_flip", "p_rot90", "p_affine", "p_intensity",
                                       "p_slice_jitter", "p_zshift", "p_slice_dropout",
                                       "p_coarse_dropout", "p_noise")),
    ])  # fmt: skip
    train_fold(config, data_dir=demo_dir, fold=0, folds_csv=demo_dir / "folds.csv",
               out=tmp_path / "run", progress=False)  # fmt: skip
    in_step = [e for e in events if e[0] == "read" and e[3]]
    assert not in_step, f"host reads inside Stepper.step: {sorted({e[1:3] for e in in_step})}"
    last_step, between = 0, {}
    for e in events:
        if e[0] == "step":
            last_step = e[1]
        elif last_step:
            between.setdefault(last_step, []).append(e[1:3])
    assert last_step == 2 * STEPS
    allowed = {s for s in range(1, last_step + 1) if s % LOG_EVERY == 0 or s % STEPS == 0}
    unexpected = {s: reads for s, reads in between.items() if s not in allowed}
    assert not unexpected, f"host reads after non-log steps: {unexpected}"
    assert between.get(LOG_EVERY), "the log point reads the losses (the count sees reads)"


def test_update_ema_equals_averaged_model_update_parameters():
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3), torch.nn.BatchNorm2d(4))
    theirs, ours = (AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True)
                    for _ in range(2))  # fmt: skip
    for i in range(4):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        model(torch.randn(3, 2, 8, 8))  # moves the BatchNorm statistics (buffers, averaged too)
        theirs.update_parameters(model)
        update_ema(ours, model, first=i == 0)
        for a, b in zip(theirs.state_dict().values(), ours.state_dict().values(), strict=True):
            assert torch.equal(a, b)
