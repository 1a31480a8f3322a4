"""Ignore masks in training and validation: the tile dataset yields them, the step weighs the
loss by them (both model families), validation scores without them."""

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from kit.config import load_config
from kit.data.demo import make_demo_data
from kit.data.fragment import Fragment
from kit.models import build_model, training_hooks
from kit.train.dataset import TileDataset
from kit.train.ddp import DistInfo
from kit.train.loop import load_fold_data
from kit.train.step import Stepper
from kit.train.validate import validate

T = 32
SMALL = ["data.tile=32", "data.stride=16", "data.z_start=0", "data.z_end=4", "data.reverse=false", "data.flatten=false",
         "train.batch_size=4", "train.accumulate=2", "infer.batch_size=32"]  # fmt: skip
CONFIGS = {
    "unet": ["cpu-demo-unet"],
    "sam": ["cpu-demo", "model.variant=vit_tiny", "model.input_gain=1.0", "loss.iou=1.0"],
}


def _config(family: str):
    name, *extra = CONFIGS[family]
    return load_config(name, [*SMALL, *extra])


def test_dataset_yields_the_ignore_window_of_each_fragment(demo_dir):
    config = _config("unet")
    fragments = [Fragment(demo_dir / "train" / fid) for fid in ("1", "3")]
    labels = [f.labels() for f in fragments]
    ignore = np.zeros(fragments[0].shape, bool)
    ignore[10:20, 30:35] = True
    tiles = np.array([[0, 0, 20], [1, 0, 20], [0, -8, 28]])
    stats = torch.ones(2, 2)
    items = TileDataset(fragments, labels, stats, tiles, config.data, ignore=[ignore, None])
    assert items[0]["ignore"].shape == (1, T, T) and items[0]["ignore"].sum() == 50
    assert items[0]["ignore"][0, 10:20, 10:15].all()
    assert not items[1]["ignore"].any()  # a fragment without a mask: nothing ignored
    assert items[2]["ignore"][0, 18:28, 2:7].all()  # a tile reaching outside the fragment
    # no fragment with an ignore mask: no key, so the step needs no look at the batch
    assert "ignore" not in TileDataset(fragments, labels, stats, tiles, config.data)[0]


def _batch(labels: torch.Tensor, ignore: torch.Tensor | None) -> dict:
    g = torch.Generator().manual_seed(0)
    batch = {
        "image": torch.randint(0, 60000, (8, 4, T, T), generator=g, dtype=torch.int32).to(
            torch.uint16
        ),
        "label": labels,
        "stats": torch.tensor([[1000.0, 50000.0]]).expand(8, 2),
        "tile": torch.zeros(8, 3, dtype=torch.int64),
    }
    if ignore is not None:
        batch["ignore"] = ignore
    return batch


def _losses(family: str, batch: dict) -> dict[str, float]:
    """The loss parts of one step of a freshly seeded model (same weights every call)."""
    config = _config(family)
    torch.manual_seed(0)
    model = build_model(config)
    hooks = training_hooks(config, model, fragments=["x"], n_tiles=8, device=torch.device("cpu"))
    stepper = Stepper(config, model, hooks, info=DistInfo(), device=torch.device("cpu"))
    return stepper.step(batch)


@pytest.mark.parametrize("family", ["unet", "sam"])
def test_labels_under_the_ignore_mask_do_not_change_the_loss(family):
    g = torch.Generator().manual_seed(1)
    labels = (torch.rand(8, 1, T, T, generator=g) > 0.7).to(torch.uint8)
    ignore = torch.zeros(8, 1, T, T, dtype=torch.uint8)
    ignore[:, :, 4:20, 8:30] = 1
    other = labels.clone()
    other[ignore.bool()] = 1 - other[ignore.bool()]  # different labels, only where ignored
    honoured = _losses(family, _batch(labels, ignore)), _losses(family, _batch(other, ignore))
    parts = ["bce", "dice", "total"] + (["iou"] if family == "sam" else [])
    for part in parts:
        assert honoured[0][part] == pytest.approx(honoured[1][part], abs=1e-6), part
    dropped = _losses(family, _batch(labels, None)), _losses(family, _batch(other, None))
    assert dropped[0]["bce"] != pytest.approx(dropped[1]["bce"], abs=1e-4)
    # a batch with an all-zero ignore mask trains exactly as one without
    assert _losses(family, _batch(labels, torch.zeros_like(ignore))) == dropped[0]


def test_prepare_warps_the_ignore_mask_with_the_labels():
    config = _config("unet")
    model = build_model(config)
    hooks = training_hooks(config, model, fragments=["x"], n_tiles=8, device=torch.device("cpu"))
    stepper = Stepper(config, model, hooks, info=DistInfo(), device=torch.device("cpu"))
    pattern = torch.zeros(8, 1, T, T, dtype=torch.uint8)
    pattern[:, :, 3:11, 5:25] = 1
    _, y, valid = stepper.prepare(_batch(pattern, pattern))  # ignore exactly where the ink is
    assert not torch.equal(y, pattern.float())  # some tiles were flipped, turned or warped
    assert torch.equal(y, 1 - valid)  # and the ignore mask with them
    assert stepper.prepare(_batch(pattern, None))[2] is None


@pytest.fixture(scope="module")
def segments(tmp_path_factory) -> Path:
    return make_demo_data(tmp_path_factory.mktemp("seg"), scale=1 / 48, layout="segments")


def _rewrite_labels(path: Path, rows: slice) -> None:
    labels = cv2.imread(str(path), 0)
    labels[rows] = 255 - labels[rows]
    cv2.imwrite(str(path), labels)


def test_validation_scores_without_the_ignored_pixels(segments, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(segments, data)
    config = _config("unet")
    torch.manual_seed(0)
    model = build_model(config)
    fold_data = load_fold_data(data, 0, data / "folds.csv", progress=False)  # holds out 1
    held_out = data / "train" / "1"

    def score() -> float:
        fresh = load_fold_data(data, 0, data / "folds.csv", progress=False)
        return validate(model, config, fresh, device="cpu").score

    before = score()
    ignore = np.zeros(fold_data.val[0].shape, np.uint8)
    ignore[40:120] = 255
    cv2.imwrite(str(held_out / "1_ignore.png"), ignore)
    ignored = score()
    _rewrite_labels(held_out / "1_inklabels.png", slice(40, 120))  # only under the mask
    assert score() == ignored != before
    _rewrite_labels(held_out / "1_inklabels.png", slice(0, 40))  # a control: outside it
    assert score() != ignored
