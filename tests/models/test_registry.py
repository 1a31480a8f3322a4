"""The family registry: a family defined outside kit/ trains and predicts through the real code,
config checks build nothing and import no torch, and the built-in specs keep their contract."""

import dataclasses
import subprocess
import sys

import numpy as np
import pytest
import torch
from models_helpers import tiny_config
from torch import nn

from kit.checkpoint import load_checkpoint, model_from_checkpoint
from kit.config import load_config
from kit.data.fragment import Fragment
from kit.errors import KitError
from kit.infer.stitch import predict_fragment
from kit.models import (
    MODEL_FAMILIES,
    FamilySpec,
    ModelOutput,
    TrainingHooks,
    build_model,
    check_model_config,
    load_pretrained,
    param_groups,
    register_family,
)
from kit.train.loop import train_fold

torch.set_num_threads(1)

TINY = [
    "model.family=toy", "model.variant=small", "data.tile=32", "data.stride=32",
    "data.z_start=26", "data.z_end=34", "data.reverse=false", "data.flatten=false", "train.batch_size=4",
    "train.accumulate=2", "train.steps_per_epoch=3", "train.epochs=1", "train.warmup_steps=1",
    "train.num_workers=0", "train.lr=1e-2", "infer.batch_size=64",
]  # fmt: skip


class ToyNet(nn.Module):
    """x (B, C, T, T) -> ModelOutput(logits (B, 1, T, T)); `gain` only ever comes from hooks."""

    def __init__(self, in_channels: int, width: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, 1, 1)
        )
        self.gains: list[float] = []

    def forward(self, x: torch.Tensor, *, gain: float = 1.0) -> ModelOutput:
        if self.training:
            self.gains.append(gain)
        return ModelOutput(self.body(x) * gain)


class ToyHooks(TrainingHooks):
    """Passes the forward a keyword only the toy family knows, once per micro-batch."""

    def __init__(self, config, model, *, fragments, n_tiles, device) -> None:
        self.model, self.fragments, self.micro_batches = model, list(fragments), []

    def step_kwargs(self, x, y, tiles, *, generator):
        assert tiles.shape == (len(x), 3)

        def kwargs(part: slice) -> dict:
            self.micro_batches.append((part.start, part.stop))
            return {"gain": 0.5}

        return kwargs


def _build_toy(config) -> ToyNet:
    return ToyNet(config.data.in_channels, {"small": 4, "large": 8}[config.model.variant])


def _check_toy(config) -> None:
    if config.data.tile % 4:
        raise KitError(f"data.tile={config.data.tile}: the toy family needs a multiple of 4")


TOY = FamilySpec(
    build=_build_toy,
    choices={"variant": ("small", "large"), "train_mode": ("full",)},
    check=_check_toy,
    training_hooks=ToyHooks,
)


@pytest.fixture
def toy():
    register_family("toy", TOY)
    yield TOY
    del MODEL_FAMILIES["toy"]


def test_a_family_registered_outside_kit_builds_trains_and_predicts(
    toy, demo_dir, tmp_path, monkeypatch
):
    hooks: list[ToyHooks] = []
    monkeypatch.setattr(ToyHooks, "notes", lambda self: hooks.append(self) or [])
    out = tmp_path / "run"
    summary = train_fold(
        load_config("cpu-demo-unet", TINY), data_dir=demo_dir, fold=0,
        folds_csv=demo_dir / "folds.csv", out=out, max_steps=2, progress=False,
    )  # fmt: skip
    assert summary["step"] == 2 and summary["best_f05"] >= 0
    (trained,) = hooks
    assert trained.fragments == ["2", "3"]  # fold 0 holds fragment 1 out
    assert trained.micro_batches == [(0, 4), (4, 8)] * 2  # 2 steps of 2 micro-batches
    assert trained.model.gains == [0.5] * 4  # what the hooks passed reached the forward
    last = load_checkpoint(out / "checkpoints" / "last.pt")
    assert last["config"]["model"]["family"] == "toy" and last["step"] == 2
    assert (out / "oof" / "1.png").is_file()

    model, config = model_from_checkpoint(out / "checkpoints" / "best.pt")
    assert isinstance(model, ToyNet) and config.model.variant == "small"
    fragment = Fragment(demo_dir / "test" / "a")
    probability = predict_fragment(model, config, fragment, progress=False)
    assert probability.shape == fragment.shape and probability.dtype == np.uint8
    assert probability[fragment.mask()].std() > 0  # a prediction, not a constant


def test_a_family_without_layer_ids_trains_every_parameter_at_the_base_lr(toy):
    config = tiny_config("toy", variant="large")
    config.train.lr, config.model.layer_decay = 0.1, 0.5
    model = build_model(config)
    groups = param_groups(model, config)
    assert {g["lr"] for g in groups} == {0.1}
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def test_family_choices_and_checks_run_without_building(toy, monkeypatch):
    def no_build(config):
        raise AssertionError("a config check must not build the model")

    monkeypatch.setitem(MODEL_FAMILIES, "toy", dataclasses.replace(toy, build=no_build))
    check_model_config(tiny_config("toy", variant="large"))
    with pytest.raises(KitError, match=r"unknown model.variant 'huge' for model.family 'toy'; "
                                       r"valid: \['small', 'large'\]"):  # fmt: skip
        check_model_config(tiny_config("toy", variant="huge"))
    with pytest.raises(KitError, match="the toy family needs a multiple of 4"):
        check_model_config(tiny_config("toy", variant="small", tile=30))
    with pytest.raises(KitError, match=r"train_mode='lora' is for model.family sam; "):
        check_model_config(tiny_config("toy", variant="small", train_mode="lora"))


def test_unknown_family_and_taken_names(toy):
    with pytest.raises(
        KitError, match=r"unknown model.family 'vit'; valid: \['sam', 'toy', 'unet'\]"
    ):
        check_model_config(tiny_config("vit"))
    with pytest.raises(ValueError, match="'toy' is registered already"):
        register_family("toy", TOY)


def test_a_family_without_a_loader_or_cache_refuses_them(toy):
    config = tiny_config("toy", variant="small", pretrained="/weights.pth")
    with pytest.raises(KitError, match=r"model.family 'toy' loads no pretrained weights"):
        load_pretrained(build_model(config), config)
    config = tiny_config("toy", variant="small")
    config.train.embedding_cache = True
    with pytest.raises(KitError, match=r"model.family='toy' keeps no cache; .*\['sam'\]"):
        check_model_config(config)


def test_default_hooks_add_nothing():
    hooks = TrainingHooks()
    x, y = torch.rand(4, 2, 8, 8), torch.zeros(4, 1, 8, 8)
    kwargs = hooks.step_kwargs(x, y, torch.zeros(4, 3), generator=torch.Generator())
    assert kwargs(slice(0, 2)) == {} and hooks.eval_kwargs(None) == {}
    assert hooks.cached(np.zeros((4, 3))) is None and not hooks.plain_tiles and hooks.notes() == []


@pytest.mark.parametrize(
    ("family", "overrides", "message"),
    [
        ("unet", {"prompt": "box"}, r"model.prompt='box' is for model.family sam; .* \['none'\]"),
        ("sam", {"point_sampling": "random"}, r"valid: \['labels', 'grid', 'error'\]"),
        ("sam", {"rel_pos_resize": "nearest"}, r"valid: \['interpolate', 'crop'\]"),
    ],
)
def test_builtin_family_choices(family, overrides, message):
    with pytest.raises(KitError, match=message):
        check_model_config(tiny_config(family, **overrides))


def test_checking_every_preset_imports_no_torch():
    code = (
        "import sys\n"
        "from kit.config import load_config, preset_names\n"
        "from kit.models import check_model_config\n"
        "for name in preset_names():\n"
        "    check_model_config(load_config(name))\n"
        "heavy = {'torch', 'timm', 'segment_anything'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
