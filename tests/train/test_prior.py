"""The cascade's prior: a first-stage map read beside the image, trained, evaluated and predicted
with (`kit train/predict --prior`, `kit evaluate`'s OOF maps), part of the run's provenance."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from kit.cli import main
from kit.config import load_config
from kit.data.folds import Region, write_folds
from kit.data.fragment import Fragment
from kit.models import build_model, training_hooks
from kit.run import PredictionDir, RunDir
from kit.train.dataset import TileDataset
from kit.train.ddp import DistInfo
from kit.train.step import Stepper

T = 32
# tiny runs: the two members of test_loop.TINY's size
TINY = ["data.tile=32", "data.stride=32", "data.z_start=26", "data.z_end=34", "data.reverse=false", "data.flatten=false",
        "train.batch_size=4", "train.steps_per_epoch=2", "train.epochs=1", "train.warmup_steps=1",
        "train.num_workers=0", "infer.batch_size=64", "model.input_gain=50"]  # fmt: skip
UNET = [x for x in TINY if not x.startswith("model.")]


def _args(items: list[str]) -> list[str]:
    return [a for item in items for a in ("--set", item)]


def test_the_prior_tile_moves_with_the_image_and_labels_through_augmentation(demo_dir):
    # the prior is the labels themselves (0 / 255): after flips, rot90 and every intensity
    # transform it must still equal the augmented labels, pixel for pixel
    config = load_config("cpu-demo-cascade", [*TINY, "augment.p_intensity=1", "augment.p_noise=1",
                                              "augment.p_slice_dropout=1", "augment.p_zshift=1",
                                              "augment.p_slice_jitter=1"])  # fmt: skip
    fragment = Fragment(demo_dir / "train" / "2")
    labels = fragment.labels()
    with_prior = fragment.with_prior(labels * 255)
    ys, xs = np.nonzero(labels[:-T, :-T])
    tiles = np.array([[0, ys[k], xs[k]] for k in range(0, len(ys), max(1, len(ys) // 8))][:8])
    stats = torch.tensor([[1000.0, 50000.0]])
    dataset = TileDataset([with_prior], [labels], stats, tiles, config.data)
    item = dataset[0]
    assert item["image"].shape == (config.data.in_channels + 1, T, T)
    plain = TileDataset([fragment], [labels], stats, tiles, config.data)[0]["image"]
    assert torch.equal(item["image"][:-1], plain)  # the slices are the plain fragment's
    batch = {k: torch.stack([dataset[i][k] for i in range(len(tiles))]) for k in item}
    model = build_model(config)
    hooks = training_hooks(config, model, fragments=["2"], n_tiles=8, device=torch.device("cpu"))
    stepper = Stepper(config, model, hooks, info=DistInfo(), device=torch.device("cpu"))
    x, y, _ = stepper.prepare(batch)
    assert not torch.equal(y, batch["label"].float())  # something was flipped or turned
    assert torch.equal(x[:, -1:], y)  # the prior went with them, untouched by intensity


@pytest.fixture(scope="module")
def stage1(demo_dir, tmp_path_factory):
    """Two folds of a tiny U-Net (the first stage), evaluated (OOF maps) and predicted on test."""
    root = tmp_path_factory.mktemp("cascade")
    folds = root / "folds.csv"
    write_folds([Region("1", 0, 0.0, 1.0), Region("2", 1, 0.0, 1.0), Region("3", 1, 0.0, 1.0)],
                folds)  # fmt: skip
    runs = [root / "unet" / f"fold{k}" for k in (0, 1)]
    for k, run in enumerate(runs):
        argv = ["train", "--data", str(demo_dir), "--fold", str(k), "--folds", str(folds),
                "--config", "cpu-demo-unet", "--out", str(run), "--no-progress", *_args(UNET)]  # fmt: skip
        assert main(argv) == 0
    evaluation = root / "evaluation"
    assert main(["evaluate", "--runs", *map(str, runs), "--out", str(evaluation),
                 "--no-pictures", "--no-progress"]) == 0  # fmt: skip
    test_priors = root / "test_priors"
    assert main(["predict", "--data", str(demo_dir / "test"), "--runs", *map(str, runs),
                 "--out", str(test_priors), "--no-progress"]) == 0  # fmt: skip
    return {"root": root, "folds": folds, "runs": runs, "oof": evaluation / "oof",
            "test": test_priors}  # fmt: skip


def test_evaluate_writes_each_training_fragment_s_out_of_fold_map(demo_dir, stage1):
    oof = PredictionDir(stage1["oof"])
    record = oof.record()
    assert sorted(record["fragments"]) == ["1", "2", "3"]
    for fid in ("1", "2", "3"):
        fragment = Fragment(demo_dir / "train" / fid)
        prob = oof.read_checked(fid, fragment)
        fold = 0 if fid == "1" else 1
        # each fragment's map is its own fold's held-out map (one member: the same bytes)
        own = RunDir(stage1["runs"][fold]).read_oof(fid, fragment.shape, fragment.path)
        assert np.array_equal(prob, own)
        assert record["rows"][fid] == [[0, fragment.shape[0]]]


def _train_cascade(demo_dir, stage1, out: Path, *extra: str) -> int:
    argv = ["train", "--data", str(demo_dir), "--fold", "0", "--folds", str(stage1["folds"]),
            "--config", "cpu-demo-cascade", "--out", str(out), "--no-progress", *_args(TINY),
            *extra]  # fmt: skip
    return main(argv)


def test_train_evaluate_predict_with_a_prior_and_what_is_refused(demo_dir, stage1, capsys):
    root = stage1["root"]
    run = root / "cascade" / "fold0"
    assert _train_cascade(demo_dir, stage1, run) == 2  # no --prior
    assert "needs a prior" in capsys.readouterr().err and not run.exists()

    # a prior of the wrong size is refused, naming the file
    wrong = root / "wrong_oof"
    shutil.copytree(stage1["oof"], wrong)
    cv2.imwrite(str(wrong / "1.png"), np.zeros((7, 9), np.uint8))
    assert _train_cascade(demo_dir, stage1, run, "--prior", str(wrong)) == 2
    err = capsys.readouterr().err
    assert f"{wrong / '1.png'} is 7×9 but the mask of" in err

    assert _train_cascade(demo_dir, stage1, run, "--prior", str(stage1["oof"])) == 0
    record = RunDir(run).record()
    assert record["prior"] == str(stage1["oof"].resolve())
    assert set(record["provenance"]["prior"]["maps"]) == {"1", "2", "3"}
    assert _train_cascade(demo_dir, stage1, run, "--prior", str(stage1["oof"])) == 0
    assert "nothing to do" in capsys.readouterr().out

    # a changed prior is another input: refused without --overwrite, retrained with it
    changed = root / "changed_oof"
    shutil.copytree(stage1["oof"], changed)
    prob = cv2.imread(str(changed / "3.png"), cv2.IMREAD_GRAYSCALE)
    cv2.imwrite(str(changed / "3.png"), 255 - prob)
    assert _train_cascade(demo_dir, stage1, run, "--prior", str(changed)) == 2
    assert "prior.maps.3:" in capsys.readouterr().err  # what changed, named
    assert _train_cascade(demo_dir, stage1, run, "--prior", str(changed), "--overwrite") == 0
    assert RunDir(run).record()["prior"] == str(changed.resolve())

    # evaluate: the cascade's OOF maps were made with its priors at validation time
    assert main(["evaluate", "--runs", str(stage1["runs"][0]), str(run), "--out",
                 str(root / "eval2"), "--no-pictures", "--no-progress"]) == 0  # fmt: skip

    # predict: the member that needs a prior gets it, the U-Net ignores it
    pred = root / "pred"
    members = [str(stage1["runs"][0]), str(run)]
    base = ["predict", "--data", str(demo_dir / "test"), "--runs", *members, "--out", str(pred),
            "--no-progress"]  # fmt: skip
    assert main(base) == 2
    assert "cpu-demo-cascade (sam vit_tiny4) fold 0 needs a prior" in capsys.readouterr().err
    assert main([*base, "--prior", str(stage1["test"])]) == 0
    first = (pred / "a.png").read_bytes()
    assert "prior" in PredictionDir(pred).record()
    # a different prior gives a different cascade map: the prediction is redone, and differs
    other = root / "other_test"
    shutil.copytree(stage1["test"], other)
    for fid in ("a", "b"):
        cv2.imwrite(str(other / f"{fid}.png"), 255 - cv2.imread(str(other / f"{fid}.png"), 0))
    assert main([*base, "--prior", str(other)]) == 0
    assert "skipped" not in capsys.readouterr().out
    assert (pred / "a.png").read_bytes() != first


def test_an_out_of_fold_prior_must_cover_the_rows_a_run_reads(demo_dir, stage1, tmp_path, capsys):
    # fold -1 rows (pseudo-labelled fragments) are held out by no fold: no OOF map covers them
    partial = tmp_path / "partial"
    shutil.copytree(stage1["oof"], partial)
    pred = PredictionDir(partial)
    record = pred.record()
    record["rows"]["3"] = [[0, 10]]
    pred.write_record(record)
    assert _train_cascade(demo_dir, stage1, tmp_path / "run", "--prior", str(partial)) == 2
    err = capsys.readouterr().err
    assert "out-of-fold prior covering rows 0..10 of fragment 3" in err and "fold -1" in err
