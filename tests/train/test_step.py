"""The training step's fast paths: it never waits for the device, and its EMA is torch's.

A step that reads a tensor back on the host (`.item()`, `.tolist()`, `.cpu()`, `float(t)`,
`if t:` ...) makes the CPU wait for the GPU to finish everything queued so far, so the next
batch cannot be prepared while the GPU computes. The trainer reads the losses back only at its
log points (train.log_every, checkpoints, epoch ends). The count below runs on the CPU with the
augmentation's device path (whole-batch, as on a GPU) and counts the reads that kit code makes.
"""

import copy
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
        "data.reverse=false", "data.flatten=false", "train.batch_size=4", "train.accumulate=2",
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


def test_fused_adamw_matches_torch_default_within_rounding():
    """adamw() picks the fused kernel where torch has one (the CPU too); after 5 steps the
    parameters equal the default AdamW's within 1e-6 (measured ~3e-8 after one step)."""
    from kit.train.step import adamw

    torch.manual_seed(0)
    models = [torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Linear(32, 4))]
    models.append(copy.deepcopy(models[0]))
    groups = [[{"params": list(m.parameters()), "lr": 1e-2, "weight_decay": 0.05}] for m in models]
    fused = adamw(groups[0], lr=1e-2, weight_decay=0.05)
    plain = torch.optim.AdamW(groups[1], lr=1e-2, weight_decay=0.05)
    assert fused.defaults["fused"]
    for _ in range(5):
        x = torch.randn(8, 16)
        for model, optimizer in zip(models, (fused, plain), strict=True):
            optimizer.zero_grad()
            model(x).square().mean().backward()
            optimizer.step()
    for a, b in zip(models[0].parameters(), models[1].parameters(), strict=True):
        assert (a - b).abs().max() < 1e-6


@pytest.mark.parametrize("preset", ["cpu-demo", "cpu-demo-unet"])
def test_channels_last_weights_same_outputs_and_gradients(preset):
    """channels_last() changes strides only. Against a float64 reference, outputs within 1e-4 of
    their scale and gradients within 1e-3 of the largest gradient, the bound the contiguous
    float32 model meets too (measured on the U-Net: both ~1.7e-4 of a largest 0.19; oneDNN's
    channels-last kernels round differently, e.g. final.0.weight 1.3e-4 against 8e-8)."""
    from kit.models import build_model
    from kit.train.step import channels_last

    gain = ["model.input_gain=40"] if preset == "cpu-demo" else []
    config = load_config(
        preset,
        [*gain, "data.z_start=26", "data.z_end=34", "data.reverse=false", "data.flatten=false"],
    )
    torch.manual_seed(0)
    model = build_model(config)
    for p in model.parameters():  # the stem's last conv starts at zero: make it count
        if p.ndim > 1 and not p.any():
            torch.nn.init.normal_(p, std=0.1)
    fast = channels_last(copy.deepcopy(model))
    convs = [m for m in fast.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.Conv3d)]
    assert convs and all(
        m.weight.is_contiguous(memory_format=torch.channels_last_3d if m.weight.ndim == 5
                               else torch.channels_last) for m in convs
    )  # fmt: skip
    reference = copy.deepcopy(model).double()
    x = torch.rand(4, 8, config.data.tile, config.data.tile)
    outputs, grads = [], []
    if preset == "cpu-demo":  # segment-anything's dense positional grid is always float32
        reference.prompt_encoder.pe_layer.float()
    for m in (reference, model, fast):
        out = m(x.to(next(m.parameters()).dtype)).logits
        out.square().mean().backward()
        outputs.append(out.detach().double())
        grads.append([p.grad.double() for p in m.parameters() if p.grad is not None])
    scale = max(g.abs().max() for g in grads[0])
    for out, grad in zip(outputs[1:], grads[1:], strict=True):  # contiguous, channels-last
        assert (out - outputs[0]).abs().max() <= 1e-4 * outputs[0].abs().max()
        assert max((a - b).abs().max() for a, b in zip(grad, grads[0], strict=True)) <= 1e-3 * scale


@pytest.mark.slow  # inductor compiles forward and backward: about a minute on 2 cores
def test_compiled_forward_same_outputs_and_gradients():
    """model.compile routes the training forward through torch.compile (inductor) while the
    state dict stays the model's. Against the eager model, outputs within 1e-4 of their scale
    and gradients within 1e-3 of the largest gradient (the channels-last bound above; inductor
    fuses and reorders float32 arithmetic). The U-Net: the smallest graph that compiles in
    seconds on a CPU."""
    from kit.models import build_model
    from kit.train.step import _compiled

    config = load_config("cpu-demo-unet", ["data.z_start=26", "data.z_end=34",
                                           "data.reverse=false", "data.flatten=false", "model.compile=true"])  # fmt: skip
    torch.manual_seed(0)
    model = build_model(config)
    eager = copy.deepcopy(model)
    compiled = _compiled(model, config)
    assert compiled._orig_mod is model  # what is trained and saved is the model itself
    x = torch.rand(2, 8, config.data.tile, config.data.tile)
    outputs, grads = [], []
    for m, params in ((eager, eager.parameters()), (compiled, model.parameters())):
        out = m(x).logits
        out.square().mean().backward()
        outputs.append(out.detach())
        grads.append([p.grad for p in params])
    scale = max(g.abs().max() for g in grads[0])
    assert (outputs[1] - outputs[0]).abs().max() <= 1e-4 * outputs[0].abs().max()
    assert max((a - b).abs().max() for a, b in zip(*grads, strict=True)) <= 1e-3 * scale


@pytest.mark.parametrize(("amp", "native", "dtype"),
                         [("bf16", True, torch.bfloat16), ("bf16", False, None), ("auto", True, None)])  # fmt: skip
def test_training_steps_run_under_the_precision_of_train_amp(
    demo_dir, tmp_path, monkeypatch, capsys, amp, native, dtype
):
    """On a CPU with native bf16, train.amp=bf16 autocasts the forward and loss (kit.precision);
    elsewhere, and with "auto", the CPU trains in float32. Weights stay float32."""
    import kit.precision
    import kit.train.step

    monkeypatch.setattr(kit.precision, "cpu_has_native_bf16", lambda: native)
    seen = set()
    loss = kit.train.step.segmentation_loss

    def recording(*args, **kwargs):
        on = torch.is_autocast_enabled("cpu")
        seen.add(torch.get_autocast_dtype("cpu") if on else None)
        return loss(*args, **kwargs)

    monkeypatch.setattr(kit.train.step, "segmentation_loss", recording)
    config = load_config("cpu-demo-unet", [
        "data.tile=32", "data.stride=32", "data.z_start=26", "data.z_end=34", "data.reverse=false",
        "data.flatten=false", "train.batch_size=4", "train.steps_per_epoch=2", "train.epochs=1",
        "train.warmup_steps=1", f"train.amp={amp}", "infer.amp=off",
    ])  # fmt: skip
    run = tmp_path / "run"
    train_fold(config, data_dir=demo_dir, fold=0, folds_csv=demo_dir / "folds.csv", out=run,
               progress=False)  # fmt: skip
    assert seen == {dtype}
    said = "autocast bfloat16" if dtype is torch.bfloat16 else "float32"
    assert f", {said} (train.amp {amp}), torch " in capsys.readouterr().out  # what ran
    state = torch.load(run / "checkpoints" / "best.pt", weights_only=False)["model"]
    assert all(v.dtype == torch.float32 for v in state.values() if v.is_floating_point())
